//! One running sequence: what it has fed and generated, and how a step's logits become its
//! tokens (sampling, drafts verified in order, stop conditions) and events.

use std::sync::atomic::Ordering;

use moela_model::SeqCache;
use moela_text::StreamDecoder;

use crate::engine::{
    EngineStats, Event, Failure, FinishReason, Job, TokenEvent, TokenLogprob, Usage,
};
use crate::mtp::MtpState;
use crate::sampler::Sampler;
use crate::stop::StopMatcher;

/// One sequence in the running batch.
pub(crate) struct Seq {
    pub(crate) job: Job,
    pub(crate) cache: SeqCache,
    /// Prompt tokens fed so far (starting after the reused prefix).
    pub(crate) fed: usize,
    /// Prompt tokens served from the prefix cache.
    pub(crate) cached: usize,
    pub(crate) generated: Vec<u32>,
    pub(crate) sampler: Sampler,
    /// `None` when the engine has no tokenizer: events carry ids and no text.
    pub(crate) decoder: Option<StreamDecoder>,
    pub(crate) stops: StopMatcher,
    /// Drafting with the model's MTP layer (`--draft mtp`).
    pub(crate) mtp: Option<MtpState>,
}

pub(crate) enum Outcome {
    Continue,
    Finished(FinishReason),
    Cancelled,
}

impl Seq {
    /// Verifies the drafts of a decode step that fed `tokens` (`[last, d₁ … d_k]`; `rows`: the
    /// logits of each, `[k + 1, vocab]`): emits the accepted drafts and the token after them
    /// (`draft.rs`), then drops the rejected drafts' rows from the cache.
    pub(crate) fn verify(
        &mut self,
        ctx: usize,
        stats: &EngineStats,
        tokens: &[u32],
        rows: &mut [f32],
    ) -> Outcome {
        let vocab = rows.len() / tokens.len();
        let drafts = &tokens[1..];
        stats
            .drafted_tokens
            .fetch_add(drafts.len() as u64, Ordering::Relaxed);
        let mut accepted = 0;
        let mut outcome = Outcome::Continue;
        for (j, row) in rows.chunks_exact_mut(vocab).enumerate() {
            let draft = drafts.get(j).copied();
            outcome = self.advance(ctx, stats, row, draft);
            let took = draft.is_some() && self.generated.last().copied() == draft;
            if !matches!(outcome, Outcome::Continue) || !took {
                break;
            }
            accepted += 1;
        }
        stats
            .accepted_tokens
            .fetch_add(accepted as u64, Ordering::Relaxed);
        if matches!(outcome, Outcome::Continue) {
            // The cache holds `last` and every draft; keep `last` and the accepted ones.
            let keep = self.cache.len() - drafts.len() + accepted;
            if let Err(e) = self.cache.truncate(keep) {
                let _ = self.job.tx.send(Event::Error(Failure::from(&e)));
                return Outcome::Cancelled;
            }
        }
        outcome
    }

    /// Samples the next token from `logits` (context `ctx`) and reports it; with `draft`, the
    /// token proposed for this position is verified ([`Sampler::verify`]).
    pub(crate) fn advance(
        &mut self,
        ctx: usize,
        stats: &EngineStats,
        logits: &mut [f32],
        draft: Option<u32>,
    ) -> Outcome {
        let req = &mut self.job.req;
        let budget = req.max_tokens.min(ctx - req.prompt.len());
        if budget == 0 {
            return Outcome::Finished(FinishReason::Length);
        }
        // Log-probabilities come from the model's raw distribution (before penalties and masks).
        let raw = req.logprobs.map(|n| (LogSoftmax::new(logits), n));
        if let Some(c) = req.constraint.as_mut() {
            c.mask(logits);
        }
        let t = match draft {
            Some(d) => self.sampler.verify(logits, &self.generated, d),
            None => self.sampler.sample(logits, &self.generated),
        };
        if let Some(c) = req.constraint.as_mut() {
            c.accept(t);
        }
        if req.stop_token_ids.contains(&t) {
            return Outcome::Finished(FinishReason::Stop);
        }
        self.generated.push(t);
        stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
        let piece = match self.decoder.as_mut().map(|d| d.push(t)) {
            None => String::new(),
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                let _ = self
                    .job
                    .tx
                    .send(Event::Error(Failure::Fault(e.to_string())));
                return Outcome::Cancelled;
            }
        };
        let text = self.stops.push(&piece);
        let (logprob, top_logprobs) = match &raw {
            Some((ls, n)) => (Some(ls.of(t)), ls.top(*n)),
            None => (None, Vec::new()),
        };
        let ev = Event::Token(TokenEvent {
            id: t,
            text,
            logprob,
            top_logprobs,
        });
        if self.job.tx.send(ev).is_err() {
            return Outcome::Cancelled;
        }
        if self.stops.stopped() || req.constraint.as_ref().is_some_and(|c| c.is_complete()) {
            return Outcome::Finished(FinishReason::Stop);
        }
        if self.generated.len() >= budget {
            return Outcome::Finished(FinishReason::Length);
        }
        Outcome::Continue
    }

    /// Reports the held-back text and the finish.
    pub(crate) fn finish(&mut self, reason: FinishReason) {
        let mut tail = String::new();
        if !self.stops.stopped() {
            if let Some(Ok(rest)) = self.decoder.as_mut().map(|d| d.finish()) {
                tail = self.stops.push(&rest);
            }
            if !self.stops.stopped() {
                tail.push_str(&self.stops.finish());
            }
        }
        let reason = if self.stops.stopped() {
            FinishReason::Stop
        } else {
            reason
        };
        let usage = Usage {
            prompt_tokens: self.job.req.prompt.len(),
            completion_tokens: self.generated.len(),
            cached_tokens: self.cached,
        };
        let _ = self.job.tx.send(Event::Done {
            tail,
            finish_reason: reason,
            usage,
            stop_sequence: self.stops.matched().map(str::to_string),
        });
    }
}

/// `-log softmax(row)[target]`, in f64.
pub fn token_nll(row: &[f32], target: u32) -> f64 {
    log_sum_exp(row) - row[target as usize] as f64
}

/// `log Σ exp(row)`, in f64.
fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    row.iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max
}

/// A snapshot of log-softmax over a logits row.
struct LogSoftmax {
    logits: Vec<f32>,
    lse: f64,
}

impl LogSoftmax {
    fn new(logits: &[f32]) -> LogSoftmax {
        LogSoftmax {
            logits: logits.to_vec(),
            lse: log_sum_exp(logits),
        }
    }

    fn of(&self, id: u32) -> TokenLogprob {
        let l = self
            .logits
            .get(id as usize)
            .copied()
            .unwrap_or(f32::NEG_INFINITY);
        TokenLogprob {
            id,
            logprob: (l as f64 - self.lse) as f32,
        }
    }

    /// The `n` most likely tokens, most likely first.
    fn top(&self, n: usize) -> Vec<TokenLogprob> {
        let mut idx: Vec<u32> = (0..self.logits.len() as u32).collect();
        let n = n.min(idx.len());
        if n == 0 {
            return Vec::new();
        }
        let key = |i: &u32| self.logits[*i as usize];
        idx.select_nth_unstable_by(n - 1, |a, b| key(b).total_cmp(&key(a)).then(a.cmp(b)));
        idx.truncate(n);
        idx.sort_by(|a, b| key(b).total_cmp(&key(a)).then(a.cmp(b)));
        idx.into_iter().map(|i| self.of(i)).collect()
    }
}
