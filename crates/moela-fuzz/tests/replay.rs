//! Replays every committed fuzz input — the seed and minimized corpora under `fuzz/corpus/` and
//! the inputs of past findings under `fuzz/regressions/` — through its target, on stable Rust.
//! A finding's input lands in `fuzz/regressions/<target>/` with its fix, so it stays fixed.

use std::path::Path;

fn inputs(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn replay(name: &str) {
    let target = moela_fuzz::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .expect("a target of that name");
    let root = moela_fuzz::repo_root().join("fuzz");
    let corpus = inputs(&root.join("corpus").join(name));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{name} is empty: the target would not be exercised"
    );
    let regressions = inputs(&root.join("regressions").join(name));
    for path in corpus.iter().chain(&regressions) {
        let data = std::fs::read(path).expect("reading a corpus file");
        eprintln!("{}", path.display());
        target(&data);
    }
    eprintln!(
        "{name}: {} corpus inputs and {} regressions replayed",
        corpus.len(),
        regressions.len()
    );
}

#[test]
fn every_target_has_a_test() {
    let names: Vec<&str> = moela_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "gguf",
            "safetensors",
            "config",
            "chat_template",
            "request",
            "stream"
        ]
    );
}

#[test]
fn gguf() {
    replay("gguf");
}

#[test]
fn safetensors() {
    replay("safetensors");
}

#[test]
fn config() {
    replay("config");
}

#[test]
fn chat_template() {
    replay("chat_template");
}

#[test]
fn request() {
    replay("request");
}

#[test]
fn stream() {
    replay("stream");
}
