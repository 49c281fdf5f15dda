//! Token sampling: penalties, temperature, top-k, top-p, min-p, seeded randomness.

use std::collections::HashMap;

use moela_model::SamplingDefaults;

/// Sampling parameters, OpenAI/llama.cpp style. Defaults: greedy, no penalties.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off: drop tokens below `min_p × p(best)`.
    pub min_p: f32,
    /// 1 = off: divide positive / multiply negative logits of seen tokens (CTRL-style).
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token already generated.
    pub presence_penalty: f32,
    /// Subtracted per occurrence from the logit of every token already generated.
    pub frequency_penalty: f32,
    /// Same seed, same prompt, same parameters → same output. `None` = from the clock.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

/// `params` with every field the caller left unset (`None` in `explicit`) taken from the model's
/// recommended `defaults`, else kept (the caller's own default). Explicit values always win.
pub fn fill_sampling(
    defaults: &SamplingDefaults,
    explicit: &SamplingDefaults,
    mut params: SamplingParams,
) -> SamplingParams {
    let pick = |e: Option<f32>, d: Option<f32>, base: f32| e.or(d).unwrap_or(base);
    params.temperature = pick(
        explicit.temperature,
        defaults.temperature,
        params.temperature,
    );
    params.top_p = pick(explicit.top_p, defaults.top_p, params.top_p);
    params.min_p = pick(explicit.min_p, defaults.min_p, params.min_p);
    params.repetition_penalty = pick(
        explicit.repetition_penalty,
        defaults.repetition_penalty,
        params.repetition_penalty,
    );
    params.top_k = explicit.top_k.or(defaults.top_k).unwrap_or(params.top_k);
    params
}

impl SamplingParams {
    /// Checks ranges; the message names the parameter.
    pub fn validate(&self) -> Result<(), String> {
        let bad = |name: &str, v: f32, range: &str| Err(format!("{name} must be {range}, got {v}"));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature", self.temperature, "a finite number >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p, "in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p, "in [0, 1]");
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(
                "repetition_penalty",
                self.repetition_penalty,
                "a finite number > 0",
            );
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return bad(name, v, "in [-2, 2]");
            }
        }
        Ok(())
    }
}

/// SplitMix64: a small, well-mixed, portable generator — our outputs must not depend on a
/// third-party RNG's version.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A sampler with its own random state.
#[derive(Clone, Debug)]
pub struct Sampler {
    pub params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let seed = params.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        Sampler {
            params,
            rng: Rng::new(seed),
        }
    }

    /// Applies the penalties for `generated` (the tokens produced so far) to `logits` in place.
    pub fn apply_penalties(&self, logits: &mut [f32], generated: &[u32]) {
        let p = &self.params;
        if generated.is_empty()
            || (p.repetition_penalty == 1.0
                && p.presence_penalty == 0.0
                && p.frequency_penalty == 0.0)
        {
            return;
        }
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for &t in generated {
            *counts.entry(t).or_default() += 1;
        }
        for (&t, &n) in &counts {
            let Some(l) = logits.get_mut(t as usize) else {
                continue;
            };
            if p.repetition_penalty != 1.0 {
                *l = if *l > 0.0 {
                    *l / p.repetition_penalty
                } else {
                    *l * p.repetition_penalty
                };
            }
            *l -= p.presence_penalty + p.frequency_penalty * n as f32;
        }
    }

    /// Picks the next token from `logits` (modified in place) given the generated tokens so far.
    pub fn sample(&mut self, logits: &mut [f32], generated: &[u32]) -> u32 {
        self.apply_penalties(logits, generated);
        match self.distribution(logits) {
            None => argmax(logits),
            Some(dist) => pick(&dist, self.rng.next_f64()),
        }
    }

    /// Speculative verification of a drafted token: the next token from `logits` given
    /// `generated`, with `draft` proposed for it. Greedy: the argmax (the draft is accepted when
    /// it is the argmax). Sampling: the draft is kept with its probability p(draft), else a token
    /// is drawn from p without the draft, renormalized — for a drafter that proposes one token
    /// (q = δ_draft) this is the rejection rule of speculative sampling, so the result is
    /// distributed exactly as [`Sampler::sample`]'s.
    pub fn verify(&mut self, logits: &mut [f32], generated: &[u32], draft: u32) -> u32 {
        self.apply_penalties(logits, generated);
        let Some(mut dist) = self.distribution(logits) else {
            return argmax(logits);
        };
        let p_draft = dist
            .iter()
            .find(|&&(t, _)| t == draft)
            .map_or(0.0, |&(_, p)| p);
        if p_draft > 0.0 && self.rng.next_f64() < p_draft {
            return draft;
        }
        dist.retain(|&(t, _)| t != draft);
        if dist.is_empty() {
            // p(draft) was 1 up to rounding: nothing else can be drawn.
            return draft;
        }
        pick(&dist, self.rng.next_f64())
    }

    /// The distribution tokens are drawn from (penalties already applied): `(token, p)` best
    /// first, after temperature, top-k, min-p and top-p, summing to 1; `None` when greedy (or
    /// when no logit is finite).
    fn distribution(&self, logits: &[f32]) -> Option<Vec<(u32, f64)>> {
        let p = &self.params;
        if p.temperature == 0.0 {
            return None;
        }
        // Candidates sorted by logit, best first (ties: lower id first).
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l))
            .collect();
        if cand.is_empty() {
            return None;
        }
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 {
            cand.truncate(p.top_k);
        }
        let max = cand[0].1;
        let mut probs: Vec<f64> = cand
            .iter()
            .map(|&(_, l)| (((l - max) / p.temperature) as f64).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p as f64;
            let keep = probs.iter().take_while(|&&q| q >= floor).count().max(1);
            probs.truncate(keep);
        }
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, q) in probs.iter().enumerate() {
                acc += q;
                if acc >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        Some(
            cand.iter()
                .zip(&probs)
                .map(|(&(t, _), &q)| (t, q / total))
                .collect(),
        )
    }
}

