//! Typed errors of the model crate.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("config: {0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A checkpoint problem that names the file and, where there is one, the tensor.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("shape: {0}")]
    Shape(String),
    #[error("input: {0}")]
    Input(String),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ModelError::Io { path: path.to_path_buf(), source }
    }
}

pub type Result<T> = std::result::Result<T, ModelError>;
