//! DeepSeek's MTP layer against its reference (`tools/make_mtp_fixture.py`: the V3 fixture plus a
//! random MTP layer, computed with transformers' own decoder layer in float64;
//! `tools/make_v4_mtp_fixture.py`: the same for DeepSeek-V4's, with its hyper-connection streams):
//! the NLL of `t_{p+2}` at every position within 1e-4, the same argmax, in one pass and fed a few
//! rows at a time; a checkpoint whose config declares MTP but ships no weights loads without it.

mod common;

use common::{case_dir, floats, ids, max_abs_diff};
use moela_engine::token_nll;
use moela_loader::Checkpoint;
use moela_model::{ForwardOptions, Logits, Model, MtpInput, SeqInput};
use serde_json::Value;

fn golden(case: &str) -> Value {
    let p = case_dir(case).join("mtp_golden.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// The main model's final residual (V4: its streams) of every token of `tokens`, in one pass.
fn hidden(m: &Model, tokens: &[u32]) -> Vec<f32> {
    let mut cache = m.new_cache();
    let mut s = [SeqInput {
        tokens,
        cache: &mut cache,
        logits: Logits::None,
    }];
    let (_, mut h) = m
        .forward_hidden(&mut s, &ForwardOptions::default())
        .unwrap();
    h.remove(0)
}

/// MTP logits of rows `0..tokens.len() - 1`, fed `chunk` rows per pass: `[T - 1, vocab]`.
fn mtp_logits(m: &Model, tokens: &[u32], h: &[f32], chunk: usize) -> Vec<f32> {
    let d = h.len() / tokens.len();
    let pool = m.new_mtp_pool(16, None, false).unwrap();
    let mut cache = pool.new_seq();
    let rows = tokens.len() - 1;
    let mut out = Vec::new();
    let mut at = 0;
    while at < rows {
        let n = chunk.min(rows - at);
        let mut b = [MtpInput {
            hidden: &h[at * d..(at + n) * d],
            tokens: &tokens[at + 1..at + 1 + n],
            cache: &mut cache,
            logits: Logits::All,
        }];
        let (mut logits, hid) = m.mtp_forward(&mut b).unwrap();
        assert_eq!(hid[0].len(), n * d);
        out.append(&mut logits[0]);
        at += n;
    }
    assert_eq!(cache.len(), rows);
    out
}

#[test]
fn mtp_layer_matches_the_reference() {
    mtp_case("v3_mtp", &[128, 1, 7]);
}

/// DeepSeek-V4's MTP layer: its streams, its own stream collapse, a sliding-window block over its
/// own window state (chunks of 5 and 13 cross the 12-token window).
#[test]
fn v4_mtp_layer_matches_the_reference() {
    mtp_case("v4_mtp", &[299, 1, 5, 13]);
}

fn mtp_case(case: &str, chunks: &[usize]) {
    let model = Checkpoint::open(&case_dir(case))
        .unwrap()
        .load_model(false)
        .unwrap();
    assert!(model.has_mtp());
    let g = golden(case);
    let tokens = ids(&g["tokens"]);
    let want = floats(&g["mtp_nll"]);
    let argmax = ids(&g["mtp_argmax"]);
    let margin = floats(&g["mtp_margin"]);
    let v = model.config.vocab_size;
    let h = hidden(&model, &tokens);
    for &chunk in chunks {
        let logits = mtp_logits(&model, &tokens, &h, chunk);
        let got: Vec<f64> = (0..tokens.len() - 2)
            .map(|p| token_nll(&logits[p * v..(p + 1) * v], tokens[p + 2]))
            .collect();
        let err = max_abs_diff(&got, &want);
        println!(
            "{case} MTP, {chunk} rows per pass: max |ΔNLL| = {err:.2e} over {} positions",
            got.len()
        );
        assert!(err < 1e-4, "chunk {chunk}: {err}");
        for (p, row) in logits.chunks_exact(v).enumerate() {
            if margin[p] > 1e-3 {
                assert_eq!(moela_engine::argmax(row), argmax[p], "position {p}");
            }
        }
    }
}

#[test]
fn declared_mtp_without_weights_loads_without_it() {
    let model = Checkpoint::open(&case_dir("v3"))
        .unwrap()
        .load_model(false)
        .unwrap();
    assert_eq!(model.config.num_nextn_predict_layers, 1);
    assert!(!model.has_mtp());
    assert!(model.new_mtp_pool(16, None, false).is_none());
}
