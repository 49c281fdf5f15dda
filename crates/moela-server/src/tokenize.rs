//! llama-server's `POST /tokenize` and `POST /detokenize`: the served model's tokenizer, raw
//! (no chat template).

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::generation::check_token_ids;
use crate::{AppState, BodyBytes};

/// `{"content": TEXT, "add_special": false, "with_pieces": false}`.
#[derive(Debug, Deserialize)]
pub struct TokenizeRequest {
    pub content: String,
    /// Add the tokenizer's own special tokens (BOS where it adds one).
    #[serde(default)]
    pub add_special: bool,
    /// Return `[{"id", "piece"}]` instead of ids.
    #[serde(default)]
    pub with_pieces: bool,
    /// Special tokens written in the text are always parsed (llama-server's default).
    #[serde(default)]
    pub parse_special: Option<bool>,
}

/// `{"tokens": [ID, ...]}`.
#[derive(Debug, Deserialize)]
pub struct DetokenizeRequest {
    pub tokens: Vec<i64>,
}

impl AppState {
    /// The answer of `/tokenize`: `{"tokens": [ids]}`, or with pieces
    /// `{"tokens": [{"id", "piece"}]}` where a piece that is not UTF-8 on its own (part of a
    /// character) is its list of bytes, as llama-server writes it.
    pub fn tokenize(&self, req: TokenizeRequest) -> Result<Value, ApiError> {
        if req.parse_special == Some(false) {
            return Err(ApiError::bad(
                "parse_special",
                "parse_special: false is not supported; special tokens in the text are parsed",
            ));
        }
        let ids = self.inner.tokenizer.encode(&req.content, req.add_special)?;
        if !req.with_pieces {
            return Ok(json!({ "tokens": ids }));
        }
        let table = &self.inner.table;
        let tokens: Vec<Value> = ids
            .iter()
            .map(|&id| {
                let bytes = table.bytes(id);
                let piece = match std::str::from_utf8(bytes) {
                    Ok(text) => json!(text),
                    Err(_) => json!(bytes),
                };
                json!({"id": id, "piece": piece})
            })
            .collect();
        Ok(json!({ "tokens": tokens }))
    }

    /// The answer of `/detokenize`: `{"content": TEXT}`; an id outside the vocabulary is a 400.
    pub fn detokenize(&self, req: DetokenizeRequest) -> Result<Value, ApiError> {
        let ids = check_token_ids(&req.tokens, self.inner.table.len(), "tokens")?;
        let content = self.inner.tokenizer.decode(&ids, false)?;
        Ok(json!({ "content": content }))
    }
}

/// `POST /tokenize`.
pub async fn tokenize(
    State(s): State<AppState>,
    BodyBytes(body): BodyBytes,
) -> Result<Json<Value>, ApiError> {
    crate::answer_json(s, body, AppState::tokenize).await
}

/// `POST /detokenize`.
pub async fn detokenize(
    State(s): State<AppState>,
    BodyBytes(body): BodyBytes,
) -> Result<Json<Value>, ApiError> {
    crate::answer_json(s, body, AppState::detokenize).await
}
