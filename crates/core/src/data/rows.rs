//! TRL's dataset row formats, recognised from a JSON object's keys, with errors that name the field.

use serde_json::{Map, Value};

use crate::chat::Message;

/// A field's value: a string (standard datasets) or a list of chat messages (conversational datasets).
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    Text(String),
    Chat(Vec<Message>),
}

impl Content {
    fn kind(&self) -> &'static str {
        match self {
            Content::Text(_) => "a string",
            Content::Chat(_) => "a message list",
        }
    }
}

/// One dataset row in one of TRL's formats. Unknown extra keys are ignored, and a key whose value is `null` counts
/// as absent (Parquet files hold every column in every row).
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    /// `{"text"}`: language modelling.
    Text { text: String },
    /// `{"messages": [{role, content}, ...]}`: conversational language modelling.
    Messages { messages: Vec<Message> },
    /// `{"prompt", "completion"}`.
    PromptCompletion { prompt: Content, completion: Content },
    /// `{"prompt", "chosen", "rejected"}`, or `{"chosen", "rejected"}` with an implicit prompt: their longest common
    /// prefix (characters for strings, leading messages for conversations), as TRL's `extract_prompt` finds it.
    /// An optional numeric `margin` column is kept (RewardTrainer subtracts it from the reward difference).
    Preference { prompt: Content, chosen: Content, rejected: Content, margin: Option<f64> },
    /// `{"prompt"}` alone: online methods such as GRPO. The row's other columns are kept (`extra`): reward
    /// functions read them, such as the expected answer.
    PromptOnly { prompt: Content, extra: serde_json::Map<String, Value> },
    /// `{"prompt", "completion", "label": bool}`: KTO.
    UnpairedPreference { prompt: Content, completion: Content, label: bool },
}

/// The keys that decide a row's format; readers may drop every other column but [`EXTRA_KEYS`].
pub const FORMAT_KEYS: [&str; 7] = ["text", "messages", "prompt", "completion", "chosen", "rejected", "label"];

/// Columns a trainer reads besides the format's: a preference row's `margin` (reward modelling).
pub const EXTRA_KEYS: [&str; 1] = ["margin"];

