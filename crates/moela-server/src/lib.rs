//! moela-server: an OpenAI- and DeepSeek-compatible HTTP API over the Moela engine.
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions` (JSON or SSE), Anthropic's
//! `POST /v1/messages` (JSON or SSE) and `POST /v1/messages/count_tokens`, `GET /v1/models`,
//! `GET /v1/models/{id}`, llama-server's `POST /tokenize` and `POST /detokenize`,
//! `GET /health`, `GET /metrics` (Prometheus text), the chat page at `GET /` with its files
//! under `/ui/` (`ui.rs`, no key needed), and what a router in front of several replicas reads:
//! `GET /server_info`, `GET /model_info`, `GET /get_load` (`worker_info.rs`).
//!
//! * Only this crate knows HTTP. Every failure is an [`ApiError`], mapped to a status and an
//!   OpenAI error body in one place (`error.rs`); Anthropic's routes re-render it in
//!   Anthropic's shape.
//! * [`router`] builds the whole service around an [`AppState`] and is tested without sockets;
//!   [`serve`] binds it, runs it on a Tokio runtime and drains on SIGTERM/SIGINT.
//! * `response_format` and forced `tool_choice` are enforced by constrained decoding
//!   (`constraint.rs`, llguidance), applied after any reasoning block.

mod anthropic;
mod auth;
mod constraint;
mod error;
mod generation;
mod listen;
mod metrics;
mod pricing;
mod protocol;
mod tokenize;
mod tools;
mod ui;
mod util;
mod worker_info;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use moela_engine::{EngineConfig, EngineHandle};
use moela_model::Model;
use moela_text::Tokenizer;
use serde::de::DeserializeOwned;

pub use auth::{ApiKeys, KeyError, ANONYMOUS};
pub use constraint::{CompiledGrammar, Grammars, TokenTable};
pub use error::ApiError;
pub use listen::{default_max_connections, ConnLimits};
pub use metrics::{KeyUsage, Metrics};
pub use pricing::{PriceError, PriceTable};
pub use tools::{parse_tools, tool_call_grammar, CallFormat, ToolSplitter};
pub use ui::CONTENT_SECURITY_POLICY;

/// `system_fingerprint` of every response.
pub const FINGERPRINT: &str = concat!("moela-", env!("CARGO_PKG_VERSION"));

/// Default cap on request bodies.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;

/// What `moela serve` passes in.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    pub api_key: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub price_file: Option<PathBuf>,
    /// The id reported by `/v1/models` and in responses.
    pub model_name: String,
    pub engine: EngineConfig,
    pub max_body_bytes: usize,
    /// How long SIGTERM waits for running requests before closing them.
    pub drain_timeout: Duration,
    /// Open connections and the header-read / idle timeout.
    pub limits: ConnLimits,
    /// Time a client has to send a request body once its headers arrived (408 after).
    pub body_timeout: Duration,
    /// The model's recommended sampling ([`Settings::sampling`]).
    pub sampling: moela_engine::SamplingDefaults,
}

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Prices(#[from] PriceError),
    #[error("both --api-key and --api-key-file were given; use one")]
    TwoKeySources,
    #[error("server I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Per-server settings the handlers read.
#[derive(Debug, Clone)]
pub struct Settings {
    pub model_name: String,
    pub keys: ApiKeys,
    pub prices: Option<PriceTable>,
    pub max_body_bytes: usize,
    /// See [`ServeOptions::body_timeout`].
    pub body_timeout: Duration,
    /// The model's recommended sampling, for fields a request leaves out.
    pub sampling: moela_engine::SamplingDefaults,
    /// The context the model was trained for (`max_position_embeddings`), when known; shown by
    /// `/v1/models` as llama-server's `n_ctx_train`.
    pub train_ctx: Option<usize>,
    /// The checkpoint's `model_type` (`deepseek_v3`, `qwen2`, …), shown by `/model_info`.
    pub model_type: Option<String>,
}

/// Default of [`ServeOptions::body_timeout`].
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

impl Settings {
    pub fn new(model_name: impl Into<String>) -> Settings {
        Settings {
            model_name: model_name.into(),
            keys: ApiKeys::none(),
            prices: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            sampling: moela_engine::SamplingDefaults::default(),
            train_ctx: None,
            model_type: None,
        }
    }
}

/// Shared state of all handlers. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    engine: EngineHandle,
    tokenizer: Tokenizer,
    table: Arc<TokenTable>,
    /// `None` when the tokenizer has no end-of-sequence token.
    grammars: Option<Grammars>,
    stop_ids: Vec<u32>,
    settings: Settings,
    metrics: Metrics,
    created: u64,
    template_reads_tools: bool,
    call_format: CallFormat,
    draining: AtomicBool,
    /// Bounds the request work done off the async runtime (tokenizing, rendering templates,
    /// compiling grammars) to one job per core.
    cpu_work: tokio::sync::Semaphore,
    /// Generation requests not yet answered in full (planning, queued, running, streaming).
    active: Arc<AtomicUsize>,
}

/// Counts one open generation request while it lives (see `Inner::active`).
pub(crate) struct Active(Arc<AtomicUsize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl AppState {
    /// `vocab_size`: the model's (logits length); `stop_ids`: every token that ends generation.
    pub fn new(
        engine: EngineHandle,
        tokenizer: Tokenizer,
        vocab_size: usize,
        stop_ids: Vec<u32>,
        settings: Settings,
    ) -> AppState {
        let table = Arc::new(TokenTable::new(&tokenizer, vocab_size));
        let grammars = Grammars::new(table.clone(), &stop_ids).ok();
        let template = tokenizer.chat_template();
        let metrics = Metrics::new(settings.prices.as_ref().map(|p| p.currency.clone()));
        AppState {
            inner: Arc::new(Inner {
                template_reads_tools: template.is_some_and(tools::template_reads_tools),
                call_format: CallFormat::of(template),
                engine,
                tokenizer,
                table,
                grammars,
                stop_ids,
                settings,
                metrics,
                created: util::unix_time(),
                draining: AtomicBool::new(false),
                cpu_work: tokio::sync::Semaphore::new(
                    std::thread::available_parallelism().map_or(2, |n| n.get()),
                ),
                active: Arc::new(AtomicUsize::new(0)),
            }),
        }
    }

    /// Marks a generation request open until the returned guard drops.
    pub(crate) fn active(&self) -> Active {
        self.inner.active.fetch_add(1, Ordering::SeqCst);
        Active(self.inner.active.clone())
    }

    /// Generation requests still open.
    pub fn open_requests(&self) -> usize {
        self.inner.active.load(Ordering::SeqCst)
    }

    /// Runs `work` (a request's CPU-heavy planning) on the blocking pool, at most one job per
    /// core at a time, so that a hostile prompt or tool list never holds the async workers that
    /// answer `/health`, other requests and streams.
    pub async fn off_runtime<T: Send + 'static>(
        &self,
        work: impl FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let _permit = self
            .inner
            .cpu_work
            .acquire()
            .await
            .map_err(|_| ApiError::Unavailable("the server is shutting down".into()))?;
        let state = self.clone();
        tokio::task::spawn_blocking(move || work(&state))
            .await
            .map_err(|_| ApiError::Internal("internal error while preparing the request".into()))?
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn engine(&self) -> &EngineHandle {
        &self.inner.engine
    }

    /// Parses and plans a request body as `endpoint` does — JSON, validation, prompt rendering
    /// and tokenizing, grammar compilation — without starting the generation. For the fuzz
    /// targets (`crates/moela-fuzz`).
    #[doc(hidden)]
    pub fn plan_body(&self, endpoint: PlanEndpoint, body: &[u8]) -> Result<(), ApiError> {
        match endpoint {
            PlanEndpoint::Chat => self.plan_chat(parse_json(body)?).map(drop),
            PlanEndpoint::Completion => self.plan_completion(parse_json(body)?).map(drop),
            PlanEndpoint::Messages => self.plan_messages(parse_json(body)?).map(drop),
        }
    }
}

/// The request bodies [`AppState::plan_body`] plans.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub enum PlanEndpoint {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/completions`.
    Completion,
    /// Anthropic's `POST /v1/messages`.
    Messages,
}

