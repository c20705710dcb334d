//! Typed errors of the teacher side.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TeacherError {
    #[error("teacher registry: {0}")]
    Registry(String),
    #[error("teacher `{id}`: {msg}")]
    Teacher { id: String, msg: String },
    #[error(transparent)]
    Model(#[from] model::ModelError),
    #[error(transparent)]
    Data(#[from] datasets::DataError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl TeacherError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        TeacherError::Io { path: path.to_path_buf(), source }
    }
}

pub type Result<T> = std::result::Result<T, TeacherError>;
