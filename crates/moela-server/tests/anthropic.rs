//! Anthropic's Messages API and llama-server's tokenize endpoints, through the router on the
//! tiny V3 reference checkpoint.

mod common;

use axum::http::{header, StatusCode};
use common::*;
use moela_server::{ApiKeys, Settings};
use serde_json::{json, Value};

async fn messages(s: &Server, body: Value) -> Reply {
    send(&s.app, post("/v1/messages", body.to_string())).await
}

/// The events of an Anthropic stream: (event name, data).
fn events(r: &Reply) -> Vec<(String, Value)> {
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.text()
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let name = e.lines().find_map(|l| l.strip_prefix("event: ")).unwrap();
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            let data: Value = serde_json::from_str(data).unwrap();
            assert_eq!(data["type"], name, "{e}");
            (name.to_string(), data)
        })
        .collect()
}

/// Rebuilds the message a stream describes, checking the event order on the way.
fn replay(events: &[(String, Value)]) -> Value {
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[..2], ["message_start", "ping"], "{names:?}");
    assert_eq!(
        names[names.len() - 2..],
        ["message_delta", "message_stop"],
        "{names:?}"
    );
    let mut msg = events[0].1["message"].clone();
    assert_eq!(msg["content"], json!([]));
    assert!(msg["stop_reason"].is_null());
    let mut content: Vec<Value> = Vec::new();
    let mut open = None;
    for (name, d) in &events[2..events.len() - 2] {
        match name.as_str() {
            "content_block_start" => {
                assert!(open.is_none(), "{names:?}");
                assert_eq!(d["index"], content.len());
                open = Some(content.len());
                content.push(d["content_block"].clone());
            }
            "content_block_delta" => {
                assert_eq!(Some(d["index"].as_u64().unwrap() as usize), open);
                let b = content.last_mut().unwrap();
                let delta = &d["delta"];
                let (field, text) = match delta["type"].as_str().unwrap() {
                    "text_delta" => ("text", &delta["text"]),
                    "thinking_delta" => ("thinking", &delta["thinking"]),
                    "input_json_delta" => ("partial_json", &delta["partial_json"]),
                    other => panic!("delta {other}"),
                };
                let old = b[field].as_str().unwrap_or("").to_string();
                b[field] = json!(old + text.as_str().unwrap());
            }
            "content_block_stop" => {
                assert_eq!(Some(d["index"].as_u64().unwrap() as usize), open);
                open = None;
            }
            other => panic!("unexpected event {other}"),
        }
    }
    assert!(open.is_none());
    for b in &mut content {
        if let Some(j) = b.as_object_mut().unwrap().remove("partial_json") {
            b["input"] = serde_json::from_str(j.as_str().unwrap()).unwrap();
        }
    }
    msg["content"] = json!(content);
    let delta = &events[events.len() - 2].1;
    msg["stop_reason"] = delta["delta"]["stop_reason"].clone();
    msg["stop_sequence"] = delta["delta"]["stop_sequence"].clone();
    msg["usage"] = delta["usage"].clone();
    msg
}