/// The API key a request was made with (its name), set by the auth layer.
#[derive(Debug, Clone)]
struct KeyLabel(String);

/// The whole HTTP service.
pub fn router(state: AppState) -> Router {
    let limit = state.inner.settings.max_body_bytes;
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route("/server_info", get(worker_info::server_info))
        .route("/get_server_info", get(worker_info::server_info))
        .route("/model_info", get(worker_info::model_info))
        .route("/get_model_info", get(worker_info::model_info))
        .route("/get_load", get(worker_info::get_load))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_while_draining,
        ));
    Router::new()
        .merge(v1)
        .merge(ui::routes())
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(catch_panics))
        .layer(middleware::from_fn(anthropic::errors_in_anthropic_shape))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Binds, serves until SIGTERM/SIGINT, drains running requests, stops the engine.
pub fn serve(
    opts: ServeOptions,
    model: Arc<Model>,
    tokenizer: Tokenizer,
) -> Result<(), ServerError> {
    let keys = match (&opts.api_key, &opts.api_key_file) {
        (Some(_), Some(_)) => return Err(ServerError::TwoKeySources),
        (Some(k), None) => ApiKeys::single(k)?,
        (None, Some(f)) => ApiKeys::from_file(f)?,
        (None, None) => ApiKeys::none(),
    };
    let prices = opts
        .price_file
        .as_deref()
        .map(PriceTable::from_file)
        .transpose()?;
    let stop_ids = moela_engine::stop_token_ids(&tokenizer, &model.config);
    let vocab_size = model.config.vocab_size;
    let settings = Settings {
        model_name: opts.model_name.clone(),
        keys,
        prices,
        max_body_bytes: opts.max_body_bytes,
        body_timeout: opts.body_timeout,
        sampling: opts.sampling,
        train_ctx: Some(model.config.max_position_embeddings),
        model_type: Some(model.config.model_type.as_str().to_string()),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("moela-http")
        .enable_all()
        .build()?;
    let engine = rt.block_on(async move {
        let addr = format!("{}:{}", opts.host, opts.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: addr.clone(),
                source,
            })?;
        let local: SocketAddr = listener.local_addr()?;
        let engine = EngineHandle::start(model, tokenizer.clone(), opts.engine.clone());
        let state = AppState::new(engine.clone(), tokenizer, vocab_size, stop_ids, settings);
        let auth = if state.inner.settings.keys.is_enabled() {
            "API key required"
        } else {
            "no API key"
        };
        eprintln!(
            "moela: serving {} on http://{local} ({auth}; max batch {}, queue {}, context {})",
            opts.model_name, opts.engine.max_batch, opts.engine.max_queue, opts.engine.ctx
        );
        let server = tokio::spawn(listen::serve_connections(
            listener,
            router(state.clone()),
            opts.limits,
        ));
        shutdown_signal().await;
        // Drain: the listener stays open and answers new requests 503 (and /health 503) while
        // the open ones finish, up to the drain timeout; then those still open are ended with an
        // error event (streams also get `[DONE]`).
        state.inner.draining.store(true, Ordering::SeqCst);
        let grace = opts.drain_timeout;
        eprintln!(
            "moela: shutting down: draining {} open requests (up to {grace:?}; new ones get 503)",
            state.open_requests()
        );
        let deadline = tokio::time::Instant::now() + grace;
        while state.open_requests() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if state.open_requests() > 0 {
            eprintln!(
                "moela: drain timeout ({grace:?}) reached; ending {} open requests",
                state.open_requests()
            );
            engine.abort_all();
            let flush = tokio::time::Instant::now() + Duration::from_secs(2);
            while state.open_requests() > 0 && tokio::time::Instant::now() < flush {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Let the last bytes of finished streams reach their sockets.
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.abort();
        Ok::<_, ServerError>(engine)
    })?;
    // Shutting the runtime down drops any connection still open after the drain timeout, and
    // with it its engine receivers, which cancels those requests; then the engine stops.
    rt.shutdown_timeout(Duration::from_secs(2));
    engine.shutdown();
    eprintln!("moela: stopped");
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

// ---------------------------------------------------------------- middleware

/// Route label for metrics: a known route, else `other` (bounded label set).
fn endpoint_label(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/completions" => "/v1/completions",
        "/v1/messages" => "/v1/messages",
        "/v1/messages/count_tokens" => "/v1/messages/count_tokens",
        "/v1/models" => "/v1/models",
        "/tokenize" => "/tokenize",
        "/detokenize" => "/detokenize",
        "/health" => "/health",
        "/metrics" => "/metrics",
        "/server_info" | "/get_server_info" => "/server_info",
        "/model_info" | "/get_model_info" => "/model_info",
        "/get_load" => "/get_load",
        "/" => "/",
        p if p.starts_with("/v1/models/") => "/v1/models/{id}",
        p if p.starts_with("/ui/") => "/ui/{file}",
        _ => "other",
    }
}

/// Counts every response by endpoint and status.
async fn track(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let endpoint = endpoint_label(req.uri().path());
    let resp = next.run(req).await;
    s.inner
        .metrics
        .count_request(endpoint, resp.status().as_u16());
    resp
}

/// A handler that panics (a bug) answers 500 instead of dropping the connection.
async fn catch_panics(req: Request, next: Next) -> Response {
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(next.run(req))
        .catch_unwind()
        .await
    {
        Ok(resp) => resp,
        Err(_) => {
            ApiError::Internal("internal error while handling the request".into()).into_response()
        }
    }
}

/// While draining, new `/v1/` requests get 503 with `Retry-After` (the listener stays open, so
/// clients and load balancers see why instead of a refused connection).
async fn refuse_while_draining(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if s.inner.draining.load(Ordering::SeqCst) {
        return ApiError::Unavailable(
            "the server is shutting down; retry on another instance".into(),
        )
        .into_response();
    }
    next.run(req).await
}

/// Checks the bearer key on `/v1/` routes and labels the request with the key's name.
async fn authenticate(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let keys = &s.inner.settings.keys;
    let label = if keys.is_enabled() {
        let value = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.trim().is_empty())
        };
        let (bearer, x_api_key) = (value(header::AUTHORIZATION.as_str()), value("x-api-key"));
        match keys.check(bearer, x_api_key) {
            Some(name) => name,
            None => {
                let msg = if bearer.is_none() && x_api_key.is_none() {
                    "missing API key: send it as \"Authorization: Bearer KEY\" or \"x-api-key: KEY\""
                } else {
                    "incorrect API key"
                };
                return ApiError::Unauthorized(msg.into()).into_response();
            }
        }
    } else {
        ANONYMOUS.to_string()
    };
    req.extensions_mut().insert(KeyLabel(label));
    next.run(req).await
}

