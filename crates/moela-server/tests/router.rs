//! The HTTP service in-process (no sockets): every route, the OpenAI/DeepSeek response shapes,
//! sampling, streaming, stop strings, logprobs and `ignore_eos`, on the tiny V3 reference checkpoint
//! (random weights: the text is gibberish but deterministic). Constrained decoding, tools and
//! reasoning: `router_structured.rs`; errors, auth, cost, metrics and overload: `router_ops.rs`.

mod common;

use axum::http::{header, StatusCode};
use common::{chat, get, post, send, server, user, v3_tokenizer};
use serde_json::{json, Value};

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
