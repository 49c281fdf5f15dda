//! Agreement with the reference for DeepSeek-V3.2 (DeepSeek Sparse Attention): the tiny
//! `v32` checkpoint made and run by transformers 5.25 (`tools/make_v32_fixtures.py`, float64;
//! `index_topk` 8, so from position 8 on every query attends to 8 of its keys) — per-token NLL
//! within 1e-4 in both MLA forms, identical greedy continuations, the last logits, the indexer's
//! keys, scores and selections at every layer and position, the residual stream per layer, and
//! cached decoding (prefill then one token at a time, chunked prefill, batched decode steps, an
//! f16 cache) against one full prefill, and the engine's batched steps with prefix reuse.

mod common;

use common::{
    case_dir, floats, golden, hidden_f64 as hidden, ids, max_abs_diff, max_diff32, nll_from_logits,
    to64, trace_get as get,
};
use moela_engine::{greedy_tokens, Engine, EngineConfig};
use moela_loader::Checkpoint;
use moela_model::{
    AttentionMode, ForwardOptions, KvType, Logits, Model, ModelType, SeqCache, SeqInput, Trace,
};
use safetensors::SafeTensors;
use serde_json::Value;

const CASE: &str = "v32";

fn load() -> Model {
    Checkpoint::open(&case_dir(CASE))
        .unwrap()
        .load_model(false)
        .unwrap()
}

fn opts(attention: AttentionMode) -> ForwardOptions {
    ForwardOptions { attention }
}

fn step(m: &Model, cache: &mut SeqCache, tokens: &[u32], o: &ForwardOptions) -> Vec<f32> {
    common::forward_all(m, cache, tokens, o)
}

fn traced(m: &Model, tokens: &[u32], mode: AttentionMode) -> (Vec<f32>, Trace) {
    common::prefill_traced(m, tokens, &opts(mode))
}

#[test]
fn config_reads_the_indexer_and_routes_as_v3() {
    let m = load();
    let c = &m.config;
    assert_eq!(c.model_type, ModelType::DeepseekV32);
    let ix = c.mla().unwrap().indexer.as_ref().unwrap();
    assert_eq!(
        (ix.index_topk, ix.index_n_heads, ix.index_head_dim),
        (8, 16, 16)
    );
    // [c_n 32 | k_rope 8 | k_index 16] per layer per token.
    assert_eq!(c.latent_dim().unwrap(), 56);
    assert_eq!(c.kv_bytes_per_token(KvType::F32).unwrap(), 3 * 56 * 4);
    let moe = c.moe.as_ref().unwrap();
    assert_eq!(moe.topk_method, moela_model::TopkMethod::NoauxTc);
    assert!((0..3).map(|l| c.is_moe_layer(l)).eq([false, true, true]));
}

fn check_nll(m: &Model, g: &Value, mode: AttentionMode) -> f64 {
    let tokens = ids(&g["nll_tokens"]);
    let (logits, _) = traced(m, &tokens, mode);
    let got = nll_from_logits(&logits, &tokens, m.config.vocab_size);
    assert_eq!(got.len(), 127);
    let err = max_abs_diff(&got, &floats(&g["nll"]));
    println!("v32 {mode:?}: max |ΔNLL| = {err:.2e} over 127 tokens");
    assert!(err < 1e-4, "{mode:?}: max |ΔNLL| = {err}");
    err
}

#[test]
fn nll_matches_reference_standard_and_absorbed() {
    let (m, g) = (load(), golden(CASE));
    check_nll(&m, &g, AttentionMode::Standard);
    check_nll(&m, &g, AttentionMode::Absorbed);
    check_nll(&m, &g, AttentionMode::Auto);
}

#[test]
fn absorbed_equals_standard() {
    let m = load();
    let tokens = ids(&golden(CASE)["nll_tokens"]);
    let (std, _) = traced(&m, &tokens, AttentionMode::Standard);
    let (abs, _) = traced(&m, &tokens, AttentionMode::Absorbed);
    let d = max_diff32(&std, &abs);
    println!("v32: absorbed vs standard max |Δlogit| = {d:.2e}");
    assert!(d < 1e-4, "{d}");
}

#[test]
fn last_logits_match_reference() {
    let (m, g) = (load(), golden(CASE));
    let tokens = ids(&g["nll_tokens"]);
    let v = m.config.vocab_size;
    let (logits, _) = traced(&m, &tokens, AttentionMode::Auto);
    let err = max_abs_diff(&to64(&logits[127 * v..]), &floats(&g["last_logits"]));
    println!("v32: last logits max |Δ| = {err:.2e}");
    assert!(err < 1e-3, "max |Δlogit| = {err}");
}

