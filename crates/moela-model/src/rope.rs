//! Rotary position embedding in both layouts the supported families use: DeepSeek's
//! interleaved pairs with YaRN (MLA models), and the rotate-half (NeoX) layout of Qwen2 and
//! Llama with Llama-3, linear or per-frequency scaling (dense models).

use crate::config::{yarn_get_mscale, Attention, Config, Llama3Rope, RopeScaling, Yarn};

/// Precomputed inverse frequencies and cos/sin amplitude for one rotated head.
#[derive(Clone, Debug)]
pub struct Rope {
    /// `[dim / 2]` — rotation speed of pair i.
    inv_freq: Vec<f32>,
    /// YaRN's cos/sin amplitude `get_mscale(s, mscale) / get_mscale(s, mscale_all_dim)` (1 without YaRN).
    amplitude: f32,
}

/// `base^(-2i/dim)` for each pair i (computed in f64, as the reference forms it in f32 from
/// the same formula).
fn plain_inv_freq(dim: usize, base: f64) -> Vec<f64> {
    (0..dim / 2)
        .map(|i| 1.0 / base.powf((2 * i) as f64 / dim as f64))
        .collect()
}

/// Llama 3.1's rescaling (transformers `_compute_llama3_parameters`): long wavelengths are
/// divided by `factor`, short ones kept, the band between blended linearly in `orig / wavelen`.
fn llama3_inv_freq(plain: &[f64], l: &Llama3Rope) -> Vec<f64> {
    let orig = l.original_max_position_embeddings as f64;
    let low_wavelen = orig / l.low_freq_factor;
    let high_wavelen = orig / l.high_freq_factor;
    plain
        .iter()
        .map(|&f| {
            let wavelen = 2.0 * std::f64::consts::PI / f;
            if wavelen > low_wavelen {
                f / l.factor
            } else if wavelen < high_wavelen {
                f
            } else {
                let smooth =
                    (orig / wavelen - l.low_freq_factor) / (l.high_freq_factor - l.low_freq_factor);
                (1.0 - smooth) * f / l.factor + smooth * f
            }
        })
        .collect()
}

impl Rope {
    /// The rotation of `cfg`'s model: `qk_rope_head_dim` wide for MLA, `head_dim` for dense.
    pub fn new(cfg: &Config) -> Rope {
        match &cfg.attention {
            Attention::Mla(m) => Rope::interleaved(m.qk_rope_head_dim, cfg.rope_theta, cfg.yarn()),
            Attention::Gqa(g) => Rope::dense(cfg, g.head_dim),
            // The sliding layers' rotation; each V4 layer keeps its own (`Rope::interleaved`).
            Attention::V4(v) => Rope::interleaved(v.qk_rope_head_dim, cfg.rope_theta, cfg.yarn()),
        }
    }

    /// DeepSeek's rotation of a `dim`-wide rope part with base θ `base`, with YaRN when given
    /// (MLA's; DeepSeek-V4's main and compressed rotations).
    pub fn interleaved(dim: usize, base: f64, yarn: Option<&Yarn>) -> Rope {
        let plain = plain_inv_freq(dim, base);
        let Some(y) = yarn else {
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

    /// The dense models' rotation of `head_dim`-wide heads, with their scaling.
    fn dense(cfg: &Config, head_dim: usize) -> Rope {
        let plain = plain_inv_freq(head_dim, cfg.rope_theta);
        let inv: Vec<f64> = match &cfg.rope_scaling {
            None | Some(RopeScaling::Yarn(_)) => plain,
            Some(RopeScaling::Linear { factor }) => plain.iter().map(|f| f / factor).collect(),
            Some(RopeScaling::Llama3(l)) => llama3_inv_freq(&plain, l),
            // llama.cpp: theta_i = pos · base^(-2i/d) / rope_freqs[i].
            Some(RopeScaling::FreqFactors(v)) => plain
                .iter()
                .zip(v.iter().chain(std::iter::repeat(&1.0)))
                .map(|(f, &d)| f / d as f64)
                .collect(),
        };
        Rope {
            inv_freq: inv.iter().map(|&v| v as f32).collect(),
            amplitude: 1.0,
        }
    }

    /// `(cos, sin)` of every pair at every position, times the amplitude: computed once per
    /// forward pass and shared by all layers and heads. The angle is formed in f32 as the
    /// reference does, then evaluated precisely.
    pub fn table(&self, positions: &[usize]) -> RopeTable {
        let half = self.inv_freq.len();
        let mut cs = Vec::with_capacity(positions.len() * half);
        for &pos in positions {
            for &f in &self.inv_freq {
                let angle = (f * pos as f32) as f64;
                let (s, c) = angle.sin_cos();
                cs.push((c as f32 * self.amplitude, s as f32 * self.amplitude));
            }
        }
        RopeTable { half, cs }
    }

    /// Rotates each pair `(x[2i], x[2i+1])` of one `dim`-vector at position `pos` (DeepSeek).
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        self.table(&[pos]).apply(0, x);
    }

    /// Rotates each pair `(x[i], x[i + dim/2])` of one `dim`-vector at position `pos`: the
    /// rotate-half layout of Qwen2 and Llama (`x·cos + rotate_half(x)·sin`).
    pub fn apply_half(&self, x: &mut [f32], pos: usize) {
        self.table(&[pos]).apply_half(0, x);
    }

    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    pub fn amplitude(&self) -> f32 {
        self.amplitude
    }
}

/// [`Rope::table`]: the rotation of each of a forward pass's token rows.
pub struct RopeTable {
    half: usize,
    cs: Vec<(f32, f32)>,
}

impl RopeTable {
    fn row(&self, t: usize) -> &[(f32, f32)] {
        &self.cs[t * self.half..(t + 1) * self.half]
    }

    /// [`Rope::apply`] at the position of token row `t`.
    pub fn apply(&self, t: usize, x: &mut [f32]) {
        for (i, &(c, s)) in self.row(t).iter().enumerate() {
            let (a, b) = (x[2 * i], x[2 * i + 1]);
            x[2 * i] = a * c - b * s;
            x[2 * i + 1] = a * s + b * c;
        }
    }

    /// The inverse of [`RopeTable::apply`] (rotation by the negated angle) at the position of
    /// token row `t`: DeepSeek-V4 takes the rotation back out of its attention output.
    pub fn apply_inverse(&self, t: usize, x: &mut [f32]) {
        for (i, &(c, s)) in self.row(t).iter().enumerate() {
            let (a, b) = (x[2 * i], x[2 * i + 1]);
            x[2 * i] = a * c + b * s;
            x[2 * i + 1] = b * c - a * s;
        }
    }

    /// [`Rope::apply_half`] at the position of token row `t`.
    pub fn apply_half(&self, t: usize, x: &mut [f32]) {
        let half = self.half;
        for (i, &(c, s)) in self.row(t).iter().enumerate() {
            let (a, b) = (x[i], x[i + half]);
            x[i] = a * c - b * s;
            x[i + half] = b * c + a * s;
        }
    }
}
