//! The CLI's drivers of the [`Engine`]: one request generated to its end (`generate`, `chat`),
//! a text scored in context windows (`perplexity`); and `greedy_tokens`, the plain
//! one-token-at-a-time decode loop kept as the executable spec the engine is tested against.

use moela_model::{ForwardOptions, Logits, Model, ModelError};
use moela_text::TextError;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::engine::{Engine, Event, Failure, FinishReason, Request, SubmitError};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the prompt is {prompt} tokens, but the context holds {ctx} (it needs room for at least one generated token)")]
    PromptTooLong { prompt: usize, ctx: usize },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Refused before it started for another reason (queue full, shutting down).
    #[error(transparent)]
    Submit(SubmitError),
    /// The engine gave up on the request.
    #[error(transparent)]
    Failed(#[from] Failure),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Text(#[from] TextError),
}

impl From<SubmitError> for EngineError {
    fn from(e: SubmitError) -> EngineError {
        match e {
            SubmitError::PromptTooLong { prompt, ctx } => {
                EngineError::PromptTooLong { prompt, ctx }
            }
            SubmitError::Invalid(msg) => EngineError::InvalidRequest(msg),
            other => EngineError::Submit(other),
        }
    }
}

/// What a generation produced.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOutput {
    pub token_ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens served from the engine's prefix cache.
    pub cached_tokens: usize,
}

/// Steps `engine` until the request behind `rx` has ended, handing each of its events to
/// `on_event`; an `Event::Error` becomes the error.
pub fn drive(
    engine: &mut Engine,
    rx: &mut UnboundedReceiver<Event>,
    mut on_event: impl FnMut(Event),
) -> Result<(), EngineError> {
    loop {
        loop {
            match rx.try_recv() {
                Ok(Event::Error(f)) => return Err(f.into()),
                Ok(ev) => {
                    let done = matches!(ev, Event::Done { .. });
                    on_event(ev);
                    if done {
                        return Ok(());
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    return Err(Failure::Fault("the engine dropped the request".into()).into())
                }
            }
        }
        if engine.is_idle() {
            return Err(
                Failure::Fault("the engine went idle before the request ended".into()).into(),
            );
        }
        engine.step();
    }
}

/// Generates a continuation of `req.prompt` through `engine`, calling `on_text` with each
/// piece of text as soon as it is complete (never half a UTF-8 character, never part of a stop
/// string).
pub fn generate(
    engine: &mut Engine,
    req: Request,
    on_text: &mut dyn FnMut(&str),
) -> Result<GenerateOutput, EngineError> {
    let mut rx = engine.submit(req)?;
    let mut token_ids = Vec::new();
    let mut text = String::new();
    let mut end = None;
    let mut emit = |piece: &str, text: &mut String| {
        if !piece.is_empty() {
            on_text(piece);
            text.push_str(piece);
        }
    };
    drive(engine, &mut rx, |ev| match ev {
        Event::Token(t) => {
            token_ids.push(t.id);
            emit(&t.text, &mut text);
        }
        Event::Done {
            tail,
            finish_reason,
            usage,
            ..
        } => {
            emit(&tail, &mut text);
            end = Some((finish_reason, usage));
        }
        Event::Error(_) | Event::PromptScores(_) => {}
    })?;
    let (finish_reason, usage) =
        end.ok_or_else(|| Failure::Fault("the request ended without its usage".into()))?;
    Ok(GenerateOutput {
        token_ids,
        text,
        finish_reason,
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        cached_tokens: usage.cached_tokens,
    })
}

/// Per-token negative log-likelihood: `nll[i] = -log p(tokens[i+1] | tokens[..=i])`, scored
/// by `engine` (scoring requests: the prompt's logits at every position).
///
/// Texts longer than the engine's context are scored in windows of that many tokens that
/// overlap by one token, so every token but the first is scored, with the context restarting
/// at each window.
pub fn perplexity(engine: &mut Engine, tokens: &[u32]) -> Result<Vec<f64>, EngineError> {
    let ctx = engine.config().ctx;
    if tokens.len() < 2 {
        return Err(EngineError::InvalidRequest(format!(
            "perplexity needs at least 2 tokens, the text has {}",
            tokens.len()
        )));
    }
    if ctx < 2 {
        return Err(EngineError::InvalidRequest(format!(
            "context must be at least 2 tokens, got {ctx}"
        )));
    }
    let mut nll = Vec::with_capacity(tokens.len() - 1);
    let mut start = 0;
    while start + 1 < tokens.len() {
        let end = (start + ctx).min(tokens.len());
        let mut req = Request::new(tokens[start..end].to_vec(), 0);
        req.score_prompt = true;
        let mut rx = engine.submit(req)?;
        drive(engine, &mut rx, |ev| {
            if let Event::PromptScores(s) = ev {
                nll.extend(s);
            }
        })?;
        start = end - 1;
    }
    Ok(nll)
}

/// The greedy continuation of `prompt`: `n` tokens, each fed back alone (as the reference
/// decodes), straight through `Model::forward` — the spec the engine's output is checked
/// against.
pub fn greedy_tokens(model: &Model, prompt: &[u32], n: usize) -> Result<Vec<u32>, EngineError> {
    let mut cache = model.new_cache();
    let mut next = prompt.to_vec();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let mut s = [moela_model::SeqInput {
            tokens: &next,
            cache: &mut cache,
            logits: Logits::Last,
        }];
        let logits = model.forward(&mut s, &ForwardOptions::default())?.remove(0);
        let t = crate::sampler::argmax(&logits);
        out.push(t);
        next = vec![t];
    }
    Ok(out)
}
