//! The one error type of the server and its one mapping to HTTP: status, headers and the
//! OpenAI error body `{"error": {"message", "type", "param", "code"}}` — or, on Anthropic's
//! routes, Anthropic's `{"type": "error", "error": {"type", "message"}}` ([`ApiError::anthropic`]).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use moela_engine::SubmitError;
use serde::Serialize;

/// Everything a request can fail with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or asks for something invalid (400).
    #[error("{message}")]
    BadRequest {
        message: String,
        /// The offending field, e.g. `messages[2].content` or `max_tokens`.
        param: Option<String>,
    },
    /// The prompt does not fit the context (400, `context_length_exceeded`).
    #[error("{0}")]
    ContextLength(String),
    /// No API key, or a wrong one (401).
    #[error("{0}")]
    Unauthorized(String),
    /// No such route or model (404).
    #[error("{0}")]
    NotFound(String),
    /// The route exists, the method does not (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The client was too slow sending its request (408).
    #[error("{0}")]
    Timeout(String),
    /// The body is larger than the server accepts (413).
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The queue is full (429 with `Retry-After`).
    #[error("{message}")]
    Overloaded { message: String, retry_after_s: u32 },
    /// The server is shutting down (503).
    #[error("{0}")]
    Unavailable(String),
    /// Something failed inside the server or engine (500).
    #[error("{0}")]
    Internal(String),
}

impl From<moela_engine::Failure> for ApiError {
    /// A request the engine rejects is a 400, a full KV cache a 503, an engine fault a 500.
    fn from(f: moela_engine::Failure) -> ApiError {
        use moela_engine::Failure;
        match f {
            Failure::Rejected(m) => ApiError::invalid(m),
            Failure::Busy(m) => ApiError::Unavailable(m),
            Failure::Fault(m) => ApiError::Internal(format!("generation failed: {m}")),
        }
    }
}

impl ApiError {
    /// A 400 naming the offending field.
    pub fn bad(param: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            message: message.into(),
            param: Some(param.into()),
        }
    }

    /// A 400 about the request as a whole.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            message: message.into(),
            param: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } | ApiError::ContextLength(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `error.type`.
    fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. }
            | ApiError::ContextLength(_)
            | ApiError::NotFound(_)
            | ApiError::MethodNotAllowed(_)
            | ApiError::PayloadTooLarge { .. }
            | ApiError::Timeout(_) => "invalid_request_error",
            ApiError::Unauthorized(_) => "authentication_error",
            ApiError::Overloaded { .. } => "rate_limit_error",
            ApiError::Unavailable(_) | ApiError::Internal(_) => "server_error",
        }
    }

    /// OpenAI's `error.code`.
    fn code(&self) -> Option<&'static str> {
        match self {
            ApiError::ContextLength(_) => Some("context_length_exceeded"),
            ApiError::Unauthorized(_) => Some("invalid_api_key"),
            ApiError::NotFound(_) => Some("not_found"),
            ApiError::PayloadTooLarge { .. } => Some("request_too_large"),
            ApiError::Timeout(_) => Some("request_timeout"),
            ApiError::Overloaded { .. } => Some("server_overloaded"),
            _ => None,
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            ApiError::BadRequest { param, .. } => param.as_deref(),
            ApiError::ContextLength(_) => Some("messages"),
            _ => None,
        }
    }

    /// The OpenAI error body (also sent as an SSE event when a stream fails midway).
    pub fn body(&self) -> serde_json::Value {
        #[derive(Serialize)]
        struct Body<'a> {
            message: String,
            #[serde(rename = "type")]
            kind: &'a str,
            param: Option<&'a str>,
            code: Option<&'a str>,
        }
        serde_json::json!({
            "error": Body {
                message: self.to_string(),
                kind: self.kind(),
                param: self.param(),
                code: self.code(),
            }
        })
    }
}

/// Which API's error shape a response takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Anthropic,
}

impl ApiError {
    /// Anthropic's status: the same as OpenAI's, except a full queue, which Anthropic reports
    /// as 529 (overloaded).
    pub fn anthropic_status(&self) -> StatusCode {
        match self {
            ApiError::Overloaded { .. } => StatusCode::from_u16(529).unwrap_or(self.status()),
            _ => self.status(),
        }
    }

