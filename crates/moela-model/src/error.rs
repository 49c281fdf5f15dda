//! Errors of the model crate.

/// What can go wrong building or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("config field `{field}`: {msg}")]
    Config { field: String, msg: String },
    #[error("missing tensor `{0}`")]
    MissingTensor(String),
    #[error("tensor `{name}`: expected shape {expected:?}, found {found:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{name}`: {msg}")]
    Tensor { name: String, msg: String },
    #[error("{0}")]
    Input(String),
    /// No free KV-cache block for the new tokens (capacity, not a bad request).
    #[error("the KV cache is full ({blocks} blocks of {block_tokens} tokens in use)")]
    CacheFull { blocks: usize, block_tokens: usize },
}
