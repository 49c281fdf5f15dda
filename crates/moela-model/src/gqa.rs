//! Grouped-query attention of the dense decoders (Qwen2, Llama — the R1 distills).
//!
//! Per token and layer the cache holds the post-RoPE keys and then the values of every KV
//! head: `[k: kv_heads·head_dim | v: kv_heads·head_dim]` (`Config::latent_dim`). Query head
//! `h` reads KV head `h / (heads / kv_heads)` (transformers' `repeat_kv`). RoPE is the
//! rotate-half layout; Qwen2's sliding window limits a layer to its last `window` keys.

use moela_kernels::{add_in_place, QMat};

use crate::cache::{BatchCache, LayerView, SeqCache};
use crate::config::{Config, GqaConfig};
use crate::error::ModelError;
use crate::model::{Attend, SeqInput, Step};
use crate::tiled;
use crate::weights::GqaAttention;

/// `y[t, :] += b` for every row of `y` (`[n, b.len()]`).
fn add_bias(y: &mut [f32], b: Option<&[f32]>) {
    if let Some(b) = b {
        for row in y.chunks_exact_mut(b.len()) {
            add_in_place(row, b);
        }
    }
}

/// Sizes of one layer's GQA computation, fixed at load.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GqaDims {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    scale: f32,
    /// Keys visible to a query: the last `window` positions (itself included), or all.
    window: Option<usize>,
}

impl GqaDims {
    /// The sizes of `cfg`'s attention `g` at layer `layer` (whose window it takes).
    pub(crate) fn new(cfg: &Config, g: &GqaConfig, layer: usize) -> Result<GqaDims, ModelError> {
        Ok(GqaDims {
            heads: cfg.num_attention_heads,
            kv_heads: g.num_key_value_heads,
            head_dim: g.head_dim,
            scale: cfg.softmax_scale()?,
            window: cfg.attention_window(layer),
        })
    }

    /// `(heads, head_dim, query heads per KV head, offset of the values in a cache row)`.
    fn layout(&self) -> (usize, usize, usize, usize) {
        let (h, hd) = (self.heads, self.head_dim);
        (h, hd, h / self.kv_heads, self.kv_heads * hd)
    }
}