impl Row {
    /// The format's name, for messages.
    pub fn format_name(&self) -> &'static str {
        match self {
            Row::Text { .. } => "text",
            Row::Messages { .. } => "messages",
            Row::PromptCompletion { .. } => "prompt-completion",
            Row::Preference { .. } => "preference",
            Row::PromptOnly { .. } => "prompt-only",
            Row::UnpairedPreference { .. } => "unpaired-preference",
        }
    }

    /// Whether causal-LM training (pretraining, SFT) can use this row; the other formats need a preference or
    /// online trainer.
    pub fn is_language_modeling(&self) -> bool {
        matches!(self, Row::Text { .. } | Row::Messages { .. } | Row::PromptCompletion { .. })
    }

    /// Recognises the format from the keys present. The error is one line naming the field, e.g.
    /// ``field `messages`: expected a list of {role, content} objects, found a string``; the caller adds the file and
    /// line.
    pub fn parse(value: &Value) -> Result<Row, String> {
        let Value::Object(obj) = value else {
            return Err(format!("expected a JSON object with TRL's keys, found {}", kind(value)));
        };
        let has = |k: &str| obj.get(k).is_some_and(|v| !v.is_null());
        if has("messages") {
            return Ok(Row::Messages { messages: messages(obj, "messages")? });
        }
        if has("text") {
            return Ok(Row::Text { text: string(obj, "text")? });
        }
        if has("chosen") && has("rejected") {
            let chosen = content(obj, "chosen")?;
            let rejected = content(obj, "rejected")?;
            same_kind(&[("chosen", &chosen), ("rejected", &rejected)])?;
            let margin = match obj.get("margin") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => n.as_f64(),
                Some(other) => return Err(format!("field `margin`: expected a number, found {}", kind(other))),
            };
            let mut row = if has("prompt") {
                let prompt = content(obj, "prompt")?;
                same_kind(&[("prompt", &prompt), ("chosen", &chosen)])?;
                Row::Preference { prompt, chosen, rejected, margin: None }
            } else {
                implicit_prompt(chosen, rejected)
            };
            if let Row::Preference { margin: slot, .. } = &mut row {
                *slot = margin;
            }
            return Ok(row);
        }
        if has("prompt") && has("completion") {
            let prompt = content(obj, "prompt")?;
            let completion = content(obj, "completion")?;
            same_kind(&[("prompt", &prompt), ("completion", &completion)])?;
            if has("label") {
                let label = match &obj["label"] {
                    Value::Bool(b) => *b,
                    other => return Err(format!("field `label`: expected true or false, found {}", kind(other))),
                };
                return Ok(Row::UnpairedPreference { prompt, completion, label });
            }
            return Ok(Row::PromptCompletion { prompt, completion });
        }
        if has("prompt") {
            let extra = obj
                .iter()
                .filter(|(key, v)| *key != "prompt" && !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            return Ok(Row::PromptOnly { prompt: content(obj, "prompt")?, extra });
        }
        if let Some(key) = FORMAT_KEYS.iter().find(|k| obj.contains_key(**k)) {
            return Err(format!("field `{key}`: is null, and no other field gives the row a format"));
        }
        // Escaped: a key may hold a line break, and the error is one line.
        let keys: Vec<String> = obj.keys().map(|k| crate::error::one_line(k).into_owned()).collect();
        Err(format!(
            "no TRL format among the keys [{}]: expected text | messages | prompt+completion | \
             prompt+chosen+rejected | chosen+rejected | prompt | prompt+completion+label",
            keys.join(", ")
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
                _ => Err(format!(
                    "field `{key}[{i}]`: expected an object with string `role` and `content`, found {}",
                    describe_message(item)
                )),
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

/// TRL requires every field of a row to be standard or every one conversational.
fn same_kind(fields: &[(&str, &Content); 2]) -> Result<(), String> {
    let [(a, x), (b, y)] = fields;
    if std::mem::discriminant(*x) == std::mem::discriminant(*y) {
        return Ok(());
    }
    Err(format!("field `{b}`: is {} but `{a}` is {}; both must be strings or both message lists", y.kind(), x.kind()))
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

fn describe_message(item: &Value) -> String {
    let Value::Object(m) = item else { return kind(item).to_string() };
    let field = |k: &str| m.get(k).map_or("missing", kind);
    format!("an object with `role` {} and `content` {}", field("role"), field("content"))
}

/// Splits `chosen`/`rejected` into their common prefix (the prompt) and the differing rests, as TRL's
/// `extract_prompt` does: whole leading messages for conversations; characters for strings, where a space just
/// before the point they differ stays with the answers ("The sky is" / " blue." / " green.").
fn implicit_prompt(chosen: Content, rejected: Content) -> Row {
    match (chosen, rejected) {
        (Content::Chat(c), Content::Chat(r)) => {
            let common = c.iter().zip(&r).take_while(|(a, b)| a == b).count();
            Row::Preference {
                prompt: Content::Chat(c[..common].to_vec()),
                chosen: Content::Chat(c[common..].to_vec()),
                rejected: Content::Chat(r[common..].to_vec()),
                margin: None,
            }
        }
        (Content::Text(c), Content::Text(r)) => {
            // Byte offset where the strings first differ, at a character boundary of both.
            let mut split = c
                .char_indices()
                .zip(r.chars())
                .find(|((_, a), b)| a != b)
                .map_or_else(|| c.chars().zip(r.chars()).map(|(a, _)| a.len_utf8()).sum(), |((i, _), _)| i);
            if split > 0 && c[..split].ends_with(' ') && split < c.len().min(r.len()) {
                split -= 1;
            }
            Row::Preference {
                prompt: Content::Text(c[..split].to_string()),
                chosen: Content::Text(c[split..].to_string()),
                rejected: Content::Text(r[split..].to_string()),
                margin: None,
            }
        }
        // `same_kind` ran first.
        (chosen, rejected) => Row::Preference { prompt: Content::Text(String::new()), chosen, rejected, margin: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn name(v: Value) -> &'static str {
        Row::parse(&v).unwrap().format_name()
    }

    #[test]
    fn every_trl_format_is_recognised_and_nulls_count_as_absent() {
        assert_eq!(name(json!({"text": "a", "id": 3})), "text");
        assert_eq!(name(json!({"messages": [{"role": "user", "content": "hi"}], "text": null})), "messages");
        assert_eq!(name(json!({"prompt": "a", "completion": "b"})), "prompt-completion");
        assert_eq!(name(json!({"prompt": "a", "completion": "b", "label": null})), "prompt-completion");
        assert_eq!(name(json!({"prompt": "a", "chosen": "b", "rejected": "c"})), "preference");
        assert_eq!(name(json!({"chosen": "a", "rejected": "b"})), "preference");
        assert_eq!(name(json!({"prompt": "a"})), "prompt-only");
        assert_eq!(name(json!({"prompt": "a", "completion": "b", "label": true})), "unpaired-preference");
    }

    #[test]
    fn implicit_string_prompt_keeps_the_space_with_the_answers() {
        let row = Row::parse(&json!({"chosen": "The sky is blue.", "rejected": "The sky is green."})).unwrap();
        let text = |s: &str| Content::Text(s.into());
        assert_eq!(
            row,
            Row::Preference {
                prompt: text("The sky is"),
                chosen: text(" blue."),
                rejected: text(" green."),
                margin: None
            }
        );
        // Multi-byte characters: the split stays on a character boundary.
        let row = Row::parse(&json!({"chosen": "héllo wörld", "rejected": "héllo wärld"})).unwrap();
        assert_eq!(
            row,
            Row::Preference { prompt: text("héllo w"), chosen: text("örld"), rejected: text("ärld"), margin: None }
        );
        // One a prefix of the other: the whole shorter string is the prompt.
        let row = Row::parse(&json!({"chosen": "abc", "rejected": "abcd"})).unwrap();
        assert_eq!(row, Row::Preference { prompt: text("abc"), chosen: text(""), rejected: text("d"), margin: None });
    }

    #[test]
    fn errors_name_the_field() {
        let err = |v: Value| Row::parse(&v).unwrap_err();
        assert_eq!(err(json!({"text": 5})), "field `text`: expected a string, found a number");
        assert_eq!(
            err(json!({"messages": [{"role": "user"}]})),
            "field `messages[0]`: expected an object with string `role` and `content`, found an object with `role` \
             a string and `content` missing"
        );
        assert_eq!(
            err(json!({"prompt": "a", "completion": [{"role": "assistant", "content": "b"}]})),
            "field `completion`: is a message list but `prompt` is a string; both must be strings or both message lists"
        );
        assert_eq!(
            err(json!({"prompt": "a", "completion": "b", "label": "yes"})),
            "field `label`: expected true or false, found a string"
        );
        assert_eq!(err(json!({"text": null})), "field `text`: is null, and no other field gives the row a format");
        assert!(err(json!({"question": "q"})).starts_with("no TRL format among the keys [question]"));
        assert!(err(json!([1])).starts_with("expected a JSON object"));
    }

    #[test]
    fn a_key_with_a_line_break_stays_on_the_error_line() {
        // Found by `cargo xtask fuzz --target jsonl-rows`: the key was printed raw, splitting the message.
        let err = Row::parse(&json!({"a\nb": 1})).unwrap_err();
        assert!(err.starts_with("no TRL format among the keys [a\\nb]"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}