// ---------------------------------------------------------------- body extraction

/// A request body, size-capped; parsed with [`parse_json`] off the async runtime (a body of
/// megabytes takes milliseconds to parse).
struct BodyBytes(Bytes);

impl FromRequest<AppState> for BodyBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.inner.settings.body_timeout;
        let read = tokio::time::timeout(limit, Bytes::from_request(req, state))
            .await
            .map_err(|_| {
                ApiError::Timeout(format!(
                    "the request body did not arrive within {} s",
                    limit.as_secs_f64()
                ))
            })?;
        let bytes = read.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge {
                    limit: state.inner.settings.max_body_bytes,
                }
            } else {
                ApiError::invalid(format!("cannot read the request body: {}", e.body_text()))
            }
        })?;
        Ok(BodyBytes(bytes))
    }
}

/// Parses a request body (UTF-8 checked), naming the offending field on error.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ApiError::invalid(format!(
            "the request body is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        ))
    })?;
    if text.trim().is_empty() {
        return Err(ApiError::invalid(
            "the request body is empty; expected a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::invalid(format!("the request body is not valid JSON: {inner}"))
        } else if path == "." {
            ApiError::invalid(format!("invalid request: {inner}"))
        } else {
            ApiError::bad(path.clone(), format!("invalid value for {path}: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::invalid(format!("the request body is not valid JSON: {e}")))?;
    Ok(value)
}

// ---------------------------------------------------------------- handlers

/// A generation request: planned off the async runtime by `plan`, then run.
async fn generate(
    s: AppState,
    key: String,
    body: Bytes,
    plan: fn(&AppState, &[u8]) -> Result<generation::Plan, ApiError>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let _planning = s.active();
    let plan = s.off_runtime(move |s| plan(s, &body)).await?;
    generation::execute(s, plan, key, arrived).await
}

/// A JSON request answered by `answer`, off the async runtime.
async fn answer_json<T: DeserializeOwned + 'static>(
    s: AppState,
    body: Bytes,
    answer: fn(&AppState, T) -> Result<serde_json::Value, ApiError>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let out = s
        .off_runtime(move |s| answer(s, parse_json(&body)?))
        .await?;
    Ok(Json(out))
}

async fn chat_completions(
    State(s): State<AppState>,
    Extension(KeyLabel(key)): Extension<KeyLabel>,
    BodyBytes(body): BodyBytes,
) -> Result<Response, ApiError> {
    generate(s, key, body, |s, b| s.plan_chat(parse_json(b)?)).await
}

async fn completions(
    State(s): State<AppState>,
    Extension(KeyLabel(key)): Extension<KeyLabel>,
    BodyBytes(body): BodyBytes,
) -> Result<Response, ApiError> {
    generate(s, key, body, |s, b| s.plan_completion(parse_json(b)?)).await
}

/// The served model; its context under the names clients read: vLLM's `max_model_len`,
/// `context_length` (OpenRouter, LM Studio), and llama-server's `meta` (`n_ctx`, `n_ctx_train`,
/// `n_vocab`).
fn model_object(s: &AppState) -> serde_json::Value {
    let ctx = s.inner.engine.config().ctx;
    let mut meta = serde_json::json!({"n_ctx": ctx, "n_vocab": s.inner.table.len()});
    if let Some(train) = s.inner.settings.train_ctx {
        meta["n_ctx_train"] = train.into();
    }
    serde_json::json!({
        "id": s.inner.settings.model_name,
        "object": "model",
        "created": s.inner.created,
        "owned_by": "moela",
        "max_model_len": ctx,
        "context_length": ctx,
        "meta": meta,
    })
}

async fn list_models(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({"object": "list", "data": [model_object(&s)]}))
}

async fn get_model(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if id == s.inner.settings.model_name {
        Ok(Json(model_object(&s)))
    } else {
        Err(ApiError::NotFound(format!(
            "the model {id:?} does not exist"
        )))
    }
}

async fn health(State(s): State<AppState>) -> Response {
    if s.inner.draining.load(Ordering::SeqCst) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "draining"})),
        )
            .into_response()
    } else {
        Json(serde_json::json!({"status": "ok"})).into_response()
    }
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    let body = s.inner.metrics.render(s.inner.engine.stats());
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_name_the_field() {
        let e = parse_json::<protocol::ChatRequest>(br#"{"messages": [], "temperature": "hot"}"#)
            .unwrap_err();
        assert!(
            matches!(&e, ApiError::BadRequest { param: Some(p), .. } if p == "temperature"),
            "{e:?}"
        );
        let e = parse_json::<protocol::ChatRequest>(br#"{"messages": [{"role": 5}]}"#).unwrap_err();
        assert!(
            matches!(&e, ApiError::BadRequest { param: Some(p), .. } if p == "messages[0].role"),
            "{e:?}"
        );
        let e = parse_json::<protocol::ChatRequest>(b"{\"messages\": [").unwrap_err();
        assert!(e.to_string().contains("not valid JSON"), "{e}");
        let e = parse_json::<protocol::ChatRequest>(b"{\"messages\": [\xff]}").unwrap_err();
        assert!(e.to_string().contains("UTF-8"), "{e}");
        let e = parse_json::<protocol::ChatRequest>(br#"{"messages": []} x"#).unwrap_err();
        assert!(e.to_string().contains("not valid JSON"), "{e}");
    }
}
