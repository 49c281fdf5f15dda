//! What a router in front of several replicas reads from each (`worker_info.rs`, docs/deploy.md):
//! `/server_info` and `/model_info` (also under their `/get_` names) from the configuration,
//! `/get_load` from the engine's live counters; keyed like `/v1/models`.

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::*;
use moela_server::{ApiKeys, Settings};
use serde_json::json;

#[tokio::test]
async fn server_and_model_info_report_the_served_model_and_the_engine_limits() {
    let mut settings = Settings::new("v3");
    settings.model_type = Some(model().config.model_type.as_str().into());
    let cfg = engine_config();
    let s = server_with(settings, cfg.clone(), v3_tokenizer());
    for path in ["/server_info", "/get_server_info"] {
        let r = send(&s.app, get(path)).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
        let v = r.json();
        assert_eq!(v["served_model_name"], "v3", "{v}");
        assert_eq!(v["max_running_requests"], cfg.max_batch);
        assert_eq!(v["max_queued_requests"], cfg.max_queue);
        assert_eq!(v["context_length"], cfg.ctx);
        assert_eq!(v["page_size"], cfg.block_tokens);
        assert_eq!(
            v["max_total_tokens"],
            cfg.pool_blocks() * cfg.block_tokens,
            "{v}"
        );
        assert_eq!(v["prefix_caching"], true);
        // No path: the router would try to load a tokenizer from it.
        assert!(v.get("model_path").is_none(), "{v}");
    }
    for path in ["/model_info", "/get_model_info"] {
        let v = send(&s.app, get(path)).await.json();
        assert_eq!(
            v,
            json!({"served_model_name": "v3", "model_type": "deepseek_v3", "is_generation": true})
        );
    }
}

#[tokio::test]
async fn get_load_follows_the_engine() {
    let s = server();
    let idle = json!([{"dp_rank": 0, "num_reqs": 0, "num_waiting_reqs": 0, "num_tokens": 0}]);
    assert_eq!(send(&s.app, get("/get_load")).await.json(), idle);
    let body = json!({"messages": user("Go on"), "max_tokens": 1000, "temperature": 0,
                      "ignore_eos": true, "stream": true});
    let app = s.app.clone();
    let running =
        tokio::spawn(
            async move { send(&app, post("/v1/chat/completions", body.to_string())).await },
        );
    eventually("a running sequence with cached tokens", || {
        gauge(&s, "moela_running_sequences") == 1.0 && gauge(&s, "moela_kv_cache_tokens") > 0.0
    })
    .await;
    let load = send(&s.app, get("/get_load")).await.json();
    assert_eq!(load[0]["num_reqs"], 1, "{load}");
    assert_eq!(load[0]["num_waiting_reqs"], 0, "{load}");
    assert!(
        load[0]["num_tokens"].as_u64().is_some_and(|n| n > 0),
        "{load}"
    );
    assert_eq!(running.await.unwrap().status, StatusCode::OK);
    eventually("an idle engine", || {
        gauge(&s, "moela_running_sequences") == 0.0
    })
    .await;
    assert_eq!(send(&s.app, get("/get_load")).await.json(), idle);
}

#[tokio::test]
async fn worker_info_needs_the_key_like_the_model_list() {
    let mut settings = Settings::new("v3");
    settings.keys = ApiKeys::single("sk-router").unwrap();
    let s = server_with(settings, engine_config(), v3_tokenizer());
    for path in ["/server_info", "/model_info", "/get_load"] {
        send(&s.app, get(path))
            .await
            .error(StatusCode::UNAUTHORIZED);
        let keyed = Request::builder()
            .uri(path)
            .header(header::AUTHORIZATION, "Bearer sk-router")
            .body(Body::empty())
            .unwrap();
        assert_eq!(send(&s.app, keyed).await.status, StatusCode::OK, "{path}");
    }
    let m = send(&s.app, get("/metrics")).await.text();
    assert!(
        m.contains("moela_requests_total{endpoint=\"/server_info\",status=\"200\"} 1"),
        "{m}"
    );
}
