//! DeepSeek-V4 as DeepSeek releases it (`tests/fixtures/models/v4_release`, written by
//! `tools/make_v4_fixtures.py --case v4_release`): DeepSeek's own tensor names, FP8 e4m3 with ue8m0
//! 128×128 block scales (`<stem>.scale`, multi-block grids with partial edge blocks), routed experts
//! in FP4 e2m1 (I8 codes + one ue8m0 scale per 32 inputs), the release config spelling
//! (`compress_ratios`, `num_hash_layers`, `quantization_config`, `expert_dtype`). The golden comes
//! from transformers 5.25 in float64 on exactly the values the stored tensors decode to.
//! Checked: per-token NLL, greedy tokens, last logits, and that the matrices stay in their
//! stored types (FP8 kept, FP4 repacked to MXFP4, nothing expanded to f32).

mod common;

use common::{case_dir, floats, golden, ids, max_abs_diff, nll_from_logits};
use moela_engine::greedy_tokens;
use moela_kernels::DType;
use moela_loader::Checkpoint;
use moela_model::weights::{Ffn, LayerAttention};
use moela_model::{ForwardOptions, Model, ModelType, TensorRef};

const CASE: &str = "v4_release";

fn load() -> Model {
    Checkpoint::open(&case_dir(CASE))
        .unwrap()
        .load_model(false)
        .unwrap()
}

#[test]
fn release_config_reads_as_the_v4_layer_kinds() {
    let m = load();
    let c = &m.config;
    assert_eq!(c.model_type, ModelType::DeepseekV4);
    assert_eq!(c.fp8_block, Some([128, 128]));
    assert_eq!(c.num_hidden_layers, 3);
    assert!(matches!(m.weights.layers[1].attn, LayerAttention::V4(_)));
}

#[test]
fn release_storage_is_computed_as_stored() {
    let m = load();
    // FP8 projections stay FP8; FP4 experts are MXFP4 blocks.
    let named: Vec<(String, DType)> = m
        .weights
        .named_tensors()
        .into_iter()
        .filter_map(|(n, t)| match t {
            TensorRef::Matrix(q) => Some((n, q.dtype)),
            _ => None,
        })
        .collect();
    let dtypes: Vec<DType> = named.iter().map(|(_, d)| *d).collect();
    assert!(dtypes.contains(&DType::F8E4M3Block128), "{named:?}");
    let Ffn::Moe(moe) = &m.weights.layers[2].ffn else {
        panic!("layer 2 is MoE")
    };
    let e = moe.experts.iter().next().unwrap();
    assert_eq!(
        (e.gate.dtype, e.up.dtype, e.down.dtype),
        (DType::MXFP4, DType::MXFP4, DType::MXFP4)
    );
}

#[test]
fn nll_greedy_and_last_logits_match_reference() {
    let (m, g) = (load(), golden(CASE));
    let tokens = ids(&g["nll_tokens"]);
    let (logits, _) = common::prefill_traced(&m, &tokens, &ForwardOptions::default());
    let v = m.config.vocab_size;
    let got = nll_from_logits(&logits, &tokens, v);
    let err = max_abs_diff(&got, &floats(&g["nll"]));
    println!(
        "v4_release one prefill: max |ΔNLL| = {err:.2e} over {} tokens",
        got.len()
    );
    assert!(err < 1e-4, "max |ΔNLL| = {err}");
    let last = &logits[logits.len() - v..];
    let want = floats(&g["last_logits"]);
    let d = max_abs_diff(&common::to64(last), &want);
    assert!(d < 1e-3, "last logits differ by {d}");
    let greedy = greedy_tokens(
        &m,
        &ids(&g["greedy_prompt"]),
        ids(&g["greedy_tokens"]).len(),
    );
    assert_eq!(greedy.unwrap(), ids(&g["greedy_tokens"]));
}

