//! The HTTP service in-process: constrained decoding (JSON schema, JSON object), tool calls
//! and reasoning output, on the tiny V3 reference checkpoint.

mod common;

use axum::http::StatusCode;
use common::{chat, engine_config, r1_tokenizer, server, server_with, user, weather_tool};
use moela_server::Settings;
use serde_json::{json, Value};

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
