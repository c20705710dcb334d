//! Typed errors of the trainers.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] model::ModelError),
    #[error(transparent)]
    Data(#[from] datasets::DataError),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("non-finite {0} (NaN or infinity): training stopped before corrupting the weights")]
    NonFinite(String),
    #[error("shape: {0}")]
    Shape(String),
    #[error("{0}")]
    Input(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
}

impl TrainError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        TrainError::Io { path: path.to_path_buf(), source }
    }
}

pub type Result<T> = std::result::Result<T, TrainError>;
