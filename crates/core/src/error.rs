//! The errors a user can cause through llmtrain-core. Each displays as one line naming the file, key or tensor.

use std::path::{Path, PathBuf};

/// Everything that can go wrong reading or writing models, tokenizers and templates.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{path}:{line}:{column}: invalid JSON: {message}")]
    Json { path: PathBuf, line: usize, column: usize, message: String },

    #[error("{path}: key `{}`: {message}", one_line(.key))]
    ConfigKey { path: PathBuf, key: String, message: String },

    #[error("{path}: unsupported {what} `{}`; supported: {supported}", one_line(.found))]
    Unsupported { path: PathBuf, what: &'static str, found: String, supported: String },

    #[error("{path}: tensor `{}` is missing (expected shape {expected:?})", one_line(.name))]
    MissingTensor { path: PathBuf, name: String, expected: Vec<usize> },

    #[error("{path}: unexpected tensor `{}` with shape {shape:?} (not part of this model)", one_line(.name))]
    ExtraTensor { path: PathBuf, name: String, shape: Vec<usize> },

    #[error("{path}: tensor `{}` has shape {found:?}, expected {expected:?}", one_line(.name))]
    ShapeMismatch { path: PathBuf, name: String, expected: Vec<usize>, found: Vec<usize> },

    #[error("{path}: tensor `{}` has dtype {dtype}; supported: F32, BF16, F16", one_line(.name))]
    TensorDtype { path: PathBuf, name: String, dtype: String },

    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },

    #[error("{path}: {message}")]
    Tokenizer { path: PathBuf, message: String },

    #[error("chat template: {0}")]
    Template(String),

    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, CoreError>;

/// `text` with its control characters (line breaks) escaped: names and values read from a file stay on the
/// message's one line.
pub fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

impl CoreError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        CoreError::Io { path: path.to_path_buf(), source }
    }

    /// A JSON file that does not parse, with the line and column.
    pub fn json(path: &Path, err: &serde_json::Error) -> Self {
        // serde_json's message ends with " at line L column C"; keep only the cause.
        let message = err.to_string();
        let message = message.split(" at line ").next().unwrap_or(&message).to_string();
        CoreError::Json { path: path.to_path_buf(), line: err.line(), column: err.column(), message }
    }

    /// A key of a file whose value cannot work.
    pub fn key(path: &Path, key: &str, message: impl Into<String>) -> Self {
        CoreError::ConfigKey { path: path.to_path_buf(), key: key.to_string(), message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_from_files_stay_on_one_line() {
        // Found by `cargo xtask fuzz --target safetensors-header`: a tensor named with a line break split the error.
        let err = CoreError::ExtraTensor { path: "m.safetensors".into(), name: "a\nb".into(), shape: vec![2] };
        assert_eq!(err.to_string(), "m.safetensors: unexpected tensor `a\\nb` with shape [2] (not part of this model)");
        assert_eq!(one_line("plain `name` é"), "plain `name` é");
        assert_eq!(one_line("tab\there\r"), "tab\\there\\r");
    }
}
