//! Loader errors: each names the file, tensor or field that is wrong.

use std::path::PathBuf;

use moela_model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("{path}: {source}")]
    Model { path: PathBuf, source: ModelError },
}

impl LoadError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> LoadError {
        LoadError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub(crate) fn file(path: &std::path::Path, msg: impl Into<String>) -> LoadError {
        LoadError::File {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
}
