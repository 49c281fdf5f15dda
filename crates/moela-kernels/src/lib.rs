//! Numeric building blocks for Moela: weight formats, matrix products, norms and activations,
//! and the worker pool they run on.
//!
//! This crate knows nothing about models. Map:
//! - [`dtype`]: [`DType`] (F32/F16/BF16/Q8_0/Q4_0/Q4_K/Q6_K/MXFP4/FP8-E4M3 with 128×128
//!   block scales) and [`KernelError`];
//! - [`quant`], [`fp`]: the block layouts (bit-compatible with ggml/GGUF) and scalar
//!   quantize/dequantize — the reference forms; [`mxfp4`]: MXFP4 blocks and DeepSeek-V4's FP4
//!   release layout;
//! - [`QMat`]: a weight matrix in any type with `matmul`/`forward`; [`storage`]: where its bytes
//!   live ([`Storage`]: owned or a range of a shared mapping); [`placement`]: the one decision
//!   between the loader's bytes and the kernels' layout ([`Placement`]);
//! - `kernels` (private): the matmul driver plus scalar, AVX2 and NEON kernels chosen at run
//!   time ([`Isa`]); the scalar kernels are the test oracle of the others;
//! - [`parallel`]: the persistent worker pool ([`parallel_for`], [`pool`]);
//! - [`ops`]: the plain f32 [`Mat`] and elementwise ops.

// The kernels read little-endian bytes (GGUF, safetensors) through native loads.
#[cfg(not(target_endian = "little"))]
compile_error!("moela-kernels supports little-endian targets only");

pub mod dtype;
pub mod fp;
mod kernels;
mod leaf;
pub mod memory;
pub mod mmap;
pub mod mxfp4;
pub mod ops;
mod pack;
pub mod parallel;
pub mod placement;
pub mod qmat;
pub mod quant;
pub mod storage;

pub use dtype::{DType, KernelError, FP8_BLOCK};
pub use kernels::{FileRowWalk, Isa, PreparedInput, RowData, RowVectors};
pub use leaf::silu;
pub use ops::{
    add_in_place, exp_sum, matmul, rms_norm, rms_norm_in_place, rows_matmul, rows_weighted_sum,
    silu_mul, softmax_in_place, Mat,
};
pub use parallel::{
    available_cores, core_count_queries, in_pool_task, num_threads, parallel_chunks, parallel_for,
    pool, set_num_threads, ThreadPool,
};
pub use placement::{Footprint, Placement};
pub use qmat::{fp8_scale_count, QMat};
pub use storage::Storage;