/// The same checkpoint converted by llama.cpp b11434's own converter (`deepseek4`,
/// `tools/make_gguf_converter_fixtures.py`): the config read back from its metadata equals the
/// release's, the experts arrive as MXFP4 (bit-exact repacks of the FP4 codes) and `tid2eid` as
/// I32, and with the converter's Q8_0 projections (it writes FP8 sources so; this fixture's FP8
/// blocks span a wide range on purpose, which Q8_0 rounds coarsely) the mean NLL stays within
/// 0.5 % of the reference (greedy tokens part after the first: the fixture's margins are smaller
/// than Q8_0's error). (With the converter patched to keep
/// those projections F32, the same file loads to max |ΔNLL| 4.7e-6: the names and layouts are
/// exact; the difference is the converter's quantization.)
#[test]
fn llama_cpp_deepseek4_gguf_matches_reference() {
    use moela_loader::GgufModel;
    let path = case_dir(CASE).join("../../gguf/deepseek4_v4.gguf");
    let g = GgufModel::open(&path).unwrap();
    let hf = load();
    assert_eq!(g.arch, "deepseek4");
    assert_eq!(g.config.attention, hf.config.attention);
    assert_eq!(g.config.moe, hf.config.moe);
    assert_eq!(g.config.num_hidden_layers, hf.config.num_hidden_layers);
    assert_eq!(g.config.num_nextn_predict_layers, 1);
    let m = g.load_model_with(&common::exact_cache()).unwrap();
    let Ffn::Moe(moe) = &m.weights.layers[2].ffn else {
        panic!("layer 2 is MoE")
    };
    assert_eq!(moe.experts.iter().next().unwrap().gate.dtype, DType::MXFP4);
    let gold = golden(CASE);
    let tokens = ids(&gold["nll_tokens"]);
    let (logits, _) = common::prefill_traced(&m, &tokens, &ForwardOptions::default());
    let got = nll_from_logits(&logits, &tokens, m.config.vocab_size);
    let want = floats(&gold["nll"]);
    let err = max_abs_diff(&got, &want);
    let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
    let rel = (mean(&got) - mean(&want)).abs() / mean(&want);
    let off = got
        .iter()
        .zip(&want)
        .filter(|(a, b)| (*a - *b).abs() > 0.05)
        .count();
    println!("deepseek4 GGUF (Q8_0 projections): max |ΔNLL| = {err:.2e}, mean off by {rel:.2e}, {off} tokens off by > 0.05");
    assert!(rel < 5e-3, "max |ΔNLL| {err}, mean {rel}");
}

/// Metadata keys of the converter's file that Moela's `deepseek4` file does not hold, and why.
const ABSENT_KEYS: &[(&str, &str)] = &[(
    "general.size_label",
    "gguf-py's human-readable parameter count (\"6x318K\"); informational, llama.cpp never reads it",
)];
/// Keys both files hold with values that legitimately differ, and why.
const DIFFERENT_VALUES: &[(&str, &str)] = &[
    (
        "general.name",
        "the converter names a file after the checkpoint directory, Moela after the --model stem",
    ),
    (
        "tokenizer.ggml.token_type",
        "Moela keeps tokenizer.json's special flags; the converter also makes the non-special \
         added tokens spelled <｜…｜> control tokens (checked below: the only difference)",
    ),
];

