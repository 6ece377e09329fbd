//! The errors a user can cause through llmtrain-fastlora; each displays as one line naming the file and key or
//! tensor.

use std::path::{Path, PathBuf};

use llmtrain_core::CoreError;

#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{path}:{line}: invalid adapter config: {message}")]
    Json { path: PathBuf, line: usize, message: String },

    /// A configuration value llmtrain cannot honour; `in_file` adds the file once it is known.
    #[error("adapter config key `{key}`: {message}")]
    Config { key: String, message: String },

    #[error("{path}: key `{key}`: {message}")]
    ConfigInFile { path: PathBuf, key: String, message: String },

    #[error("{0}")]
    Core(#[from] CoreError),

    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, LoraError>;

impl LoraError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        LoraError::Io { path: path.to_path_buf(), source }
    }

    /// Names `path` in a configuration error.
    pub fn in_file(self, path: &Path) -> Self {
        match self {
            LoraError::Config { key, message } => LoraError::ConfigInFile { path: path.to_path_buf(), key, message },
            other => other,
        }
    }
}
