//! Running: one engine request per choice, and the events of all choices turned into one
//! response or one SSE stream (reasoning split, tool-call extraction, logprobs, usage, billing).

use std::convert::Infallible;
use std::task::Poll;
use std::time::Instant;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use moela_engine::{Event, FinishReason, Request, TokenEvent, Usage};
use moela_text::{CompletionParser, ReasoningParser};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::error::ApiError;
use crate::metrics::{KeyUsage, Outcome};
use crate::protocol::*;
use crate::tools::{self, ToolSplitter};
use crate::util::{random_id, random_u64, unix_time};
use crate::{Active, AppState};

use super::plan::{Endpoint, Plan};

/// One choice's output as it accumulates.
struct ChoiceState {
    index: usize,
    prompt: usize,
    reasoning: Option<ReasoningParser>,
    tools: Option<ToolSplitter>,
    /// DeepSeek V3.2/V4 with tools: reasoning and DSML tool calls in one parser (then
    /// `reasoning` and `tools` are `None`).
    dsml: Option<CompletionParser>,
    content: String,
    reasoning_text: String,
    reasoning_tokens: usize,
    /// Token events not yet reported in a stream chunk.
    pending_logprobs: Vec<TokenEvent>,
    all_logprobs: Vec<TokenEvent>,
    calls: Vec<ToolCallOut>,
    finish: Option<&'static str>,
    usage: Usage,
    /// Token events received (what is billed if the request ends without `Done`).
    received: usize,
    last_token: Option<Instant>,
    done: bool,
    single_call: bool,
    /// The stop string that ended the output, when one did.
    stop_sequence: Option<String>,
}

/// Text released by one event.
#[derive(Default)]
struct Piece {
    reasoning: String,
    content: String,
}

impl ChoiceState {
    fn new(
        index: usize,
        prompt: usize,
        reasoning: Option<ReasoningParser>,
        parse_tools: bool,
    ) -> ChoiceState {
        ChoiceState {
            index,
            prompt,
            reasoning,
            tools: parse_tools.then(ToolSplitter::default),
            dsml: None,
            content: String::new(),
            reasoning_text: String::new(),
            reasoning_tokens: 0,
            pending_logprobs: Vec::new(),
            all_logprobs: Vec::new(),
            calls: Vec::new(),
            finish: None,
            usage: Usage::default(),
            received: 0,
            last_token: None,
            done: false,
            single_call: false,
            stop_sequence: None,
        }
    }

    /// A choice whose reasoning and tool calls a DSML parser splits.
    fn with_dsml(index: usize, prompt: usize, parser: CompletionParser) -> ChoiceState {
        ChoiceState {
            dsml: Some(parser),
            ..ChoiceState::new(index, prompt, None, false)
        }
    }

    fn push_text(&mut self, text: &str) -> Piece {
        if let Some(p) = &mut self.dsml {
            let d = p.push(text);
            self.reasoning_text.push_str(&d.reasoning);
            self.content.push_str(&d.content);
            return Piece {
                reasoning: d.reasoning,
                content: d.content,
            };
        }
        let (reasoning, content) = match &mut self.reasoning {
            Some(p) => p.push(text),
            None => (String::new(), text.to_string()),
        };
        let content = match &mut self.tools {
            Some(t) => t.push(&content),
            None => content,
        };
        self.reasoning_text.push_str(&reasoning);
        self.content.push_str(&content);
        Piece { reasoning, content }
    }

    fn on_token(&mut self, t: TokenEvent, keep_logprobs: bool) -> Piece {
        if self.reasoning.as_ref().is_some_and(|p| p.in_reasoning())
            || self.dsml.as_ref().is_some_and(|p| p.in_reasoning())
        {
            self.reasoning_tokens += 1;
        }
        let piece = self.push_text(&t.text);
        if keep_logprobs {
            self.pending_logprobs.push(t.clone());
            self.all_logprobs.push(t);
        }
        piece
    }

    fn on_done(&mut self, tail: &str, reason: FinishReason, usage: Usage) -> Piece {
        let mut piece = self.push_text(tail);
        if let Some(p) = &mut self.dsml {
            // Malformed markup is shown as the text it is.
            let (rest, mut calls) = match p.finish() {
                Ok((d, calls)) => ((d.reasoning, d.content), calls),
                Err(e) => ((String::new(), e.markup), Vec::new()),
            };
            if self.single_call {
                calls.truncate(1);
            }
            self.reasoning_text.push_str(&rest.0);
            self.content.push_str(&rest.1);
            piece.reasoning.push_str(&rest.0);
            piece.content.push_str(&rest.1);
            self.calls = tools::tool_calls_out(calls);
        }
        if let Some(p) = &mut self.reasoning {
            let (r, c) = p.finish();
            let c = match &mut self.tools {
                Some(t) => t.push(&c),
                None => c,
            };
            self.reasoning_text.push_str(&r);
            self.content.push_str(&c);
            piece.reasoning.push_str(&r);
            piece.content.push_str(&c);
        }
        if let Some(t) = &mut self.tools {
            let (rest, mut calls) = t.finish();
            if self.single_call {
                calls.truncate(1);
            }
            self.content.push_str(&rest);
            piece.content.push_str(&rest);
            self.calls = tools::tool_calls_out(calls);
        }
        // "tool_calls" only when calls were made and the output ended by itself; a call list
        // cut short by max_tokens is "length" (its complete calls are still returned).
        self.finish = Some(if !self.calls.is_empty() && reason == FinishReason::Stop {
            "tool_calls"
        } else {
            reason.as_str()
        });
        self.usage = usage;
        self.done = true;
        piece
    }
}

