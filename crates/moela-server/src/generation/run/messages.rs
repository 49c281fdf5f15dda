//! Anthropic's shape of a run's output (`POST /v1/messages`): one message of content blocks —
//! `thinking` (the reasoning), `text`, `tool_use` — whole, or as Anthropic's event stream
//! (`message_start`, `ping`, `content_block_start` / `_delta` / `_stop` per block,
//! `message_delta` with the stop reason and usage, `message_stop`).

use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use moela_text::JsonValue;
use serde::Serialize;
use serde_json::json;

use super::{ChoiceState, Piece, Run};
use crate::protocol::UsageOut;

/// One content block. Tool inputs keep the model's key order.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    /// `signature` is empty: the reasoning is the model's own text, nothing to verify.
    Thinking {
        thinking: String,
        signature: String,
    },
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: JsonValue,
    },
}

/// Anthropic's usage: `input_tokens` are the prompt tokens computed for this request,
/// `cache_read_input_tokens` those served from the prefix cache (the prompt is their sum).
/// The cache is automatic, so nothing is billed as a cache write.
#[derive(Debug, Clone, Serialize)]
struct Usage {
    input_tokens: usize,
    output_tokens: usize,
    cache_creation_input_tokens: usize,
    cache_read_input_tokens: usize,
}

impl From<&UsageOut> for Usage {
    fn from(u: &UsageOut) -> Usage {
        Usage {
            input_tokens: u.prompt_cache_miss_tokens,
            output_tokens: u.completion_tokens,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: u.prompt_cache_hit_tokens,
        }
    }
}

#[derive(Debug, Serialize)]
struct Message<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<Block>,
    stop_reason: Option<&'static str>,
    stop_sequence: Option<String>,
    usage: Usage,
}

/// The kind of the block a stream has open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Thinking,
    Text,
    ToolUse,
}

/// A stream's blocks: the one open, and how many were started (the next one's index).
#[derive(Debug, Default)]
pub(super) struct Blocks {
    open: Option<Open>,
    started: usize,
}

/// An SSE event of Anthropic's stream: the event name is the data's `type`.
pub(super) fn event<T: Serialize>(name: &str, data: &T) -> SseEvent {
    SseEvent::default()
        .event(name)
        .data(serde_json::to_string(data).unwrap_or_else(|_| "{}".into()))
}

/// The `ping` event (also the stream's keep-alive).
pub(super) fn ping() -> SseEvent {
    event("ping", &json!({"type": "ping"}))
}

/// A finished choice's calls as `tool_use` blocks (Anthropic ids). Arguments that are not a
/// JSON object (malformed output under `auto`) cannot be a tool input: they come back as text.
fn call_blocks(c: &ChoiceState) -> Vec<Block> {
    c.calls
        .iter()
        .map(|call| match JsonValue::parse(&call.function.arguments) {
            Ok(input @ JsonValue::Object(_)) => Block::ToolUse {
                id: format!("toolu_{}", call.id.trim_start_matches("call_")),
                name: call.function.name.clone(),
                input,
            },
            _ => Block::Text {
                text: call.function.arguments.clone(),
            },
        })
        .collect()
}

/// `stop_reason` and `stop_sequence` of a finished choice.
fn stop_reason(c: &ChoiceState, blocks: &[Block]) -> (&'static str, Option<String>) {
    let called = blocks.iter().any(|b| matches!(b, Block::ToolUse { .. }));
    match (c.finish, &c.stop_sequence) {
        (Some("tool_calls"), _) if called => ("tool_use", None),
        (Some("length"), _) => ("max_tokens", None),
        (_, Some(s)) => ("stop_sequence", Some(s.clone())),
        _ => ("end_turn", None),
    }
}