/// `moela quantize`'s `deepseek4` writer against llama.cpp b11434's converter on the same
/// checkpoint: from the release directory (FP8 projections, FP4 experts) and from the
/// converter's own file, `--type q8_0` writes every metadata key of the converter's file but
/// [`ABSENT_KEYS`], each with the converter's value but [`DIFFERENT_VALUES`], and exactly its
/// tensors — names, shapes, types and bytes: FP8 weights as Q8_0 (Moela's Q8_0 quantizer is
/// ggml's bit for bit), the MXFP4 experts' blocks copied, BF16 and F32 tensors as stored,
/// `tid2eid` as I32.
#[test]
fn deepseek4_export_equals_the_converter_file() {
    use moela_loader::{export_gguf, GgufFile, GgufModel};
    let dir = case_dir(CASE);
    let conv = dir.join("../../gguf/deepseek4_v4.gguf");
    let theirs = GgufFile::open(&conv).unwrap();
    let (tok, cfg) = common::tokenizer_files(CASE);
    let g = GgufModel::open(&conv).unwrap();
    let (gtok, gcfg) = g.tokenizer_json().unwrap();
    let from_gguf = g.load_model_with(&common::exact_cache()).unwrap();
    // The tokens whose type differs: from the directory, its two non-special <｜…｜> tokens; from
    // the converter's file, none (its control tokens come back special).
    let user = ["<｜User｜>", "<｜Assistant｜>"];
    let sources = [
        ("release directory", load(), tok, cfg, &user[..]),
        ("converter's file", from_gguf, gtok, gcfg, &[][..]),
    ];
    for (what, model, tok, cfg, retyped) in sources {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("v4_release.gguf");
        export_gguf(&model, &tok, Some(&cfg), DType::Q8_0, "v4_release", &path).unwrap();
        let ours = GgufFile::open(&path).unwrap();
        let keys = |f: &GgufFile| f.metadata_entries().map(|(k, _)| k.to_string()).collect();
        let mut want: std::collections::BTreeSet<String> = keys(&theirs);
        for (k, _) in ABSENT_KEYS {
            assert!(want.remove(*k), "{k} is not in the converter's file");
        }
        assert_eq!(keys(&ours), want, "{what}: metadata keys");
        for k in &want {
            if DIFFERENT_VALUES.iter().all(|(d, _)| d != k) {
                assert_eq!(ours.metadata(k), theirs.metadata(k), "{what}: {k}");
            }
        }
        let types = |f: &GgufFile| f.get_i64_array("tokenizer.ggml.token_type").unwrap();
        let tokens = ours.get_str_array("tokenizer.ggml.tokens").unwrap();
        let (a, b) = (types(&ours), types(&theirs));
        assert_eq!(a.len(), b.len());
        let differ: Vec<&str> = (0..a.len())
            .filter(|&i| a[i] != b[i])
            .map(|i| {
                assert_eq!(
                    (a[i], b[i]),
                    (4, 3),
                    "{what}: user-defined here, control there"
                );
                tokens[i]
            })
            .collect();
        assert_eq!(differ, retyped, "{what}");
        let table = |f: &GgufFile| {
            let mut t: Vec<_> = f
                .tensors()
                .iter()
                .map(|t| {
                    let bytes = f.tensor_bytes(t).unwrap().to_vec();
                    (t.name.clone(), t.dims.clone(), t.ggml_type.0, bytes)
                })
                .collect();
            t.sort();
            t
        };
        let (a, b) = (table(&ours), table(&theirs));
        assert_eq!(a.len(), b.len(), "{what}: tensor count");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!((&x.0, &x.1, x.2), (&y.0, &y.1, y.2), "{what}: tensor info");
            assert!(x.3 == y.3, "{what}: the bytes of {} differ", x.0);
        }
    }
}

/// Written as F32 (FP8 weights decoded exactly, the MXFP4 experts copied), the release read back
/// from the `deepseek4` file holds the same values; the logits are not bit-equal (F32 products
/// accumulate in another order than the FP8 kernel's), the NLLs agree within 1e-5 (5.8e-6 here).
#[test]
fn deepseek4_export_as_f32_keeps_the_release_nll() {
    use moela_loader::{export_gguf, GgufModel};
    let (m, gold) = (load(), golden(CASE));
    let (tok, cfg) = common::tokenizer_files(CASE);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("v4_release.gguf");
    export_gguf(&m, &tok, Some(&cfg), DType::F32, "v4_release", &path).unwrap();
    let back = GgufModel::open(&path)
        .unwrap()
        .load_model_with(&common::exact_cache())
        .unwrap();
    let tokens = ids(&gold["nll_tokens"]);
    let nll = |m: &Model| {
        let (logits, _) = common::prefill_traced(m, &tokens, &ForwardOptions::default());
        nll_from_logits(&logits, &tokens, m.config.vocab_size)
    };
    let (a, b) = (nll(&m), nll(&back));
    let d = max_abs_diff(&a, &b);
    let r = max_abs_diff(&b, &floats(&gold["nll"]));
    println!("v4_release → deepseek4 GGUF (f32) → model: max |ΔNLL| {d:.2e} vs the release, {r:.2e} vs the reference");
    assert!(d < 1e-5 && r < 1e-4, "{d} {r}");
}
