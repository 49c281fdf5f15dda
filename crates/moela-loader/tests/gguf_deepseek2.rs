//! `deepseek2` GGUF specifics against the fixtures of tools/make_gguf_fixtures.py: the HF
//! config rebuilt from metadata, the tokenizer rebuilt from `tokenizer.ggml.*` (encoding like the
//! original), the tokenizer metadata writer, the name table and the `kv_b_proj` layout rule.

use std::io::Read;
use std::path::{Path, PathBuf};

use moela_loader::dtype::{f16_from_le, f32_from_le};
use moela_loader::gguf::{
    deepseek2_config_json, gguf_name_to_hf, hf_name_to_gguf, is_deepseek_v3, kv_b_from_split,
    split_kv_b, tokenizer_json_from_gguf, write_tokenizer_metadata,
    write_tokenizer_metadata_padded, Family, GgmlType, GgufFile, GgufTarget, GgufValue, GgufWriter,
    HfName, KvBDims, TokenType,
};
use serde_json::{json, Value};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixtures() -> PathBuf {
    root().join("tests/fixtures/gguf")
}

fn golden() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("golden.json")).unwrap()).unwrap()
}

fn open(case: &str) -> GgufFile {
    GgufFile::open(fixtures().join(format!("deepseek2_{case}.gguf"))).unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// The tiny BPE tokenizer the fixtures carry, as HF wrote it (`v2`: with DeepSeek-V2's
/// pre-tokenizer, as the fixture script builds it).
fn original_tokenizer_json(case: &str) -> String {
    let text = read(&root().join("tests/fixtures/models/tokenizer/tokenizer.json"));
    if case == "v3" {
        return text;
    }
    let mut v: Value = serde_json::from_str(&text).unwrap();
    let parts: Value =
        serde_json::from_str(&read(&fixtures().join("deepseek_v2_tokenizer_parts.json"))).unwrap();
    v["pre_tokenizer"] = parts["pre_tokenizer"].clone();
    v.to_string()
}

fn tokenizer(json: &str) -> tokenizers::Tokenizer {
    json.parse().unwrap()
}

fn deepseek_v3_tokenizer_json() -> String {
    let gz = std::fs::File::open(root().join("tests/fixtures/text/deepseek-v3/tokenizer.json.gz"))
        .unwrap();
    let mut s = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut s)
        .unwrap();
    s
}

#[test]
fn config_json_matches_the_hf_config_the_file_came_from() {
    let g = golden();
    for case in ["v3", "v2"] {
        let f = open(case);
        let cfg = deepseek2_config_json(&f).unwrap();
        let want = &g[format!("deepseek2_{case}")]["hf_config"];
        assert_eq!(&cfg, want, "{case}:\n{cfg:#}\nvs\n{want:#}");
        assert_eq!(is_deepseek_v3(&f).unwrap(), case == "v3");
        // The model's own parser accepts it.
        let c = moela_model::Config::from_hf_value(&cfg).unwrap();
        assert_eq!(c.vocab_size, 516);
    }
}

#[test]
fn config_json_errors_name_the_key() {
    let f = GgufFile::open(fixtures().join("all_types.gguf")).unwrap();
    let e = deepseek2_config_json(&f).unwrap_err().to_string();
    assert!(
        e.contains("all_types.gguf")
            && e.contains("`general.architecture`")
            && e.contains("moela-test"),
        "{e}"
    );

    // A deepseek2 file without a required key, and one with a wrongly typed key.
    let dir = tempfile::tempdir().unwrap();
    let src = open("v3");
    for (drop_key, replace) in [
        ("deepseek2.attention.kv_lora_rank", None),
        (
            "deepseek2.block_count",
            Some(GgufValue::String("two".into())),
        ),
        ("deepseek2.expert_gating_func", Some(GgufValue::U32(7))),
        (
            "deepseek2.rope.scaling.type",
            Some(GgufValue::String("longrope".into())),
        ),
        (
            "deepseek2.attention.key_length_mla",
            Some(GgufValue::U32(2)),
        ),
    ] {
        let mut w = GgufWriter::new();
        for (k, v) in src.metadata_entries() {
            if k == drop_key {
                if let Some(r) = &replace {
                    w.add(k, r.clone()).unwrap();
                }
            } else {
                w.add(k, v.clone()).unwrap();
            }
        }
        let path = dir.path().join("m.gguf");
        w.create(&path).unwrap().finish().unwrap();
        let f = GgufFile::open(&path).unwrap();
        let e = deepseek2_config_json(&f).unwrap_err().to_string();
        assert!(
            e.contains("m.gguf") && e.contains(&format!("`{drop_key}`")),
            "{e}"
        );
    }
}