    /// Anthropic's `error.type`.
    fn anthropic_kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. }
            | ApiError::ContextLength(_)
            | ApiError::MethodNotAllowed(_)
            | ApiError::Timeout(_) => "invalid_request_error",
            ApiError::Unauthorized(_) => "authentication_error",
            ApiError::NotFound(_) => "not_found_error",
            ApiError::PayloadTooLarge { .. } => "request_too_large",
            ApiError::Overloaded { .. } | ApiError::Unavailable(_) => "overloaded_error",
            ApiError::Internal(_) => "api_error",
        }
    }

    /// Anthropic's error body (also the data of a stream's `error` event). A 400 about one
    /// field names it first, as Anthropic does (`max_tokens: Field required`).
    pub fn anthropic(&self) -> serde_json::Value {
        let message = match self.param() {
            Some(p) if !self.to_string().contains(p) => format!("{p}: {self}"),
            _ => self.to_string(),
        };
        serde_json::json!({
            "type": "error",
            "error": {"type": self.anthropic_kind(), "message": message},
        })
    }

    /// The response in `dialect`'s shape.
    pub fn response(&self, dialect: Dialect) -> Response {
        let (status, body) = match dialect {
            Dialect::OpenAi => (self.status(), self.body()),
            Dialect::Anthropic => (self.anthropic_status(), self.anthropic()),
        };
        let mut resp = (status, axum::Json(body)).into_response();
        let headers = resp.headers_mut();
        match &self {
            ApiError::Overloaded { retry_after_s, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
            }
            ApiError::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(1u32));
            }
            ApiError::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        // Kept for the layer that re-renders errors of Anthropic's routes in their shape.
        resp.extensions_mut().insert(self.clone());
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.response(Dialect::OpenAi)
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> ApiError {
        match e {
            SubmitError::QueueFull { .. } => ApiError::Overloaded {
                message: e.to_string(),
                retry_after_s: 1,
            },
            SubmitError::PromptTooLong { .. } => ApiError::ContextLength(e.to_string()),
            SubmitError::Invalid(m) => ApiError::invalid(m),
            SubmitError::ShuttingDown => ApiError::Unavailable(e.to_string()),
        }
    }
}

impl From<moela_text::TextError> for ApiError {
    /// Text errors reachable from a request are about its content (a template's
    /// `raise_exception`, a message the template cannot render).
    fn from(e: moela_text::TextError) -> ApiError {
        match e {
            moela_text::TextError::NoChatTemplate => ApiError::invalid(
                "this model has no chat template; use /v1/completions with a raw prompt",
            ),
            e => ApiError::invalid(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moela_engine::Failure;

    #[test]
    fn anthropic_errors_have_anthropics_types_and_statuses() {
        let cases = [
            (
                ApiError::bad("max_tokens", "field required"),
                400,
                "invalid_request_error",
            ),
            (
                ApiError::Unauthorized("no".into()),
                401,
                "authentication_error",
            ),
            (ApiError::NotFound("no".into()), 404, "not_found_error"),
            (
                ApiError::PayloadTooLarge { limit: 1 },
                413,
                "request_too_large",
            ),
            (
                ApiError::Overloaded {
                    message: "full".into(),
                    retry_after_s: 1,
                },
                529,
                "overloaded_error",
            ),
            (
                ApiError::Unavailable("draining".into()),
                503,
                "overloaded_error",
            ),
            (ApiError::Internal("bug".into()), 500, "api_error"),
        ];
        for (e, status, kind) in cases {
            let resp = e.response(Dialect::Anthropic);
            assert_eq!(resp.status().as_u16(), status, "{e:?}");
            assert_eq!(resp.extensions().get::<ApiError>(), Some(&e));
            let body = e.anthropic();
            assert_eq!(body["type"], "error");
            assert_eq!(body["error"]["type"], kind, "{e:?}");
            assert!(body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
            assert_eq!(body.as_object().map(|o| o.len()), Some(2), "{body}");
            // The OpenAI shape of the same error keeps OpenAI's status.
            assert_eq!(e.response(Dialect::OpenAi).status(), e.status());
        }
        let e = ApiError::bad("max_tokens", "field required").anthropic();
        assert_eq!(e["error"]["message"], "max_tokens: field required");
        let e = ApiError::bad("top_k", "top_k must be positive").anthropic();
        assert_eq!(e["error"]["message"], "top_k must be positive");
    }

    #[test]
    fn engine_failures_map_to_client_busy_and_server_statuses() {
        let status = |f| ApiError::from(f).status();
        assert_eq!(
            status(Failure::Rejected("x".into())),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(Failure::Busy("x".into())),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(Failure::Fault("x".into())),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