#[test]
fn greedy_continuation_matches_reference_token_by_token() {
    let (m, g) = (load(), golden(CASE));
    let got = greedy_tokens(&m, &ids(&g["greedy_prompt"]), 24).unwrap();
    assert_eq!(got, ids(&g["greedy_tokens"]));
}

/// The keys every query of `nll_tokens` selects, at every layer: all 128 positions of
/// `index_topk_idx.{l}` (ascending, −1 padded) and golden.json's `index_selection`.
#[test]
fn index_selections_match_reference_at_every_position() {
    let (m, g) = (load(), golden(CASE));
    let tokens = ids(&g["nll_tokens"]);
    let bytes = std::fs::read(case_dir(CASE).join("hidden.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for mode in [AttentionMode::Standard, AttentionMode::Absorbed] {
        let (_, trace) = traced(&m, &tokens, mode);
        for l in 0..m.config.num_hidden_layers {
            let got = to64(get(&trace, &format!("layer.{l}.attn.index_topk")));
            let want = hidden(&st, &format!("index_topk_idx.{l}"));
            assert_eq!(got.len(), 128 * 8);
            for (p, (a, b)) in got.chunks(8).zip(want.chunks(8)).enumerate() {
                assert_eq!(a, b, "layer {l}, position {p}");
            }
            let sel = &g["index_selection"]["layers"][l.to_string()];
            for p in [7usize, 8, 31, 127] {
                let want = floats(&sel[p.to_string()]);
                assert_eq!(&got[p * 8..p * 8 + 8], &want[..], "layer {l}, query {p}");
            }
        }
    }
}

/// The indexer's cached keys (after LayerNorm and RoPE) and its scores (−∞ above the
/// diagonal) for positions 0..16, and the residual stream after every layer.
#[test]
fn index_keys_scores_and_hidden_states_match_reference() {
    let (m, g) = (load(), golden(CASE));
    let tokens = ids(&g["nll_tokens"]);
    let bytes = std::fs::read(case_dir(CASE).join("hidden.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, trace) = traced(&m, &tokens[..16], AttentionMode::Auto);
    for l in 0..m.config.num_hidden_layers {
        let k = to64(get(&trace, &format!("layer.{l}.attn.index_k")));
        let err = max_abs_diff(&k, &hidden(&st, &format!("index_k.{l}")));
        println!("v32 layer {l}: index_k max |Δ| = {err:.2e}");
        assert!(err < 1e-4, "layer {l}: index_k max |Δ| = {err}");
        let got = to64(get(&trace, &format!("layer.{l}.attn.index_scores")));
        let want = hidden(&st, &format!("index_scores.{l}"));
        let scale = want
            .iter()
            .filter(|x| x.is_finite())
            .fold(0.0, |a: f64, x| a.max(x.abs()));
        let mut rel = 0.0f64;
        for (a, b) in got.iter().zip(&want) {
            match b.is_finite() {
                true => rel = rel.max((a - b).abs() / scale),
                false => assert_eq!(a, b, "layer {l}: masked scores"),
            }
        }
        println!("v32 layer {l}: index_scores max |Δ|/max|score| = {rel:.2e}");
        assert!(rel < 1e-5, "layer {l}: index scores off by {rel}");
        let name = match l {
            0 => "embed".to_string(),
            _ => format!("layer.{}", l - 1),
        };
        let err = max_abs_diff(
            &to64(get(&trace, &name)),
            &hidden(&st, &format!("hidden.{l}")),
        );
        assert!(err < 1e-3, "{name}: max |Δh| = {err}");
    }
}

/// Prefill of 64 tokens, then 64 single-token steps (each re-selecting over every cached
/// key), gives the full prefill's logits and the reference's selections.
#[test]
fn prefill_then_cached_decode_equals_full_prefill() {
    let (m, g) = (load(), golden(CASE));
    let tokens = ids(&g["nll_tokens"]);
    let bytes = std::fs::read(case_dir(CASE).join("hidden.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let v = m.config.vocab_size;
    let (full, _) = traced(&m, &tokens, AttentionMode::Standard);
    let o = ForwardOptions::default();
    let mut cache = m.new_cache();
    let mut got = step(&m, &mut cache, &tokens[..64], &o);
    for p in 64..128 {
        let mut trace = Vec::new();
        let mut s = [SeqInput {
            tokens: &tokens[p..p + 1],
            cache: &mut cache,
            logits: Logits::All,
        }];
        got.extend(
            m.forward_traced(&mut s, &o, Some(&mut trace))
                .unwrap()
                .remove(0),
        );
        for l in 0..m.config.num_hidden_layers {
            let sel = to64(get(&trace, &format!("layer.{l}.attn.index_topk")));
            let want = hidden(&st, &format!("index_topk_idx.{l}"));
            assert_eq!(sel, want[p * 8..p * 8 + 8], "layer {l}, position {p}");
        }
    }
    assert_eq!(got.len(), 128 * v);
    let d = max_diff32(&full, &got);
    println!("v32: prefill 64 + 64 decode steps vs one prefill: max |Δlogit| = {d:.2e}");
    assert!(d < 1e-4, "{d}");
}

/// Prefill in chunks that cross the dense/sparse boundary (position 8) computes what one
/// prefill does, and so does a K-token step after a prefill.
#[test]
fn chunked_prefill_equals_one_prefill() {
    let m = load();
    let tokens = ids(&golden(CASE)["nll_tokens"]);
    let (full, _) = traced(&m, &tokens, AttentionMode::Auto);
    for mode in [
        AttentionMode::Standard,
        AttentionMode::Absorbed,
        AttentionMode::Auto,
    ] {
        let mut cache = m.new_cache();
        let mut got = Vec::new();
        let mut at = 0;
        for n in [5, 6, 1, 20, 3, 93] {
            got.extend(step(&m, &mut cache, &tokens[at..at + n], &opts(mode)));
            at += n;
        }
        let d = max_diff32(&full, &got);
        assert!(d < 1e-4, "{mode:?}: {d}");
    }
}

/// Several sequences decoding one token each (one batched attention, one batched indexer
/// job), some below and some past `index_topk`, each get exactly what they get alone — with
/// f32 and f16 caches.
#[test]
fn batched_decode_equals_each_sequence_alone_to_the_bit() {
    let tokens = ids(&golden(CASE)["nll_tokens"]);
    for kv in [KvType::F32, KvType::F16] {
        let mut m = load();
        m.set_kv_type(kv);
        let o = ForwardOptions::default();
        let lens = [3usize, 7, 8, 9, 40, 100];
        let prefilled = || -> Vec<SeqCache> {
            lens.iter()
                .enumerate()
                .map(|(i, &n)| {
                    let mut c = m.new_cache();
                    step(&m, &mut c, &tokens[i..i + n], &o);
                    c
                })
                .collect()
        };
        let (mut solo, mut batched) = (prefilled(), prefilled());
        for k in 0..3 {
            let next: Vec<[u32; 1]> = (0..lens.len()).map(|i| [tokens[10 + 7 * i + k]]).collect();
            let want: Vec<Vec<f32>> = solo
                .iter_mut()
                .zip(&next)
                .map(|(c, t)| step(&m, c, t, &o))
                .collect();
            let mut batch: Vec<SeqInput> = batched
                .iter_mut()
                .zip(&next)
                .map(|(c, t)| SeqInput {
                    tokens: t,
                    cache: c,
                    logits: Logits::All,
                })
                .collect();
            let got = m.forward(&mut batch, &o).unwrap();
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(a), bits(b), "{kv:?}, sequence {i}, step {k}");
            }
        }
    }
}

/// An f16 cache (latent, rope key and indexer key rounded to f16) stays close to the
/// reference.
#[test]
fn f16_cache_stays_close() {
    let (mut m, g) = (load(), golden(CASE));
    let tokens = ids(&g["nll_tokens"]);
    let f32_block = m.new_cache().pool().block_bytes();
    m.set_kv_type(KvType::F16);
    assert_eq!(m.new_cache().pool().block_bytes() * 2, f32_block);
    let (logits, _) = traced(&m, &tokens, AttentionMode::Auto);
    let got = nll_from_logits(&logits, &tokens, m.config.vocab_size);
    let err = max_abs_diff(&got, &floats(&g["nll"]));
    println!("v32 f16 cache: max |ΔNLL| = {err:.2e}");
    assert!(err < 2e-2, "{err}");
}

/// The engine (continuous batching: prompt chunks beside batched decode steps, prefix reuse
/// from the pool) generates what the plain loop does: the reference's greedy tokens for its
/// prompt, and the spec's for prompts past `index_topk` sharing a cached prefix.
#[test]
fn the_engine_generates_the_reference_tokens_beside_other_requests() {
    let (m, g) = (load(), golden(CASE));
    let model = std::sync::Arc::new(m);
    let nll = ids(&g["nll_tokens"]);
    let mut engine = Engine::new(
        model.clone(),
        None,
        EngineConfig {
            ctx: 128,
            prefill_tokens_per_step: 16,
            block_tokens: 8,
            ..Default::default()
        },
    );
    let mut run = |prompts: &[Vec<u32>], n: usize| common::run_together(&mut engine, prompts, n);
    let greedy = ids(&g["greedy_prompt"]);
    let a = nll[..37].to_vec();
    let b = [&nll[..37], &[5, 6][..]].concat();
    let out = run(&[greedy, a.clone(), nll[50..53].to_vec()], 24);
    assert_eq!(out[0], ids(&g["greedy_tokens"]));
    assert_eq!(out[1], greedy_tokens(&model, &a, 24).unwrap());
    assert_eq!(out[2], greedy_tokens(&model, &nll[50..53], 24).unwrap());
    // b reuses a's cached blocks (32 tokens) and gets what computing it does.
    let out = run(std::slice::from_ref(&b), 12);
    assert_eq!(out[0], greedy_tokens(&model, &b, 12).unwrap());
}

/// The same checkpoint converted by llama.cpp's own converter (b11434, architecture
/// `deepseek32`: `tools/make_gguf_converter_fixtures.py`): the config read back from its metadata
/// (indexer keys, NextN layers counted in `block_count`), per-token NLL within 1e-4 in both MLA
/// forms, the greedy continuation, and the tokenizer rebuilt from the file.
#[test]
fn llama_cpp_deepseek32_gguf_matches_reference() {
    use moela_loader::GgufModel;
    let path = case_dir(CASE).join("../../gguf/deepseek32_v32.gguf");
    let g = GgufModel::open(&path).unwrap();
    let hf = load();
    let (a, b) = (&g.config, &hf.config);
    assert_eq!(g.arch, "deepseek32");
    assert_eq!(a.model_type, ModelType::DeepseekV32);
    assert_eq!(a.num_hidden_layers, b.num_hidden_layers);
    assert_eq!(a.attention, b.attention, "MLA and indexer sizes");
    assert_eq!(a.moe, b.moe);
    assert_eq!(a.num_nextn_predict_layers, b.num_nextn_predict_layers);
    assert_eq!(a.kv_bytes_per_token(KvType::F32).unwrap(), 3 * 56 * 4);
    let m = g.load_model_with(&common::exact_cache()).unwrap();
    let golden = golden(CASE);
    check_nll(&m, &golden, AttentionMode::Absorbed);
    check_nll(&m, &golden, AttentionMode::Standard);
    let got = greedy_tokens(&m, &ids(&golden["greedy_prompt"]), 24).unwrap();
    assert_eq!(got, ids(&golden["greedy_tokens"]));
    let (tj, tc) = g.tokenizer_json().unwrap();
    let t1 = moela_text::Tokenizer::from_json_str(&tj, Some(&tc)).unwrap();
    let t0 = moela_text::Tokenizer::from_dir(&case_dir(CASE)).unwrap();
    for text in [
        "def add(a, b):\n    return a + b  # 12345 <｜User｜>",
        "Grüße, 世界! ½ × 3 — ok?",
    ] {
        assert_eq!(
            t1.encode(text, true).unwrap(),
            t0.encode(text, true).unwrap()
        );
    }
}

/// `moela quantize`'s writer on V3.2: a `deepseek32` file with the metadata llama.cpp's
/// converter writes (every `deepseek32.*` key of the converter's file, same value, except the
/// NextN layer the fixture does not store weights for), the indexer tensors under the
/// converter's names, and NLLs within 1e-4 of the reference when read back (F32 and BF16,
/// which is exact for these BF16 weights).
#[test]
fn deepseek32_export_matches_the_converter_and_reference() {
    use moela_kernels::DType;
    use moela_loader::{export_gguf, GgufFile, GgufModel};
    let hf = load();
    let dir = case_dir(CASE);
    let (tok, cfg) = common::tokenizer_files(CASE);
    let theirs = GgufFile::open(dir.join("../../gguf/deepseek32_v32.gguf")).unwrap();
    let golden = golden(CASE);
    for dtype in [DType::F32, DType::BF16] {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("v32.gguf");
        export_gguf(&hf, &tok, Some(&cfg), dtype, "v32", &path).unwrap();
        let ours = GgufFile::open(&path).unwrap();
        assert_eq!(ours.architecture().unwrap(), "deepseek32");
        for (key, value) in theirs.metadata_entries() {
            let skip = ["deepseek32.block_count", "deepseek32.nextn_predict_layers"];
            if !key.starts_with("deepseek32.") || skip.contains(&key) {
                continue;
            }
            assert_eq!(ours.metadata(key), Some(value), "{key}");
        }
        for t in theirs.tensors() {
            if t.name.contains(".indexer.") {
                let o = ours.tensor(&t.name).unwrap_or_else(|| panic!("{}", t.name));
                assert_eq!(o.dims, t.dims, "{}", t.name);
            }
        }
        let m = GgufModel::open(&path)
            .unwrap()
            .load_model_with(&common::exact_cache())
            .unwrap();
        check_nll(&m, &golden, AttentionMode::Absorbed);
    }
}
