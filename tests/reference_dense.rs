//! Agreement with the reference for the dense R1-distill architectures: tiny random Qwen2 and
//! Llama checkpoints made and run by transformers (`tools/make_dense_fixtures.py`, float64) —
//! per-token NLL within 1e-4 across 127 tokens, identical greedy continuations, the residual
//! stream per layer, chunked prefill and batching, and the same models read from llama.cpp-style
//! GGUF files (permuted Llama q/k rows, `rope_freqs`).

mod common;

use common::{case_dir, floats, golden, ids, max_abs_diff, nll_from_logits};
use moela_engine::greedy_tokens;
use moela_loader::{Checkpoint, GgufModel, LoadOptions, ModelFiles};
use moela_model::{ForwardOptions, Logits, Model, SeqInput};
use serde_json::Value;

/// (case, what it pins).
const CASES: &[(&str, &str)] = &[
    (
        "qwen2",
        "q/k/v biases, GQA 4/2, sliding window present but disabled, BF16",
    ),
    (
        "qwen2_tied",
        "tied embeddings, transformers-5 spelling, window enabled on no layer",
    ),
    ("qwen2_swa", "sliding window 24 on layers 1-2, F16"),
    (
        "llama",
        "GQA 4/2, Llama-3 RoPE scaling with a blended band, BF16",
    ),
    (
        "llama_mqa_bias",
        "MQA, head_dim 24 ≠ hidden/heads, q/k/v/o biases, tied",
    ),
];

/// The cases that also ship `model.gguf`.
const GGUF_CASES: &[&str] = &["qwen2", "llama", "llama_mqa_bias"];

fn load(case: &str) -> Model {
    Checkpoint::open(&case_dir(case))
        .unwrap()
        .load_model(false)
        .unwrap()
}

/// Logits of every token, prefilled in chunks of the given sizes (the rest in one last chunk).
fn logits_in_chunks(m: &Model, tokens: &[u32], chunks: &[usize]) -> Vec<f32> {
    let mut cache = m.new_cache();
    let mut out = Vec::new();
    let mut at = 0;
    let mut sizes = chunks.to_vec();
    sizes.push(tokens.len() - chunks.iter().sum::<usize>());
    for n in sizes {
        let mut s = [SeqInput {
            tokens: &tokens[at..at + n],
            cache: &mut cache,
            logits: Logits::All,
        }];
        out.extend(
            m.forward(&mut s, &ForwardOptions::default())
                .unwrap()
                .remove(0),
        );
        at += n;
    }
    out
}

fn prefill_logits(m: &Model, tokens: &[u32]) -> Vec<f32> {
    logits_in_chunks(m, tokens, &[])
}

/// Max |ΔNLL| of `m` against the case's golden NLLs.
fn nll_error(m: &Model, g: &Value) -> f64 {
    let tokens = ids(&g["nll_tokens"]);
    let logits = prefill_logits(m, &tokens);
    let got = nll_from_logits(&logits, &tokens, m.config.vocab_size);
    assert!(got.len() >= 100);
    max_abs_diff(&got, &floats(&g["nll"]))
}

#[test]
fn nll_matches_reference() {
    for &(case, what) in CASES {
        let m = load(case);
        let err = nll_error(&m, &golden(case));
        println!("{case} ({what}): max |ΔNLL| = {err:.2e} over 127 tokens");
        assert!(err < 1e-4, "{case}: max |ΔNLL| = {err}");
    }
}

#[test]
fn config_reads_as_intended() {
    let c = load("qwen2").config;
    let g = c.gqa().unwrap();
    assert_eq!(c.model_type.as_str(), "qwen2");
    assert_eq!(
        (c.num_attention_heads, g.num_key_value_heads, g.head_dim),
        (4, 2, 16)
    );
    assert!(g.qkv_bias && !g.o_bias && !c.tie_word_embeddings);
    assert_eq!(g.sliding_window, None, "use_sliding_window is false");
    assert_eq!(c.latent_dim().unwrap(), 2 * 2 * 16);
    let c = load("qwen2_tied").config;
    assert!(c.tie_word_embeddings);
    assert_eq!(
        c.gqa().unwrap().sliding_window,
        None,
        "no layer is a sliding_attention layer"
    );
    assert_eq!(c.rope_theta, 1e6);
    let c = load("qwen2_swa").config;
    assert_eq!(
        (0..3).map(|l| c.attention_window(l)).collect::<Vec<_>>(),
        [None, Some(24), Some(24)]
    );
    let c = load("llama").config;
    assert!(matches!(
        c.rope_scaling,
        Some(moela_model::RopeScaling::Llama3(_))
    ));
    let g = c.gqa().unwrap();
    assert!(!g.qkv_bias && !g.o_bias);
    let c = load("llama_mqa_bias").config;
    let g = c.gqa().unwrap();
    assert_eq!((g.num_key_value_heads, g.head_dim), (1, 24));
    assert!(g.qkv_bias && g.o_bias && c.tie_word_embeddings);
}

