//! The errors a user can cause through llmtrain-core. Each displays as one line naming the file, key or tensor.

use std::path::{Path, PathBuf};

/// Everything that can go wrong reading or writing models, tokenizers and templates.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{path}:{line}:{column}: invalid JSON: {message}")]
    Json { path: PathBuf, line: usize, column: usize, message: String },

    #[error("{path}: key `{key}`: {message}")]
    ConfigKey { path: PathBuf, key: String, message: String },

    #[error("{path}: unsupported {what} `{found}`; supported: {supported}")]
    Unsupported { path: PathBuf, what: &'static str, found: String, supported: String },

    #[error("{path}: tensor `{name}` is missing (expected shape {expected:?})")]
    MissingTensor { path: PathBuf, name: String, expected: Vec<usize> },

    #[error("{path}: unexpected tensor `{name}` with shape {shape:?} (not part of this model)")]
    ExtraTensor { path: PathBuf, name: String, shape: Vec<usize> },

    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch { path: PathBuf, name: String, expected: Vec<usize>, found: Vec<usize> },

    #[error("{path}: tensor `{name}` has dtype {dtype}; supported: F32, BF16, F16")]
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
