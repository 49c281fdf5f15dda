//! The models: DeepSeek MLA + MoE, DeepSeek-V4, and the dense GQA decoders of the R1 distills
//! (Qwen2, Llama) — configuration, weights, and the forward pass over a batch.
//!
//! Shape comments list dimensions outermost first; a linear weight is `[out, in]` and
//! `y = x · Wᵀ`. This crate never reads files: weights arrive through [`WeightSource`].

pub mod cache;
pub mod config;
pub mod error;
pub mod experts;
mod gqa;
pub mod indexer;
pub mod mla;
mod mlp;
pub mod model;
pub mod moe;
pub mod mtp;
pub mod rope;
pub mod sampling;
mod tiled;
pub mod v4;
pub mod weights;

pub use cache::{
    KvPool, KvType, PoolStats, RingSpec, SeqCache, DEFAULT_BLOCK_TOKENS, MAX_ROLLBACK,
};
pub use config::{
    Attention, Config, GqaConfig, HyperConfig, IndexerConfig, Llama3Rope, MlaConfig, ModelType,
    MoeConfig, RopeScaling, RouteWeighting, ScoringFunc, SlidingWindow, TopkMethod, V4Config,
    V4Layer, V4LayerKind, Yarn, MAX_CONTEXT, MAX_DIM, MAX_EXPERTS, MAX_HEADS, MAX_LAYERS,
    MAX_MATRIX_ELEMENTS, MAX_VOCAB,
};
pub use error::ModelError;
pub use experts::{ResidencyStats, ResidentSet};
pub use mla::AttentionMode;
pub use model::{ForwardOptions, Logits, Model, SeqInput, Trace};
pub use mtp::{MtpInput, MtpLayer};
pub use sampling::SamplingDefaults;
pub use weights::{TensorRef, WeightSource};

/// Values in [−1, 1] that vary from element to element and with `seed` (unit tests' inputs).
#[cfg(test)]
pub(crate) fn test_data(n: usize, seed: u64) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32 + 0.37 * seed as f32) * 1.618).sin())
        .collect()
}