#[test]
fn last_logits_match_reference() {
    for &(case, _) in CASES {
        let m = load(case);
        let g = golden(case);
        let tokens = ids(&g["nll_tokens"]);
        let v = m.config.vocab_size;
        let logits = prefill_logits(&m, &tokens);
        let got: Vec<f64> = logits[(tokens.len() - 1) * v..]
            .iter()
            .map(|&x| x as f64)
            .collect();
        let err = max_abs_diff(&got, &floats(&g["last_logits"]));
        assert!(err < 1e-3, "{case}: max |Δlogit| = {err}");
    }
}

#[test]
fn greedy_continuation_matches_reference_token_by_token() {
    for &(case, _) in CASES {
        let m = load(case);
        let g = golden(case);
        let prompt = ids(&g["greedy_prompt"]);
        let want = ids(&g["greedy_tokens"]);
        let got = greedy_tokens(&m, &prompt, want.len()).unwrap();
        assert_eq!(got, want, "{case}");
    }
}

/// The residual stream after each layer (positions 0..16) against the reference's
/// `output_hidden_states` — where a divergence would start.
#[test]
fn hidden_states_match_reference_per_layer() {
    use safetensors::SafeTensors;
    for &(case, _) in CASES {
        let m = load(case);
        let g = golden(case);
        let tokens = ids(&g["nll_tokens"]);
        let bytes = std::fs::read(case_dir(case).join("hidden.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut trace = Vec::new();
        let mut cache = m.new_cache();
        let mut s = [SeqInput {
            tokens: &tokens[..16],
            cache: &mut cache,
            logits: Logits::None,
        }];
        m.forward_traced(&mut s, &ForwardOptions::default(), Some(&mut trace))
            .unwrap();
        let layers = m.config.num_hidden_layers;
        // hidden.0 is the embedding; hidden.l (l < layers) the output of layer l-1.
        for l in 0..layers {
            let want = st.tensor(&format!("hidden.{l}")).unwrap();
            let want: Vec<f64> = want
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
                .collect();
            let name = if l == 0 {
                "embed".to_string()
            } else {
                format!("layer.{}", l - 1)
            };
            let got: Vec<f64> = trace
                .iter()
                .find(|(n, _)| *n == name)
                .unwrap()
                .1
                .iter()
                .map(|&x| x as f64)
                .collect();
            let err = max_abs_diff(&got, &want);
            assert!(err < 1e-3, "{case} {name}: max |Δh| = {err}");
        }
    }
}

/// Prefill split into chunks (across the sliding window's edge) and two sequences in one batch
/// compute what one prefill of one sequence does.
#[test]
fn chunked_prefill_and_batching_match_one_prefill() {
    for &(case, _) in CASES {
        let m = load(case);
        let g = golden(case);
        let tokens = ids(&g["nll_tokens"]);
        let whole = prefill_logits(&m, &tokens);
        let chunked = logits_in_chunks(&m, &tokens, &[23, 1, 1, 40]);
        let d = whole
            .iter()
            .zip(&chunked)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(d < 1e-4, "{case}: chunked prefill differs by {d}");

        let pool = m.new_pool(16, None, false);
        let (mut c1, mut c2) = (pool.new_seq(), pool.new_seq());
        let (a, b) = (&tokens[..70], &tokens[70..]);
        let mut batch = [
            SeqInput {
                tokens: a,
                cache: &mut c1,
                logits: Logits::All,
            },
            SeqInput {
                tokens: b,
                cache: &mut c2,
                logits: Logits::All,
            },
        ];
        let out = m.forward(&mut batch, &ForwardOptions::default()).unwrap();
        let alone_b = prefill_logits(&m, b);
        for (got, want) in [
            (&out[0], &whole[..a.len() * m.config.vocab_size]),
            (&out[1], &alone_b[..]),
        ] {
            let d = got
                .iter()
                .zip(want.iter())
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(d < 1e-4, "{case}: batched logits differ by {d}");
        }
    }
}

/// The same models from `model.gguf`, written as llama.cpp's converter writes them: config from
/// `{qwen2,llama}.*` metadata, Llama q/k rows un-permuted, Llama-3 scaling from `rope_freqs`.
#[test]
fn gguf_files_compute_what_the_checkpoints_do() {
    for &case in GGUF_CASES {
        let path = case_dir(case).join("model.gguf");
        let g = GgufModel::open(&path).unwrap();
        let hf = load(case);
        let c = &g.config;
        assert_eq!(c.model_type, hf.config.model_type, "{case}");
        let heads = |c: &moela_model::Config| {
            let g = c.gqa().unwrap();
            (
                c.num_attention_heads,
                g.num_key_value_heads,
                g.head_dim,
                g.qkv_bias,
                g.o_bias,
                c.tie_word_embeddings,
            )
        };
        assert_eq!(heads(c), heads(&hf.config), "{case}");
        let m = g.load_model_with(&common::exact_cache()).unwrap();
        let gold = golden(case);
        let tokens = ids(&gold["nll_tokens"]);
        let d = prefill_logits(&m, &tokens)
            .iter()
            .zip(&prefill_logits(&hf, &tokens))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        let err = nll_error(&m, &gold);
        println!(
            "{case} GGUF: max |Δlogit| vs safetensors {d:.1e}, max |ΔNLL| vs reference {err:.2e}"
        );
        assert!(d < 1e-4, "{case}: GGUF logits differ by {d}");
        assert!(err < 1e-4, "{case}: GGUF max |ΔNLL| = {err}");
        // The tokenizer comes back from the metadata, with the R1 chat template.
        let (tj, tc) = g.tokenizer_json().unwrap();
        let t1 = moela_text::Tokenizer::from_json_str(&tj, Some(&tc)).unwrap();
        let t0 = moela_text::Tokenizer::from_dir(&case_dir(case)).unwrap();
        let text = "<｜User｜>2+2?<｜Assistant｜><think>\nfour</think>4";
        assert_eq!(
            t1.encode(text, true).unwrap(),
            t0.encode(text, true).unwrap()
        );
        let tc: Value = serde_json::from_str(&tc).unwrap();
        let template = tc["chat_template"].as_str().unwrap_or_default();
        assert!(
            template.contains("{{'<｜Assistant｜><think>\\n'}}"),
            "{case}: R1 template"
        );
        // ModelFiles picks the format by content.
        assert!(matches!(
            ModelFiles::open(&path).unwrap(),
            ModelFiles::Gguf(_)
        ));
    }
}

/// Quantize-on-load works for the dense layers too (every width here is a multiple of 32).
#[test]
fn q8_0_on_load_stays_close() {
    use moela_kernels::DType;
    for case in ["qwen2", "llama"] {
        let files = ModelFiles::open(&case_dir(case)).unwrap();
        let m = files
            .load_model(&LoadOptions {
                quant: Some(DType::Q8_0),
                ..LoadOptions::default()
            })
            .unwrap();
        let g = golden(case);
        let tokens = ids(&g["nll_tokens"]);
        let got = nll_from_logits(&prefill_logits(&m, &tokens), &tokens, m.config.vocab_size);
        let want = floats(&g["nll"]);
        let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
        let rel = (mean(&got) - mean(&want)).abs() / mean(&want);
        assert!(rel < 0.01, "{case}: Q8_0 mean NLL off by {rel}");
    }
}

/// Exporting a dense model as a deepseek2 GGUF is refused with a clear error.
#[test]
fn deepseek2_export_refuses_dense_models() {
    let m = load("qwen2");
    let dir = tempfile::tempdir().unwrap();
    let err = moela_loader::export_gguf(
        &m,
        "{}",
        None,
        moela_kernels::DType::F32,
        "x",
        &dir.path().join("x.gguf"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("qwen2 model"), "{err}");
}

/// Both placements of a quantized model compute the same model: packed copies in RAM (the
/// default on x86 SIMD) and every matrix kept in the file's layout (`--mmap-only`). Not to the
/// bit: the two layouts sum in different orders, and a rare flip of an activation's 8-bit
/// rounding then propagates (here from position 86 on), so the check is on the NLLs.
#[test]
fn placements_compute_the_same_model() {
    use moela_kernels::{DType, Placement};
    use moela_model::weights::TensorRef;
    let g = golden("qwen2");
    let tokens = ids(&g["nll_tokens"]);
    let load = |placement| {
        ModelFiles::open(&case_dir("qwen2"))
            .unwrap()
            .load_model(&LoadOptions {
                quant: Some(DType::Q4_0),
                placement,
                ..LoadOptions::default()
            })
            .unwrap()
    };
    let (fastest, in_place) = (load(Placement::Fastest), load(Placement::InPlace));
    let packed = |m: &Model| {
        m.weights
            .named_tensors()
            .iter()
            .filter(|(_, t)| matches!(t, TensorRef::Matrix(q) if q.is_packed()))
            .count()
    };
    assert_eq!(packed(&in_place), 0);
    if moela_kernels::Isa::active() != moela_kernels::Isa::Scalar {
        assert!(packed(&fastest) > 0);
    }
    let v = fastest.config.vocab_size;
    let nll = |m: &Model| nll_from_logits(&prefill_logits(m, &tokens), &tokens, v);
    let (a, b) = (nll(&fastest), nll(&in_place));
    let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
    let rel = (mean(&a) - mean(&b)).abs() / mean(&a);
    assert!(rel < 1e-3, "mean NLL {} vs {}", mean(&a), mean(&b));
    // Before any rounding flip the two agree to float summation order.
    assert!(max_abs_diff(&a[..64], &b[..64]) < 1e-4);
}
