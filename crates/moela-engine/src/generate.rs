//! The single-sequence generate loop and perplexity scoring.

use moela_model::{ForwardOptions, Logits, Model, ModelError, SeqCache, SeqInput};
use moela_text::{TextError, Tokenizer};

use crate::sampler::{Sampler, SamplingParams};
use crate::stop::StopMatcher;

/// Prompt tokens per forward pass while prefilling (bounds activation memory).
pub const PREFILL_CHUNK: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the prompt is {prompt} tokens, but the context holds {ctx} (it needs room for at least one generated token)")]
    PromptTooLong { prompt: usize, ctx: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Text(#[from] TextError),
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` or the context filled up.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// One generation request.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Tokens that end generation (not emitted); usually the EOS ids.
    pub stop_token_ids: Vec<u32>,
    /// Context length: prompt plus generated tokens never exceed it.
    pub ctx: usize,
}

/// What a generation produced.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOutput {
    pub token_ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// Feeds `tokens` through the model in chunks, returning the last token's logits.
pub fn prefill(
    model: &Model,
    cache: &mut SeqCache,
    tokens: &[u32],
) -> Result<Vec<f32>, ModelError> {
    let mut last = Vec::new();
    let chunks: Vec<&[u32]> = tokens.chunks(PREFILL_CHUNK).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let logits = if i + 1 == chunks.len() {
            Logits::Last
        } else {
            Logits::None
        };
        let mut s = [SeqInput {
            tokens: chunk,
            cache: &mut *cache,
            logits,
        }];
        last = model.forward(&mut s, &ForwardOptions::default())?.remove(0);
    }
    Ok(last)
}

/// Generates a continuation of `req.prompt`, calling `on_text` with each piece of text as soon
/// as it is complete (never half a UTF-8 character, never part of a stop string).
pub fn generate(
    model: &Model,
    tokenizer: &Tokenizer,
    req: &GenerateRequest,
    on_text: &mut dyn FnMut(&str),
) -> Result<GenerateOutput, EngineError> {
    req.sampling
        .validate()
        .map_err(EngineError::InvalidRequest)?;
    if req.prompt.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    if req.prompt.len() >= req.ctx {
        return Err(EngineError::PromptTooLong {
            prompt: req.prompt.len(),
            ctx: req.ctx,
        });
    }
    let budget = req.max_tokens.min(req.ctx - req.prompt.len());
    let mut sampler = Sampler::new(req.sampling.clone());
    let mut cache = model.new_cache();
    let mut decoder = tokenizer.stream_decoder(true);
    let mut stops = StopMatcher::new(&req.stop);
    let mut text = String::new();
    let mut emit = |piece: &str, text: &mut String| {
        if !piece.is_empty() {
            on_text(piece);
            text.push_str(piece);
        }
    };
    let mut generated = Vec::new();
    let mut finish = FinishReason::Length;
    let mut logits = if budget > 0 {
        prefill(model, &mut cache, &req.prompt)?
    } else {
        Vec::new()
    };
    while generated.len() < budget {
        let t = sampler.sample(&mut logits, &generated);
        if req.stop_token_ids.contains(&t) {
            finish = FinishReason::Stop;
            break;
        }
        generated.push(t);
        let piece = decoder.push(t)?;
        emit(&stops.push(&piece), &mut text);
        if stops.stopped() {
            finish = FinishReason::Stop;
            break;
        }
        if generated.len() == budget {
            break;
        }
        let mut s = [SeqInput {
            tokens: &generated[generated.len() - 1..],
            cache: &mut cache,
            logits: Logits::Last,
        }];
        logits = model.forward(&mut s, &ForwardOptions::default())?.remove(0);
    }
    if !stops.stopped() {
        let tail = decoder.finish()?;
        let mut rest = stops.push(&tail);
        if stops.stopped() {
            finish = FinishReason::Stop;
        } else {
            rest.push_str(&stops.finish());
        }
        emit(&rest, &mut text);
    }
    Ok(GenerateOutput {
        completion_tokens: generated.len(),
        token_ids: generated,
        text,
        finish_reason: finish,
        prompt_tokens: req.prompt.len(),
    })
}

/// The greedy continuation of `prompt`: `n` tokens, each fed back alone (as the reference decodes).
pub fn greedy_tokens(model: &Model, prompt: &[u32], n: usize) -> Result<Vec<u32>, EngineError> {
    let mut cache = model.new_cache();
    let mut next = prompt.to_vec();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let mut s = [SeqInput {
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

/// Per-token negative log-likelihood: `nll[i] = -log p(tokens[i+1] | tokens[..=i])`.
///
/// Texts longer than `ctx` are scored in windows of `ctx` tokens that overlap by one token, so
/// every token but the first is scored, with the context restarting at each window.
pub fn perplexity(model: &Model, tokens: &[u32], ctx: usize) -> Result<Vec<f64>, EngineError> {
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
    let v = model.config.vocab_size;
    let mut nll = Vec::with_capacity(tokens.len() - 1);
    let mut start = 0;
    while start + 1 < tokens.len() {
        let end = (start + ctx).min(tokens.len());
        let window = &tokens[start..end];
        let mut cache = model.new_cache();
        for (ci, chunk) in window.chunks(PREFILL_CHUNK).enumerate() {
            let mut s = [SeqInput {
                tokens: chunk,
                cache: &mut cache,
                logits: Logits::All,
            }];
            let logits = model.forward(&mut s, &ForwardOptions::default())?.remove(0);
            for (j, row) in logits.chunks_exact(v).enumerate() {
                let pos = ci * PREFILL_CHUNK + j;
                if pos + 1 < window.len() {
                    nll.push(token_nll(row, window[pos + 1]));
                }
            }
        }
        start = end - 1;
    }
    Ok(nll)
}

/// `-log softmax(row)[target]`, in f64.
pub fn token_nll(row: &[f32], target: u32) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = row
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    lse - row[target as usize] as f64
}
