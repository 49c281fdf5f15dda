//! The HTTP service in-process: every error path, auth, cost, metrics, overload and
//! cancellation, on the tiny V3 reference checkpoint.

mod common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use common::{
    chat, engine_config, eventually, gauge, get, post, send, server, server_with, user,
    v3_tokenizer, weather_tool,
};
use http_body_util::BodyExt;
use moela_engine::EngineConfig;
use moela_server::{ApiKeys, PriceTable, Settings};
use serde_json::{json, Value};
use tower::ServiceExt;

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
        (Body::from(json!({"messages": user("x"), "thinking": {"type": "maybe"}}).to_string()), "enabled", Some("thinking.type")),
        (Body::from(json!({"messages": user("x"), "chat_template_kwargs": [1]}).to_string()), "object", Some("chat_template_kwargs")),
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
    let with_header = |name: &str, key: Option<&str>| {
        let mut b = Request::builder()
            .method(Method::POST)
            .uri("/v1/chat/completions");
        if let Some(k) = key {
            b = b.header(name, k);
        }
        b.body(Body::from(body.clone())).unwrap()
    };
    let with = |key: Option<&str>| with_header(header::AUTHORIZATION.as_str(), key);
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
    // Anthropic's header works too (a second request as alice); a wrong one is refused.
    assert_eq!(
        send(&s.app, with_header("x-api-key", Some("sk-alice-secret")))
            .await
            .status,
        StatusCode::OK
    );
    send(&s.app, with_header("x-api-key", Some("sk-alice-secreT")))
        .await
        .error(StatusCode::UNAUTHORIZED);
    // Health and metrics stay open.
    assert_eq!(send(&s.app, get("/health")).await.status, StatusCode::OK);
    let m = send(&s.app, get("/metrics")).await.text();
    assert!(
        m.contains("moela_key_requests_total{key=\"alice\",outcome=\"completed\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("moela_key_requests_total{key=\"key2\",outcome=\"completed\"} 1"),
        "{m}"
    );
    assert!(!m.contains("secret"));
    assert!(
        m.contains("moela_requests_total{endpoint=\"/v1/chat/completions\",status=\"401\"} 4"),
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
        m.contains(
            "moela_key_cost_total{key=\"anonymous\",outcome=\"completed\",currency=\"USD\"}"
        ),
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

/// The model's recommended sampling fills what a request leaves out; the request's own values
/// win. With a recommended temperature of 0, requests without one are greedy (OpenAI's default
/// of 1 would sample): two of them, unseeded, agree with an explicit `temperature: 0`.
#[tokio::test]
async fn model_sampling_defaults_fill_what_requests_leave_out() {
    let mut settings = Settings::new("v3");
    settings.sampling = moela_engine::SamplingDefaults {
        temperature: Some(0.0),
        ..Default::default()
    };
    let s = server_with(settings, engine_config(), v3_tokenizer());
    let text = |v: Value| {
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let ask = |extra: Value| {
        let mut body = json!({"messages": user("Tell me more"), "max_tokens": 16});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let a = text(chat(&s, ask(json!({}))).await.json());
    let b = text(chat(&s, ask(json!({}))).await.json());
    let greedy = text(chat(&s, ask(json!({"temperature": 0}))).await.json());
    assert_eq!(a, b);
    assert_eq!(a, greedy);
    // An explicit temperature still samples (seeded runs differ from greedy somewhere).
    let mut differs = false;
    for seed in 0..4 {
        let t = text(
            chat(&s, ask(json!({"temperature": 1.5, "seed": seed})))
                .await
                .json(),
        );
        differs |= t != greedy;
    }
    assert!(
        differs,
        "explicit temperatures were overridden by the default"
    );
}

/// More choices than the queue could ever hold is the request's fault: a 400 naming `n`, not a
/// 429 that no retry can satisfy (issue: `n: 12` with `--max-queue 8` on an idle server).
#[tokio::test]
async fn n_above_the_queue_is_a_400_not_a_429() {
    let s = server_with(Settings::new("v3"), engine_config(), v3_tokenizer());
    for _ in 0..2 {
        let r = chat(
            &s,
            json!({"messages": user("Hi"), "max_tokens": 2, "n": 12}),
        )
        .await;
        let e = r.error(StatusCode::BAD_REQUEST);
        assert_eq!(e["param"], "n");
        let msg = e["message"].as_str().unwrap();
        assert!(
            msg.contains("12 choices") && msg.contains("--max-queue"),
            "{msg}"
        );
    }
    // As many as the queue holds are served.
    let r = chat(&s, json!({"messages": user("Hi"), "max_tokens": 2, "n": 8})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["choices"].as_array().unwrap().len(), 8);
}

/// Streams cut by their clients are billed: one `cancelled` request each, their prompts, and
/// every token the engine sent them, buffered or not (issue: 10 cut streams generated 914
/// tokens and 315 were billed).
#[tokio::test]
async fn cancelled_streams_are_billed_for_every_token_sent() {
    let cfg = EngineConfig {
        ctx: 2048,
        ..engine_config()
    };
    let s = server_with(Settings::new("v3"), cfg, v3_tokenizer());
    let body =
        json!({"messages": user("Go on"), "max_tokens": 400, "temperature": 0, "stream": true})
            .to_string();
    let mut bodies = Vec::new();
    for _ in 0..4 {
        let r = s
            .app
            .clone()
            .oneshot(post("/v1/chat/completions", body.clone()))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        bodies.push(r.into_body());
    }
    // Each client reads a few events while the engine runs ahead of them, then goes away.
    for b in &mut bodies {
        for _ in 0..3 {
            b.frame().await.unwrap().unwrap();
        }
    }
    eventually("tokens buffered beyond what was read", || {
        gauge(&s, "moela_generation_tokens_total") > 40.0
    })
    .await;
    drop(bodies);
    eventually("engine idle", || {
        gauge(&s, "moela_running_sequences") == 0.0 && gauge(&s, "moela_kv_blocks_used") == 0.0
    })
    .await;
    let cancelled = |name: &str| {
        gauge(
            &s,
            &format!("{name}{{key=\"anonymous\",outcome=\"cancelled\"}}"),
        )
    };
    let generated = gauge(&s, "moela_generation_tokens_total");
    let billed = cancelled("moela_key_completion_tokens_total");
    assert_eq!(cancelled("moela_key_requests_total"), 4.0);
    // At most the token each sequence produced after its client left is not billed.
    assert!(
        billed <= generated && billed >= generated - 4.0,
        "billed {billed} of {generated} generated tokens"
    );
    assert_eq!(
        cancelled("moela_key_prompt_tokens_total"),
        gauge(&s, "moela_prompt_tokens_total")
    );
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