/// Waits for the next event of any live choice: `(choice, Some(event))`, `(choice, None)` when
/// a channel closed without `Done` (the engine stopped), `None` when every choice is done.
async fn next_event(
    rxs: &mut [Option<UnboundedReceiver<Event>>],
    start: &mut usize,
) -> Option<(usize, Option<Event>)> {
    if rxs.iter().all(Option::is_none) {
        return None;
    }
    std::future::poll_fn(|cx| {
        let n = rxs.len();
        for k in 0..n {
            let i = (*start + k) % n;
            let Some(rx) = rxs[i].as_mut() else { continue };
            match rx.poll_recv(cx) {
                Poll::Ready(Some(ev)) => {
                    if matches!(ev, Event::Done { .. } | Event::Error(_)) {
                        rxs[i] = None;
                    }
                    *start = (i + 1) % n;
                    return Poll::Ready(Some((i, Some(ev))));
                }
                Poll::Ready(None) => {
                    rxs[i] = None;
                    return Poll::Ready(Some((i, None)));
                }
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
}

/// A running request: its choices, their channels, and what is needed to report on them.
struct Run {
    state: AppState,
    plan: Plan,
    key: String,
    id: String,
    created: u64,
    arrived: Instant,
    first_token: bool,
    rxs: Vec<Option<UnboundedReceiver<Event>>>,
    choices: Vec<ChoiceState>,
    start: usize,
    /// Whether the usage was added to the key's metrics (once, whatever the outcome).
    billed: bool,
    /// Anthropic's content blocks streamed so far.
    blocks: messages::Blocks,
    /// Counts this request as open until the response (or its stream) is done.
    _active: Active,
}

impl Drop for Run {
    /// A request that ends without being billed (the client went away, or the server dropped
    /// it): the tokens already sent to its channels are counted too, then it is billed as
    /// cancelled.
    fn drop(&mut self) {
        if self.billed {
            return;
        }
        for (i, rx) in self.rxs.iter_mut().enumerate() {
            let Some(rx) = rx.as_mut() else { continue };
            while let Ok(ev) = rx.try_recv() {
                match ev {
                    Event::Token(_) => self.choices[i].received += 1,
                    Event::Done { usage, .. } => self.choices[i].usage = usage,
                    _ => {}
                }
            }
        }
        self.bill(Outcome::Cancelled);
    }
}

impl Run {
    /// Submits one engine request per choice; on failure the ones already queued are dropped
    /// (which cancels them).
    fn start(
        state: AppState,
        mut plan: Plan,
        key: String,
        arrived: Instant,
    ) -> Result<Run, ApiError> {
        let n = plan.params.n;
        let mut rxs = Vec::new();
        let mut choices = Vec::new();
        let ctx = state.inner.engine.config().ctx;
        // Choices are queued together: more than the queue holds could never be admitted, so
        // that is the request's fault (400), not a busy server's (429 and retry forever).
        let max_queue = state.inner.engine.config().max_queue;
        let total = plan.prompts.len().saturating_mul(n);
        if total > max_queue {
            return Err(ApiError::bad(
                "n",
                format!(
                    "{total} choices (prompts × n) exceed the {max_queue} requests this server queues at once (--max-queue)"
                ),
            ));
        }
        for (pi, prompt) in plan.prompts.iter().enumerate() {
            for j in 0..n {
                let index = pi * n + j;
                let mut sampling = plan.params.sampling.clone();
                sampling.seed = Some(match sampling.seed {
                    Some(s) => s.wrapping_add(j as u64),
                    None => random_u64(),
                });
                let req = Request {
                    prompt: prompt.clone(),
                    max_tokens: plan.params.max_tokens.unwrap_or(ctx).min(ctx),
                    sampling,
                    stop: plan.params.stop.clone(),
                    stop_token_ids: match plan.params.ignore_eos {
                        true => Vec::new(),
                        false => state.inner.stop_ids.clone(),
                    },
                    logprobs: plan.logprobs,
                    constraint: plan
                        .grammar
                        .as_ref()
                        .map(|g| g.constraint(plan.opens_reasoning)),
                    score_prompt: false,
                };
                rxs.push(Some(state.inner.engine.submit(req)?));
                let mut choice = match plan.dsml.filter(|_| plan.parse_tools) {
                    Some(dialect) => ChoiceState::with_dsml(
                        index,
                        pi,
                        CompletionParser::new(dialect, plan.opens_reasoning),
                    ),
                    None => {
                        let reasoning = (plan.endpoint != Endpoint::Completions)
                            .then(|| ReasoningParser::new(plan.opens_reasoning));
                        ChoiceState::new(index, pi, reasoning, plan.parse_tools)
                    }
                };
                choice.single_call = plan.single_call;
                choices.push(choice);
            }
        }
        plan.grammar = None;
        let prefix = match plan.endpoint {
            Endpoint::Chat => "chatcmpl-",
            Endpoint::Completions => "cmpl-",
            Endpoint::Messages => "msg_",
        };
        Ok(Run {
            plan,
            key,
            id: random_id(prefix, 29),
            created: unix_time(),
            arrived,
            first_token: false,
            rxs,
            choices,
            start: 0,
            billed: false,
            blocks: messages::Blocks::default(),
            _active: state.active(),
            state,
        })
    }

    fn note_token(&mut self, i: usize) {
        self.choices[i].received += 1;
        let now = Instant::now();
        let m = &self.state.inner.metrics;
        if !self.first_token {
            self.first_token = true;
            m.ttft.observe(now - self.arrived);
        }
        if let Some(prev) = self.choices[i].last_token {
            m.inter_token.observe(now - prev);
        }
        self.choices[i].last_token = Some(now);
    }

    /// Usage over all choices (each prompt counted once), with cost; added to the key's metrics
    /// under `outcome` (the first call only). A request that did not complete pays for the
    /// prompts that produced a token and for the tokens sent.
    fn bill(&mut self, outcome: Outcome) -> UsageOut {
        let mut prompt_tokens = 0;
        let mut cached = 0;
        for (pi, p) in self.plan.prompts.iter().enumerate() {
            let started = outcome == Outcome::Completed
                || self
                    .choices
                    .iter()
                    .any(|c| c.prompt == pi && (c.received > 0 || c.done));
            if !started {
                continue;
            }
            prompt_tokens += p.len();
            cached += self
                .choices
                .iter()
                .find(|c| c.prompt == pi)
                .map_or(0, |c| c.usage.cached_tokens.min(p.len()));
        }
        let completion: usize = self
            .choices
            .iter()
            .map(|c| c.usage.completion_tokens.max(c.received))
            .sum();
        let reasoning: usize = self.choices.iter().map(|c| c.reasoning_tokens).sum();
        let miss = prompt_tokens - cached;
        let cost = self
            .state
            .inner
            .settings
            .prices
            .as_ref()
            .map(|t| t.cost(cached, miss, completion, unix_time()));
        let m = &self.state.inner.metrics;
        if !self.billed {
            self.billed = true;
            m.request_duration.observe(self.arrived.elapsed());
            m.add_key_usage(
                &self.key,
                outcome,
                &KeyUsage {
                    requests: 1,
                    prompt_tokens: prompt_tokens as u64,
                    cache_hit_tokens: cached as u64,
                    completion_tokens: completion as u64,
                    cost: cost.as_ref().map_or(0.0, |c| c.total),
                },
            );
        }
        UsageOut {
            prompt_tokens,
            completion_tokens: completion,
            total_tokens: prompt_tokens + completion,
            prompt_cache_hit_tokens: cached,
            prompt_cache_miss_tokens: miss,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: cached,
            },
            completion_tokens_details: CompletionTokensDetails {
                reasoning_tokens: reasoning,
            },
            cost,
        }
    }

    /// Runs every choice to its end; returns the usage, billed as completed.
    async fn gather(&mut self) -> Result<UsageOut, ApiError> {
        let keep = self.plan.logprobs.is_some();
        while let Some((i, ev)) = next_event(&mut self.rxs, &mut self.start).await {
            match ev {
                Some(Event::Token(t)) => {
                    self.note_token(i);
                    self.choices[i].on_token(t, keep);
                }
                Some(Event::Done {
                    tail,
                    finish_reason,
                    usage,
                    stop_sequence,
                }) => {
                    self.choices[i].on_done(&tail, finish_reason, usage);
                    self.choices[i].stop_sequence = stop_sequence;
                }
                Some(Event::Error(e)) => {
                    self.bill(Outcome::Failed);
                    return Err(ApiError::from(e));
                }
                // Not requested by the server.
                Some(Event::PromptScores(_)) => {}
                None => {
                    self.bill(Outcome::Failed);
                    return Err(ApiError::Unavailable(
                        "the engine stopped before the request finished".into(),
                    ));
                }
            }
        }
        Ok(self.bill(Outcome::Completed))
    }

    /// Streams the response as server-sent events. Dropping the stream (client gone) drops
    /// the receivers, which cancels the requests in the engine.
    fn stream(self) -> Response {
        enum Phase {
            Running,
            Finished,
        }
        let offsets: Vec<usize> = self
            .choices
            .iter()
            .map(|c| self.plan.echo[c.prompt].len())
            .collect();
        let opening = self.opening();
        // Anthropic's clients expect `ping` events, not SSE comments.
        let keep_alive = match self.plan.endpoint {
            Endpoint::Messages => KeepAlive::new().event(messages::ping()),
            _ => KeepAlive::default(),
        };
        let state = (
            self,
            std::collections::VecDeque::from(opening),
            offsets,
            Phase::Running,
        );
        let stream = futures_util::stream::unfold(
            state,
            |(mut run, mut queue, mut offsets, mut phase)| async move {
                loop {
                    if let Some(ev) = queue.pop_front() {
                        return Some((
                            Ok::<SseEvent, Infallible>(ev),
                            (run, queue, offsets, phase),
                        ));
                    }
                    if let Phase::Finished = phase {
                        return None;
                    }
                    match next_event(&mut run.rxs, &mut run.start).await {
                        Some((i, Some(Event::Token(t)))) => {
                            run.note_token(i);
                            let keep = run.plan.logprobs.is_some();
                            let piece = run.choices[i].on_token(t, keep);
                            queue.extend(run.chunks_for(i, piece, &mut offsets));
                        }
                        Some((
                            i,
                            Some(Event::Done {
                                tail,
                                finish_reason,
                                usage,
                                stop_sequence,
                            }),
                        )) => {
                            let piece = run.choices[i].on_done(&tail, finish_reason, usage);
                            run.choices[i].stop_sequence = stop_sequence;
                            queue.extend(run.chunks_for(i, piece, &mut offsets));
                        }
                        // A failure mid-stream: an error event, then `[DONE]` as any stream
                        // ends, so clients stop reading cleanly.
                        Some((_, Some(Event::Error(e)))) => {
                            queue.extend(run.fail_stream(ApiError::from(e)));
                            phase = Phase::Finished;
                        }
                        // Not requested by the server.
                        Some((_, Some(Event::PromptScores(_)))) => {}
                        Some((_, None)) => {
                            queue.extend(run.fail_stream(ApiError::Unavailable(
                                "the engine stopped before the request finished".into(),
                            )));
                            phase = Phase::Finished;
                        }
                        None => {
                            let usage = run.bill(Outcome::Completed);
                            queue.extend(run.closing(usage));
                            phase = Phase::Finished;
                        }
                    }
                }
            },
        );
        Sse::new(stream).keep_alive(keep_alive).into_response()
    }

    /// A failure mid-stream: billed, counted, and reported as an error event; an OpenAI stream
    /// then ends with `[DONE]` as any stream does, so clients stop reading cleanly.
    fn fail_stream(&mut self, err: ApiError) -> Vec<SseEvent> {
        self.bill(Outcome::Failed);
        self.state.inner.metrics.count_stream_error();
        self.rxs.iter_mut().for_each(|r| *r = None);
        match self.plan.endpoint {
            Endpoint::Messages => vec![messages::event("error", &err.anthropic())],
            _ => vec![sse_json(&err.body()), SseEvent::default().data("[DONE]")],
        }
    }

    /// The events after every choice finished: the usage chunk (when asked for) and `[DONE]`,
    /// or Anthropic's `message_delta` and `message_stop`.
    fn closing(&mut self, usage: UsageOut) -> Vec<SseEvent> {
        let mut out = Vec::new();
        match self.plan.endpoint {
            Endpoint::Messages => return self.message_closing(&usage),
            _ if self.plan.params.include_usage => out.push(self.usage_chunk(usage)),
            _ => {}
        }
        out.push(SseEvent::default().data("[DONE]"));
        out
    }
}

fn sse_json<T: serde::Serialize>(v: &T) -> SseEvent {
    SseEvent::default().data(serde_json::to_string(v).unwrap_or_else(|_| "{}".into()))
}

/// Runs a planned request: the whole response, or a stream.
pub async fn execute(
    state: AppState,
    plan: Plan,
    key: String,
    arrived: Instant,
) -> Result<Response, ApiError> {
    let stream = plan.params.stream;
    let mut run = Run::start(state, plan, key, arrived)?;
    if stream {
        return Ok(run.stream());
    }
    let usage = run.gather().await?;
    Ok(match run.plan.endpoint {
        Endpoint::Messages => run.message_response(&usage),
        _ => run.openai_response(usage),
    })
}

mod chunks;
mod messages;
#[cfg(test)]
mod tests;
