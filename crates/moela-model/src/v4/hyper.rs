//! Manifold-constrained hyper-connections (mHC) of DeepSeek-V4, in f32 as the reference
//! computes them: the residual is `n = hc_mult` streams per token (`[T, n·hidden]`, stream
//! major). Around each sublayer, from the RMS-normalized (unweighted) flattened streams, one
//! linear map gives per token
//! - `pre = sigmoid(mix·s₀ + b) + ε`: the sublayer's input is `Σ_j pre_j · h_j`;
//! - `post = 2·sigmoid(mix·s₁ + b)`: output stream `k` gets `post_k · out`;
//! - `comb = sinkhorn(softmax_rows(mix·s₂ + b) + ε)`: a doubly stochastic `n × n` matrix mixing
//!   the streams, used transposed: `h'_k = post_k · out + Σ_j comb[j][k] · h_j`.
//!
//! The Sinkhorn–Knopp projection first normalizes the columns, then `iters − 1` times the rows
//! and the columns, each denominator `sum + ε` (transformers' `DeepseekV4HyperConnection`).

use super::{HyperConnection, HyperHead};

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Each `w`-wide row of `h` times `1 / sqrt(mean(row²) + eps)` (mean in f64).
fn unweighted_rms_norm(h: &[f32], w: usize, eps: f32) -> Vec<f32> {
    let mut out = h.to_vec();
    for row in out.chunks_exact_mut(w) {
        let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / w as f64;
        let inv = (1.0 / (ms + eps as f64).sqrt()) as f32;
        row.iter_mut().for_each(|v| *v *= inv);
    }
    out
}

/// `Σ_j weights[j] · h[j·d..(j + 1)·d]` for one token's streams `h` (`[n, d]`).
fn collapse(weights: &[f32], h: &[f32], out: &mut [f32]) {
    let d = out.len();
    out.fill(0.0);
    for (w, stream) in weights.iter().zip(h.chunks_exact(d)) {
        for (o, &x) in out.iter_mut().zip(stream) {
            *o += w * x;
        }
    }
}

/// Makes the row-major `n × n` matrix `m` doubly stochastic (see the module docs).
fn sinkhorn(m: &mut [f32], n: usize, iters: usize, eps: f32) {
    let normalize_cols = |m: &mut [f32]| {
        for k in 0..n {
            let s: f32 = (0..n).map(|i| m[i * n + k]).sum::<f32>() + eps;
            (0..n).for_each(|i| m[i * n + k] /= s);
        }
    };
    normalize_cols(m);
    for _ in 1..iters {
        for row in m.chunks_exact_mut(n) {
            let s: f32 = row.iter().sum::<f32>() + eps;
            row.iter_mut().for_each(|v| *v /= s);
        }
        normalize_cols(m);
    }
}

/// How a sublayer's output re-enters the streams (from [`HyperConnection::enter`]).
pub(crate) struct Mix {
    streams: usize,
    /// `[T, n]`.
    post: Vec<f32>,
    /// `[T, n, n]`, `comb[j][k]`: stream j's share in new stream k.
    comb: Vec<f32>,
}

