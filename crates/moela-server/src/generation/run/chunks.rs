//! The OpenAI shapes of a run's output: the chat and completions responses, their stream
//! chunks and logprobs.

use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use moela_engine::TokenEvent;

use super::super::plan::Endpoint;
use super::{sse_json, Piece, Run};
use crate::protocol::*;

impl Run {
    fn chat_logprobs(&self, events: &[TokenEvent]) -> ChatLogprobs {
        let table = &self.state.inner.table;
        let out = |id: u32, logprob: f32| TopLogprob {
            token: table.text(id),
            logprob,
            bytes: table.bytes(id).to_vec(),
        };
        ChatLogprobs {
            content: events
                .iter()
                .map(|e| {
                    let lp = e.logprob.as_ref().map_or(0.0, |l| l.logprob);
                    let t = out(e.id, lp);
                    TokenLogprobOut {
                        token: t.token,
                        logprob: t.logprob,
                        bytes: t.bytes,
                        top_logprobs: e
                            .top_logprobs
                            .iter()
                            .map(|a| out(a.id, a.logprob))
                            .collect(),
                    }
                })
                .collect(),
        }
    }

    fn completion_logprobs(&self, events: &[TokenEvent], offset: &mut usize) -> CompletionLogprobs {
        let table = &self.state.inner.table;
        let mut lp = CompletionLogprobs::default();
        for e in events {
            let text = table.text(e.id);
            lp.text_offset.push(*offset);
            *offset += text.len();
            lp.tokens.push(text);
            lp.token_logprobs
                .push(e.logprob.as_ref().map_or(0.0, |l| l.logprob));
            let mut top = serde_json::Map::new();
            for a in &e.top_logprobs {
                top.insert(table.text(a.id), serde_json::json!(a.logprob));
            }
            lp.top_logprobs.push(top);
        }
        lp
    }

    /// The whole response of a chat or completions request.
    pub(super) fn openai_response(&self, usage: UsageOut) -> Response {
        let keep = self.plan.logprobs.is_some();
        let model = self.state.inner.settings.model_name.clone();
        match self.plan.endpoint {
            Endpoint::Chat | Endpoint::Messages => {
                let choices = self
                    .choices
                    .iter()
                    .map(|c| ChatChoice {
                        index: c.index,
                        message: AssistantMessage {
                            role: "assistant",
                            content: if c.content.is_empty() && !c.calls.is_empty() {
                                None
                            } else {
                                Some(c.content.clone())
                            },
                            reasoning_content: c
                                .reasoning
                                .as_ref()
                                .is_some_and(|p| p.saw_reasoning())
                                .then(|| c.reasoning_text.clone()),
                            tool_calls: c.calls.clone(),
                        },
                        logprobs: keep.then(|| self.chat_logprobs(&c.all_logprobs)),
                        finish_reason: c.finish.unwrap_or("stop"),
                    })
                    .collect();
                axum::Json(ChatResponse {
                    id: self.id.clone(),
                    object: "chat.completion",
                    created: self.created,
                    model,
                    system_fingerprint: crate::FINGERPRINT,
                    choices,
                    usage,
                })
                .into_response()
            }
            Endpoint::Completions => {
                let choices = self
                    .choices
                    .iter()
                    .map(|c| {
                        let echo = &self.plan.echo[c.prompt];
                        let mut offset = echo.len();
                        CompletionChoice {
                            index: c.index,
                            text: format!("{echo}{}", c.content),
                            logprobs: keep
                                .then(|| self.completion_logprobs(&c.all_logprobs, &mut offset)),
                            finish_reason: Some(c.finish.unwrap_or("stop")),
                        }
                    })
                    .collect();
                axum::Json(CompletionResponse {
                    id: self.id.clone(),
                    object: "text_completion",
                    created: self.created,
                    model,
                    system_fingerprint: crate::FINGERPRINT,
                    choices,
                    usage: Some(Some(usage)),
                })
                .into_response()
            }
        }
    }

    fn usage_field(&self) -> Option<Option<UsageOut>> {
        self.plan.params.include_usage.then_some(None)
    }

