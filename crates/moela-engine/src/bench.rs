//! `moela bench`: prefill and decode speed of a model on synthetic token ids.

use std::time::Instant;

use moela_model::{ForwardOptions, Logits, Model, SeqInput};

use crate::generate::{prefill, EngineError};
use crate::sampler::{argmax, Rng};

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
    /// Cache length when decoding started.
    pub decode_context: usize,
    /// Each repetition's prefill and decode tok/s.
    pub prefill_samples: Vec<f64>,
    pub decode_samples: Vec<f64>,
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

/// Runs the prefill and decode measurements.
pub fn run_bench(model: &Model, cfg: &BenchConfig) -> Result<BenchResult, EngineError> {
    let vocab = model.config.vocab_size;
    let mut rng = Rng::new(cfg.seed);
    let mut out = BenchResult::default();
    let reps = cfg.repetitions.max(1);
    if cfg.prompt_tokens > 0 {
        let prompt = random_tokens(&mut rng, cfg.prompt_tokens, vocab);
        if cfg.warmup {
            prefill(model, &mut model.new_cache(), &prompt)?;
        }
        let mut ttft = Vec::with_capacity(reps);
        for _ in 0..reps {
            let mut cache = model.new_cache();
            let t = Instant::now();
            let logits = prefill(model, &mut cache, &prompt)?;
            let _first = argmax(&logits);
            let s = t.elapsed().as_secs_f64();
            out.prefill_samples.push(cfg.prompt_tokens as f64 / s);
            ttft.push(s * 1e3);
        }
        (out.prefill_tok_s, out.prefill_tok_s_sd) = mean_sd(&out.prefill_samples);
        out.ttft_ms = mean_sd(&ttft).0;
    }
    if cfg.gen_tokens > 0 {
        // The decode context: `context` tokens if given, else the prompt (not timed again).
        let ctx_len = if cfg.context > 0 {
            cfg.context
        } else {
            cfg.prompt_tokens.max(1)
        };
        let batch = cfg.batch.max(1);
        let warm: Vec<Vec<u32>> = (0..batch)
            .map(|_| random_tokens(&mut rng, ctx_len, vocab))
            .collect();
        for _ in 0..reps {
            let mut caches = Vec::with_capacity(batch);
            let mut next = Vec::with_capacity(batch);
            for w in &warm {
                let mut cache = model.new_cache();
                next.push(argmax(&prefill(model, &mut cache, w)?));
                caches.push(cache);
            }
            // One decode step: every sequence's last token in, every sequence's next token out.
            let mut step = |next: &mut Vec<u32>| -> Result<(), EngineError> {
                let toks: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
                let mut s: Vec<SeqInput> = toks
                    .iter()
                    .zip(caches.iter_mut())
                    .map(|(tok, cache)| SeqInput {
                        tokens: tok,
                        cache,
                        logits: Logits::Last,
                    })
                    .collect();
                let logits = model.forward(&mut s, &ForwardOptions::default())?;
                for (n, l) in next.iter_mut().zip(&logits) {
                    *n = argmax(l);
                }
                Ok(())
            };
            if cfg.warmup {
                step(&mut next)?;
            }
            let t = Instant::now();
            for _ in 0..cfg.gen_tokens {
                step(&mut next)?;
            }
            out.decode_samples
                .push((batch * cfg.gen_tokens) as f64 / t.elapsed().as_secs_f64());
        }
        out.decode_context = ctx_len + usize::from(cfg.warmup);
        (out.decode_tok_s, out.decode_tok_s_sd) = mean_sd(&out.decode_samples);
    }
    Ok(out)
}

/// Peak resident set size of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
