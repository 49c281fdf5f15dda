//! The `moela` binary on the dense R1-distill architectures (tiny random Qwen2 and Llama
//! checkpoints and GGUF files from `tools/make_dense_fixtures.py`).

mod common;
use common::{case_dir, last_json, moela, perplexity, stderr, stdout};
use serde_json::Value;

/// The R1 template opens `<think>`, so `generate --json` reports the output as `reasoning`;
/// the same from the HF directory and from the GGUF file.
#[test]
fn generate_json_splits_reasoning_for_checkpoint_and_gguf() {
    let mut outputs = Vec::new();
    for path in [case_dir("llama"), case_dir("llama").join("model.gguf")] {
        let o = moela(&[
            "generate",
            "--model",
            path.to_str().unwrap(),
            "--prompt",
            "What is 2+2?",
            "--max-tokens",
            "8",
            "--json",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let j = last_json(&o);
        let reasoning = j["reasoning"].as_str().expect("reasoning");
        assert!(!reasoning.is_empty(), "{j}");
        assert!(j["text"].is_string());
        // BOS + <｜User｜> + prompt + <｜Assistant｜><think>\n: more than a handful of tokens.
        assert!(j["usage"]["prompt_tokens"].as_u64().unwrap() > 5);
        outputs.push(j["token_ids"].clone());
    }
    assert_eq!(
        outputs[0], outputs[1],
        "GGUF and checkpoint generate the same"
    );
}

#[test]
fn perplexity_runs_on_a_qwen2_checkpoint() {
    let text = "The quick brown fox jumps over the lazy dog, again and again.";
    let o = perplexity(&case_dir("qwen2"), text, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(last_json(&o)["nll"]
        .as_array()
        .is_some_and(|v| !v.is_empty()));
}

#[test]
fn inspect_describes_gqa_models() {
    for (path, want) in [
        (
            case_dir("qwen2"),
            vec![
                "qwen2",
                "GQA, 4 query / 2 KV heads of 16",
                "sliding window none",
            ],
        ),
        (case_dir("qwen2_swa"), vec!["sliding window 24 on 2 layers"]),
        (
            case_dir("llama"),
            vec!["llama", "Llama-3 factor 8", "KV cache"],
        ),
        (
            case_dir("llama").join("model.gguf"),
            vec!["llama", "8 per-frequency factors (GGUF rope_freqs)"],
        ),
    ] {
        let o = moela(&["inspect", "--model", path.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = stdout(&o);
        for w in want {
            assert!(out.contains(w), "missing {w:?}: {out}");
        }
    }
}

#[test]
fn quantize_refuses_dense_models_clearly() {
    common::assert_quantize_refused("qwen2", &["qwen2 model"]);
}

#[test]
fn bad_dense_configs_are_named() {
    let src = case_dir("qwen2");
    for (field, value, needle) in [
        (
            "num_key_value_heads",
            serde_json::json!(3),
            "num_key_value_heads",
        ),
        ("mlp_bias", serde_json::json!(true), "mlp_bias"),
        (
            "rope_scaling",
            serde_json::json!({"type": "yarn", "factor": 4, "original_max_position_embeddings": 64}),
            "yarn",
        ),
        ("hidden_act", serde_json::json!("gelu"), "hidden_act"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(&src).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
        }
        let p = tmp.path().join("config.json");
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        v[field] = value;
        std::fs::write(&p, v.to_string()).unwrap();
        let o = moela(&[
            "generate",
            "--model",
            tmp.path().to_str().unwrap(),
            "--prompt",
            "hi",
        ]);
        let err = stderr(&o);
        assert!(!o.status.success() && !err.contains("panicked"), "{err}");
        assert!(
            err.contains(needle) && err.contains("config.json"),
            "{field}: {err}"
        );
    }
}
