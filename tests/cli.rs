//! The `moela` binary end to end on the tiny reference checkpoints: every command's output
//! shape, determinism, and one clear error line (never a panic) for each kind of bad input.

use std::path::Path;
use std::process::Output;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

mod common;
use common::{case_dir, last_json, moela, moela_stdin, perplexity, stderr, stdout};

/// A failed run: non-zero exit, one `error:` line that mentions every `needle`, no panic.
fn assert_clean_error(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for n in needles {
        assert!(lines[0].contains(n), "error line lacks {n:?}: {err}");
    }
}

/// A copy of a fixture in a temporary directory, to break.
fn copy_fixture(case: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(case_dir(case)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    dir
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let p = dir.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// Rewrites `model.safetensors` with tensor `name` replaced by (`dtype`, `shape`, `data`),
/// or dropped when `replace` is None.
fn rewrite_tensor(dir: &Path, name: &str, replace: Option<(Dtype, Vec<usize>, Vec<u8>)>) {
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut views: Vec<(String, TensorView)> = Vec::new();
    for (n, v) in st.tensors() {
        if n == name {
            if let Some((dt, shape, data)) = &replace {
                views.push((n, TensorView::new(*dt, shape.clone(), data).unwrap()));
            }
        } else {
            views.push((n, v));
        }
    }
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::write(p, out).unwrap();
}

/// The `token_ids` of `moela generate` on `dir` with `args` then `extra` (`--json` in `args`).
fn generated_ids(dir: &str, args: &[&str], extra: &[&str]) -> Value {
    let mut all = gen_args(dir, args);
    all.extend_from_slice(extra);
    let o = moela(&all);
    assert!(o.status.success(), "{}", stderr(&o));
    last_json(&o)["token_ids"].clone()
}

fn gen_args<'a>(dir: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["generate", "--model", dir, "--prompt", "Hello there"];
    a.extend_from_slice(extra);
    if !extra.contains(&"--max-tokens") {
        a.extend_from_slice(&["--max-tokens", "4"]);
    }
    a
}

#[test]
fn generate_json_reports_tokens_text_and_usage() {
    let dir = case_dir("v3");
    let o = moela(&gen_args(
        dir.to_str().unwrap(),
        &["--max-tokens", "6", "--json"],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let j = last_json(&o);
    let ids = j["token_ids"].as_array().unwrap();
    assert!(!ids.is_empty() && ids.len() <= 6);
    assert_eq!(
        j["usage"]["completion_tokens"].as_u64().unwrap() as usize,
        ids.len()
    );
    assert!(j["usage"]["prompt_tokens"].as_u64().unwrap() > 3);
    let fr = j["finish_reason"].as_str().unwrap();
    assert!(fr == "length" || fr == "stop");
    // The streamed text precedes the JSON line and equals its text (no reasoning here).
    let out = stdout(&o);
    assert!(out.starts_with(j["text"].as_str().unwrap()));
}

#[test]
fn same_seed_same_output_different_seed_differs() {
    let dir = case_dir("v2");
    let d = dir.to_str().unwrap();
    let run = |seed: &str| {
        let o = moela(&gen_args(
            d,
            &[
                "--max-tokens",
                "12",
                "--temperature",
                "1.5",
                "--seed",
                seed,
                "--json",
            ],
        ));
        assert!(o.status.success(), "{}", stderr(&o));
        last_json(&o)["token_ids"].clone()
    };
    assert_eq!(run("7"), run("7"));
    assert_ne!(run("7"), run("8"));
}

#[test]
fn perplexity_json_has_one_nll_per_predicted_token() {
    let dir = case_dir("v2_lite");
    let text = "The quick brown fox jumps over the lazy dog. 12345";
    let o = perplexity(&dir, text, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j = last_json(&o);
    let n = j["n_tokens"].as_u64().unwrap() as usize;
    let nll: Vec<f64> = j["nll"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(nll.len(), n - 1);
    let ppl = (nll.iter().sum::<f64>() / nll.len() as f64).exp();
    assert!((ppl - j["ppl"].as_f64().unwrap()).abs() < 1e-9 * ppl);
    // A short context scores the same tokens, in windows.
    let o2 = perplexity(&dir, text, &["--ctx", "5"]);
    let j2 = last_json(&o2);
    assert_eq!(j2["nll"].as_array().unwrap().len(), n - 1);
    // The first window sees the same tokens (kernels may tile differently: compare closely).
    let (a, b) = (
        j2["nll"][0].as_f64().unwrap(),
        j["nll"][0].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-5, "{a} vs {b}");
}

#[test]
fn chat_answers_each_stdin_line_and_exits_at_eof() {
    let dir = case_dir("v3");
    let o = moela_stdin(
        &[
            "chat",
            "--model",
            dir.to_str().unwrap(),
            "--max-tokens",
            "3",
        ],
        "hi\n\nhow are you\n",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 2, "{:?}", stdout(&o));
}

#[test]
fn inspect_summarizes_the_checkpoint() {
    let dir = case_dir("v3_fp8");
    let o = moela(&["inspect", "--model", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for want in [
        "deepseek_v3",
        "F8_E4M3",
        "active per token",
        "KV cache",
        "NoauxTc",
    ] {
        assert!(out.contains(want), "missing {want}: {out}");
    }
}

#[test]
fn inspect_shows_the_v32_indexer_and_the_cache_bytes_per_token() {
    let dir = case_dir("v32");
    let o = moela(&["inspect", "--model", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for want in [
        "model_type:   deepseek_v32",
        "indexer:      DSA, 16 heads of 16 (RoPE on the leading 8), top 8 keys per query",
        "NoauxTc",
        // 3 layers × (32 + 8 + 16) values, 4 bytes each.
        "KV cache:     168 values/token (3 layers × 56 = latent 32 + rope key 8 + index key 16): 672 B/token as f32",
    ] {
        assert!(out.contains(want), "missing {want}: {out}");
    }
}

/// `inspect --check` reads every stored value: a NaN planted in one weight makes it fail naming
/// the tensor and the position, while plain `inspect` (and loading) cannot see it.
#[test]
fn inspect_check_finds_a_planted_nan() {
    let dir = copy_fixture("v2");
    let path = dir.path().to_str().unwrap();
    let o = moela(&["inspect", "--model", path, "--check"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("no NaN or infinity"), "{}", stdout(&o));
    let name = "model.layers.2.mlp.experts.3.up_proj.weight";
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    let (dtype, shape) = (t.dtype(), t.shape().to_vec());
    let mut data = t.data().to_vec();
    let width = dtype.bitsize() / 8;
    let nan: Vec<u8> = match dtype {
        Dtype::BF16 => 0x7FC0u16.to_le_bytes().to_vec(),
        Dtype::F32 => f32::NAN.to_le_bytes().to_vec(),
        d => panic!("{d:?}"),
    };
    data[7 * width..8 * width].copy_from_slice(&nan);
    rewrite_tensor(dir.path(), name, Some((dtype, shape, data)));
    assert!(moela(&["inspect", "--model", path]).status.success());
    let o = moela(&["inspect", "--model", path, "--check"]);
    assert!(!o.status.success());
    assert!(
        stdout(&o).contains(&format!(
            "{name}: 1 non-finite values, the first NaN at index 7"
        )),
        "{}",
        stdout(&o)
    );
    assert_clean_error(&o, &["1 of", "tensors hold NaN or infinite values"]);
}

/// The model's recommended sampling (generation_config.json) applies where no flag is given,
/// is printed once, and flags win: with the same seed, the recommended temperature gives what
/// the same explicit `--temperature` gives.
#[test]
fn generation_config_sampling_is_the_default_and_flags_win() {
    let dir = copy_fixture("v3");
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"bos_token_id": 0, "eos_token_id": 1, "do_sample": true, "temperature": 0.9, "top_p": 0.95}"#,
    )
    .unwrap();
    let path = dir.path().to_str().unwrap();
    let run = |extra: &[&str]| {
        let o = moela(&gen_args(
            path,
            &[&["--seed", "7", "--max-tokens", "12"], extra].concat(),
        ));
        assert!(o.status.success(), "{}", stderr(&o));
        (stdout(&o), stderr(&o))
    };
    let (by_default, note) = run(&[]);
    assert!(
        note.contains(
            "sampling: temperature 0.9, top_p 0.95 (the model's defaults; flags override)"
        ),
        "{note}"
    );
    let (explicit, note2) = run(&["--temperature", "0.9", "--top-p", "0.95"]);
    assert_eq!(by_default, explicit);
    assert!(!note2.contains("sampling:"), "{note2}");
    let (greedy, note3) = run(&["--temperature", "0"]);
    assert!(note3.contains("sampling: top_p 0.95"), "{note3}");
    assert_ne!(
        greedy, by_default,
        "the recommended temperature was not applied"
    );
    // A value no sampler accepts is a clear error naming the file and field.
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"temperature": -1}"#,
    )
    .unwrap();
    let o = moela(&gen_args(path, &[]));
    assert_clean_error(&o, &["generation_config.json temperature", "-1"]);
}

/// `moela quantize` writes fixture `name` as a Q8_0 GGUF, and `moela inspect` of that file
/// prints every line of `want`.
fn assert_quantized_inspect(name: &str, want: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(format!("{name}-q8_0.gguf"));
    let o = common::quantize_q8_0(name, &out);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let o = moela(&["inspect", "--model", out.to_str().unwrap()]);
    let text = common::stdout(&o);
    for w in want {
        assert!(text.contains(w), "missing {w}: {text}");
    }
}

#[test]
fn quantize_writes_v32_as_deepseek32() {
    assert_quantized_inspect(
        "v32",
        &[
            "model_type:   deepseek_v32",
            "indexer:      DSA, 16 heads of 16 (RoPE on the leading 8), top 8 keys per query",
            "q8_0 ×",
        ],
    );
}

/// A checkpoint with an MTP layer written as GGUF carries it as llama.cpp reads one
/// (`blk.N.nextn.*` and the block as layer N, counted in `block_count` with
/// `nextn_predict_layers`), and the file drafts with it: the same answer as the safetensors.
#[test]
fn quantize_keeps_the_mtp_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("v3_mtp-q8_0.gguf");
    let o = common::quantize_q8_0("v3_mtp", &out);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let g = moela_loader::GgufFile::open(&out).unwrap();
    assert_eq!(g.get_usize("deepseek2.block_count").unwrap(), 4);
    assert_eq!(g.get_usize("deepseek2.nextn_predict_layers").unwrap(), 1);
    for t in [
        "blk.3.nextn.eh_proj.weight",
        "blk.3.nextn.enorm.weight",
        "blk.3.attn_k_b.weight",
    ] {
        assert!(g.tensor(t).is_some(), "{t} missing");
    }
    let f = out.to_str().unwrap();
    let o = moela(&[
        "bench",
        "--model",
        f,
        "--prompt-tokens",
        "8",
        "--gen-tokens",
        "8",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(last_json(&o)["draft"], "mtp");
    let args = ["--max-tokens", "12", "--temperature", "0", "--json"];
    assert_eq!(
        generated_ids(f, &args, &[]),
        generated_ids(f, &args, &["--draft", "none"])
    );
}

#[test]
fn inspect_shows_the_v4_layers_and_cache_bytes_per_token() {
    let dir = case_dir("v4");
    let o = moela(&["inspect", "--model", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for want in [
        "model_type:   deepseek_v4",
        "layers:       1 sliding, 1 CSA (ratio 4), 1 HCA (ratio 128); hash-routed layers: 0,1",
        "indexer:      CSA, 16 heads of 16, top 4 entries per query",
        "mHC:          4 streams, 20 Sinkhorn iterations",
        // Blocks: the entries' pieces, CSA (32 + 16) / 4, HCA ⌈32 / 128⌉; 4 bytes each.
        "KV cache:     13 values/token in blocks (compressed entries: 1 × 12 (compressed_sparse_attention) + 1 × 1 (heavily_compressed_attention)): 52 B/token as f32",
        // Window state: sliding 32; CSA 5·32 + 4·16; HCA 3·32; the last 127 + 32 tokens.
        "window state: 352 values/token (1 × 32 (sliding_attention) + 1 × 224 (compressed_sparse_attention) + 1 × 96 (heavily_compressed_attention)) for a sequence's last 159 tokens",
        "at 1024 tokens: 52.0 KiB in blocks + 394.6 KiB window state",
        "mtp:          1 layer(s) declared; no weights in the checkpoint: no MTP drafting",
    ] {
        assert!(out.contains(want), "missing {want}: {out}");
    }
    let dir = case_dir("v4_mtp");
    let o = moela(&["inspect", "--model", dir.to_str().unwrap()]);
    let want = "mtp:          1 layer(s) declared; weights present: drafts with them by default";
    assert!(stdout(&o).contains(want), "{}", stdout(&o));
}

#[test]
fn generate_runs_deepseek_v4() {
    let dir = case_dir("v4");
    let o = moela(&gen_args(
        dir.to_str().unwrap(),
        &["--raw", "--max-tokens", "8", "--json"],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let j = last_json(&o);
    let ids = j["token_ids"].as_array().unwrap();
    assert!(!ids.is_empty() && ids.len() <= 8, "{j}");
}

#[test]
fn quantize_writes_v4_as_deepseek4() {
    assert_quantized_inspect(
        "v4",
        &[
            "model_type:   deepseek_v4",
            "layers:       1 sliding, 1 CSA (ratio 4), 1 HCA (ratio 128); hash-routed layers: 0,1",
            "q8_0 ×",
        ],
    );
}

/// `--memory-budget`: below the weights but above everything except the routed experts, the
/// experts stay in the mapping and the most used get copies within what is left (`bench --json`
/// says how that went); below the rest too, everything stays in the mapping; a bad value is a
/// clear error.
#[test]
fn memory_budget_places_the_experts_by_use() {
    let dir = case_dir("v2");
    let d = dir.to_str().unwrap();
    let files = moela_loader::ModelFiles::open(&dir).unwrap();
    let f = files
        .placement(&moela_loader::LoadOptions::default())
        .footprint;
    let others = f.weights - f.experts;
    let budget = others + f.experts / 4;
    let run = |budget: &str| {
        let o = moela(&[
            "bench",
            "--model",
            d,
            "--prompt-tokens",
            "8",
            "--gen-tokens",
            "4",
            "--memory-budget",
            budget,
            "--json",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        (last_json(&o), stderr(&o))
    };
    let (j, err) = run(&budget.to_string());
    assert_eq!(j["placement"], "resident", "{j}");
    assert!(
        err.contains("stay in the file mapping and the most used get copies"),
        "{err}"
    );
    assert_eq!(j["expert_budget_bytes"], f.experts / 4, "{j}");
    let resident = j["expert_resident_bytes"].as_u64().unwrap();
    assert!(resident > 0 && resident <= f.experts / 4, "{j}");
    let hit = j["expert_hit_rate"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&hit), "{j}");
    assert!(
        j["expert_mapped_bytes_per_token"].as_f64().unwrap() >= 0.0,
        "{j}"
    );
    let (j, err) = run("1K");
    assert_eq!(j["placement"], "in_place", "{j}");
    assert!(j["expert_hit_rate"].is_null(), "{j}");
    assert!(
        err.contains("would not fit in the memory budget (1.0 KiB)"),
        "{err}"
    );
    let (j, _) = run("1T");
    assert_eq!(j["placement"], "fastest", "{j}");
    // Quantizing while loading copies every matrix into RAM: nothing is left in the mapping.
    let o = moela(&[
        "bench",
        "--model",
        d,
        "--prompt-tokens",
        "4",
        "--gen-tokens",
        "2",
        "--quant",
        "f16",
        "--memory-budget",
        &budget.to_string(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(last_json(&o)["placement"], "fastest");
    // clap's error: one line naming the option and the unit, then its usual hint.
    let o = moela(&["bench", "--model", d, "--memory-budget", "6X"]);
    let err = stderr(&o);
    assert!(!o.status.success() && !err.contains("panicked"), "{err}");
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("error: ") && first.contains("--memory-budget"),
        "{err}"
    );
    assert!(first.contains("unknown unit \"X\""), "{err}");
}

#[test]
fn bench_json_reports_each_repetition_and_their_mean() {
    let dir = case_dir("v2");
    let o = moela(&[
        "bench",
        "--model",
        dir.to_str().unwrap(),
        "--prompt-tokens",
        "8",
        "--gen-tokens",
        "3",
        "-r",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j = last_json(&o);
    for (mean, samples) in [
        ("prefill_tok_s", "prefill_tok_s_samples"),
        ("decode_tok_s", "decode_tok_s_samples"),
    ] {
        let xs: Vec<f64> = j[samples]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(xs.len(), 2, "{samples}: {j}");
        assert!(xs.iter().all(|&x| x > 0.0), "{samples}: {j}");
        let m = j[mean].as_f64().unwrap();
        assert!((m - (xs[0] + xs[1]) / 2.0).abs() <= 1e-9 * m, "{mean}: {j}");
        // Sample sd of two values: |a − b| / √2.
        let sd = j[format!("{mean}_sd")].as_f64().unwrap();
        let want = (xs[0] - xs[1]).abs() / 2f64.sqrt();
        assert!((sd - want).abs() <= 1e-9 * m, "{mean}_sd: {j}");
    }
    // The warm-up decodes one token before the timed ones.
    assert_eq!(j["decode_context"], 9, "{j}");
    assert_eq!(j["repetitions"], 2);
    // Which one-token walk over file-layout rows this CPU takes (`FileRowWalk`).
    assert!(
        ["single", "quad"].contains(&j["file_row_walk"].as_str().unwrap()),
        "{j}"
    );
    // And how wide the attention row kernels' vectors are (`RowVectors`).
    assert!(
        [256, 512].contains(&j["row_vector_bits"].as_u64().unwrap()),
        "{j}"
    );
    let o = moela(&["bench", "--model", dir.to_str().unwrap(), "-r", "0"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("repetitions"), "{}", stderr(&o));
}

#[test]
fn default_thread_count_follows_the_affinity_mask() {
    // `taskset -c 0` leaves one core to the process: the default (no `--threads`) must use 1,
    // and an explicit count still wins over the mask.
    let dir = case_dir("v2");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "-c",
            "0",
            env!("CARGO_BIN_EXE_moela"),
            "bench",
            "--model",
            dir.to_str().unwrap(),
            "--prompt-tokens",
            "4",
            "--gen-tokens",
            "2",
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = std::process::Command::new("taskset")
            .args(&args)
            .env_remove("MOELA_MODEL")
            .output()
            .expect("taskset (util-linux) runs");
        assert!(o.status.success(), "{}", stderr(&o));
        last_json(&o)["threads"].as_u64().unwrap()
    };
    assert_eq!(run(&[]), 1);
    assert_eq!(run(&["--threads", "3"]), 3);
}

/// Edits the v2 fixture's config.json and expects a clean error naming `needles`.
fn check_config_error(edit: impl FnOnce(&mut serde_json::Map<String, Value>), needles: &[&str]) {
    let dir = copy_fixture("v2");
    edit_config(dir.path(), edit);
    assert_clean_error(
        &moela(&gen_args(dir.path().to_str().unwrap(), &[])),
        needles,
    );
}

#[test]
fn missing_config_field_is_named() {
    check_config_error(
        |c| {
            c.remove("kv_lora_rank");
        },
        &["config.json", "kv_lora_rank", "missing"],
    );
}

#[test]
fn wrongly_typed_config_field_is_named() {
    check_config_error(
        |c| {
            c.insert("num_attention_heads".into(), Value::String("eight".into()));
        },
        &["config.json", "num_attention_heads", "integer"],
    );
}

#[test]
fn unknown_config_values_are_named() {
    check_config_error(
        |c| {
            c.insert("topk_method".into(), Value::String("best_effort".into()));
        },
        &["topk_method", "best_effort"],
    );
    check_config_error(
        |c| {
            c.insert("model_type".into(), Value::String("mixtral".into()));
        },
        &["model_type", "mixtral"],
    );
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_fixture("v2_lite");
    rewrite_tensor(
        dir.path(),
        "model.layers.1.self_attn.kv_b_proj.weight",
        None,
    );
    assert_clean_error(
        &moela(&gen_args(dir.path().to_str().unwrap(), &[])),
        &[
            "missing tensor",
            "model.layers.1.self_attn.kv_b_proj.weight",
        ],
    );
}

#[test]
fn shape_mismatch_is_named() {
    let dir = copy_fixture("v2_lite");
    let name = "model.layers.0.self_attn.o_proj.weight";
    rewrite_tensor(
        dir.path(),
        name,
        Some((Dtype::F32, vec![3, 5], vec![0u8; 60])),
    );
    assert_clean_error(
        &moela(&gen_args(dir.path().to_str().unwrap(), &[])),
        &[name, "[3, 5]", "model.safetensors"],
    );
}

#[test]
fn unsupported_dtype_is_named() {
    let dir = copy_fixture("v2_lite");
    let name = "model.norm.weight";
    let hidden = 64; // fixture hidden_size
    rewrite_tensor(
        dir.path(),
        name,
        Some((Dtype::I32, vec![hidden], vec![0u8; hidden * 4])),
    );
    assert_clean_error(
        &moela(&gen_args(dir.path().to_str().unwrap(), &[])),
        &[name, "I32"],
    );
}

#[test]
fn truncated_safetensors_is_named() {
    let dir = copy_fixture("v2_lite");
    let p = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert_clean_error(
        &moela(&gen_args(dir.path().to_str().unwrap(), &[])),
        &["model.safetensors", "truncated"],
    );
}

#[test]
fn corrupt_tokenizer_is_named() {
    let dir = copy_fixture("v2_lite");
    std::fs::write(dir.path().join("tokenizer.json"), "{\"model\": 42").unwrap();
    assert_clean_error(
        &moela(&gen_args(dir.path().to_str().unwrap(), &[])),
        &["tokenizer.json"],
    );
}

#[test]
fn missing_model_dir_is_named() {
    assert_clean_error(
        &moela(&gen_args("/nonexistent/moela-model", &[])),
        &["/nonexistent/moela-model"],
    );
}

#[test]
fn prompt_longer_than_context_is_refused() {
    let dir = case_dir("v2_lite");
    let o = moela(&gen_args(dir.to_str().unwrap(), &["--ctx", "4"]));
    assert_clean_error(&o, &["prompt is", "context holds 4"]);
}

#[test]
fn mmap_only_generates_what_the_default_does() {
    // Quantized on load to Q4_0, which the default placement repacks on x86 SIMD.
    let dir = case_dir("qwen2");
    let d = dir.to_str().unwrap();
    let run = |extra: &[&str]| {
        generated_ids(
            d,
            &["--max-tokens", "8", "--json", "--quant", "q4_0"],
            extra,
        )
    };
    assert_eq!(run(&["--mmap-only"]), run(&[]));
    // The flag is what keeps the matrices in place: nothing repacked with it.
    let repacked = |extra: &[&str]| {
        let mut args = vec!["bench", "--model", d, "--quant", "q4_0", "--json"];
        args.extend_from_slice(&["--prompt-tokens", "4", "--gen-tokens", "2", "--no-warmup"]);
        args.extend_from_slice(extra);
        let o = moela(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        last_json(&o)["repacked_weight_bytes"].as_u64().unwrap()
    };
    assert_eq!(repacked(&["--mmap-only"]), 0);
    if moela_kernels::Isa::active() != moela_kernels::Isa::Scalar {
        assert!(repacked(&[]) > 0);
    }
}

#[test]
fn deepseek_v32_prompts_use_deepseeks_own_encoding() {
    use moela_text::{ChatFormat, ChatMessage, RenderOptions, Role, Tokenizer};
    let dir = case_dir("v32");
    let o = moela(&gen_args(dir.to_str().unwrap(), &["--json"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let got = last_json(&o)["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
    // The fixture's tokenizer files carry DeepSeek-V3's Jinja template; V3.2 must not use it.
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let msgs = [ChatMessage::new(Role::User, "Hello there")];
    let opts = RenderOptions {
        add_generation_prompt: true,
        ..Default::default()
    };
    let jinja = tok.apply_chat_template(&msgs, &opts).unwrap();
    let v32 = tok
        .with_chat_format(ChatFormat::DeepseekV32)
        .apply_chat_template(&msgs, &opts)
        .unwrap();
    assert_ne!(jinja.text, v32.text);
    assert_eq!(got, v32.ids.len(), "{}", v32.text);
}

/// `--draft ngram` on the built-in model: the same answer as `--draft none`; `bench --json`
/// reports the drafting figures.
#[test]
fn prompt_lookup_drafts_change_no_output() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/moela-demo");
    let d = dir.to_str().unwrap();
    let answer = |draft: &str| {
        let o = moela(&[
            "generate",
            "--model",
            d,
            "--prompt",
            "Repeat after me: one two three, one two three, one two three.",
            "--max-tokens",
            "40",
            "--temperature",
            "0",
            "--draft",
            draft,
            "--json",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        last_json(&o)["token_ids"].clone()
    };
    assert_eq!(answer("ngram"), answer("none"));
    let o = moela(&[
        "bench",
        "--model",
        d,
        "--prompt-tokens",
        "8",
        "--gen-tokens",
        "16",
        "--draft",
        "ngram",
        "--draft-tokens",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j = last_json(&o);
    assert_eq!(j["draft"], "ngram", "{j}");
    assert_eq!(j["draft_tokens"], 2, "{j}");
    let rate = j["acceptance_rate"].as_f64().unwrap();
    let per_step = j["tokens_per_step"].as_f64().unwrap();
    assert!(
        (0.0..=1.0).contains(&rate) && (1.0..=3.0).contains(&per_step),
        "{j}"
    );
    // --verify-tokens: random drafts, verified and (nearly) all rejected: one token per step.
    let o = moela(&[
        "bench",
        "--model",
        d,
        "--prompt-tokens",
        "8",
        "--gen-tokens",
        "8",
        "--verify-tokens",
        "3",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j = last_json(&o);
    assert_eq!(j["verify_tokens"], 3, "{j}");
    assert_eq!(j["draft"], "none", "{j}");
    assert!(j["tokens_per_step"].as_f64().unwrap() < 1.5, "{j}");
    let o = moela(&[
        "generate", "--model", d, "--prompt", "x", "--draft", "eagle",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unknown draft mode \"eagle\" (expected mtp, ngram or none)"));
}

/// A checkpoint with an MTP layer drafts with it by default (`bench --json` says `mtp`), and its
/// answer equals `--draft none`'s; `--draft mtp` on a model without one is a note, not an error.
#[test]
fn mtp_is_the_default_draft_where_the_model_has_one() {
    let dir = case_dir("v3_mtp");
    let d = dir.to_str().unwrap();
    let answer = |extra: &[&str]| {
        generated_ids(
            d,
            &["--max-tokens", "16", "--temperature", "0", "--json"],
            extra,
        )
    };
    assert_eq!(answer(&[]), answer(&["--draft", "none"]));
    let o = moela(&[
        "bench",
        "--model",
        d,
        "--prompt-tokens",
        "8",
        "--gen-tokens",
        "8",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(last_json(&o)["draft"], "mtp");
    let plain = case_dir("v3");
    let o = moela(&gen_args(plain.to_str().unwrap(), &["--draft", "mtp"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("no MTP layer"), "{}", stderr(&o));
}
