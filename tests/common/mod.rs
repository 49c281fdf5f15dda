//! Helpers shared by the workspace's tests (each test binary uses a subset): fixtures and
//! goldens, and running the `moela` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use moela_engine::token_nll;
use serde_json::Value;

/// `tests/fixtures/models/<case>`.
pub fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(case)
}

/// A fixture's `tokenizer.json` and `tokenizer_config.json`, as the GGUF writer takes them.
pub fn tokenizer_files(case: &str) -> (String, String) {
    let read = |f: &str| std::fs::read_to_string(case_dir(case).join(f)).unwrap();
    (read("tokenizer.json"), read("tokenizer_config.json"))
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

/// Runs the `moela` binary (without `$MOELA_MODEL`).
pub fn moela(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moela"))
        .args(args)
        .env_remove("MOELA_MODEL")
        .output()
        .unwrap()
}

/// Runs the `moela` binary with `input` on stdin.
pub fn moela_stdin(args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_moela"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `moela perplexity --model MODEL --file <text> --json EXTRA...`.
pub fn perplexity(model: &Path, text: &str, extra: &[&str]) -> Output {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    let mut args = vec![
        "perplexity",
        "--model",
        model.to_str().unwrap(),
        "--file",
        file.path().to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    moela(&args)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// The last line of stdout as JSON.
pub fn last_json(o: &Output) -> Value {
    let out = stdout(o);
    let line = out.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// `moela quantize` of fixture `case` fails cleanly (no panic, no output file) with an error
/// containing every one of `needles`.
/// `moela quantize` of fixture `case` to `out` as Q8_0.
pub fn quantize_q8_0(case: &str, out: &Path) -> Output {
    let dir = case_dir(case);
    moela(&[
        "quantize",
        "--model",
        dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--type",
        "q8_0",
    ])
}

pub fn assert_quantize_refused(case: &str, needles: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.gguf");
    let o = quantize_q8_0(case, &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "missing {n:?}: {err}");
    }
    assert!(!out.exists());
}

/// Submits `prompts` to `engine` together (`n` tokens each), steps it until idle, and returns
/// each prompt's generated ids.
pub fn run_together(
    engine: &mut moela_engine::Engine,
    prompts: &[Vec<u32>],
    n: usize,
) -> Vec<Vec<u32>> {
    use moela_engine::{Event, Request};
    let mut rxs: Vec<_> = prompts
        .iter()
        .map(|p| engine.submit(Request::new(p.clone(), n)).unwrap())
        .collect();
    while !engine.is_idle() {
        engine.step();
    }
    rxs.iter_mut()
        .map(|rx| {
            let mut ids = Vec::new();
            while let Ok(ev) = rx.try_recv() {
                match ev {
                    Event::Token(t) => ids.push(t.id),
                    Event::Error(e) => panic!("{e}"),
                    _ => {}
                }
            }
            ids
        })
        .collect()
}

/// Runs `tokens` through `cache` in one forward call; its logits (`Logits::All`).
pub fn forward_all(
    m: &moela_model::Model,
    cache: &mut moela_model::SeqCache,
    tokens: &[u32],
    o: &moela_model::ForwardOptions,
) -> Vec<f32> {
    let mut s = [moela_model::SeqInput {
        tokens,
        cache,
        logits: moela_model::Logits::All,
    }];
    m.forward(&mut s, o).unwrap().remove(0)
}

/// One prefill of `tokens` in a fresh cache: the logits of every position and the trace.
pub fn prefill_traced(
    m: &moela_model::Model,
    tokens: &[u32],
    o: &moela_model::ForwardOptions,
) -> (Vec<f32>, moela_model::Trace) {
    let mut cache = m.new_cache();
    let mut trace = Vec::new();
    let mut s = [moela_model::SeqInput {
        tokens,
        cache: &mut cache,
        logits: moela_model::Logits::All,
    }];
    let logits = m
        .forward_traced(&mut s, o, Some(&mut trace))
        .unwrap()
        .remove(0);
    (logits, trace)
}

/// The recorded tensor `name` of a trace.
pub fn trace_get<'a>(trace: &'a moela_model::Trace, name: &str) -> &'a [f32] {
    &trace
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no {name} in the trace"))
        .1
}

/// Tensor `name` of a fixture's `hidden.safetensors` as f64 (F32 or I32 stored).
pub fn hidden_f64(st: &safetensors::SafeTensors<'_>, name: &str) -> Vec<f64> {
    let t = st.tensor(name).unwrap();
    let words = t.data().chunks_exact(4).map(|b| [b[0], b[1], b[2], b[3]]);
    match t.dtype() {
        safetensors::Dtype::F32 => words.map(|w| f32::from_le_bytes(w) as f64).collect(),
        safetensors::Dtype::I32 => words.map(|w| i32::from_le_bytes(w) as f64).collect(),
        d => panic!("{name}: unexpected {d:?}"),
    }
}

pub fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

pub fn max_diff32(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