/// The rebuilt tokenizer encodes (and decodes) every test string exactly like the original,
/// and like the Python reference recorded in golden.json.
#[test]
fn rebuilt_tokenizer_encodes_like_the_original() {
    let g = golden();
    for case in ["v3", "v2"] {
        let f = open(case);
        let (tj, tc) = tokenizer_json_from_gguf(&f).unwrap();
        let rebuilt = tokenizer(&tj);
        let original = tokenizer(&original_tokenizer_json(case));
        let gold = &g[format!("deepseek2_{case}")]["tokenizer"];
        for e in gold["encodings"].as_array().unwrap() {
            let text = e["text"].as_str().unwrap();
            let want: Vec<u32> = serde_json::from_value(e["ids"].clone()).unwrap();
            for add_special in [false, true] {
                let a = rebuilt.encode(text, add_special).unwrap();
                let b = original.encode(text, add_special).unwrap();
                assert_eq!(a.get_ids(), b.get_ids(), "{case}: {text:?}");
                assert_eq!(a.get_offsets(), b.get_offsets(), "{case}: {text:?}");
            }
            assert_eq!(rebuilt.encode(text, false).unwrap().get_ids(), &want[..]);
            assert_eq!(
                rebuilt.decode(&want, false).unwrap(),
                original.decode(&want, false).unwrap()
            );
        }
        // Every id decodes to the same text.
        for id in 0..512u32 {
            assert_eq!(
                rebuilt.decode(&[id], false).unwrap(),
                original.decode(&[id], false).unwrap(),
                "id {id}"
            );
        }
        assert_eq!(rebuilt.id_to_token(513), None, "[PAD] ids are not tokens");

        let cfg: Value = serde_json::from_str(&tc).unwrap();
        let orig = &gold["original_tokenizer_config"];
        assert_eq!(cfg["bos_token"], "<｜begin▁of▁sentence｜>");
        assert_eq!(cfg["eos_token"], "<｜end▁of▁sentence｜>");
        assert_eq!(cfg["pad_token"], "<｜end▁of▁sentence｜>");
        assert_eq!(cfg["add_bos_token"], orig["add_bos_token"]);
        assert_eq!(cfg["add_eos_token"], false);
        assert_eq!(cfg["chat_template"], orig["chat_template"], "{case}");
    }
}

/// llama.cpp's converter marks `<｜User｜>`-style tokens control although HF's tokenizer calls
/// them non-special; the rebuilt tokenizer follows the file.
#[test]
fn control_tokens_follow_llama_cpp_marking() {
    let (tj, _) = tokenizer_json_from_gguf(&open("v3")).unwrap();
    let rebuilt = tokenizer(&tj);
    let original = tokenizer(&original_tokenizer_json("v3"));
    // 508 = <｜User｜>: special in the GGUF (looks like <｜…｜>), not in HF.
    assert_eq!(original.decode(&[508], true).unwrap(), "<｜User｜>");
    assert_eq!(rebuilt.decode(&[508], true).unwrap(), "");
    // 510 = <think>: user-defined in both, survives skip_special_tokens.
    assert_eq!(rebuilt.decode(&[510], true).unwrap(), "<think>");
    assert_eq!(rebuilt.decode(&[0, 510], true).unwrap(), "<think>");
}

