//! Helpers shared by the workspace's reference tests (each test binary uses a subset).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use moela_engine::token_nll;
use serde_json::Value;

/// `tests/fixtures/models/<case>`.
pub fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(case)
}

/// A fixture's `golden.json`, written by the reference scripts in `tools/`.
pub fn golden(case: &str) -> Value {
    let text = std::fs::read_to_string(case_dir(case).join("golden.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// NLL of token i+1 given 0..=i from `[n, vocab]` logits, in f64.
pub fn nll_from_logits(logits: &[f32], tokens: &[u32], vocab: usize) -> Vec<f64> {
    logits
        .chunks_exact(vocab)
        .zip(&tokens[1..])
        .map(|(row, &next)| token_nll(row, next))
        .collect()
}

pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Load options with an f32 KV cache (GGUF files default to f16): tests that check a file's
/// numbers against the checkpoint's use it, so only the file is under test.
pub fn exact_cache() -> moela_loader::LoadOptions {
    moela_loader::LoadOptions {
        kv_type: Some(moela_model::KvType::F32),
        ..moela_loader::LoadOptions::default()
    }
}
