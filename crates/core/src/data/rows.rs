//! TRL's dataset row formats, parsed from JSON objects with errors that name the field.

use serde_json::{Map, Value};

use crate::chat::Message;

/// A string, or (conversational datasets) a list of chat messages.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    Text(String),
    Chat(Vec<Message>),
}

/// One dataset row in one of TRL's formats.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    /// `{"text"}` (language modelling).
    Text(String),
    /// `{"messages": [{role, content}, ...]}`.
    Messages(Vec<Message>),
    /// `{"prompt", "completion"}`.
    PromptCompletion { prompt: Content, completion: Content },
    /// `{"prompt", "chosen", "rejected"}`, or `{"chosen", "rejected"}` with the prompt implicit (their longest
    /// common prefix: characters for strings, leading messages for conversations).
    Preference { prompt: Content, chosen: Content, rejected: Content },
    /// `{"prompt"}` alone (online methods such as GRPO).
    PromptOnly(Content),
    /// `{"prompt", "completion", "label": bool}` (KTO).
    UnpairedPreference { prompt: Content, completion: Content, label: bool },
}

impl Row {
    /// The format's name, for messages.
    pub fn format_name(&self) -> &'static str {
        match self {
            Row::Text(_) => "text",
            Row::Messages(_) => "messages",
            Row::PromptCompletion { .. } => "prompt-completion",
            Row::Preference { .. } => "preference",
            Row::PromptOnly(_) => "prompt-only",
            Row::UnpairedPreference { .. } => "unpaired preference",
        }
    }

    /// Parses a JSON object; the error names the offending field (the caller adds file and line).
    pub fn parse(value: &Value) -> Result<Row, String> {
        let Value::Object(obj) = value else {
            return Err("row: expected a JSON object".into());
        };
        let has = |k: &str| obj.contains_key(k);
        if has("messages") {
            return Ok(Row::Messages(messages(obj, "messages")?));
        }
        if has("text") {
            return Ok(Row::Text(string(obj, "text")?));
        }
        if has("chosen") && has("rejected") {
            let chosen = content(obj, "chosen")?;
            let rejected = content(obj, "rejected")?;
            if has("prompt") {
                return Ok(Row::Preference { prompt: content(obj, "prompt")?, chosen, rejected });
            }
            return implicit_prompt(chosen, rejected);
        }
        if has("prompt") && has("completion") && has("label") {
            let label = obj["label"].as_bool().ok_or("field `label`: expected true or false")?;
            return Ok(Row::UnpairedPreference {
                prompt: content(obj, "prompt")?,
                completion: content(obj, "completion")?,
                label,
            });
        }
        if has("prompt") && has("completion") {
            return Ok(Row::PromptCompletion {
                prompt: content(obj, "prompt")?,
                completion: content(obj, "completion")?,
            });
        }
        if has("prompt") {
            return Ok(Row::PromptOnly(content(obj, "prompt")?));
        }
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        Err(format!(
            "row: no known format among its keys {keys:?}; expected text | messages | prompt+completion | \
             prompt+chosen+rejected | chosen+rejected | prompt | prompt+completion+label"
        ))
    }
}

fn string(obj: &Map<String, Value>, key: &str) -> Result<String, String> {
    match &obj[key] {
        Value::String(s) => Ok(s.clone()),
        other => Err(format!("field `{key}`: expected a string, found {}", kind(other))),
    }
}

fn messages(obj: &Map<String, Value>, key: &str) -> Result<Vec<Message>, String> {
    let Value::Array(items) = &obj[key] else {
        return Err(format!("field `{key}`: expected a list of {{role, content}} objects, found {}", kind(&obj[key])));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let role = item.get("role").and_then(Value::as_str);
            let content = item.get("content").and_then(Value::as_str);
            match (role, content) {
                (Some(role), Some(content)) => Ok(Message::new(role, content)),
                _ => Err(format!("field `{key}[{i}]`: expected an object with string `role` and `content`")),
            }
        })
        .collect()
}

fn content(obj: &Map<String, Value>, key: &str) -> Result<Content, String> {
    match &obj[key] {
        Value::String(s) => Ok(Content::Text(s.clone())),
        Value::Array(_) => Ok(Content::Chat(messages(obj, key)?)),
        other => Err(format!("field `{key}`: expected a string or a list of messages, found {}", kind(other))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Splits `chosen`/`rejected` into their common prefix (the prompt) and the differing rest, as TRL's
/// `extract_prompt` does.
fn implicit_prompt(chosen: Content, rejected: Content) -> Result<Row, String> {
    match (chosen, rejected) {
        (Content::Text(c), Content::Text(r)) => {
            let common = c.char_indices().zip(r.chars()).take_while(|((_, a), b)| a == b).count();
            let split = c.char_indices().nth(common).map(|(i, _)| i).unwrap_or(c.len());
            let r_split = r.char_indices().nth(common).map(|(i, _)| i).unwrap_or(r.len());
            Ok(Row::Preference {
                prompt: Content::Text(c[..split].to_string()),
                chosen: Content::Text(c[split..].to_string()),
                rejected: Content::Text(r[r_split..].to_string()),
            })
        }
        (Content::Chat(c), Content::Chat(r)) => {
            let common = c.iter().zip(&r).take_while(|(a, b)| a == b).count();
            Ok(Row::Preference {
                prompt: Content::Chat(c[..common].to_vec()),
                chosen: Content::Chat(c[common..].to_vec()),
                rejected: Content::Chat(r[common..].to_vec()),
            })
        }
        _ => Err("fields `chosen` and `rejected`: both strings or both message lists".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_trl_format_is_recognised() {
        let p = |v: Value| Row::parse(&v).unwrap().format_name();
        assert_eq!(p(json!({"text": "a"})), "text");
        assert_eq!(p(json!({"messages": [{"role": "user", "content": "hi"}]})), "messages");
        assert_eq!(p(json!({"prompt": "a", "completion": "b"})), "prompt-completion");
        assert_eq!(p(json!({"prompt": "a", "chosen": "b", "rejected": "c"})), "preference");
        assert_eq!(p(json!({"chosen": "a", "rejected": "b"})), "preference");
        assert_eq!(p(json!({"prompt": "a"})), "prompt-only");
        assert_eq!(p(json!({"prompt": "a", "completion": "b", "label": true})), "unpaired preference");
    }

    #[test]
    fn implicit_prompt_is_the_common_prefix() {
        let row = Row::parse(&json!({"chosen": "The sky is blue.", "rejected": "The sky is green."})).unwrap();
        let Row::Preference { prompt, chosen, rejected } = row else { panic!() };
        assert_eq!(prompt, Content::Text("The sky is ".into()));
        assert_eq!((chosen, rejected), (Content::Text("blue.".into()), Content::Text("green.".into())));
        let u = json!({"role": "user", "content": "q"});
        let row = Row::parse(&json!({"chosen": [u, {"role": "assistant", "content": "a"}],
                                     "rejected": [u, {"role": "assistant", "content": "b"}]}))
        .unwrap();
        let Row::Preference { prompt: Content::Chat(prompt), .. } = row else { panic!() };
        assert_eq!(prompt, vec![Message::new("user", "q")]);
    }

    #[test]
    fn errors_name_the_field() {
        let err = Row::parse(&json!({"text": 5})).unwrap_err();
        assert_eq!(err, "field `text`: expected a string, found a number");
        let err = Row::parse(&json!({"messages": [{"role": "user"}]})).unwrap_err();
        assert!(err.starts_with("field `messages[0]`"), "{err}");
    }
}
