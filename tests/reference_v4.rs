//! Agreement with the reference for DeepSeek-V4: the tiny `v4` checkpoint made and run by
//! transformers 5.25 (`tools/make_v4_fixtures.py`, float64; layers: sliding window 12 with two
//! hash-routed MoE layers, CSA with `index_topk` 4, HCA with ratio 128; mHC with 4 streams; a
//! 300-token sequence, so the ratio-128 branch has two entries at the end) — per-token NLL within
//! 1e-4 in one prefill, token by token, in chunks and in batched decode steps; the greedy
//! continuation; the last logits; the residual streams and the indexer's choices at every
//! position; and that each V4 feature the fixture exercises changes the result when altered.

mod common;

use common::{case_dir, floats, golden, ids, max_abs_diff, nll_from_logits};
use moela_engine::greedy_tokens;
use moela_loader::Checkpoint;
use moela_model::{ForwardOptions, KvType, Logits, Model, ModelType, SeqCache, SeqInput, Trace};
use safetensors::SafeTensors;
use serde_json::Value;

const CASE: &str = "v4";
const N: usize = 300;

fn load() -> Model {
    Checkpoint::open(&case_dir(CASE))
        .unwrap()
        .load_model(false)
        .unwrap()
}

/// Runs `tokens` through `cache` in one forward call; its logits (`Logits::All`).
fn step(m: &Model, cache: &mut SeqCache, tokens: &[u32]) -> Vec<f32> {
    let mut s = [SeqInput {
        tokens,
        cache,
        logits: Logits::All,
    }];
    m.forward(&mut s, &ForwardOptions::default())
        .unwrap()
        .remove(0)
}

/// One prefill of `tokens`: logits of every position and the trace.
fn traced(m: &Model, tokens: &[u32]) -> (Vec<f32>, Trace) {
    let mut cache = m.new_cache();
    let mut trace = Vec::new();
    let mut s = [SeqInput {
        tokens,
        cache: &mut cache,
        logits: Logits::All,
    }];
    let logits = m
        .forward_traced(&mut s, &ForwardOptions::default(), Some(&mut trace))
        .unwrap()
        .remove(0);
    (logits, trace)
}

fn get<'a>(trace: &'a Trace, name: &str) -> &'a [f32] {
    &trace
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no {name} in the trace"))
        .1
}

