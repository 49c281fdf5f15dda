//! Numeric building blocks for Moela: weight matrices, matrix products, norms and activations.
//!
//! This crate knows nothing about models. Every routine here is the plain, obviously-correct
//! f32 form; faster variants added later are tested against these as their oracle.

pub mod mmap;
pub mod ops;
pub mod parallel;

pub use ops::{add_in_place, matmul, rms_norm, rms_norm_in_place, silu, softmax_in_place, Mat};
pub use parallel::{num_threads, parallel_chunks, set_num_threads};
