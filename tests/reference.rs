//! Agreement with the reference: tiny random checkpoints made and run by transformers
//! (`tools/make_model_fixtures.py`, float64) — per-token NLL within 1e-4 across 127 tokens,
//! identical greedy continuations, in both MLA forms and when decoding token by token.

use std::path::{Path, PathBuf};

use moela_engine::{argmax, token_nll};
use moela_loader::Checkpoint;
use moela_model::{AttentionMode, ForwardOptions, Logits, Model, SeqInput};
use serde_json::Value;

const CASES: &[&str] = &["v2_lite", "v2", "v3", "v3_fp8", "v2_lite_plain_rope"];

fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(case)
}

struct Case {
    name: String,
    model: Model,
    golden: Value,
}

fn load(case: &str) -> Case {
    let dir = case_dir(case);
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    let model = Checkpoint::open(&dir).unwrap().load_model(false).unwrap();
    Case {
        name: case.to_string(),
        model,
        golden,
    }
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// NLL of token i+1 given 0..=i from `[n, vocab]` logits, in f64.
fn nll_from_logits(logits: &[f32], tokens: &[u32], vocab: usize) -> Vec<f64> {
    logits
        .chunks_exact(vocab)
        .zip(&tokens[1..])
        .map(|(row, &next)| token_nll(row, next))
        .collect()
}

fn prefill_logits(m: &Model, tokens: &[u32], mode: AttentionMode) -> Vec<f32> {
    let mut cache = m.new_cache();
    let mut s = [SeqInput {
        tokens,
        cache: &mut cache,
        logits: Logits::All,
    }];
    m.forward(&mut s, &ForwardOptions { attention: mode })
        .unwrap()
        .remove(0)
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn check_nll(c: &Case, mode: AttentionMode) -> f64 {
    let tokens = ids(&c.golden["nll_tokens"]);
    let want = floats(&c.golden["nll"]);
    let logits = prefill_logits(&c.model, &tokens, mode);
    let got = nll_from_logits(&logits, &tokens, c.model.config.vocab_size);
    assert!(
        got.len() >= 100,
        "{}: only {} scored tokens",
        c.name,
        got.len()
    );
    let err = max_abs_diff(&got, &want);
    println!(
        "{} {:?}: max |ΔNLL| = {err:.2e} over {} tokens",
        c.name,
        mode,
        got.len()
    );
    assert!(err < 1e-4, "{} {:?}: max |ΔNLL| = {err}", c.name, mode);
    err
}

#[test]
fn nll_matches_reference_standard_and_absorbed() {
    for case in CASES {
        let c = load(case);
        check_nll(&c, AttentionMode::Standard);
        check_nll(&c, AttentionMode::Absorbed);
    }
}

#[test]
fn last_logits_match_reference() {
    for case in CASES {
        let c = load(case);
        let tokens = ids(&c.golden["nll_tokens"]);
        let v = c.model.config.vocab_size;
        let logits = prefill_logits(&c.model, &tokens, AttentionMode::Auto);
        let got: Vec<f64> = logits[(tokens.len() - 1) * v..]
            .iter()
            .map(|&x| x as f64)
            .collect();
        let err = max_abs_diff(&got, &floats(&c.golden["last_logits"]));
        assert!(err < 1e-3, "{case}: max |Δlogit| = {err}");
    }
}

#[test]
fn greedy_continuation_matches_reference_token_by_token() {
    for case in CASES {
        let c = load(case);
        let prompt = ids(&c.golden["greedy_prompt"]);
        let want = ids(&c.golden["greedy_tokens"]);
        let m = &c.model;
        let mut cache = m.new_cache();
        let mut next = prompt.clone();
        let mut got = Vec::new();
        while got.len() < want.len() {
            let mut s = [SeqInput {
                tokens: &next,
                cache: &mut cache,
                logits: Logits::Last,
            }];
            let logits = m
                .forward(&mut s, &ForwardOptions::default())
                .unwrap()
                .remove(0);
            let t = argmax(&logits);
            got.push(t);
            next = vec![t];
        }
        assert_eq!(got, want, "{case}");
    }
}