/// The pre-tokenizers we rebuild are exactly those in the models' own tokenizer.json files.
#[test]
fn pre_tokenizers_equal_the_models_own() {
    let (tj, _) = tokenizer_json_from_gguf(&open("v3")).unwrap();
    let ours: Value = serde_json::from_str(&tj).unwrap();
    let v3: Value = serde_json::from_str(&deepseek_v3_tokenizer_json()).unwrap();
    assert_eq!(ours["pre_tokenizer"], v3["pre_tokenizer"]);
    assert_eq!(ours["post_processor"], v3["post_processor"]);
    assert_eq!(ours["decoder"], v3["decoder"]);
    assert_eq!(ours["normalizer"], v3["normalizer"]);

    let (tj, _) = tokenizer_json_from_gguf(&open("v2")).unwrap();
    let ours: Value = serde_json::from_str(&tj).unwrap();
    let parts: Value =
        serde_json::from_str(&read(&fixtures().join("deepseek_v2_tokenizer_parts.json"))).unwrap();
    assert_eq!(ours["pre_tokenizer"], parts["pre_tokenizer"]);
}

#[test]
fn tokenizer_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let src = open("v3");
    let cases: [(&str, GgufValue, &str); 5] = [
        (
            "tokenizer.ggml.model",
            GgufValue::String("llama".into()),
            "gpt2",
        ),
        (
            "tokenizer.ggml.pre",
            GgufValue::String("chatglm-bpe".into()),
            "chatglm-bpe",
        ),
        (
            "tokenizer.ggml.token_type",
            GgufValue::i32_array([1, 1]),
            "2 entries for 516",
        ),
        (
            "tokenizer.ggml.bos_token_id",
            GgufValue::U32(9999),
            "outside the vocabulary",
        ),
        (
            "tokenizer.ggml.merges",
            GgufValue::string_array(["ab"]),
            "entry 0",
        ),
    ];
    for (key, value, needle) in cases {
        let mut w = GgufWriter::new();
        for (k, v) in src.metadata_entries() {
            w.add(k, if k == key { value.clone() } else { v.clone() })
                .unwrap();
        }
        let path = dir.path().join("t.gguf");
        w.create(&path).unwrap().finish().unwrap();
        let e = tokenizer_json_from_gguf(&GgufFile::open(&path).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.gguf") && e.contains(&format!("`{key}`")) && e.contains(needle),
            "{e}"
        );
    }
}

/// Our tokenizer metadata writer: HF tokenizer → GGUF → HF tokenizer encodes identically, and
/// what it writes agrees with llama.cpp's converter (the fixture) except where the converter
/// second-guesses HF's `special` flag.
#[test]
fn tokenizer_metadata_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    for case in ["v3", "v2"] {
        let tok_json = original_tokenizer_json(case);
        let g = golden();
        let cfg =
            g[format!("deepseek2_{case}")]["tokenizer"]["original_tokenizer_config"].to_string();
        let pre = if case == "v3" {
            "deepseek-v3"
        } else {
            "deepseek-llm"
        };
        let mut w = GgufWriter::new();
        w.add(
            "general.architecture",
            GgufValue::String("deepseek2".into()),
        )
        .unwrap();
        write_tokenizer_metadata_padded(&mut w, &tok_json, Some(&cfg), pre, Some(516)).unwrap();
        let path = dir.path().join(format!("{case}.gguf"));
        w.create(&path).unwrap().finish().unwrap();
        let ours = GgufFile::open(&path).unwrap();
        let theirs = open(case);

        for key in [
            "tokenizer.ggml.model",
            "tokenizer.ggml.pre",
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.merges",
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.padding_token_id",
            "tokenizer.ggml.add_bos_token",
            "tokenizer.ggml.add_eos_token",
            "tokenizer.chat_template",
        ] {
            assert_eq!(ours.metadata(key), theirs.metadata(key), "{case}: {key}");
        }
        if case == "v2" {
            for key in ["tokenizer.chat_templates", "tokenizer.chat_template.plain"] {
                assert_eq!(ours.metadata(key), theirs.metadata(key), "{case}: {key}");
            }
        }
        let a = ours.get_i64_array("tokenizer.ggml.token_type").unwrap();
        let b = theirs.get_i64_array("tokenizer.ggml.token_type").unwrap();
        let tokens = ours.get_str_array("tokenizer.ggml.tokens").unwrap();
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            if x != y {
                // Only the HF-non-special tokens that look like <｜…｜>.
                assert_eq!(
                    (*x, *y),
                    (TokenType::UserDefined as i64, TokenType::Control as i64)
                );
                assert!(tokens[i].starts_with("<｜"), "{}", tokens[i]);
            }
        }
        assert_eq!(tokens[515], "[PAD515]");
        assert_eq!(a[515], TokenType::Unused as i64);

        let (tj, _) = tokenizer_json_from_gguf(&ours).unwrap();
        let rebuilt = tokenizer(&tj);
        let original = tokenizer(&tok_json);
        for e in g[format!("deepseek2_{case}")]["tokenizer"]["encodings"]
            .as_array()
            .unwrap()
        {
            let text = e["text"].as_str().unwrap();
            assert_eq!(
                rebuilt.encode(text, false).unwrap().get_ids(),
                original.encode(text, false).unwrap().get_ids()
            );
            // Here special flags come through unchanged, so skip_special decoding agrees too.
            let ids = original.encode(text, false).unwrap().get_ids().to_vec();
            assert_eq!(
                rebuilt.decode(&ids, true).unwrap(),
                original.decode(&ids, true).unwrap()
            );
        }
    }
}