impl Attend for GqaAttention {
    fn attend(
        &self,
        step: &Step<'_>,
        x: &[f32],
        batch: &[SeqInput<'_>],
        cache: &mut BatchCache<'_>,
    ) -> Vec<f32> {
        let d = &self.dims;
        let (h, kv, hd) = (d.heads, d.kv_heads, d.head_dim);
        // q: [T, heads, head_dim]; k, v: [T, kv_heads, head_dim]
        let [mut q, mut k, mut v] = QMat::forward_many([&self.q, &self.k, &self.v], x);
        add_bias(&mut q, self.q_bias.as_deref());
        add_bias(&mut k, self.k_bias.as_deref());
        add_bias(&mut v, self.v_bias.as_deref());
        // The cached row of each token: rotated keys, then values.
        let w = 2 * kv * hd;
        let n_tok = step.positions.len();
        let mut rows = vec![0.0f32; n_tok * w]; // [T, 2·kv_heads·head_dim]
        for t in 0..n_tok {
            for qh in q[t * h * hd..(t + 1) * h * hd].chunks_exact_mut(hd) {
                step.rope.apply_half(t, qh);
            }
            let row = &mut rows[t * w..(t + 1) * w];
            row[..kv * hd].copy_from_slice(&k[t * kv * hd..(t + 1) * kv * hd]);
            row[kv * hd..].copy_from_slice(&v[t * kv * hd..(t + 1) * kv * hd]);
            for kh in row[..kv * hd].chunks_exact_mut(hd) {
                step.rope.apply_half(t, kh);
            }
        }
        drop((k, v));
        step.record("q", &q);
        step.record("kv", &rows);
        // Every sequence's rows first, then the attention of all of them as one pool job
        // (a batched decode step: one dispatch per layer, not one per sequence).
        let news: Vec<(&SeqCache, usize)> =
            batch.iter().map(|s| (&*s.cache, s.tokens.len())).collect();
        let views = cache.write_and_view(&news, step.layer, &rows);
        let mut t0 = 0;
        let seqs: Vec<(&[f32], &LayerView<'_>)> = news
            .iter()
            .zip(&views)
            .map(|(&(_, n), view)| {
                t0 += n;
                (&q[(t0 - n) * h * hd..t0 * h * hd], view)
            })
            .collect();
        let o: Vec<f32> = gqa(&seqs, d).concat(); // [T, heads, head_dim]
        step.record("heads", &o);
        let mut y = self.o.forward(&o);
        add_bias(&mut y, self.o_bias.as_deref());
        y
    }
}

/// Causal attention of each sequence's `n` new query tokens, the last `n` of its cache rows, in tiles on
/// the rows kernels ([`crate::tiled`]); [`gqa_loop`] is the spec it is tested against.
///
/// Per sequence `(q, cache)`: `q` `[n, heads, head_dim]` with RoPE applied, `cache`
/// `[len, 2·kv_heads·head_dim]` rows; returns each sequence's `[n, heads, head_dim]`. All
/// sequences' tiles run as one pool job ([`tiled::attend_many`]).
fn gqa(seqs: &[(&[f32], &LayerView<'_>)], d: &GqaDims) -> Vec<Vec<f32>> {
    let (h, hd, _, v_off) = d.layout();
    let layout = tiled::Layout {
        heads: h,
        kv_heads: d.kv_heads,
        key: 0,
        key_step: hd,
        dk: hd,
        value: v_off,
        value_step: hd,
        dv: hd,
        scale: d.scale,
        window: d.window,
    };
    tiled::attend_many(seqs, &layout)
}

/// [`gqa`] as loops: one task per (token, head).
#[cfg(test)]
fn gqa_loop(q: &[f32], cache: &LayerView<'_>, d: &GqaDims, out: &mut [f32]) {
    use moela_kernels::{ops::dot, parallel_chunks, softmax_in_place};
    let (h, hd, group, v_off) = d.layout();
    let n = q.len() / (h * hd);
    let (len, start) = (cache.len, cache.len - n);
    // One task per (token, head): its keys, softmax and weighted sum of values.
    let work = n * h * len * hd * 2;
    let rows = cache.f32_rows();
    parallel_chunks(out, hd, work, |i, o| {
        let (t, hh) = (i / h, i % h);
        let pos = start + t;
        let first = d.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let g = hh / group;
        let qh = &q[i * hd..(i + 1) * hd];
        let mut scores: Vec<f32> = (first..=pos)
            .map(|u| dot(qh, &rows.row(u)[g * hd..(g + 1) * hd]) * d.scale)
            .collect();
        softmax_in_place(&mut scores);
        o.fill(0.0);
        for (u, &p) in (first..=pos).zip(&scores) {
            let vu = &rows.row(u)[v_off + g * hd..v_off + (g + 1) * hd];
            for (a, &b) in o.iter_mut().zip(vu) {
                *a += p * b;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data as data;

    /// The tiles equal the loops: one and many new tokens, with and without earlier cached
    /// tokens (up to 320 keys: several key chunks), full attention and sliding windows, groups
    /// of 1, 3 and 6 heads.
    #[test]
    fn tiled_gqa_equals_the_loops() {
        for (heads, kv_heads) in [(2, 2), (6, 2), (12, 2)] {
            for window in [None, Some(5), Some(100)] {
                // Past 256 keys a task runs its keys in more than one chunk.
                for (past, n) in [(0, 1), (9, 1), (0, 20), (17, 35), (290, 1), (300, 20)] {
                    let hd = 8;
                    let d = GqaDims {
                        heads,
                        kv_heads,
                        head_dim: hd,
                        scale: 0.3,
                        window,
                    };
                    let len = past + n;
                    let rows = data(len * 2 * kv_heads * hd, (len + heads) as u64);
                    let cache = LayerView::of_rows(&rows, 2 * kv_heads * hd, 16);
                    let q = data(n * heads * hd, n as u64);
                    let mut want = vec![0.0; q.len()];
                    gqa_loop(&q, &cache, &d, &mut want);
                    let got = gqa(&[(&q, &cache)], &d).remove(0);
                    let diff = want
                        .iter()
                        .zip(&got)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0, f32::max);
                    assert!(
                        diff < 1e-5,
                        "heads {heads}/{kv_heads} window {window:?} past {past} n {n}: {diff}"
                    );
                }
            }
        }
    }
}