/// The token of `dist` (`(token, p)`, p summing to its total) at the uniform draw `u ∈ [0, 1)`.
fn pick(dist: &[(u32, f64)], u: f64) -> u32 {
    let total: f64 = dist.iter().map(|&(_, p)| p).sum();
    let mut r = u * total;
    for &(t, p) in dist {
        r -= p;
        if r < 0.0 {
            return t;
        }
    }
    dist.last().map_or(0, |&(t, _)| t)
}

/// Index of the largest logit (lowest index on ties; NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut bv = f32::NEG_INFINITY;
    for (i, &l) in logits.iter().enumerate() {
        if l > bv {
            bv = l;
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams {
            seed: Some(7),
            temperature: 1.0,
            ..Default::default()
        };
        f(&mut p);
        p
    }

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&mut [0.1, 3.0, -1.0, 2.9], &[]), 1);
    }

    #[test]
    fn same_seed_same_tokens_different_seed_differs() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(params(|p| p.seed = Some(seed)));
            (0..40)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(params(|p| p.top_k = 1));
        for _ in 0..20 {
            assert_eq!(s.sample(&mut [0.0, 1.0, 0.5], &[]), 1);
        }
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // p ≈ [0.665, 0.245, 0.09]: top_p 0.6 keeps only the first.
        let mut s = Sampler::new(params(|p| p.top_p = 0.6));
        for _ in 0..50 {
            assert_eq!(s.sample(&mut [2.0, 1.0, 0.0], &[]), 0);
        }
        // top_p 0.9 keeps two: both appear, the third never.
        let mut s = Sampler::new(params(|p| p.top_p = 0.9));
        let seen: Vec<u32> = (0..300)
            .map(|_| s.sample(&mut [2.0, 1.0, 0.0], &[]))
            .collect();
        assert!(seen.contains(&0) && seen.contains(&1) && !seen.contains(&2));
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let mut s = Sampler::new(params(|p| p.min_p = 0.5));
        let seen: Vec<u32> = (0..300)
            .map(|_| s.sample(&mut [2.0, 1.8, 0.0], &[]))
            .collect();
        assert!(seen.contains(&0) && seen.contains(&1) && !seen.contains(&2));
    }

    #[test]
    fn penalties_change_logits_as_defined() {
        let s = Sampler::new(params(|p| {
            p.repetition_penalty = 2.0;
            p.presence_penalty = 0.5;
            p.frequency_penalty = 0.25;
        }));
        let mut l = [4.0, -4.0, 1.0];
        s.apply_penalties(&mut l, &[0, 0, 1]);
        assert_eq!(l, [4.0 / 2.0 - 0.5 - 0.5, -8.0 - 0.5 - 0.25, 1.0]);
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let mut s = Sampler::new(params(|_| {}));
        let n = 20000;
        let ones = (0..n)
            .filter(|_| s.sample(&mut [0.0, (3.0f32).ln()], &[]) == 1)
            .count();
        let frac = ones as f64 / n as f64; // expected 0.75
        assert!((frac - 0.75).abs() < 0.02, "{frac}");
    }

    /// Speculative verification keeps the sampling distribution: over many draws with a fixed
    /// draft, each token's frequency matches the distribution `sample` draws from (χ² over a
    /// 5-token vocabulary, with top-k, temperature and a penalty in play), whichever token is
    /// drafted — likely, unlikely, or one top-k removed.
    #[test]
    fn verification_keeps_the_distribution() {
        let logits = [1.0f32, 0.2, -0.5, 0.9, -3.0];
        let generated = [3u32];
        let p = params(|p| {
            p.temperature = 0.8;
            p.top_k = 4;
            p.presence_penalty = 0.3;
        });
        let mut expect = logits;
        let s = Sampler::new(p.clone());
        s.apply_penalties(&mut expect, &generated);
        let dist = s.distribution(&expect).unwrap();
        let n = 40_000;
        for draft in [0u32, 2, 4] {
            let mut v = Sampler::new(p.clone());
            let mut counts = [0usize; 5];
            for _ in 0..n {
                counts[v.verify(&mut logits.clone(), &generated, draft) as usize] += 1;
            }
            assert_eq!(counts[4], 0, "top-k dropped token 4 (draft {draft})");
            let chi2: f64 = dist
                .iter()
                .map(|&(t, q)| {
                    let e = q * n as f64;
                    (counts[t as usize] as f64 - e).powi(2) / e
                })
                .sum();
            // 3 degrees of freedom: p(χ² > 16.3) = 0.001.
            assert!(
                chi2 < 16.3,
                "draft {draft}: χ² {chi2}, counts {counts:?}, {dist:?}"
            );
        }
    }

    #[test]
    fn greedy_verification_is_argmax() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.verify(&mut [0.1, 3.0, -1.0], &[], 1), 1);
        assert_eq!(s.verify(&mut [0.1, 3.0, -1.0], &[], 2), 1);
    }

    #[test]
    fn validate_names_the_bad_parameter() {
        let e = params(|p| p.top_p = 0.0).validate().unwrap_err();
        assert!(e.contains("top_p"));
        let e = params(|p| p.temperature = -1.0).validate().unwrap_err();
        assert!(e.contains("temperature"));
    }
}
