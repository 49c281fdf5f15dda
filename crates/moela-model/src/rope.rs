//! Rotary position embedding in DeepSeek's interleaved-pair layout, with YaRN.

use crate::config::{yarn_get_mscale, Config};

/// Precomputed inverse frequencies and cos/sin amplitude for `qk_rope_head_dim`.
#[derive(Clone, Debug)]
pub struct Rope {
    /// `[dim / 2]` — rotation speed of pair i.
    inv_freq: Vec<f32>,
    /// YaRN's cos/sin amplitude `get_mscale(s, mscale) / get_mscale(s, mscale_all_dim)` (1 without YaRN).
    amplitude: f32,
}

impl Rope {
    pub fn new(cfg: &Config) -> Rope {
        let dim = cfg.qk_rope_head_dim;
        let base = cfg.rope_theta;
        let half = dim / 2;
        let plain: Vec<f64> = (0..half)
            .map(|i| 1.0 / base.powf((2 * i) as f64 / dim as f64))
            .collect();
        let Some(y) = &cfg.rope_scaling else {
            return Rope {
                inv_freq: plain.iter().map(|&v| v as f32).collect(),
                amplitude: 1.0,
            };
        };
        // YaRN (static, every position): blend interpolated (÷factor) and extrapolated frequencies
        // over a linear ramp between the dims that rotate beta_fast and beta_slow times in L0.
        let l0 = y.original_max_position_embeddings as f64;
        let corr_dim = |rot: f64| {
            dim as f64 * (l0 / (rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
        };
        let low = corr_dim(y.beta_fast).floor().max(0.0);
        let mut high = corr_dim(y.beta_slow).ceil().min(dim as f64 - 1.0);
        if low == high {
            high += 0.001;
        }
        let inv_freq = plain
            .iter()
            .enumerate()
            .map(|(i, &extra)| {
                let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                (extra / y.factor * ramp + extra * (1.0 - ramp)) as f32
            })
            .collect();
        let amplitude = y.attention_factor.unwrap_or_else(|| {
            yarn_get_mscale(y.factor, y.mscale) / yarn_get_mscale(y.factor, y.mscale_all_dim)
        }) as f32;
        Rope {
            inv_freq,
            amplitude,
        }
    }

    /// Rotates each pair `(x[2i], x[2i+1])` of one `dim`-vector at position `pos`.
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        for (i, &f) in self.inv_freq.iter().enumerate() {
            // The angle is formed in f32 as the reference does, then evaluated precisely.
            let angle = (f * pos as f32) as f64;
            let (s, c) = angle.sin_cos();
            let (s, c) = (s as f32 * self.amplitude, c as f32 * self.amplitude);
            let (a, b) = (x[2 * i], x[2 * i + 1]);
            x[2 * i] = a * c - b * s;
            x[2 * i + 1] = a * s + b * c;
        }
    }

    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    pub fn amplitude(&self) -> f32 {
        self.amplitude
    }
}
