//! What a load balancer in front of several `moela serve` replicas reads from each one
//! (SGLang's router, `sglang-router`; docs/deploy.md): `GET /server_info` and `GET /model_info`
//! when it registers a worker (also answered under their older names `/get_server_info` and
//! `/get_model_info`, which the router tries after a 404 and proxies for its own clients), and
//! `GET /get_load` behind the router's `/get_loads`. Readiness is `/health` (503 while
//! draining). Every value is this server's configuration or a live engine counter; fields
//! Moela has no value for are left out, never filled with a guess.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::AppState;

/// `GET /server_info`: the served model's id (the router's model id for this worker) and the
/// engine's limits under SGLang's names: `max_running_requests` (sequences per step),
/// `max_total_tokens` (KV-cache pool, tokens), `page_size` (tokens per KV block).
pub(crate) async fn server_info(State(s): State<AppState>) -> Json<Value> {
    let cfg = s.engine().config();
    let pool_tokens = cfg.pool_blocks().checked_mul(cfg.block_tokens);
    let mut info = json!({
        "served_model_name": s.inner.settings.model_name,
        "version": env!("CARGO_PKG_VERSION"),
        "context_length": cfg.ctx,
        "max_running_requests": cfg.max_batch,
        "max_queued_requests": cfg.max_queue,
        "page_size": cfg.block_tokens,
        "prefix_caching": cfg.prefix_caching,
    });
    if let Some(tokens) = pool_tokens {
        info["max_total_tokens"] = tokens.into();
    }
    Json(info)
}

/// `GET /model_info`: the checkpoint's `model_type` and that it generates text. No
/// `model_path`/`tokenizer_path`: the router would try to load a tokenizer from them, and this
/// server's file paths are not the client's business.
pub(crate) async fn model_info(State(s): State<AppState>) -> Json<Value> {
    let settings = &s.inner.settings;
    let mut info = json!({
        "served_model_name": settings.model_name,
        "is_generation": true,
    });
    if let Some(t) = &settings.model_type {
        info["model_type"] = t.as_str().into();
    }
    Json(info)
}

/// `GET /get_load`: one entry (Moela runs one engine per process, data-parallel rank 0):
/// `num_reqs` = running + queued requests, `num_waiting_reqs` = queued, `num_tokens` = tokens
/// in the running sequences' KV caches.
pub(crate) async fn get_load(State(s): State<AppState>) -> Json<Value> {
    let st = s.engine().stats();
    let queued = st.queued.load(Ordering::Relaxed);
    let running = st.running.load(Ordering::Relaxed);
    Json(json!([{
        "dp_rank": 0,
        "num_reqs": running.saturating_add(queued),
        "num_waiting_reqs": queued,
        "num_tokens": st.kv_tokens.load(Ordering::Relaxed),
    }]))
}
