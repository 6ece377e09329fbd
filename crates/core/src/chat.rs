//! Chat templates rendered as transformers' `apply_chat_template` renders them: Jinja with `trim_blocks` and
//! `lstrip_blocks`, loop controls, Python string methods, `raise_exception`, and a Python-style `tojson`.

use minijinja::{Environment, Error, ErrorKind, context};
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self { role: role.to_string(), content: content.to_string() }
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl ChatTemplate {
    pub fn new(source: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> std::result::Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_filter("tojson", python_tojson);
        env.add_template_owned("chat", source.to_string()).map_err(|e| CoreError::Template(describe(&e)))?;
        Ok(Self { env })
    }

    /// Renders with HF's variables: `messages`, `add_generation_prompt`, `bos_token`, `eos_token`.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<String> {
        let template = self.env.get_template("chat").map_err(|e| CoreError::Template(describe(&e)))?;
        template
            .render(context! { messages, add_generation_prompt, bos_token, eos_token })
            .map_err(|e| CoreError::Template(describe(&e)))
    }
}

/// One line: the template's own message for `raise_exception`, minijinja's otherwise.
fn describe(err: &Error) -> String {
    match (err.kind(), err.detail()) {
        (ErrorKind::InvalidOperation, Some(detail)) => detail.to_string(),
        _ => err.to_string().replace('\n', " "),
    }
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=indent)`, whose separators
/// are ", " and ": " (unlike minijinja's compact, HTML-escaped built-in).
fn python_tojson(value: minijinja::Value, indent: Option<usize>) -> std::result::Result<String, Error> {
    let json: serde_json::Value =
        serde_json::to_value(&value).map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    write_python_json(&json, indent, 0, &mut out);
    Ok(out)
}

fn write_python_json(value: &serde_json::Value, indent: Option<usize>, depth: usize, out: &mut String) {
    use serde_json::Value;
    let newline = |out: &mut String, depth: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * depth));
        }
    };
    let separator = if indent.is_some() { "," } else { ", " };
    match value {
        Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, depth + 1);
                write_python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, depth + 1);
                out.push_str(&Value::String(key.clone()).to_string());
                out.push_str(": ");
                write_python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tojson_uses_python_separators() {
        let t = ChatTemplate::new("{{ messages[0] | tojson }}").unwrap();
        let out = t.render(&[Message::new("user", "é<")], false, None, None).unwrap();
        assert_eq!(out, r#"{"role": "user", "content": "é<"}"#);
    }
}
