//! The HTTP service in-process (no sockets): every route, the OpenAI/DeepSeek response shapes,
//! streaming, constrained decoding, auth, overload, cancellation and every error path, on the
//! tiny V3 reference checkpoint (random weights: the text is gibberish but deterministic).

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
use moela_server::{router, ApiKeys, AppState, PriceTable, Settings};
use moela_text::Tokenizer;
use serde_json::{json, Value};
use tower::ServiceExt;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/v3")
}

fn model() -> Arc<Model> {
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

fn v3_tokenizer() -> Tokenizer {
    Tokenizer::from_dir(&fixture_dir()).unwrap()
}

/// The fixture tokenizer with DeepSeek R1's chat template (its prompt opens `<think>`).
fn r1_tokenizer() -> Tokenizer {
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

struct Server {
    app: Router,
    state: AppState,
}

fn engine_config() -> EngineConfig {
    EngineConfig {
        max_batch: 4,
        max_queue: 8,
        ctx: 1024,
        ..Default::default()
    }
}

fn server_with(settings: Settings, cfg: EngineConfig, tok: Tokenizer) -> Server {
    let m = model();
    let vocab = m.config.vocab_size;
    let engine = EngineHandle::start(m, tok.clone(), cfg);
    let state = AppState::new(engine, tok, vocab, vec![1], settings);
    Server {
        app: router(state.clone()),
        state,
    }
}

fn server() -> Server {
    server_with(Settings::new("v3"), engine_config(), v3_tokenizer())
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `data:` payloads of an SSE body.
    fn sse(&self) -> Vec<String> {
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
    fn error(&self, status: StatusCode) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        let v = self.json();
        let e = v["error"].clone();
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(e["type"].is_string(), "{v}");
        assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
        e
    }
}

async fn send(app: &Router, req: Request<Body>) -> Reply {
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

fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap()
}

fn get(path: &str) -> Request<Body> {
    Request::builder().uri(path).body(Body::empty()).unwrap()
}

async fn chat(s: &Server, body: Value) -> Reply {
    send(&s.app, post("/v1/chat/completions", body.to_string())).await
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

/// Waits until `f` holds (the engine runs on its own thread).
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn gauge(s: &Server, name: &str) -> f64 {
    let text = s.state.metrics().render(s.state.engine().stats());
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn health_models_and_unknown_routes() {
    let s = server();
    let r = send(&s.app, get("/health")).await;
    assert_eq!(
        (r.status, r.json()),
        (StatusCode::OK, json!({"status": "ok"}))
    );
    let r = send(&s.app, get("/v1/models")).await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "v3");
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(send(&s.app, get("/v1/models/v3")).await.json()["id"], "v3");
    send(&s.app, get("/v1/models/gpt-9"))
        .await
        .error(StatusCode::NOT_FOUND);
    send(&s.app, get("/v1/nothing"))
        .await
        .error(StatusCode::NOT_FOUND);
    send(&s.app, get("/v1/chat/completions"))
        .await
        .error(StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn chat_completion_shape_usage_and_greedy_determinism() {
    let s = server();
    let body =
        json!({"model": "anything", "messages": user("Hello"), "max_tokens": 12, "temperature": 0});
    let a = chat(&s, body.clone()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let v = a.json();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["model"], "v3");
    let c = &v["choices"][0];
    assert_eq!(c["index"], 0);
    assert_eq!(c["message"]["role"], "assistant");
    assert!(c["message"]["content"].is_string());
    assert!(
        c["message"].get("reasoning_content").is_none(),
        "no reasoning for a V3 prompt"
    );
    assert!(c["message"].get("tool_calls").is_none());
    assert!(["stop", "length"].contains(&c["finish_reason"].as_str().unwrap()));
    let u = &v["usage"];
    let prompt = u["prompt_tokens"].as_u64().unwrap();
    let completion = u["completion_tokens"].as_u64().unwrap();
    assert!(prompt > 0 && completion > 0 && completion <= 12);
    assert_eq!(u["total_tokens"].as_u64().unwrap(), prompt + completion);
    assert_eq!(
        u["prompt_cache_hit_tokens"].as_u64().unwrap()
            + u["prompt_cache_miss_tokens"].as_u64().unwrap(),
        prompt
    );
    assert_eq!(
        u["prompt_tokens_details"]["cached_tokens"],
        u["prompt_cache_hit_tokens"]
    );
    assert!(u.get("cost").is_none(), "no price table, no cost");
    let b = chat(&s, body).await.json();
    assert_eq!(
        b["choices"][0]["message"], c["message"],
        "greedy is deterministic"
    );
}

#[tokio::test]
async fn seeded_sampling_is_reproducible_and_n_gives_distinct_indexed_choices() {
    let s = server();
    let body = json!({"messages": user("Tell me"), "max_tokens": 16, "temperature": 1.0, "seed": 1234, "n": 3});
    let a = chat(&s, body.clone()).await.json();
    let b = chat(&s, body).await.json();
    let texts = |v: &Value| -> Vec<String> {
        v["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["message"]["content"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(texts(&a), texts(&b));
    let idx: Vec<u64> = a["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, vec![0, 1, 2]);
    assert!(
        texts(&a)[0] != texts(&a)[1] || texts(&a)[1] != texts(&a)[2],
        "choices use different seeds"
    );
    let other = chat(
        &s,
        json!({"messages": user("Tell me"), "max_tokens": 16, "temperature": 1.0, "seed": 99}),
    )
    .await
    .json();
    assert_ne!(texts(&other)[0], texts(&a)[0]);
}

#[tokio::test]
async fn streaming_matches_the_whole_response_and_ends_with_usage_then_done() {
    let s = server();
    let whole = chat(
        &s,
        json!({"messages": user("Hello"), "max_tokens": 10, "temperature": 0}),
    )
    .await
    .json();
    let r = chat(
        &s,
        json!({"messages": user("Hello"), "max_tokens": 10, "temperature": 0, "stream": true,
               "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = r.sse();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut content = String::new();
    let mut finish = None;
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], chunks[0]["id"]);
        if let Some(choice) = c["choices"].get(0) {
            assert!(c["usage"].is_null());
            content.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
            if let Some(f) = choice["finish_reason"].as_str() {
                finish = Some(f.to_string());
            }
        }
    }
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], whole["usage"]);
    assert_eq!(
        content,
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert_eq!(
        finish.as_deref(),
        whole["choices"][0]["finish_reason"].as_str()
    );
    // Without include_usage: no usage field at all.
    let r = chat(
        &s,
        json!({"messages": user("Hi"), "max_tokens": 3, "stream": true}),
    )
    .await;
    for e in r.sse().iter().filter(|e| *e != "[DONE]") {
        let c: Value = serde_json::from_str(e).unwrap();
        assert!(c.get("usage").is_none(), "{c}");
    }
}

#[tokio::test]
async fn streams_of_several_choices_carry_their_own_index_finish_and_logprobs() {
    let s = server();
    let body = json!({"messages": user("Hello"), "max_tokens": 6, "temperature": 1.0, "seed": 5, "n": 2,
        "logprobs": true, "top_logprobs": 1, "stream": true, "stream_options": {"include_usage": true}});
    let whole = chat(
        &s,
        json!({"messages": user("Hello"), "max_tokens": 6, "temperature": 1.0, "seed": 5, "n": 2}),
    )
    .await
    .json();
    let events = chat(&s, body).await.sse();
    let mut text = [String::new(), String::new()];
    let mut tokens = [0usize; 2];
    let mut finishes = [0usize; 2];
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let c: Value = serde_json::from_str(e).unwrap();
        for ch in c["choices"].as_array().unwrap() {
            let i = ch["index"].as_u64().unwrap() as usize;
            text[i].push_str(ch["delta"]["content"].as_str().unwrap_or(""));
            tokens[i] += ch["logprobs"]["content"].as_array().map_or(0, Vec::len);
            finishes[i] += ch["finish_reason"].is_string() as usize;
        }
    }
    assert_eq!(finishes, [1, 1]);
    for i in 0..2 {
        assert_eq!(
            text[i],
            whole["choices"][i]["message"]["content"].as_str().unwrap()
        );
    }
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(
        (tokens[0] + tokens[1]) as u64,
        usage["usage"]["completion_tokens"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn assistant_prefix_is_continued_and_developer_is_a_system_role() {
    let s = server();
    let msgs = json!([{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Well,", "prefix": true}]);
    let r = chat(&s, json!({"messages": msgs, "max_tokens": 3})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let msgs = json!([{"role": "assistant", "content": "Well,", "prefix": true}, {"role": "user", "content": "Hi"}]);
    let e = chat(&s, json!({"messages": msgs}))
        .await
        .error(StatusCode::BAD_REQUEST);
    assert_eq!(e["param"], "messages[0].prefix");
}

#[tokio::test]
async fn stop_strings_cut_the_output_and_report_stop() {
    let s = server();
    let full = chat(
        &s,
        json!({"messages": user("Hello"), "max_tokens": 20, "temperature": 0}),
    )
    .await
    .json();
    let text = full["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() > 6, "{text:?}");
    let stop: String = chars[3..5].iter().collect();
    let cut = &text[..text.find(&stop).unwrap()];
    for stream in [false, true] {
        let body = json!({"messages": user("Hello"), "max_tokens": 20, "temperature": 0, "stop": [stop], "stream": stream});
        let r = chat(&s, body).await;
        let (content, finish) = if stream {
            let mut content = String::new();
            let mut finish = String::new();
            for e in r.sse().iter().filter(|e| *e != "[DONE]") {
                let c: Value = serde_json::from_str(e).unwrap();
                content.push_str(c["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
                if let Some(f) = c["choices"][0]["finish_reason"].as_str() {
                    finish = f.into();
                }
            }
            (content, finish)
        } else {
            let v = r.json();
            (
                v["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                v["choices"][0]["finish_reason"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        };
        assert_eq!(content, cut, "stream={stream}");
        assert_eq!(finish, "stop");
    }
}

#[tokio::test]
async fn logprobs_list_each_token_with_sorted_alternatives() {
    let s = server();
    let v = chat(&s, json!({"messages": user("Hello"), "max_tokens": 8, "temperature": 0, "logprobs": true, "top_logprobs": 3}))
        .await
        .json();
    let c = &v["choices"][0];
    let content = c["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    let mut bytes = Vec::new();
    for t in content {
        let lp = t["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0);
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let lps: Vec<f64> = top.iter().map(|a| a["logprob"].as_f64().unwrap()).collect();
        assert!(lps.windows(2).all(|w| w[0] >= w[1]), "{lps:?}");
        // Greedy: the chosen token is the most likely one.
        assert_eq!(top[0]["token"], t["token"]);
        bytes.extend(
            t["bytes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8),
        );
    }
    assert_eq!(
        String::from_utf8_lossy(&bytes),
        c["message"]["content"].as_str().unwrap()
    );
    // Legacy completions: logprobs is a count.
    let r = send(
        &s.app,
        post(
            "/v1/completions",
            json!({"prompt": "Hello", "max_tokens": 4, "logprobs": 2, "temperature": 0})
                .to_string(),
        ),
    )
    .await;
    let v = r.json();
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 4);
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 4);
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
    assert_eq!(lp["text_offset"][0], 0);
}

#[tokio::test]
async fn completions_with_text_ids_batch_echo_and_stream() {
    let s = server();
    let r = send(
        &s.app,
        post(
            "/v1/completions",
            json!({"prompt": "Hello", "max_tokens": 5, "temperature": 0}).to_string(),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    let text = v["choices"][0]["text"].as_str().unwrap().to_string();
    let echo = send(
        &s.app,
        post(
            "/v1/completions",
            json!({"prompt": "Hello", "max_tokens": 5, "temperature": 0, "echo": true}).to_string(),
        ),
    )
    .await
    .json();
    assert_eq!(
        echo["choices"][0]["text"].as_str().unwrap(),
        format!("Hello{text}")
    );
    // The same prompt as token ids gives the same text.
    let ids = v3_tokenizer().encode("Hello", true).unwrap();
    let by_ids = send(
        &s.app,
        post(
            "/v1/completions",
            json!({"prompt": ids, "max_tokens": 5, "temperature": 0}).to_string(),
        ),
    )
    .await
    .json();
    assert_eq!(by_ids["choices"][0]["text"].as_str().unwrap(), text);
    // Two prompts × n=2 → four choices, indexed prompt-major.
    let batch = send(
        &s.app,
        post(
            "/v1/completions",
            json!({"prompt": ["Bye", "Hello"], "n": 2, "max_tokens": 5, "temperature": 0})
                .to_string(),
        ),
    )
    .await
    .json();
    let choices = batch["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    let idx: Vec<u64> = choices
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, vec![0, 1, 2, 3]);
    assert_eq!(choices[0]["text"], choices[1]["text"]);
    assert_eq!(choices[2]["text"].as_str().unwrap(), text);
    assert_eq!(choices[3]["text"].as_str().unwrap(), text);
    // Streaming.
    let r = send(
        &s.app,
        post(
            "/v1/completions",
            json!({"prompt": "Hello", "max_tokens": 5, "temperature": 0, "stream": true})
                .to_string(),
        ),
    )
    .await;
    let events = r.sse();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let mut streamed = String::new();
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e).unwrap();
        assert_eq!(c["object"], "text_completion");
        streamed.push_str(c["choices"][0]["text"].as_str().unwrap());
    }
    assert_eq!(streamed, text);
}

/// A schema a random model can finish: every value bounded.
fn bounded_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 8},
            "ok": {"type": "boolean"},
            "n": {"type": "integer", "minimum": 0, "maximum": 99},
            "kind": {"enum": ["a", "b"]}
        },
        "required": ["city", "ok", "n", "kind"],
        "additionalProperties": false
    })
}

fn check_bounded(v: &Value) {
    let o = v.as_object().unwrap();
    assert_eq!(o.len(), 4, "{v}");
    assert!(v["city"].as_str().unwrap().chars().count() <= 8);
    assert!(v["ok"].is_boolean());
    assert!((0..=99).contains(&v["n"].as_i64().unwrap()));
    assert!(["a", "b"].contains(&v["kind"].as_str().unwrap()));
}

#[tokio::test]
async fn json_schema_and_json_object_are_enforced() {
    let s = server();
    for seed in [1, 2, 3] {
        let body = json!({"messages": user("Give me JSON"), "max_tokens": 200, "temperature": 1.0, "seed": seed,
            "response_format": {"type": "json_schema", "json_schema": {"name": "t", "schema": bounded_schema(), "strict": true}}});
        let v = chat(&s, body).await.json();
        let c = &v["choices"][0];
        assert_eq!(c["finish_reason"], "stop", "{v}");
        let content = c["message"]["content"].as_str().unwrap();
        check_bounded(
            &serde_json::from_str(content).unwrap_or_else(|e| panic!("{e}: {content:?}")),
        );
    }
    let v = chat(
        &s,
        json!({"messages": user("JSON please"), "max_tokens": 200, "temperature": 0,
        "response_format": {"type": "json_object"}}),
    )
    .await
    .json();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    if v["choices"][0]["finish_reason"] == "stop" {
        assert!(
            serde_json::from_str::<Value>(content).unwrap().is_object(),
            "{content:?}"
        );
    } else {
        assert!(content.trim_start().starts_with('{'), "{content:?}");
    }
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}},
                       "required": ["city"], "additionalProperties": false}}})
}

#[tokio::test]
async fn forced_tool_choice_returns_parsed_tool_calls() {
    let s = server();
    for choice in [
        json!("required"),
        json!({"type": "function", "function": {"name": "get_weather"}}),
    ] {
        for stream in [false, true] {
            let body = json!({"messages": user("Weather in Paris?"), "max_tokens": 200, "temperature": 0,
                "tools": [weather_tool()], "tool_choice": choice, "parallel_tool_calls": false, "stream": stream});
            let r = chat(&s, body).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            let (calls, finish, content) = if stream {
                let mut calls = Vec::new();
                let mut finish = String::new();
                let mut content = String::new();
                for e in r.sse().iter().filter(|e| *e != "[DONE]") {
                    let c: Value = serde_json::from_str(e).unwrap();
                    let ch = &c["choices"][0];
                    if let Some(tc) = ch["delta"]["tool_calls"].as_array() {
                        calls.extend(tc.iter().cloned());
                    }
                    content.push_str(ch["delta"]["content"].as_str().unwrap_or(""));
                    if let Some(f) = ch["finish_reason"].as_str() {
                        finish = f.into();
                    }
                }
                (calls, finish, content)
            } else {
                let v = r.json();
                let m = &v["choices"][0]["message"];
                assert!(m["content"].is_null(), "{v}");
                (
                    m["tool_calls"].as_array().unwrap().clone(),
                    v["choices"][0]["finish_reason"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                    String::new(),
                )
            };
            assert_eq!(finish, "tool_calls");
            assert_eq!(content, "", "markup never leaks into content");
            assert_eq!(calls.len(), 1, "{calls:?}");
            let call = &calls[0];
            assert!(call["id"].as_str().unwrap().starts_with("call_"));
            assert_eq!(call["type"], "function");
            assert_eq!(call["function"]["name"], "get_weather");
            let args: Value =
                serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
            assert!(
                ["Paris", "Oslo"].contains(&args["city"].as_str().unwrap()),
                "{args}"
            );
        }
    }
}

#[tokio::test]
async fn auto_tool_choice_reports_tool_calls_only_when_calls_were_made() {
    let s = server();
    for seed in 0..4 {
        let body = json!({"messages": user("Weather?"), "max_tokens": 24, "temperature": 1.0, "seed": seed, "tools": [weather_tool()]});
        let v = chat(&s, body).await.json();
        let c = &v["choices"][0];
        let has_calls = c["message"]["tool_calls"]
            .as_array()
            .is_some_and(|a| !a.is_empty());
        assert_eq!(c["finish_reason"] == "tool_calls", has_calls, "{v}");
        if !has_calls {
            assert!(c["message"]["content"].is_string());
        }
    }
    // Tool results in the history render through the template.
    let msgs = json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    ]);
    let r = chat(
        &s,
        json!({"messages": msgs, "max_tokens": 4, "tools": [weather_tool()]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn reasoning_prompt_puts_output_in_reasoning_content() {
    let s = server_with(Settings::new("r1"), engine_config(), r1_tokenizer());
    let v = chat(
        &s,
        json!({"messages": user("Think"), "max_tokens": 12, "temperature": 0}),
    )
    .await
    .json();
    let m = &v["choices"][0]["message"];
    let reasoning = m["reasoning_content"].as_str().expect("reasoning_content");
    let content = m["content"].as_str().unwrap();
    assert!(!reasoning.is_empty() || !content.is_empty());
    assert_eq!(
        v["usage"]["completion_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .unwrap()
            > 0,
        !reasoning.is_empty()
    );
    // Streaming: reasoning arrives as delta.reasoning_content, in the same split.
    let r = chat(
        &s,
        json!({"messages": user("Think"), "max_tokens": 12, "temperature": 0, "stream": true}),
    )
    .await;
    let (mut sr, mut sc) = (String::new(), String::new());
    for e in r.sse().iter().filter(|e| *e != "[DONE]") {
        let c: Value = serde_json::from_str(e).unwrap();
        sr.push_str(
            c["choices"][0]["delta"]["reasoning_content"]
                .as_str()
                .unwrap_or(""),
        );
        sc.push_str(c["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    assert_eq!((sr.as_str(), sc.as_str()), (reasoning, content));
}

#[tokio::test]
async fn bad_requests_get_openai_errors_naming_the_field() {
    let s = server();
    let cases: Vec<(Body, &str, Option<&str>)> = vec![
        (Body::from("{\"messages\": ["), "not valid JSON", None),
        (Body::from(""), "empty", None),
        (Body::from(&b"{\"messages\": [{\"role\": \"user\", \"content\": \"\xff\"}]}"[..]), "UTF-8", None),
        (Body::from("[1, 2]"), "invalid", None),
        (Body::from(json!({"messages": "hi"}).to_string()), "messages", Some("messages")),
        (Body::from(json!({"messages": user("x"), "temperature": "hot"}).to_string()), "temperature", Some("temperature")),
        (Body::from(json!({"messages": user("x"), "max_tokens": -5}).to_string()), "max_tokens must be at least 1", Some("max_tokens")),
        (Body::from(json!({"messages": user("x"), "max_tokens": 0}).to_string()), "at least 1", Some("max_tokens")),
        (Body::from(json!({"messages": user("x"), "max_completion_tokens": -1}).to_string()), "at least 1", Some("max_completion_tokens")),
        (Body::from(json!({"messages": user("x"), "temperature": 7}).to_string()), "temperature", Some("temperature")),
        (Body::from(json!({"messages": user("x"), "top_p": 0}).to_string()), "top_p", Some("top_p")),
        (Body::from(json!({"messages": user("x"), "n": 0}).to_string()), "n must be", Some("n")),
        (Body::from(json!({"messages": user("x"), "n": 1000}).to_string()), "at most", Some("n")),
        (Body::from(json!({"messages": user("x"), "presence_penalty": 3}).to_string()), "presence_penalty", Some("presence_penalty")),
        (Body::from(json!({"messages": user("x"), "top_logprobs": 3}).to_string()), "logprobs", Some("top_logprobs")),
        (Body::from(json!({"messages": user("x"), "logprobs": true, "top_logprobs": 50}).to_string()), "top_logprobs", Some("top_logprobs")),
        (Body::from(json!({"messages": user("x"), "stop": ["a", ""]}).to_string()), "stop", Some("stop")),
        (Body::from(json!({"messages": user("x"), "stream_options": {"include_usage": true}}).to_string()), "stream", Some("stream_options")),
        (Body::from(json!({"messages": []}).to_string()), "empty", Some("messages")),
        (Body::from(json!({"messages": [{"role": "wizard", "content": "x"}]}).to_string()), "role", Some("messages[0].role")),
        (Body::from(json!({"messages": [{"role": "user"}]}).to_string()), "content", Some("messages[0].content")),
        (Body::from(json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}).to_string()), "text", Some("messages[0].content[0].type")),
        (Body::from(json!({"messages": user("x"), "response_format": {"type": "xml"}}).to_string()), "unknown variant", Some("response_format.type")),
        (Body::from(json!({"messages": user("x"), "response_format": {"type": "json_schema", "json_schema": {"name": "n"}}}).to_string()), "schema", Some("response_format.json_schema.schema")),
        (Body::from(json!({"messages": user("x"), "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}}}}).to_string()), "schema", Some("response_format")),
        (Body::from(json!({"messages": user("x"), "tool_choice": "sometimes", "tools": [weather_tool()]}).to_string()), "tool_choice", Some("tool_choice")),
        (Body::from(json!({"messages": user("x"), "tool_choice": "required"}).to_string()), "no tools", Some("tool_choice")),
        (Body::from(json!({"messages": user("x"), "tool_choice": {"type": "function", "function": {"name": "nope"}}, "tools": [weather_tool()]}).to_string()), "nope", Some("tool_choice")),
        (Body::from(json!({"messages": user("x"), "tools": [{"type": "function", "function": {}}]}).to_string()), "name", Some("tools[0].function.name")),
        (Body::from(json!({"messages": user("x"), "tools": [weather_tool(), weather_tool()]}).to_string()), "twice", Some("tools[1].function.name")),
    ];
    for (body, needle, param) in cases {
        let r = send(&s.app, post("/v1/chat/completions", body)).await;
        let e = r.error(StatusCode::BAD_REQUEST);
        assert_eq!(e["type"], "invalid_request_error");
        let msg = e["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
        if let Some(p) = param {
            assert_eq!(e["param"], p, "{msg}");
        }
    }
    // Completions-specific.
    for (body, param) in [
        (json!({"prompt": [999999]}), "prompt"),
        (json!({"prompt": "x", "logprobs": 50}), "logprobs"),
        (json!({"prompt": "x", "best_of": 3}), "best_of"),
        (json!({"prompt": "x", "suffix": "y"}), "suffix"),
        (json!({"prompt": []}), "prompt"),
        (json!({"prompt": "x", "max_tokens": -1}), "max_tokens"),
    ] {
        let e = send(&s.app, post("/v1/completions", body.to_string()))
            .await
            .error(StatusCode::BAD_REQUEST);
        assert_eq!(e["param"], param, "{e}");
    }
}

#[tokio::test]
async fn prompt_longer_than_the_context_is_a_400_saying_so() {
    let s = server();
    let long = "word ".repeat(1500);
    let e = chat(&s, json!({"messages": user(&long)}))
        .await
        .error(StatusCode::BAD_REQUEST);
    assert_eq!(e["code"], "context_length_exceeded");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("context holds 1024"), "{msg}");
    let e = send(
        &s.app,
        post("/v1/completions", json!({"prompt": long}).to_string()),
    )
    .await
    .error(StatusCode::BAD_REQUEST);
    assert_eq!(e["code"], "context_length_exceeded");
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let mut settings = Settings::new("v3");
    settings.max_body_bytes = 1000;
    let s = server_with(settings, engine_config(), v3_tokenizer());
    let big = json!({"messages": user(&"x".repeat(5000))}).to_string();
    let e = send(&s.app, post("/v1/chat/completions", big))
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE);
    assert!(e["message"].as_str().unwrap().contains("1000 bytes"));
}

#[tokio::test]
async fn api_keys_guard_v1_and_label_usage_without_revealing_secrets() {
    let dir = std::env::temp_dir().join(format!("moela-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("keys");
    std::fs::write(
        &file,
        "# team keys\nalice sk-alice-secret\n\nsk-anon-secret\n",
    )
    .unwrap();
    let mut settings = Settings::new("v3");
    settings.keys = ApiKeys::from_file(&file).unwrap();
    let s = server_with(settings, engine_config(), v3_tokenizer());
    let body = json!({"messages": user("Hi"), "max_tokens": 2}).to_string();
    let with = |key: Option<&str>| {
        let mut b = Request::builder()
            .method(Method::POST)
            .uri("/v1/chat/completions");
        if let Some(k) = key {
            b = b.header(header::AUTHORIZATION, k);
        }
        b.body(Body::from(body.clone())).unwrap()
    };
    let e = send(&s.app, with(None))
        .await
        .error(StatusCode::UNAUTHORIZED);
    assert_eq!(e["code"], "invalid_api_key");
    assert!(e["message"].as_str().unwrap().contains("missing"));
    send(&s.app, with(Some("Bearer wrong")))
        .await
        .error(StatusCode::UNAUTHORIZED);
    send(&s.app, with(Some("sk-alice-secret")))
        .await
        .error(StatusCode::UNAUTHORIZED);
    send(&s.app, get("/v1/models"))
        .await
        .error(StatusCode::UNAUTHORIZED);
    assert_eq!(
        send(&s.app, with(Some("Bearer sk-alice-secret")))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        send(&s.app, with(Some("Bearer sk-anon-secret")))
            .await
            .status,
        StatusCode::OK
    );
    // Health and metrics stay open.
    assert_eq!(send(&s.app, get("/health")).await.status, StatusCode::OK);
    let m = send(&s.app, get("/metrics")).await.text();
    assert!(
        m.contains("moela_key_requests_total{key=\"alice\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("moela_key_requests_total{key=\"key2\"} 1"),
        "{m}"
    );
    assert!(!m.contains("secret"));
    assert!(
        m.contains("moela_requests_total{endpoint=\"/v1/chat/completions\",status=\"401\"} 3"),
        "{m}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn cost_is_reported_per_request_and_per_key() {
    let mut settings = Settings::new("v3");
    settings.prices = Some(
        PriceTable::parse(r#"{"currency": "USD", "input_cache_hit": 1.0, "input_cache_miss": 2.0, "output": 4.0}"#).unwrap(),
    );
    let s = server_with(settings, engine_config(), v3_tokenizer());
    let v = chat(
        &s,
        json!({"messages": user("Hi"), "max_tokens": 5, "temperature": 0}),
    )
    .await
    .json();
    let u = &v["usage"];
    let cost = &u["cost"];
    assert_eq!(cost["currency"], "USD");
    let expect = u["prompt_cache_hit_tokens"].as_f64().unwrap() * 1e-6
        + u["prompt_cache_miss_tokens"].as_f64().unwrap() * 2e-6
        + u["completion_tokens"].as_f64().unwrap() * 4e-6;
    assert!(
        (cost["total"].as_f64().unwrap() - expect).abs() < 1e-12,
        "{cost}"
    );
    let m = send(&s.app, get("/metrics")).await.text();
    assert!(
        m.contains("moela_key_cost_total{key=\"anonymous\",currency=\"USD\"}"),
        "{m}"
    );
}

#[tokio::test]
async fn metrics_expose_engine_state_counters_and_histograms() {
    let s = server();
    chat(
        &s,
        json!({"messages": user("Hi"), "max_tokens": 3, "temperature": 0}),
    )
    .await;
    chat(
        &s,
        json!({"messages": user("Hi"), "max_tokens": 3, "temperature": 0, "stream": true}),
    )
    .await;
    chat(&s, json!({"messages": "bad"})).await;
    let r = send(&s.app, get("/metrics")).await;
    assert!(r.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let m = r.text();
    for name in [
        "moela_queue_depth ",
        "moela_running_sequences ",
        "moela_kv_cache_tokens ",
        "moela_kv_blocks_used ",
        "moela_kv_blocks_free ",
        "moela_prompt_tokens_total ",
        "moela_generation_tokens_total ",
        "moela_time_to_first_token_seconds_bucket{le=\"+Inf\"} 2",
        "moela_inter_token_latency_seconds_count 4",
        "moela_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"} 2",
        "moela_requests_total{endpoint=\"/v1/chat/completions\",status=\"400\"} 1",
    ] {
        assert!(m.contains(name), "{name} missing in\n{m}");
    }
    // Every line is a comment or `name{labels} value`.
    for line in m.lines().filter(|l| !l.starts_with('#')) {
        let (_, value) = line.rsplit_once(' ').unwrap();
        value.parse::<f64>().unwrap_or_else(|_| panic!("{line}"));
    }
}

#[tokio::test]
async fn full_queue_answers_429_with_retry_after_and_dropped_clients_free_the_engine() {
    let cfg = EngineConfig {
        max_batch: 1,
        max_queue: 1,
        ctx: 2048,
        ..Default::default()
    };
    let s = server_with(Settings::new("v3"), cfg, v3_tokenizer());
    let long = |stream: bool| {
        json!({"messages": user("Go on"), "max_tokens": 2000, "temperature": 0, "stream": stream})
            .to_string()
    };
    // A runs, B waits, C is refused.
    let a = s
        .app
        .clone()
        .oneshot(post("/v1/chat/completions", long(true)))
        .await
        .unwrap();
    assert_eq!(a.status(), StatusCode::OK);
    eventually("A running", || gauge(&s, "moela_running_sequences") == 1.0).await;
    let b = s
        .app
        .clone()
        .oneshot(post("/v1/chat/completions", long(true)))
        .await
        .unwrap();
    assert_eq!(b.status(), StatusCode::OK);
    let r = send(&s.app, post("/v1/chat/completions", long(false))).await;
    let e = r.error(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(e["type"], "rate_limit_error");
    assert_eq!(r.headers[header::RETRY_AFTER], "1");
    // Clients go away mid-stream: both requests are cancelled and their KV blocks freed.
    let mut a_body = a.into_body();
    let first = a_body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some());
    drop(a_body);
    drop(b);
    eventually("engine idle", || {
        gauge(&s, "moela_running_sequences") == 0.0
            && gauge(&s, "moela_queue_depth") == 0.0
            && gauge(&s, "moela_kv_blocks_used") == 0.0
    })
    .await;
    let steps = s
        .state
        .engine()
        .stats()
        .generated_tokens
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        steps < 2000 * 2,
        "cancelled requests stopped early ({steps} tokens)"
    );
    // And the server still answers.
    let r = chat(&s, json!({"messages": user("Hi"), "max_tokens": 2})).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn ignore_eos_generates_past_the_end_of_sequence_token() {
    let s = server();
    let body = |seed: u64, ignore: bool| {
        json!({"prompt": "Hello", "max_tokens": 48, "temperature": 2.0, "seed": seed,
               "ignore_eos": ignore})
        .to_string()
    };
    // A seed whose sample ends on EOS before max_tokens (the fixture has 512 tokens, so at
    // temperature 2 some of the first seeds do); the same seed with ignore_eos runs to the end.
    let mut found = None;
    for seed in 0..64 {
        let v = send(&s.app, post("/v1/completions", body(seed, false)))
            .await
            .json();
        if v["choices"][0]["finish_reason"] == "stop" {
            found = Some((seed, v));
            break;
        }
    }
    let (seed, stopped) = found.expect("some seed below 64 samples EOS within 48 tokens");
    let stopped_n = stopped["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(stopped_n < 48, "{stopped}");
    let r = send(&s.app, post("/v1/completions", body(seed, true))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 48, "{v}");
    let (short, long) = (
        stopped["choices"][0]["text"].as_str().unwrap(),
        v["choices"][0]["text"].as_str().unwrap(),
    );
    assert!(
        long.starts_with(short),
        "{short:?} is not a prefix of {long:?}"
    );
    let bad = send(
        &s.app,
        post(
            "/v1/completions",
            json!({"prompt": "Hi", "ignore_eos": 1}).to_string(),
        ),
    )
    .await;
    bad.error(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_request_the_engine_rejects_is_a_400_not_a_500() {
    // A pool of 2 blocks of 16 tokens: a request whose prompt and max_tokens need more can
    // never run. The engine says so as a rejection, and the client gets a 400 naming it.
    let cfg = EngineConfig {
        kv_blocks: 2,
        ..engine_config()
    };
    let s = server_with(Settings::new("v3"), cfg, v3_tokenizer());
    let r = chat(
        &s,
        json!({"messages": user("Hello"), "max_tokens": 200, "temperature": 0}),
    )
    .await;
    let e = r.error(StatusCode::BAD_REQUEST);
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("KV blocks") && msg.contains("pool has 2"),
        "{e}"
    );
    // A request that fits still runs on the same server.
    let ok = chat(
        &s,
        json!({"messages": user("Hello"), "max_tokens": 4, "temperature": 0}),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
}