/// Tensor `name` of `hidden.safetensors` as f64 (F32 or I32 stored).
fn hidden(st: &SafeTensors<'_>, name: &str) -> Vec<f64> {
    let t = st.tensor(name).unwrap();
    let words = t.data().chunks_exact(4).map(|b| [b[0], b[1], b[2], b[3]]);
    match t.dtype() {
        safetensors::Dtype::F32 => words.map(|w| f32::from_le_bytes(w) as f64).collect(),
        safetensors::Dtype::I32 => words.map(|w| i32::from_le_bytes(w) as f64).collect(),
        d => panic!("{name}: unexpected {d:?}"),
    }
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn max_diff32(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Max |ΔNLL| of `logits` (every position of nll_tokens) against the golden.
fn nll_error(m: &Model, g: &Value, logits: &[f32]) -> f64 {
    let tokens = ids(&g["nll_tokens"]);
    let got = nll_from_logits(logits, &tokens, m.config.vocab_size);
    assert_eq!(got.len(), N - 1);
    max_abs_diff(&got, &floats(&g["nll"]))
}

#[test]
fn config_reads_the_v4_parts() {
    let m = load();
    let c = &m.config;
    assert_eq!(c.model_type, ModelType::DeepseekV4);
    let v = c.v4().unwrap();
    assert_eq!(
        (v.head_dim, v.qk_rope_head_dim, v.o_groups, v.o_lora_rank),
        (32, 8, 2, 16)
    );
    assert_eq!((v.sliding_window, v.csa_ratio, v.hca_ratio), (12, 4, 128));
    assert_eq!(v.indexer.index_topk, 4);
    assert_eq!((v.hc.hc_mult, v.hc.sinkhorn_iters), (4, 20));
    // Rows: sliding 32; CSA 32 + 4·32 + 32 + 5·16; HCA 4·32.
    assert_eq!(c.cache_widths().unwrap(), [32, 272, 128]);
    assert_eq!(c.kv_bytes_per_token(KvType::F32).unwrap(), 432 * 4);
    let moe = c.moe.as_ref().unwrap();
    assert_eq!(moe.swiglu_limit, Some(1.5));
    assert_eq!(moe.scoring_func, moela_model::ScoringFunc::Sqrtsoftplus);
}

#[test]
fn nll_matches_reference_in_one_prefill() {
    let (m, g) = (load(), golden(CASE));
    let tokens = ids(&g["nll_tokens"]);
    let (logits, _) = traced(&m, &tokens);
    let err = nll_error(&m, &g, &logits);
    println!(
        "v4 one prefill: max |ΔNLL| = {err:.2e} over {} tokens",
        N - 1
    );
    assert!(err < 1e-4, "max |ΔNLL| = {err}");
}

#[test]
fn last_logits_match_reference() {
    let (m, g) = (load(), golden(CASE));
    let tokens = ids(&g["nll_tokens"]);
    let v = m.config.vocab_size;
    let (logits, _) = traced(&m, &tokens);
    let err = max_abs_diff(&to64(&logits[(N - 1) * v..]), &floats(&g["last_logits"]));
    println!("v4: last logits max |Δ| = {err:.2e}");
    assert!(err < 1e-3, "max |Δlogit| = {err}");
}

#[test]
fn greedy_continuation_matches_reference_token_by_token() {
    let (m, g) = (load(), golden(CASE));
    let got = greedy_tokens(&m, &ids(&g["greedy_prompt"]), 24).unwrap();
    assert_eq!(got, ids(&g["greedy_tokens"]));
}

/// One token per forward call from the start (every window and entry built across calls), and
/// a prefill then single steps: the NLLs of one prefill, and its logits up to f32 noise.
#[test]
fn token_by_token_decode_matches_reference() {
    let (m, g) = (load(), golden(CASE));
    let tokens = ids(&g["nll_tokens"]);
    let (full, _) = traced(&m, &tokens);
    for prefill in [1, 130] {
        let mut cache = m.new_cache();
        let mut got = step(&m, &mut cache, &tokens[..prefill]);
        for p in prefill..N {
            got.extend(step(&m, &mut cache, &tokens[p..p + 1]));
        }
        let err = nll_error(&m, &g, &got);
        let d = max_diff32(&full, &got);
        println!("v4 prefill {prefill} + decode: max |ΔNLL| = {err:.2e}, vs one prefill max |Δlogit| = {d:.2e}");
        assert!(err < 1e-4, "prefill {prefill}: max |ΔNLL| = {err}");
        assert!(d < 1e-4, "prefill {prefill}: {d}");
    }
}

/// Prefill in chunks that split windows of both ratios and the sliding window.
#[test]
fn chunked_prefill_matches_reference() {
    let (m, g) = (load(), golden(CASE));
    let tokens = ids(&g["nll_tokens"]);
    let (full, _) = traced(&m, &tokens);
    for chunks in [
        &[5, 37, 1, 100, 3, 154][..],
        &[37, 5, 37, 5, 37, 5, 37, 5, 37, 5, 37, 53],
    ] {
        let mut cache = m.new_cache();
        let (mut got, mut at) = (Vec::new(), 0);
        for &n in chunks {
            got.extend(step(&m, &mut cache, &tokens[at..at + n]));
            at += n;
        }
        assert_eq!(at, N);
        let err = nll_error(&m, &g, &got);
        let d = max_diff32(&full, &got);
        println!(
            "v4 chunks {chunks:?}: max |ΔNLL| = {err:.2e}, vs one prefill max |Δlogit| = {d:.2e}"
        );
        assert!(err < 1e-4, "{chunks:?}: max |ΔNLL| = {err}");
        assert!(d < 1e-4, "{chunks:?}: {d}");
    }
}

/// The compressed entries each CSA query attends to, at all 300 positions, are the reference's.
#[test]
fn index_selections_match_reference_at_every_position() {
    let (m, g) = (load(), golden(CASE));
    let tokens = ids(&g["nll_tokens"]);
    let bytes = std::fs::read(case_dir(CASE).join("hidden.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, trace) = traced(&m, &tokens);
    let csa = [1usize];
    for l in csa {
        let got = to64(get(&trace, &format!("layer.{l}.attn.index_topk")));
        let want = hidden(&st, &format!("index_topk_idx.{l}"));
        assert_eq!(got.len(), N * 4);
        for (p, (a, b)) in got.chunks(4).zip(want.chunks(4)).enumerate() {
            assert_eq!(a, b, "layer {l}, position {p}");
        }
    }
}

/// The residual streams after every layer, the sublayer outputs and the final norm at positions
/// 252..259 (around the second ratio-128 entry), from one prefill of all 300 tokens.
#[test]
fn hidden_states_match_reference() {
    let (m, g) = (load(), golden(CASE));
    let tokens = ids(&g["nll_tokens"]);
    let bytes = std::fs::read(case_dir(CASE).join("hidden.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, trace) = traced(&m, &tokens);
    let d = m.config.hidden_size;
    let rows = |v: &[f32], w: usize| to64(&v[252 * w..260 * w]);
    for l in 0..=m.config.num_hidden_layers {
        let name = match l {
            0 => "embed".to_string(),
            _ => format!("layer.{}", l - 1),
        };
        let got = get(&trace, &name);
        let w = got.len() / N;
        let want = hidden(&st, &format!("hidden.{l}"));
        let scale = want.iter().fold(0.0f64, |a, x| a.max(x.abs()));
        let err = max_abs_diff(&rows(got, w), &want);
        println!("v4 hidden.{l}: max |Δ| = {err:.2e} (max |h| {scale:.1})");
        assert!(err < 1e-3 * scale.max(1.0), "{name}: {err}");
    }
    for l in 0..m.config.num_hidden_layers {
        for (ours, theirs) in [("attn", "attn_out"), ("ffn", "mlp_out")] {
            let got = rows(get(&trace, &format!("layer.{l}.{ours}")), d);
            let err = max_abs_diff(&got, &hidden(&st, &format!("{theirs}.{l}")));
            assert!(err < 1e-3, "layer {l} {ours}: {err}");
        }
    }
}
