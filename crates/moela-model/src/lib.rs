//! The DeepSeek MLA + MoE model: configuration, weights, and the forward pass over a batch.
//!
//! Shape comments list dimensions outermost first; a linear weight is `[out, in]` and
//! `y = x · Wᵀ`. This crate never reads files: weights arrive through [`WeightSource`].

pub mod attention;
pub mod cache;
pub mod config;
pub mod error;
pub mod model;
pub mod moe;
pub mod rope;
pub mod weights;

pub use attention::AttentionMode;
pub use cache::{KvPool, PoolStats, SeqCache, DEFAULT_BLOCK_TOKENS};
pub use config::{Config, ModelType, ScoringFunc, TopkMethod, Yarn};
pub use error::ModelError;
pub use model::{ForwardOptions, Logits, Model, SeqInput, Trace};
pub use weights::{TensorRef, WeightSource};