impl Run {
    fn message(&self, content: Vec<Block>, usage: Usage) -> Message<'_> {
        Message {
            id: &self.id,
            kind: "message",
            role: "assistant",
            model: &self.state.inner.settings.model_name,
            content,
            stop_reason: None,
            stop_sequence: None,
            usage,
        }
    }

    /// The whole message (a messages request has one choice).
    pub(super) fn message_response(&self, usage: &UsageOut) -> Response {
        let mut msg = self.message(Vec::new(), usage.into());
        if let Some(c) = self.choices.first() {
            if !c.reasoning_text.is_empty() {
                msg.content.push(Block::Thinking {
                    thinking: c.reasoning_text.clone(),
                    signature: String::new(),
                });
            }
            if !c.content.is_empty() {
                msg.content.push(Block::Text {
                    text: c.content.clone(),
                });
            }
            let calls = call_blocks(c);
            let (reason, sequence) = stop_reason(c, &calls);
            msg.content.extend(calls);
            msg.stop_reason = Some(reason);
            msg.stop_sequence = sequence;
        }
        axum::Json(msg).into_response()
    }

    /// `message_start` (the prompt's tokens as `input_tokens`: the cache split comes with
    /// `message_delta`) and a `ping`.
    pub(super) fn message_opening(&self) -> Vec<SseEvent> {
        let prompt = self.plan.prompts.first().map_or(0, Vec::len);
        let usage = Usage {
            input_tokens: prompt,
            output_tokens: 0,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: 0,
        };
        let start = json!({"type": "message_start", "message": self.message(Vec::new(), usage)});
        vec![event("message_start", &start), ping()]
    }

    /// Closes the open block, if any.
    fn close_block(&mut self, out: &mut Vec<SseEvent>) {
        if self.blocks.open.take().is_some() {
            let index = self.blocks.started - 1;
            let stop = json!({"type": "content_block_stop", "index": index});
            out.push(event("content_block_stop", &stop));
        }
    }

    /// Starts a block (closing the open one); returns its index.
    fn start_block(&mut self, block: &Block, out: &mut Vec<SseEvent>) -> usize {
        self.close_block(out);
        let index = self.blocks.started;
        self.blocks.started += 1;
        let start = json!({"type": "content_block_start", "index": index, "content_block": block});
        out.push(event("content_block_start", &start));
        index
    }

    /// Streams `text` into a block of kind `kind`, opening one when another is open.
    fn block_delta(&mut self, kind: Open, text: String, out: &mut Vec<SseEvent>) {
        let (empty, delta) = match kind {
            Open::Thinking | Open::ToolUse => (
                Block::Thinking {
                    thinking: String::new(),
                    signature: String::new(),
                },
                json!({"type": "thinking_delta", "thinking": text}),
            ),
            Open::Text => (
                Block::Text {
                    text: String::new(),
                },
                json!({"type": "text_delta", "text": text}),
            ),
        };
        if self.blocks.open != Some(kind) {
            self.start_block(&empty, out);
            self.blocks.open = Some(kind);
        }
        let index = self.blocks.started - 1;
        let ev = json!({"type": "content_block_delta", "index": index, "delta": delta});
        out.push(event("content_block_delta", &ev));
    }

    /// The events one engine event produces: reasoning and text deltas as they come; at the
    /// end, the open block closed and one block per tool call (its input in one
    /// `input_json_delta`).
    pub(super) fn message_events(&mut self, i: usize, piece: Piece) -> Vec<SseEvent> {
        let mut out = Vec::new();
        if !piece.reasoning.is_empty() {
            self.block_delta(Open::Thinking, piece.reasoning, &mut out);
        }
        if !piece.content.is_empty() {
            self.block_delta(Open::Text, piece.content, &mut out);
        }
        if !self.choices[i].done {
            return out;
        }
        self.close_block(&mut out);
        for block in call_blocks(&self.choices[i]) {
            match block {
                Block::ToolUse { id, name, input } => {
                    let empty = Block::ToolUse {
                        id,
                        name,
                        input: JsonValue::Object(Vec::new()),
                    };
                    let index = self.start_block(&empty, &mut out);
                    let json = serde_json::to_string(&input).unwrap_or_else(|_| "{}".into());
                    let delta = json!({"type": "input_json_delta", "partial_json": json});
                    let ev = json!({"type": "content_block_delta", "index": index, "delta": delta});
                    out.push(event("content_block_delta", &ev));
                    self.blocks.open = Some(Open::ToolUse);
                    self.close_block(&mut out);
                }
                Block::Text { text } => {
                    self.block_delta(Open::Text, text, &mut out);
                    self.close_block(&mut out);
                }
                Block::Thinking { .. } => {}
            }
        }
        out
    }

    /// `message_delta` (stop reason, stop sequence, the usage with its cache split) and
    /// `message_stop`.
    pub(super) fn message_closing(&mut self, usage: &UsageOut) -> Vec<SseEvent> {
        let (reason, sequence) = match self.choices.first() {
            Some(c) => stop_reason(c, &call_blocks(c)),
            None => ("end_turn", None),
        };
        let delta = json!({
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": Usage::from(usage),
        });
        vec![
            event("message_delta", &delta),
            event("message_stop", &json!({"type": "message_stop"})),
        ]
    }
}
