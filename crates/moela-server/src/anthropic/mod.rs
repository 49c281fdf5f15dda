//! Anthropic's Messages API: `POST /v1/messages` and `POST /v1/messages/count_tokens`.
//!
//! A message request is mapped onto the chat route's request ([`request`]) and planned and run
//! by the same pipeline (template, tools, reasoning split, constrained decoding, billing,
//! cancellation); only the answer's shape is Anthropic's (`generation/run/messages.rs`), and so
//! are the errors of these routes ([`errors_in_anthropic_shape`]).

mod request;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::{Extension, Json};

pub use request::MessagesRequest;

use crate::error::{ApiError, Dialect};
use crate::generation::Plan;
use crate::{parse_json, AppState, BodyBytes, KeyLabel};

/// Whether a path is one of Anthropic's routes (whose errors take Anthropic's shape).
pub fn is_anthropic_path(path: &str) -> bool {
    path == "/v1/messages" || path.starts_with("/v1/messages/")
}

/// Re-renders every error response of Anthropic's routes — authentication, draining, body
/// limits, planning, generation — in Anthropic's shape and statuses.
pub async fn errors_in_anthropic_shape(req: Request, next: Next) -> Response {
    let anthropic = is_anthropic_path(req.uri().path());
    let resp = next.run(req).await;
    match resp.extensions().get::<ApiError>() {
        Some(e) if anthropic => e.response(Dialect::Anthropic),
        _ => resp,
    }
}

impl AppState {
    /// Plans a message request as the chat request it means.
    pub fn plan_messages(&self, req: MessagesRequest) -> Result<Plan, ApiError> {
        Ok(self.plan_chat(req.into_chat(false)?)?.answer_as_messages())
    }

    /// The prompt tokens of a message request, as `/v1/messages` would count them.
    fn count_message_tokens(&self, req: MessagesRequest) -> Result<usize, ApiError> {
        Ok(self.plan_chat(req.into_chat(true)?)?.prompt_tokens())
    }
}

/// `POST /v1/messages`.
pub async fn messages(
    State(s): State<AppState>,
    Extension(KeyLabel(key)): Extension<KeyLabel>,
    BodyBytes(body): BodyBytes,
) -> Result<Response, ApiError> {
    crate::generate(s, key, body, |s, b| s.plan_messages(parse_json(b)?)).await
}

/// `POST /v1/messages/count_tokens`: `{"input_tokens": N}`.
pub async fn count_tokens(
    State(s): State<AppState>,
    BodyBytes(body): BodyBytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    crate::answer_json(s, body, |s, req: MessagesRequest| {
        let n = s.count_message_tokens(req)?;
        Ok(serde_json::json!({ "input_tokens": n }))
    })
    .await
}

#[cfg(test)]
mod tests;