fn text_of(msg: &Value) -> String {
    msg["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "text")
        .map(|b| b["text"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_message_equals_the_whole_one_and_usage_adds_up() {
    let s = server();
    let body = json!({"model": "v3", "max_tokens": 12, "temperature": 0,
        "system": "You answer briefly and precisely. ".repeat(12), "messages": [{"role": "user", "content": "Hello there"}]});
    let whole = messages(&s, body.clone()).await;
    assert_eq!(whole.status, StatusCode::OK, "{}", whole.text());
    let whole = whole.json();
    assert_eq!(whole["type"], "message");
    assert_eq!(whole["role"], "assistant");
    assert!(whole["id"].as_str().unwrap().starts_with("msg_"));
    assert!(["end_turn", "max_tokens"].contains(&whole["stop_reason"].as_str().unwrap()));
    assert!(whole["stop_sequence"].is_null());
    let mut streamed_body = body.clone();
    streamed_body["stream"] = json!(true);
    let streamed = replay(&events(&messages(&s, streamed_body).await));
    assert_eq!(streamed["content"], whole["content"]);
    assert_eq!(streamed["stop_reason"], whole["stop_reason"]);
    assert_eq!(text_of(&streamed), text_of(&whole));
    // The prompt is `input_tokens` + `cache_read_input_tokens`, as count_tokens counts it; the
    // repeated prompt came from the prefix cache.
    let counted = send(&s.app, post("/v1/messages/count_tokens", body.to_string())).await;
    let n = counted.json()["input_tokens"].as_u64().unwrap();
    for u in [&whole["usage"], &streamed["usage"]] {
        let total =
            u["input_tokens"].as_u64().unwrap() + u["cache_read_input_tokens"].as_u64().unwrap();
        assert_eq!(total, n, "{u}");
        assert_eq!(u["cache_creation_input_tokens"], 0);
    }
    assert_eq!(whole["usage"]["cache_read_input_tokens"], 0);
    assert!(
        streamed["usage"]["cache_read_input_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    let out = whole["usage"]["output_tokens"].as_u64().unwrap();
    assert!((1..=12).contains(&out), "{whole}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_sequences_and_max_tokens_set_the_stop_reason() {
    let s = server();
    let body = |stop: Option<&str>| {
        let mut b = json!({"max_tokens": 24, "temperature": 0,
            "messages": [{"role": "user", "content": "Count with me"}]});
        if let Some(stop) = stop {
            b["stop_sequences"] = json!(["never-seen-stop", stop]);
        }
        b
    };
    let free = messages(&s, body(None)).await.json();
    let text = text_of(&free);
    assert_eq!(free["stop_reason"], "max_tokens", "{free}");
    // A piece of the greedy answer as a stop sequence ends it right before its first place.
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 8, "{text:?}");
    let stop: String = chars[4..7].iter().collect();
    let stopped = messages(&s, body(Some(&stop))).await.json();
    assert_eq!(stopped["stop_reason"], "stop_sequence", "{stopped}");
    assert_eq!(stopped["stop_sequence"], stop.as_str());
    assert_eq!(text_of(&stopped), text[..text.find(&stop).unwrap()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn forced_tools_come_back_as_tool_use_blocks() {
    let s = server();
    let tool = json!({"name": "get_weather", "description": "Weather of a city",
        "input_schema": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}},
                         "required": ["city"], "additionalProperties": false}});
    for choice in [
        json!({"type": "any", "disable_parallel_tool_use": true}),
        json!({"type": "tool", "name": "get_weather"}),
    ] {
        let body = json!({"max_tokens": 200, "temperature": 0, "tools": [tool],
            "tool_choice": choice, "messages": [{"role": "user", "content": "Weather?"}]});
        let whole = messages(&s, body.clone()).await.json();
        assert_eq!(whole["stop_reason"], "tool_use", "{whole}");
        let blocks = whole["content"].as_array().unwrap();
        let call = blocks.iter().find(|b| b["type"] == "tool_use").unwrap();
        assert_eq!(call["name"], "get_weather");
        assert!(["Paris", "Oslo"].contains(&call["input"]["city"].as_str().unwrap()));
        assert!(call["id"].as_str().unwrap().starts_with("toolu_"));
        let mut sb = body.clone();
        sb["stream"] = json!(true);
        let evs = events(&messages(&s, sb).await);
        assert!(evs
            .iter()
            .any(|(_, d)| d["delta"]["type"] == "input_json_delta"));
        let streamed = replay(&evs);
        assert_eq!(streamed["stop_reason"], "tool_use");
        let scall = streamed["content"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["type"] == "tool_use")
            .unwrap()
            .clone();
        assert_eq!(scall["input"], call["input"]);
        // The result goes back as a tool_result block and the conversation continues.
        let next = json!({"max_tokens": 4, "tools": [tool], "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": blocks},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"],
                                          "content": "sunny"}]}]});
        let r = messages(&s, next).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn output_config_format_is_enforced() {
    let s = server();
    let schema = json!({"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}},
        "required": ["city"], "additionalProperties": false});
    let body = json!({"max_tokens": 200, "temperature": 0,
        "output_config": {"format": {"type": "json_schema", "schema": schema}},
        "messages": [{"role": "user", "content": "City?"}]});
    let whole = messages(&s, body).await.json();
    assert_eq!(whole["stop_reason"], "end_turn", "{whole}");
    let v: Value = serde_json::from_str(&text_of(&whole)).unwrap();
    assert!(
        ["Paris", "Oslo"].contains(&v["city"].as_str().unwrap()),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reasoning_comes_back_as_thinking_blocks() {
    let s = server_with(Settings::new("r1"), engine_config(), r1_tokenizer());
    let body = json!({"max_tokens": 16, "temperature": 0,
        "messages": [{"role": "user", "content": "Think"}]});
    let whole = messages(&s, body.clone()).await.json();
    let first = &whole["content"][0];
    assert_eq!(first["type"], "thinking", "{whole}");
    assert!(!first["thinking"].as_str().unwrap().is_empty());
    let mut sb = body;
    sb["stream"] = json!(true);
    let evs = events(&messages(&s, sb).await);
    assert!(evs
        .iter()
        .any(|(_, d)| d["delta"]["type"] == "thinking_delta"));
    assert_eq!(replay(&evs)["content"], whole["content"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_take_anthropics_shape_on_its_routes_only() {
    let mut settings = Settings::new("v3");
    settings.keys = ApiKeys::single("sk-right").unwrap();
    let s = server_with(settings, engine_config(), v3_tokenizer());
    let req = |path: &str, key: &str, body: Value| {
        let mut r = post(path, body.to_string());
        r.headers_mut().insert("x-api-key", key.parse().unwrap());
        r.headers_mut()
            .insert("anthropic-version", "2023-06-01".parse().unwrap());
        r
    };
    let anthropic_error = |r: &Reply, status: u16, kind: &str| {
        assert_eq!(r.status.as_u16(), status, "{}", r.text());
        let v = r.json();
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], kind, "{v}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    };
    let ok = json!({"max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]});
    let r = send(&s.app, req("/v1/messages", "sk-wrong", ok.clone())).await;
    anthropic_error(&r, 401, "authentication_error");
    let r = send(&s.app, req("/v1/messages", "sk-right", ok.clone())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let no_max = json!({"messages": [{"role": "user", "content": "hi"}]});
    let r = send(&s.app, req("/v1/messages", "sk-right", no_max)).await;
    anthropic_error(&r, 400, "invalid_request_error");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("max_tokens"));
    let r = send(
        &s.app,
        req("/v1/messages", "sk-right", json!({"max_tokens": 2})),
    )
    .await;
    anthropic_error(&r, 400, "invalid_request_error");
    let r = send(&s.app, req("/v1/messages/nope", "sk-right", ok.clone())).await;
    anthropic_error(&r, 404, "not_found_error");
    let r = send(&s.app, req("/v1/messages/count_tokens", "sk-wrong", ok)).await;
    anthropic_error(&r, 401, "authentication_error");
    // The OpenAI routes keep OpenAI's shape.
    let r = send(&s.app, req("/v1/chat/completions", "sk-wrong", json!({}))).await;
    assert_eq!(
        r.error(StatusCode::UNAUTHORIZED)["type"],
        "authentication_error"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tokenize_detokenize_and_model_context() {
    let s = server();
    let tok = v3_tokenizer();
    let text = "Hello wörld, 你好";
    let r = send(
        &s.app,
        post("/tokenize", json!({"content": text}).to_string()),
    )
    .await;
    let ids: Vec<u32> = serde_json::from_value(r.json()["tokens"].clone()).unwrap();
    assert_eq!(ids, tok.encode(text, false).unwrap());
    let r = send(
        &s.app,
        post(
            "/tokenize",
            json!({"content": text, "with_pieces": true}).to_string(),
        ),
    )
    .await;
    let pieces = r.json()["tokens"].as_array().unwrap().clone();
    assert_eq!(pieces.len(), ids.len());
    let mut bytes = Vec::new();
    for (p, id) in pieces.iter().zip(&ids) {
        assert_eq!(p["id"], *id);
        match &p["piece"] {
            Value::String(t) => bytes.extend_from_slice(t.as_bytes()),
            Value::Array(b) => bytes.extend(b.iter().map(|x| x.as_u64().unwrap() as u8)),
            other => panic!("piece {other}"),
        }
    }
    assert_eq!(String::from_utf8(bytes).unwrap(), text);
    let r = send(
        &s.app,
        post("/detokenize", json!({"tokens": ids}).to_string()),
    )
    .await;
    assert_eq!(r.json()["content"], text);
    for bad in [
        json!([-1]),
        json!([u64::from(u32::MAX) + 1]),
        json!([1, 10_000_000]),
    ] {
        let r = send(
            &s.app,
            post("/detokenize", json!({"tokens": bad}).to_string()),
        )
        .await;
        assert_eq!(r.error(StatusCode::BAD_REQUEST)["param"], "tokens");
    }
    let r = send(&s.app, get("/v1/models")).await;
    let m = &r.json()["data"][0];
    assert_eq!(m["context_length"], 1024);
    assert_eq!(m["max_model_len"], 1024);
    assert_eq!(m["meta"]["n_ctx"], 1024);
    let r = send(&s.app, get("/v1/models")).await;
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
}
