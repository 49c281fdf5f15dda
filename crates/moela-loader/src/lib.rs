//! Checkpoint loading: HF directories with single-file or sharded safetensors (memory-mapped),
//! tensor dtypes F32/F16/BF16 and DeepSeek's FP8-E4M3 with block scales (f32 `weight_scale_inv` or
//! V4's ue8m0 `.scale`), V4's FP4 experts (`release.rs`); GGUF files (read and
//! write: `deepseek2`, `deepseek32`, `deepseek4` metadata and tensor names).
//!
//! This crate converts formats and nothing else; the model asks for tensors by their HF
//! checkpoint names through [`moela_model::WeightSource`].

mod check;
pub mod dtype;
pub mod error;
pub mod gguf;
pub mod gguf_export;
pub mod gguf_model;
pub mod model_files;
mod progress;
mod release;
pub mod safetensors_dir;

pub use check::{NonFinite, ScanReport};
pub use error::LoadError;
pub use gguf::{GgufError, GgufFile, GgufWriter};
pub use gguf_export::export_gguf;
pub use gguf_model::GgufModel;
pub use model_files::{ModelFiles, PlacementChoice, TensorSummary};
pub use safetensors_dir::{Checkpoint, LoadOptions, TensorInfo};
