//! `moela bench`: prefill and decode speed of a model on synthetic token ids.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use moela_model::Model;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::draft::{DraftConfig, DraftMode};
use crate::engine::{Engine, EngineConfig, Event, Failure, Request, PREFILL_CHUNK};
use crate::generate::{drive, EngineError};
use crate::sampler::Rng;

/// What to measure.
#[derive(Clone, Copy, Debug)]
pub struct BenchConfig {
    /// Prompt length for the prefill measurement.
    pub prompt_tokens: usize,
    /// Tokens decoded one at a time.
    pub gen_tokens: usize,
    /// Tokens already in the cache when decoding starts (0 = decode right after the prompt).
    pub context: usize,
    pub seed: u64,
    /// Timed runs of each measurement (at least 1); results are their mean.
    pub repetitions: usize,
    /// One untimed run first: a prefill of the same prompt length, and one decoded token
    /// before the timed decode (as llama-bench does).
    pub warmup: bool,
    /// Sequences decoded together, one token each per step (each with its own cache and
    /// context of random tokens); decode tok/s counts every sequence's tokens. At least 1.
    pub batch: usize,
    /// Speculative decoding during the decode measurement.
    pub draft: DraftConfig,
    /// When > 0: every decode step verifies this many random drafted tokens (nearly always
    /// rejected), so decode tok/s measures the cost of a `verify_tokens + 1`-row step against
    /// a 1-row one. Replaces `draft`.
    pub verify_tokens: usize,
}

/// Drafts `k` pseudo-random tokens, a function of the context (the verification cost, not its
/// gain, is what `--verify-tokens` measures).
struct RandomDrafts {
    vocab: usize,
}

impl crate::draft::Drafter for RandomDrafts {
    fn draft(&self, context: &[u32], k: usize) -> Vec<u32> {
        let last = context.last().copied().unwrap_or(0) as u64;
        let mut rng = Rng::new((context.len() as u64) << 32 | last);
        random_tokens(&mut rng, k, self.vocab)
    }
}

/// Measured speeds: means over the repetitions, their sample standard deviations (0 for one
/// repetition) and the samples.
#[derive(Clone, Debug, Default)]
pub struct BenchResult {
    pub prefill_tok_s: f64,
    pub prefill_tok_s_sd: f64,
    /// Time to first token: the prefill of `prompt_tokens` plus choosing the token.
    pub ttft_ms: f64,
    pub decode_tok_s: f64,
    pub decode_tok_s_sd: f64,
    /// Mean cache length when the timed decode started.
    pub decode_context: usize,
    /// Each repetition's prefill and decode tok/s.
    pub prefill_samples: Vec<f64>,
    pub decode_samples: Vec<f64>,
    /// Drafted and accepted tokens, and decode rows (one per sequence per step), over the
    /// timed decodes.
    pub drafted: u64,
    pub accepted: u64,
    pub decode_rows: u64,
    /// Tokens the timed decodes produced (all sequences).
    pub decode_tokens: u64,
    /// Bytes this process had read from storage during the timed decodes (Linux
    /// `/proc/self/io` `read_bytes`: weight pages faulted in from the file, not page-cache hits).
    pub decode_read_bytes: Option<u64>,
    /// The routed experts' residency over the timed decodes (counters for those decodes only),
    /// when the model is placed `Resident`.
    pub decode_residency: Option<moela_model::ResidencyStats>,
}

impl BenchResult {
    /// Accepted drafts per drafted token (0 without drafts).
    pub fn acceptance_rate(&self) -> f64 {
        match self.drafted {
            0 => 0.0,
            d => self.accepted as f64 / d as f64,
        }
    }

    /// Tokens each sequence gained per decode step (1 without drafts).
    pub fn tokens_per_step(&self) -> f64 {
        match self.decode_rows {
            0 => 1.0,
            r => (r + self.accepted) as f64 / r as f64,
        }
    }
}

/// Mean and sample standard deviation (0 for fewer than 2 samples).
fn mean_sd(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

fn random_tokens(rng: &mut Rng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n)
        .map(|_| (rng.next_u64() % vocab as u64) as u32)
        .collect()
}

impl BenchConfig {
    /// The decode context: `context` tokens if given, else the prompt's length.
    fn decode_context(&self) -> usize {
        if self.context > 0 {
            self.context
        } else {
            self.prompt_tokens.max(1)
        }
    }

    /// Tokens each decoding sequence may generate: the warm-up token, the timed ones, and one
    /// per step while the batch's contexts are prefilled (a sequence whose context is in
    /// decodes while the others' chunks go through).
    fn decode_budget(&self) -> usize {
        let prefill_steps = (self.batch.max(1) * self.decode_context()).div_ceil(PREFILL_CHUNK);
        // A step's accepted drafts may carry a sequence past the timed count.
        let drafting = self.draft.mode != DraftMode::None || self.verify_tokens > 0;
        let overshoot = self.draft.tokens.max(self.verify_tokens) * usize::from(drafting);
        self.gen_tokens + usize::from(self.warmup) + prefill_steps + 1 + overshoot
    }

    /// The context length the run needs (cache positions of its longest sequence).
    pub fn context_needed(&self) -> usize {
        let prefill = if self.prompt_tokens > 0 {
            self.prompt_tokens + 1
        } else {
            0
        };
        let decode = if self.gen_tokens > 0 {
            self.decode_context() + self.decode_budget()
        } else {
            0
        };
        prefill.max(decode).max(1)
    }
}

