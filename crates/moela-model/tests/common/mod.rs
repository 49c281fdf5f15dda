//! Helpers shared by the model crate's tests (each test binary uses a subset): random weights,
//! config parsing, comparisons.
#![allow(dead_code)]

use moela_model::{Config, ModelError, WeightSource};

/// Deterministic pseudo-random weights of the requested shapes: uniform in ±`scale`/2, norms
/// around 1, MoE correction biases in ±0.1.
pub struct RandomSource {
    state: u64,
    scale: f32,
    /// Each tensor's values from a seed of its name rather than from where the stream is.
    by_name: bool,
}

impl RandomSource {
    pub fn new(seed: u64, scale: f32) -> RandomSource {
        RandomSource {
            state: seed,
            scale,
            by_name: false,
        }
    }

    /// Weights seeded by their names: two configs that share tensor names get the same values
    /// whatever else they request.
    pub fn by_name(scale: f32) -> RandomSource {
        RandomSource {
            state: 0,
            scale,
            by_name: true,
        }
    }
}

impl WeightSource for RandomSource {
    fn load(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let n: usize = shape.iter().product();
        let norm = name.contains("norm");
        if self.by_name {
            self.state = name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
            });
        }
        Ok((0..n)
            .map(|_| {
                self.state = self
                    .state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = ((self.state >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
                if norm {
                    1.0 + u * 0.5
                } else if name.contains("correction_bias") {
                    u * 0.2
                } else {
                    u * self.scale
                }
            })
            .collect())
    }
    fn contains(&self, _: &str) -> bool {
        true
    }
}

pub fn config(json: &str) -> Config {
    Config::from_hf_json(json).unwrap()
}

pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// One forward pass over every sequence in `caches`, each fed its own `tokens[i]` with
/// `logits`; returns each sequence's logits.
pub fn forward_each(
    m: &moela_model::Model,
    caches: &mut [moela_model::SeqCache],
    tokens: &[[u32; 1]],
    logits: moela_model::Logits,
) -> Vec<Vec<f32>> {
    let mut batch: Vec<moela_model::SeqInput> = caches
        .iter_mut()
        .zip(tokens)
        .map(|(cache, t)| moela_model::SeqInput {
            tokens: t,
            cache,
            logits,
        })
        .collect();
    m.forward(&mut batch, &moela_model::ForwardOptions::default())
        .unwrap()
}

/// The bit patterns of `x` (for comparisons to the bit that print as numbers).
pub fn f32_bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|f| f.to_bits()).collect()
}
