//! The HTTP service on the dense R1-distill architectures (tiny random Qwen2 and Llama
//! checkpoints, `tools/make_dense_fixtures.py`): their own tokenizer_config.json carries the
//! DeepSeek-R1 chat template, so reasoning lands in `reasoning_content`, streamed or not.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use moela_engine::{EngineConfig, EngineHandle};
use moela_loader::{LoadOptions, ModelFiles};
use moela_server::{router, AppState, Settings};
use moela_text::Tokenizer;
use serde_json::{json, Value};
use tower::ServiceExt;

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(case)
}

/// A router over `path` (an HF directory or a GGUF file) and its tokenizer.
fn app(path: &Path, tok: Tokenizer) -> axum::Router {
    let files = ModelFiles::open(path).unwrap();
    let model = Arc::new(files.load_model(&LoadOptions::default()).unwrap());
    let vocab = model.config.vocab_size;
    let eos = model.config.eos_token_ids.clone();
    let cfg = EngineConfig {
        max_batch: 2,
        max_queue: 4,
        ctx: 512,
        ..Default::default()
    };
    let engine = EngineHandle::start(model, tok.clone(), cfg);
    router(AppState::new(
        engine,
        tok,
        vocab,
        eos,
        Settings::new("r1-distill"),
    ))
}

async fn chat(app: &axum::Router, body: Value) -> (StatusCode, Vec<u8>) {
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, body.to_vec())
}

/// Non-streamed and streamed replies agree, and the output (the prompt ends in `<think>\n`)
/// is reasoning up to `</think>`.
async fn check_reasoning(app: &axum::Router) {
    let body = json!({
        "messages": [{"role": "user", "content": "What is 2+2?"}],
        "max_tokens": 10,
        "temperature": 0,
    });
    let (status, bytes) = chat(app, body.clone()).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    let m = &v["choices"][0]["message"];
    let reasoning = m["reasoning_content"].as_str().expect("reasoning_content");
    let content = m["content"].as_str().unwrap_or_default();
    assert!(!reasoning.is_empty(), "{v}");
    assert!(!reasoning.contains("</think>") && !content.contains("<think>"));
    let mut stream = body;
    stream["stream"] = json!(true);
    let (status, bytes) = chat(app, stream).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(bytes).unwrap();
    let (mut sr, mut sc) = (String::new(), String::new());
    for data in text
        .split("\n\n")
        .filter_map(|ev| ev.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter(|d| *d != "[DONE]")
    {
        let c: Value = serde_json::from_str(data).unwrap();
        let d = &c["choices"][0]["delta"];
        sr.push_str(d["reasoning_content"].as_str().unwrap_or(""));
        sc.push_str(d["content"].as_str().unwrap_or(""));
    }
    assert_eq!((sr.as_str(), sc.as_str()), (reasoning, content));
}

#[tokio::test]
async fn qwen2_checkpoint_reasons_in_reasoning_content() {
    let dir = fixture("qwen2");
    let app = app(&dir, Tokenizer::from_dir(&dir).unwrap());
    check_reasoning(&app).await;
}

#[tokio::test]
async fn llama_gguf_reasons_in_reasoning_content() {
    // Tokenizer and chat template rebuilt from the GGUF metadata.
    let path = fixture("llama").join("model.gguf");
    let ModelFiles::Gguf(g) = ModelFiles::open(&path).unwrap() else {
        panic!("not a GGUF file");
    };
    let (tj, tc) = g.tokenizer_json().unwrap();
    let tok = Tokenizer::from_json_str(&tj, Some(&tc)).unwrap();
    let app = app(&path, tok);
    check_reasoning(&app).await;
}