    fn chat_chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Option<UsageOut>>) -> SseEvent {
        let chunk = ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.state.inner.settings.model_name.clone(),
            system_fingerprint: crate::FINGERPRINT,
            choices,
            usage,
        };
        sse_json(&chunk)
    }

    fn completion_chunk(
        &self,
        choices: Vec<CompletionChoice>,
        usage: Option<Option<UsageOut>>,
    ) -> SseEvent {
        let chunk = CompletionResponse {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.state.inner.settings.model_name.clone(),
            system_fingerprint: crate::FINGERPRINT,
            choices,
            usage,
        };
        sse_json(&chunk)
    }

    /// The chunks one event produces.
    pub(super) fn chunks_for(
        &mut self,
        i: usize,
        piece: Piece,
        offsets: &mut [usize],
    ) -> Vec<SseEvent> {
        let mut out = Vec::new();
        let keep = self.plan.logprobs.is_some();
        let c = &self.choices[i];
        let finished = c.done;
        match self.plan.endpoint {
            Endpoint::Messages => return self.message_events(i, piece),
            Endpoint::Chat => {
                let has_text = !piece.reasoning.is_empty() || !piece.content.is_empty();
                if has_text || (finished && !c.pending_logprobs.is_empty()) {
                    let pending = std::mem::take(&mut self.choices[i].pending_logprobs);
                    let delta = Delta {
                        reasoning_content: (!piece.reasoning.is_empty()).then_some(piece.reasoning),
                        content: (!piece.content.is_empty()).then_some(piece.content),
                        ..Default::default()
                    };
                    let logprobs =
                        (keep && !pending.is_empty()).then(|| self.chat_logprobs(&pending));
                    out.push(self.chat_chunk(
                        vec![ChunkChoice {
                            index: self.choices[i].index,
                            delta,
                            logprobs,
                            finish_reason: None,
                        }],
                        self.usage_field(),
                    ));
                }
                if finished {
                    let c = &self.choices[i];
                    if !c.calls.is_empty() {
                        let calls = c
                            .calls
                            .iter()
                            .enumerate()
                            .map(|(k, call)| ToolCallDelta {
                                index: k,
                                call: call.clone(),
                            })
                            .collect();
                        out.push(self.chat_chunk(
                            vec![ChunkChoice {
                                index: c.index,
                                delta: Delta {
                                    tool_calls: calls,
                                    ..Default::default()
                                },
                                logprobs: None,
                                finish_reason: None,
                            }],
                            self.usage_field(),
                        ));
                    }
                    out.push(self.chat_chunk(
                        vec![ChunkChoice {
                            index: c.index,
                            delta: Delta::default(),
                            logprobs: None,
                            finish_reason: c.finish,
                        }],
                        self.usage_field(),
                    ));
                }
            }
            Endpoint::Completions => {
                if !piece.content.is_empty() || finished {
                    let pending = std::mem::take(&mut self.choices[i].pending_logprobs);
                    let logprobs =
                        keep.then(|| self.completion_logprobs(&pending, &mut offsets[i]));
                    let c = &self.choices[i];
                    out.push(self.completion_chunk(
                        vec![CompletionChoice {
                            index: c.index,
                            text: piece.content,
                            logprobs,
                            finish_reason: if finished { c.finish } else { None },
                        }],
                        self.usage_field(),
                    ));
                }
            }
        }
        out
    }

    /// The opening chunks: the assistant role (chat), the echoed prompt (completions), or
    /// Anthropic's `message_start` and `ping`.
    pub(super) fn opening(&self) -> Vec<SseEvent> {
        match self.plan.endpoint {
            Endpoint::Messages => self.message_opening(),
            Endpoint::Chat => self
                .choices
                .iter()
                .map(|c| {
                    self.chat_chunk(
                        vec![ChunkChoice {
                            index: c.index,
                            delta: Delta {
                                role: Some("assistant"),
                                content: Some(String::new()),
                                ..Default::default()
                            },
                            logprobs: None,
                            finish_reason: None,
                        }],
                        self.usage_field(),
                    )
                })
                .collect(),
            Endpoint::Completions => self
                .choices
                .iter()
                .filter(|c| !self.plan.echo[c.prompt].is_empty())
                .map(|c| {
                    self.completion_chunk(
                        vec![CompletionChoice {
                            index: c.index,
                            text: self.plan.echo[c.prompt].clone(),
                            logprobs: None,
                            finish_reason: None,
                        }],
                        self.usage_field(),
                    )
                })
                .collect(),
        }
    }

    /// The final usage chunk (when asked for).
    pub(super) fn usage_chunk(&self, usage: UsageOut) -> SseEvent {
        match self.plan.endpoint {
            Endpoint::Completions => self.completion_chunk(Vec::new(), Some(Some(usage))),
            _ => self.chat_chunk(Vec::new(), Some(Some(usage))),
        }
    }
}