impl HyperConnection {
    /// The sublayer's input `[T, hidden]` collapsed from the streams `h` (`[T, n·hidden]`), and
    /// the mixing that [`Mix::leave`] applies to its output.
    pub(crate) fn enter(&self, h: &[f32]) -> (Vec<f32>, Mix) {
        let n = self.streams;
        let w = self.fn_.cols; // n·hidden
        let d = w / n;
        let t_count = h.len() / w;
        let mixes = self.fn_.forward(&unweighted_rms_norm(h, w, self.norm_eps)); // [T, (2+n)·n]
        let m = self.fn_.rows;
        let mut collapsed = vec![0.0f32; t_count * d];
        let mut post = vec![0.0f32; t_count * n];
        let mut comb = vec![0.0f32; t_count * n * n];
        let [s_pre, s_post, s_comb] = self.scale;
        for t in 0..t_count {
            let mx = &mixes[t * m..(t + 1) * m];
            let pre: Vec<f32> = (0..n)
                .map(|j| sigmoid(mx[j] * s_pre + self.base[j]) + self.hc_eps)
                .collect();
            for k in 0..n {
                post[t * n + k] = 2.0 * sigmoid(mx[n + k] * s_post + self.base[n + k]);
            }
            let c = &mut comb[t * n * n..(t + 1) * n * n];
            for (i, row) in c.chunks_exact_mut(n).enumerate() {
                let at = 2 * n + i * n;
                for (k, v) in row.iter_mut().enumerate() {
                    *v = mx[at + k] * s_comb + self.base[at + k];
                }
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                row.iter_mut().for_each(|v| *v = (*v - max).exp());
                let sum: f32 = row.iter().sum();
                row.iter_mut().for_each(|v| *v = *v / sum + self.hc_eps);
            }
            sinkhorn(c, n, self.sinkhorn_iters, self.hc_eps);
            collapse(
                &pre,
                &h[t * w..(t + 1) * w],
                &mut collapsed[t * d..(t + 1) * d],
            );
        }
        (
            collapsed,
            Mix {
                streams: n,
                post,
                comb,
            },
        )
    }
}

impl Mix {
    /// `h'_k = post_k · out + Σ_j comb[j][k] · h_j` for every token (`h`: `[T, n·hidden]`,
    /// `out`: `[T, hidden]`).
    pub(crate) fn leave(&self, h: &mut [f32], out: &[f32]) {
        let n = self.streams;
        let d = out.len() / (self.post.len() / n).max(1);
        let mut old = vec![0.0f32; n * d];
        for (t, (ht, ot)) in h
            .chunks_exact_mut(n * d)
            .zip(out.chunks_exact(d))
            .enumerate()
        {
            old.copy_from_slice(ht);
            let comb = &self.comb[t * n * n..(t + 1) * n * n];
            for (k, stream) in ht.chunks_exact_mut(d).enumerate() {
                let p = self.post[t * n + k];
                for (c, v) in stream.iter_mut().enumerate() {
                    let mut acc = p * ot[c];
                    for j in 0..n {
                        acc += comb[j * n + k] * old[j * d + c];
                    }
                    *v = acc;
                }
            }
        }
    }
}

impl HyperHead {
    /// The streams `h` (`[T, n·hidden]`) collapsed to `[T, hidden]` before the final norm.
    pub(crate) fn collapse(&self, h: &[f32]) -> Vec<f32> {
        let n = self.streams;
        let w = self.fn_.cols;
        let d = w / n;
        let mixes = self.fn_.forward(&unweighted_rms_norm(h, w, self.norm_eps)); // [T, n]
        let mut out = vec![0.0f32; h.len() / w * d];
        for (t, o) in out.chunks_exact_mut(d).enumerate() {
            let pre: Vec<f32> = (0..n)
                .map(|j| sigmoid(mixes[t * n + j] * self.scale + self.base[j]) + self.hc_eps)
                .collect();
            collapse(&pre, &h[t * w..(t + 1) * w], o);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::sinkhorn;

    #[test]
    fn sinkhorn_makes_rows_and_columns_sum_to_one() {
        let n = 4;
        let mut m: Vec<f32> = (0..n * n).map(|i| 0.1 + (i * 7 % 5) as f32).collect();
        sinkhorn(&mut m, n, 50, 1e-6);
        for i in 0..n {
            let row: f32 = m[i * n..(i + 1) * n].iter().sum();
            let col: f32 = (0..n).map(|j| m[j * n + i]).sum();
            assert!(
                (row - 1.0).abs() < 1e-4 && (col - 1.0).abs() < 1e-4,
                "{row} {col}"
            );
        }
    }
}
