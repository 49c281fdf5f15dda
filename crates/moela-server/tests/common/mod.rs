//! Helpers shared by the HTTP service tests: the tiny V3 reference checkpoint, servers over it,
//! requests and their replies.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use moela_engine::{EngineConfig, EngineHandle};
use moela_loader::Checkpoint;
use moela_model::Model;
use moela_server::{router, AppState, Settings};
use moela_text::Tokenizer;
use serde_json::{json, Value};
use tower::ServiceExt;

pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/v3")
}

pub fn model() -> Arc<Model> {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            Arc::new(
                Checkpoint::open(&fixture_dir())
                    .unwrap()
                    .load_model(false)
                    .unwrap(),
            )
        })
        .clone()
}

pub fn v3_tokenizer() -> Tokenizer {
    Tokenizer::from_dir(&fixture_dir()).unwrap()
}

/// The fixture tokenizer with DeepSeek R1's chat template (its prompt opens `<think>`).
pub fn r1_tokenizer() -> Tokenizer {
    let dir = fixture_dir();
    let tok = std::fs::read_to_string(dir.join("tokenizer.json")).unwrap();
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap())
            .unwrap();
    let r1 = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/text/templates/deepseek-r1.jinja");
    cfg["chat_template"] = Value::String(std::fs::read_to_string(r1).unwrap());
    Tokenizer::from_json_str(&tok, Some(&cfg.to_string())).unwrap()
}

pub struct Server {
    pub app: Router,
    pub state: AppState,
}

pub fn engine_config() -> EngineConfig {
    EngineConfig {
        max_batch: 4,
        max_queue: 8,
        ctx: 1024,
        ..Default::default()
    }
}

pub fn server_with(settings: Settings, cfg: EngineConfig, tok: Tokenizer) -> Server {
    let m = model();
    let vocab = m.config.vocab_size;
    let engine = EngineHandle::start(m, tok.clone(), cfg);
    let state = AppState::new(engine, tok, vocab, vec![1], settings);
    Server {
        app: router(state.clone()),
        state,
    }
}

pub fn server() -> Server {
    server_with(Settings::new("v3"), engine_config(), v3_tokenizer())
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `data:` payloads of an SSE body.
    pub fn sse(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .filter_map(|ev| {
                ev.lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .map(str::to_string)
            })
            .collect()
    }

    /// An OpenAI error body with this status; returns the error object.
    pub fn error(&self, status: StatusCode) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        let v = self.json();
        let e = v["error"].clone();
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(e["type"].is_string(), "{v}");
        assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
        e
    }
}

pub async fn send(app: &Router, req: Request<Body>) -> Reply {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

pub fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap()
}

pub fn get(path: &str) -> Request<Body> {
    Request::builder().uri(path).body(Body::empty()).unwrap()
}

pub async fn chat(s: &Server, body: Value) -> Reply {
    send(&s.app, post("/v1/chat/completions", body.to_string())).await
}

pub fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

/// Waits until `f` holds (the engine runs on its own thread).
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn gauge(s: &Server, name: &str) -> f64 {
    let text = s.state.metrics().render(s.state.engine().stats());
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing"))
        .parse()
        .unwrap()
}

pub fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}},
                       "required": ["city"], "additionalProperties": false}}})
}