/// Runs the prefill and decode measurements through the engine (the step users get:
/// batching, sampling, events), on random token ids, without a tokenizer.
pub fn run_bench(model: &Arc<Model>, cfg: &BenchConfig) -> Result<BenchResult, EngineError> {
    let vocab = model.config.vocab_size;
    let mut rng = Rng::new(cfg.seed);
    let mut out = BenchResult::default();
    let reps = cfg.repetitions.max(1);
    let batch = cfg.batch.max(1);
    let mut engine = Engine::new(
        model.clone(),
        None,
        EngineConfig {
            max_batch: batch,
            max_queue: batch,
            ctx: cfg.context_needed(),
            prefill_tokens_per_step: PREFILL_CHUNK,
            prefix_caching: false,
            draft: match cfg.verify_tokens {
                0 => cfg.draft,
                k => DraftConfig {
                    mode: DraftMode::None,
                    tokens: k,
                },
            },
            ..EngineConfig::default()
        },
    );
    if cfg.verify_tokens > 0 {
        engine.set_drafter(Arc::new(RandomDrafts { vocab }));
    }
    if cfg.prompt_tokens > 0 {
        let prompt = random_tokens(&mut rng, cfg.prompt_tokens, vocab);
        let first_token = |engine: &mut Engine| -> Result<f64, EngineError> {
            let t = Instant::now();
            let mut rx = engine.submit(Request::new(prompt.clone(), 1))?;
            drive(engine, &mut rx, |_| {})?;
            Ok(t.elapsed().as_secs_f64())
        };
        if cfg.warmup {
            first_token(&mut engine)?;
        }
        let mut ttft = Vec::with_capacity(reps);
        for _ in 0..reps {
            let s = first_token(&mut engine)?;
            out.prefill_samples.push(cfg.prompt_tokens as f64 / s);
            ttft.push(s * 1e3);
        }
        (out.prefill_tok_s, out.prefill_tok_s_sd) = mean_sd(&out.prefill_samples);
        out.ttft_ms = mean_sd(&ttft).0;
    }
    if cfg.gen_tokens > 0 {
        let ctx_len = cfg.decode_context();
        let warm: Vec<Vec<u32>> = (0..batch)
            .map(|_| random_tokens(&mut rng, ctx_len, vocab))
            .collect();
        let mut contexts = Vec::with_capacity(reps);
        for _ in 0..reps {
            let mut rxs = warm
                .iter()
                .map(|w| engine.submit(Request::new(w.clone(), cfg.decode_budget())))
                .collect::<Result<Vec<_>, _>>()?;
            let mut got = vec![0usize; batch];
            // Until every context is in and each sequence has its warm-up token.
            let ready = 1 + usize::from(cfg.warmup);
            while got.iter().any(|&g| g < ready) {
                if engine.is_idle() {
                    return Err(
                        Failure::Fault("the benchmark's requests ended early".into()).into(),
                    );
                }
                engine.step();
                collect_tokens(&mut rxs, &mut got)?;
            }
            // Cache length when timing starts: context plus generated tokens but the last.
            contexts.push(got.iter().map(|g| ctx_len + g - 1).sum::<usize>() as f64 / batch as f64);
            let before: usize = got.iter().sum();
            let stats = engine.stats().clone();
            let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            let counts = || {
                [
                    load(&stats.drafted_tokens),
                    load(&stats.accepted_tokens),
                    load(&stats.decode_rows),
                ]
            };
            let start = counts();
            let (read_before, resident_before) = (storage_read_bytes(), model.residency());
            let t = Instant::now();
            // `gen_tokens` per sequence: one step each without drafts, fewer with them.
            while got.iter().sum::<usize>() - before < cfg.gen_tokens * batch && !engine.is_idle() {
                engine.step();
                collect_tokens(&mut rxs, &mut got)?;
            }
            let secs = t.elapsed().as_secs_f64();
            let timed = got.iter().sum::<usize>() - before;
            let end = counts();
            out.drafted += end[0] - start[0];
            out.accepted += end[1] - start[1];
            out.decode_rows += end[2] - start[2];
            out.decode_tokens += timed as u64;
            if let (Some(a), Some(b)) = (read_before, storage_read_bytes()) {
                *out.decode_read_bytes.get_or_insert(0) += b.saturating_sub(a);
            }
            if let (Some(a), Some(b)) = (resident_before, model.residency()) {
                let d = b.since(&a);
                out.decode_residency = Some(match out.decode_residency {
                    Some(acc) => d.plus(&acc),
                    None => d,
                });
            }
            out.decode_samples.push(timed as f64 / secs);
            // Cancel the rest and let the engine free their caches.
            drop(rxs);
            while !engine.is_idle() {
                engine.step();
            }
        }
        out.decode_context = mean_sd(&contexts).0.round() as usize;
        (out.decode_tok_s, out.decode_tok_s_sd) = mean_sd(&out.decode_samples);
    }
    Ok(out)
}

/// Counts the tokens that arrived on each sequence's channel; an engine error ends the run.
fn collect_tokens(
    rxs: &mut [UnboundedReceiver<Event>],
    got: &mut [usize],
) -> Result<(), EngineError> {
    for (rx, n) in rxs.iter_mut().zip(got.iter_mut()) {
        while let Ok(ev) = rx.try_recv() {
            match ev {
                Event::Token(_) => *n += 1,
                Event::Error(f) => return Err(f.into()),
                Event::Done { .. } | Event::PromptScores(_) => {}
            }
        }
    }
    Ok(())
}

/// Bytes this process has caused to be read from storage (Linux `/proc/self/io`), if known.
fn storage_read_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    let line = io.lines().find_map(|l| l.strip_prefix("read_bytes:"))?;
    line.trim().parse().ok()
}

/// Peak resident set size of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
