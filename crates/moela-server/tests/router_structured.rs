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

/// `tool_choice` "required" / named on models that call tools in DSML (DeepSeek V3.2, V4,
/// V4.1's encoders over the tiny checkpoint): the grammar writes the dialect's block, the
/// completion parser reads it back into `tool_calls`, arguments following the schema (an enum
/// string raw, a bounded integer as JSON). (In thinking mode the grammar waits for `</think>`,
/// as for every constraint: `ThinkWatch`.)
#[tokio::test]
async fn forced_tool_choice_in_dsml() {
    let tool = json!({"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {
            "city": {"enum": ["Paris", "Oslo"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "days"]}}});
    for format in ["deepseek_v32", "deepseek_v4", "deepseek_v41"] {
        let format = moela_text::ChatFormat::deepseek_by_name(format).unwrap();
        // The tiny vocabulary spells the tools section and the markup in many tokens.
        let cfg = moela_engine::EngineConfig {
            ctx: 2048,
            ..engine_config()
        };
        let s = server_with(
            Settings::new("v3"),
            cfg,
            common::v3_tokenizer().with_chat_format(format),
        );
        for choice in [
            json!("required"),
            json!({"type": "function", "function": {"name": "get_weather"}}),
        ] {
            let body = json!({"messages": user("Weather in Paris?"), "max_tokens": 800,
                "temperature": 0, "tools": [tool], "tool_choice": choice,
                "thinking": {"type": "disabled"}});
            let r = chat(&s, body).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            let v = r.json();
            let choice0 = &v["choices"][0];
            assert_eq!(choice0["finish_reason"], "tool_calls", "{v}");
            let calls = choice0["message"]["tool_calls"].as_array().unwrap();
            assert!(!calls.is_empty(), "{v}");
            for call in calls {
                assert_eq!(call["function"]["name"], "get_weather", "{v}");
                let args: Value =
                    serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
                assert!(
                    ["Paris", "Oslo"].contains(&args["city"].as_str().unwrap()),
                    "{args}"
                );
                let days = args["days"].as_i64().unwrap();
                assert!((1..=7).contains(&days), "{args}");
            }
            let content = choice0["message"]["content"].as_str().unwrap_or("");
            assert!(
                !content.contains("DSML"),
                "markup leaked into content: {content:?}"
            );
        }
        // "auto" with a response_format: either the JSON answer or calls, never other text.
        for seed in 0..4 {
            let body = json!({"messages": user("Weather in Paris?"), "max_tokens": 800,
                "temperature": 1.0, "seed": seed, "tools": [tool], "thinking": {"type": "disabled"},
                "response_format": {"type": "json_schema", "json_schema": {"name": "b", "schema": bounded_schema()}}});
            let v = chat(&s, body).await.json();
            let m = &v["choices"][0]["message"];
            match v["choices"][0]["finish_reason"].as_str() {
                Some("tool_calls") => {
                    assert!(!m["tool_calls"].as_array().unwrap().is_empty(), "{v}")
                }
                Some("stop") => {
                    check_bounded(&serde_json::from_str(m["content"].as_str().unwrap()).unwrap())
                }
                _ => panic!("{v}"),
            }
        }
    }
}
