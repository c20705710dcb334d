//! Typed errors of the data plane.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A dataset problem naming the file, row and column.
    #[error("{file}: row {row}: column `{column}`: {msg}")]
    Column { file: String, row: usize, column: String, msg: String },
    #[error("{0}")]
    Format(String),
    #[error("unknown domain `{0}` (see `v4post tasks list`)")]
    UnknownDomain(String),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl DataError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io { path: path.to_path_buf(), source }
    }
    pub fn column(file: &Path, row: usize, column: &str, msg: impl Into<String>) -> Self {
        DataError::Column { file: file.display().to_string(), row, column: column.to_string(), msg: msg.into() }
    }
}

pub type Result<T> = std::result::Result<T, DataError>;