#[test]
fn tokenizer_metadata_writer_rejects_bad_input() {
    let tok = original_tokenizer_json("v3");
    let check = |tok: &str, cfg: Option<&str>, pre: &str, needle: &str| {
        let mut w = GgufWriter::new();
        let e = write_tokenizer_metadata(&mut w, tok, cfg, pre)
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{e}");
    };
    check("{", None, "deepseek-v3", "tokenizer.json: not valid JSON");
    check(
        &tok,
        None,
        "deepseek-llm",
        "not the one `deepseek-llm` stands for",
    );
    check(
        &tok,
        Some("[1"),
        "deepseek-v3",
        "tokenizer_config.json: not valid JSON",
    );
    check(
        &tok,
        Some(r#"{"bos_token": "<nope>"}"#),
        "deepseek-v3",
        "bos_token \"<nope>\" is not in the vocabulary",
    );
    check(
        &tok,
        Some(r#"{"add_bos_token": "yes"}"#),
        "deepseek-v3",
        "add_bos_token: expected a boolean",
    );
    let mut v: Value = serde_json::from_str(&tok).unwrap();
    v["model"]["type"] = json!("Unigram");
    check(
        &v.to_string(),
        None,
        "deepseek-v3",
        "model.type is not \"BPE\"",
    );
    let mut w = GgufWriter::new();
    let e = write_tokenizer_metadata_padded(&mut w, &tok, None, "deepseek-v3", Some(100))
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than vocab_size 100"), "{e}");
}

/// DeepSeek-V3's real tokenizer (128k tokens) through our writer and back encodes the
/// published test vectors (deepseek-architecture.md §7).
#[test]
fn deepseek_v3_tokenizer_through_gguf() {
    let tok_json = deepseek_v3_tokenizer_json();
    let cfg = read(&root().join("tests/fixtures/text/deepseek-v3/tokenizer_config.json"));
    let mut w = GgufWriter::new();
    w.add(
        "general.architecture",
        GgufValue::String("deepseek2".into()),
    )
    .unwrap();
    write_tokenizer_metadata_padded(&mut w, &tok_json, Some(&cfg), "deepseek-v3", Some(129280))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v3tok.gguf");
    w.create(&path).unwrap().finish().unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(
        f.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        129280
    );
    assert_eq!(f.get_u32("tokenizer.ggml.bos_token_id").unwrap(), 0);
    assert_eq!(f.get_u32("tokenizer.ggml.eos_token_id").unwrap(), 1);
    let (tj, tc) = tokenizer_json_from_gguf(&f).unwrap();
    let t = tokenizer(&tj);
    let ids = |s: &str| t.encode(s, false).unwrap().get_ids().to_vec();
    assert_eq!(ids("Hello world"), vec![19923, 2058]);
    assert_eq!(ids("12345678"), vec![6895, 18009, 2597]);
    assert_eq!(
        ids("<｜begin▁of▁sentence｜><｜User｜>Hello<｜Assistant｜><think>\n"),
        vec![0, 128803, 19923, 128804, 128798, 201]
    );
    // <｜User｜> and <think> stay non-special (our writer keeps HF's flags).
    assert_eq!(
        t.decode(&[0, 128803, 128798], true).unwrap(),
        "<｜User｜><think>"
    );
    let cfg: Value = serde_json::from_str(&tc).unwrap();
    let orig: Value = serde_json::from_str(&cfg_text()).unwrap();
    assert_eq!(cfg["chat_template"], orig["chat_template"]);
}

fn cfg_text() -> String {
    read(&root().join("tests/fixtures/text/deepseek-v3/tokenizer_config.json"))
}

fn f32_tensor(f: &GgufFile, name: &str) -> Vec<f32> {
    let (t, bytes) = f.tensor_data(name).unwrap();
    let mut out = Vec::new();
    match t.ggml_type {
        GgmlType::F32 => f32_from_le(bytes, &mut out),
        GgmlType::F16 => f16_from_le(bytes, &mut out),
        other => panic!("{name}: {other}"),
    }
    out
}

/// `attn_k_b` + `attn_v_b` recombine into the `kv_b_proj` the converter split, and splitting
/// it again gives the stored tensors.
#[test]
fn kv_b_recombines_exactly() {
    let g = golden();
    let f = open("v3");
    let cfg = deepseek2_config_json(&f).unwrap();
    let n = |k: &str| cfg[k].as_u64().unwrap() as usize;
    let d = KvBDims {
        n_heads: n("num_attention_heads"),
        kv_lora_rank: n("kv_lora_rank"),
        qk_nope_head_dim: n("qk_nope_head_dim"),
        v_head_dim: n("v_head_dim"),
    };
    for layer in 0..2 {
        let k_name = format!("blk.{layer}.attn_k_b.weight");
        let v_name = format!("blk.{layer}.attn_v_b.weight");
        // ggml dims: k_b {dn, r, H}, v_b {r, dv, H}.
        assert_eq!(f.tensor(&k_name).unwrap().dims, vec![6, 8, 2]);
        assert_eq!(f.tensor(&v_name).unwrap().dims, vec![8, 6, 2]);
        let k_b = f32_tensor(&f, &k_name);
        let v_b = f32_tensor(&f, &v_name);
        let kv_b = kv_b_from_split(&k_b, &v_b, d).unwrap();
        let want: Vec<f32> = g["deepseek2_v3"]["kv_b_proj"][layer.to_string()]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(kv_b, want, "layer {layer}");
        assert_eq!(split_kv_b(&kv_b, d).unwrap(), (k_b, v_b));
    }
    // The older fused tensor is kv_b_proj as is: [H·(dn+dv), r] = ggml {r, H·(dn+dv)}.
    assert_eq!(
        open("v2").tensor("blk.0.attn_kv_b.weight").unwrap().dims,
        vec![8, 24]
    );
}

/// Every tensor in the fixtures is in the name table, and maps back to itself.
#[test]
fn every_fixture_tensor_is_in_the_name_table() {
    for case in ["v3", "v2"] {
        let f = open(case);
        for t in f.tensors() {
            let hf =
                gguf_name_to_hf(Family::Standard, &t.name).unwrap_or_else(|| panic!("{}", t.name));
            let back = match &hf {
                HfName::Whole(n) => hf_name_to_gguf(Family::Standard, n).unwrap(),
                HfName::StackedExperts { .. } => {
                    let e = t.shape()[0] as usize - 1;
                    let target =
                        hf_name_to_gguf(Family::Standard, &hf.expert_name(e).unwrap()).unwrap();
                    assert_eq!(
                        target,
                        GgufTarget::Expert {
                            name: t.name.clone(),
                            expert: e
                        }
                    );
                    target
                }
                HfName::KvBNope { .. } | HfName::KvBValue { .. } => {
                    hf_name_to_gguf(Family::Standard, &hf.hf_tensor()).unwrap()
                }
            };
            let found = match back {
                GgufTarget::Whole(n) | GgufTarget::Expert { name: n, .. } => n == t.name,
                GgufTarget::KvB { fused, k_b, v_b } => [fused, k_b, v_b].contains(&t.name),
            };
            assert!(found, "{case}: {}", t.name);
        }
        // Stacked experts: [E, ff, D] for gate/up, [E, D, ff] for down.
        let shape = |n: &str| f.tensor(n).unwrap().shape();
        assert_eq!(shape("blk.1.ffn_gate_exps.weight"), vec![4, 8, 16]);
        assert_eq!(shape("blk.1.ffn_down_exps.weight"), vec![4, 16, 8]);
        assert_eq!(shape("token_embd.weight"), vec![516, 16]);
    }
}
