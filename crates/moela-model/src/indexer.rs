//! DeepSeek Sparse Attention's lightning indexer (DeepSeek-V3.2): per layer, every query token
//! scores each of its causal keys and keeps the best `index_topk`; MLA then attends to those
//! keys only. A query with no more than `index_topk` causal keys keeps them all (dense).
//!
//! - query: the indexer's `wq_b` on the same normalized q-LoRA latent the MLA query uses,
//!   `index_n_heads` heads of `index_head_dim`;
//! - key: one per token, `LayerNorm(wk · x)` (with bias, ε 1e-6), cached beside the MLA latent;
//! - RoPE on the *leading* `qk_rope_head_dim` dims of every indexer head and of the key, in the
//!   rotate-half layout (dim i pairs with i + rope/2), from the same cos/sin table as MLA's;
//! - score(t, s) = Σ_h w_h(t) · relu(q_h(t) · k(s) / √d), with w = `weights_proj(x)` / √H, all
//!   in f32 (the reference computes the scores in float32 even in a float64 model).
//!
//! Selection ranks by score, higher first, and on equal scores by position, lower first.

use std::ops::Range;

use moela_kernels::{num_threads, parallel_chunks, rows_matmul};

use crate::cache::LayerView;
use crate::config::{IndexerConfig, MlaConfig};
use crate::error::ModelError;
use crate::model::Step;
use crate::weights::Indexer;

/// The `k_norm` LayerNorm's ε (fixed by the model definition, not read from the config).
const K_NORM_EPS: f64 = 1e-6;

/// Keys per scoring task (at least) when a decode step's lone query is split over the pool.
const KEYS_PER_TASK: usize = 512;

/// Marks an unused candidate slot.
const NO_KEY: u32 = u32::MAX;

/// The indexer's sizes, fixed at load.
#[derive(Clone, Copy, Debug)]
pub struct IndexerDims {
    /// Indexer query heads (`index_n_heads`).
    pub heads: usize,
    /// Width of a head and of the key (`index_head_dim`).
    pub dim: usize,
    /// Leading dims of each head and of the key that carry RoPE (`qk_rope_head_dim`).
    pub rope: usize,
    /// Keys each query keeps (`index_topk`).
    pub topk: usize,
    /// Column of the indexer key in a cached row: after the latent and the rope key.
    pub key_col: usize,
}

impl IndexerDims {
    /// The sizes of MLA config `m`'s indexer `ix`.
    pub fn new(m: &MlaConfig, ix: &IndexerConfig) -> Result<IndexerDims, ModelError> {
        Ok(IndexerDims {
            heads: ix.index_n_heads,
            dim: ix.index_head_dim,
            rope: m.qk_rope_head_dim,
            topk: ix.index_topk,
            key_col: m.latent_dim()?,
        })
    }

    /// `1 / √index_head_dim`, applied to every head's dot product.
    fn score_scale(&self) -> f32 {
        (1.0 / (self.dim as f64).sqrt()) as f32
    }
}

/// The indexer's queries of a forward pass's token rows.
pub(crate) struct IndexQueries {
    /// `[T, heads, dim]`, RoPE applied.
    q: Vec<f32>,
    /// `[T, heads]`: `weights_proj(x) / √heads`.
    w: Vec<f32>,
}

/// The keys each new query token of one sequence attends to.
#[derive(Clone, Debug, Default)]
pub(crate) struct Selection {
    /// Per new token: its range of `keys`, or `None` when it attends to all its causal keys.
    spans: Vec<Option<Range<usize>>>,
    /// The selected key positions, ascending per token.
    keys: Vec<u32>,
}

impl Selection {
    /// The keys token `t` attends to, ascending; `None`: all of its causal keys.
    pub(crate) fn keys(&self, t: usize) -> Option<&[u32]> {
        let span = self.spans.get(t)?.clone()?;
        Some(&self.keys[span])
    }

    /// Whether every token attends to all its causal keys.
    pub(crate) fn is_dense(&self) -> bool {
        self.spans.iter().all(Option::is_none)
    }
}

/// `x ← (x − mean) / √(var + ε) · weight + bias`, moments in f64.
fn layer_norm(x: &mut [f32], weight: &[f32], bias: &[f32]) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let inv = 1.0 / (var + K_NORM_EPS).sqrt();
    for ((v, &g), &b) in x.iter_mut().zip(weight).zip(bias) {
        *v = ((*v as f64 - mean) * inv) as f32 * g + b;
    }
}

impl Indexer {
    /// Whether a pass over tokens at `positions` needs the indexer's queries: some token has
    /// more causal keys than it keeps (or a trace records the scores).
    pub(crate) fn needs_queries(&self, positions: &[usize], tracing: bool) -> bool {
        tracing || positions.iter().any(|&p| p >= self.dims.topk)
    }

    /// The cached rows `rows` (`[T, lat]`: latent and rope key) with each token's key appended:
    /// `[T, lat + dim]`. `k` is `wk · x` (`[T, dim]`), normalized and rotated here into what the
    /// cache holds. Records `index_k`.
    pub(crate) fn append_keys(
        &self,
        rows: &[f32],
        lat: usize,
        mut k: Vec<f32>,
        step: &Step<'_>,
    ) -> Vec<f32> {
        let d = &self.dims;
        for (t, key) in k.chunks_exact_mut(d.dim).enumerate() {
            layer_norm(key, &self.k_norm, &self.k_norm_bias);
            step.rope.apply_half(t, &mut key[..d.rope]);
        }
        step.record("index_k", &k);
        rows.chunks_exact(lat)
            .zip(k.chunks_exact(d.dim))
            .flat_map(|(row, key)| row.iter().chain(key))
            .copied()
            .collect()
    }

    /// Each sequence's selection ([`select`]) for the new tokens of `seqs` (views of this
    /// layer's rows, the new keys written, and the count of new tokens). `q` is `wq_b` on the
    /// tokens' q-LoRA latents (`[T, heads·dim]`; `None` when no token needs queries:
    /// [`Indexer::needs_queries`]) and `w` is `weights_proj · x` (`[T, heads]`). Records
    /// `index_scores` ([`score_table`]) and `index_topk` ([`selection_table`]).
    pub(crate) fn select_keys(
        &self,
        q: Option<Vec<f32>>,
        mut w: Vec<f32>,
        seqs: &[(&LayerView<'_>, usize)],
        step: &Step<'_>,
    ) -> Vec<Selection> {
        let d = &self.dims;
        let Some(mut q) = q else {
            return seqs.iter().map(|_| Selection::default()).collect();
        };
        for (i, head) in q.chunks_exact_mut(d.dim).enumerate() {
            step.rope.apply_half(i / d.heads, &mut head[..d.rope]);
        }
        let scale = (1.0 / (d.heads as f64).sqrt()) as f32;
        w.iter_mut().for_each(|v| *v *= scale);
        let iq = IndexQueries { q, w };
        let sels = select(&iq, seqs, d);
        if step.tracing() {
            step.record("index_scores", &score_table(&iq, seqs, d));
            step.record("index_topk", &selection_table(&sels, seqs, d));
        }
        sels
    }
}

/// The scores of keys `keys` of `view` for token row `row` of `iq`, as (score, position).
fn score_keys(
    iq: &IndexQueries,
    row: usize,
    view: &LayerView<'_>,
    keys: Range<usize>,
    d: &IndexerDims,
) -> Vec<(f32, u32)> {
    let (h, bt) = (d.heads, view.block_tokens());
    let q = &iq.q[row * h * d.dim..(row + 1) * h * d.dim]; // [heads, dim]
    let w = &iq.w[row * h..(row + 1) * h]; // [heads]
    let scale = d.score_scale();
    let mut y = vec![0.0f32; h * bt]; // [heads, block rows]
    let mut out = Vec::with_capacity(keys.len());
    for b in keys.start / bt..keys.end.div_ceil(bt) {
        let rows = view.block(b).columns(d.key_col, d.dim);
        let (u0, nr) = (b * bt, rows.rows());
        rows_matmul(q, h, rows, &mut y[..h * nr]);
        for u in keys.start.max(u0)..keys.end.min(u0 + nr) {
            let i = u - u0;
            let s = (0..h).fold(0.0f32, |s, hh| {
                s + w[hh] * (y[hh * nr + i] * scale).max(0.0)
            });
            out.push((s, u as u32));
        }
    }
    out
}

/// Higher score first, then lower position: a total order, so a selection does not depend on
/// how the keys were split into tasks.
fn rank(a: &(f32, u32), b: &(f32, u32)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// Keeps the `k` best of `v` (in no particular order).
fn keep_best(v: &mut Vec<(f32, u32)>, k: usize) {
    if v.len() > k {
        v.select_nth_unstable_by(k - 1, rank);
        v.truncate(k);
    }
}

/// One scoring task: token row `row` (of sequence `seq`) against keys `keys`.
struct Unit {
    row: usize,
    seq: usize,
    keys: Range<usize>,
}

/// A new token of a batch.
struct Token {
    /// Its sequence.
    seq: usize,
    /// Its row among all sequences' new tokens.
    row: usize,
    /// Its index among its sequence's new tokens.
    t: usize,
    /// Its causal keys: `0..visible`.
    visible: usize,
}

/// Every new token of `seqs` (views whose last `n` rows are new), in row order.
fn new_tokens<'a>(seqs: &'a [(&LayerView<'_>, usize)]) -> impl Iterator<Item = Token> + 'a {
    let mut row0 = 0;
    seqs.iter().enumerate().flat_map(move |(seq, &(view, n))| {
        let (start, first) = (view.len - n, row0);
        row0 += n;
        (0..n).map(move |t| Token {
            seq,
            row: first + t,
            t,
            visible: start + t + 1,
        })
    })
}

/// The keys every new token attends to, per sequence. `seqs[s]` is sequence `s`'s view of this
/// layer's cached rows (its new tokens' keys already written) and its count of new tokens (the
/// last rows of the view); `iq` holds the queries of all sequences' new tokens, concatenated.
///
/// Each token with more than `topk` causal keys is one task, or — a decode step's lone token —
/// several over ranges of whole blocks, cut by its own length only, each keeping its best
/// `topk`; all tasks of the batch run as one pool job, and the candidates of a token are
/// merged by the same total order, so a sequence's selection is the same alone or in a batch.
pub(crate) fn select(
    iq: &IndexQueries,
    seqs: &[(&LayerView<'_>, usize)],
    d: &IndexerDims,
) -> Vec<Selection> {
    let mut units = Vec::new();
    for tok in new_tokens(seqs).filter(|tok| tok.visible > d.topk) {
        let (view, n) = seqs[tok.seq];
        let per = match n {
            1 => KEYS_PER_TASK
                .max(tok.visible.div_ceil(4 * num_threads()))
                .next_multiple_of(view.block_tokens()),
            _ => tok.visible,
        };
        units.extend((0..tok.visible).step_by(per).map(|k0| Unit {
            row: tok.row,
            seq: tok.seq,
            keys: k0..(k0 + per).min(tok.visible),
        }));
    }
    let work = units.iter().map(|u| u.keys.len()).sum::<usize>() * d.heads * d.dim;
    let mut cands = vec![(f32::NEG_INFINITY, NO_KEY); units.len() * d.topk];
    parallel_chunks(&mut cands, d.topk, work, |i, out| {
        let u = &units[i];
        let mut scored = score_keys(iq, u.row, seqs[u.seq].0, u.keys.clone(), d);
        keep_best(&mut scored, d.topk);
        out[..scored.len()].copy_from_slice(&scored);
    });
    // Units are in row order: merge each token's candidates.
    let mut next = units.iter().zip(cands.chunks_exact(d.topk)).peekable();
    let mut out: Vec<Selection> = seqs.iter().map(|_| Selection::default()).collect();
    for tok in new_tokens(seqs) {
        let sel = &mut out[tok.seq];
        let mut best: Vec<(f32, u32)> = Vec::new();
        while let Some((_, c)) = next.next_if(|(u, _)| u.row == tok.row) {
            best.extend(c.iter().filter(|c| c.1 != NO_KEY));
            keep_best(&mut best, d.topk);
        }
        if best.is_empty() {
            sel.spans.push(None);
            continue;
        }
        let mut keys: Vec<u32> = best.iter().map(|c| c.1).collect();
        keys.sort_unstable();
        sel.spans
            .push(Some(sel.keys.len()..sel.keys.len() + keys.len()));
        sel.keys.extend(keys);
    }
    out
}

/// For the trace: every new token's scores against all keys of its sequence (row width: the
/// sequence's length after this step; keys after the token are −∞), sequences concatenated.
pub(crate) fn score_table(
    iq: &IndexQueries,
    seqs: &[(&LayerView<'_>, usize)],
    d: &IndexerDims,
) -> Vec<f32> {
    let mut out = Vec::new();
    for tok in new_tokens(seqs) {
        let view = seqs[tok.seq].0;
        let scored = score_keys(iq, tok.row, view, 0..tok.visible, d);
        out.extend(scored.iter().map(|c| c.0));
        out.extend(std::iter::repeat_n(
            f32::NEG_INFINITY,
            view.len - tok.visible,
        ));
    }
    out
}

/// For the trace: every new token's keys as `[T, topk]` positions, ascending, padded with −1
/// (the reference's `index_topk_idx` layout); a dense token lists all its causal keys.
pub(crate) fn selection_table(
    sels: &[Selection],
    seqs: &[(&LayerView<'_>, usize)],
    d: &IndexerDims,
) -> Vec<f32> {
    let mut out = Vec::new();
    for tok in new_tokens(seqs) {
        let row: Vec<f32> = match sels[tok.seq].keys(tok.t) {
            Some(k) => k.iter().map(|&u| u as f32).collect(),
            None => (0..tok.visible).map(|u| u as f32).collect(),
        };
        let pad = d.topk.saturating_sub(row.len());
        out.extend(row.into_iter().chain(std::iter::repeat_n(-1.0, pad)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_centres_scales_and_shifts() {
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        layer_norm(&mut x, &[1.0, 1.0, 2.0, 2.0], &[0.0, 1.0, 0.0, 0.0]);
        let inv = 1.0 / (1.25f64 + 1e-6).sqrt();
        let want = [-1.5 * inv, -0.5 * inv + 1.0, 1.0 * inv, 3.0 * inv];
        for (a, b) in x.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{x:?}");
        }
    }

    #[test]
    fn ranking_is_a_total_order_with_ties_to_the_earlier_position() {
        let mut v = vec![(1.0, 5), (2.0, 9), (1.0, 3), (0.5, 0), (2.0, 4)];
        keep_best(&mut v, 3);
        v.sort_by(rank);
        assert_eq!(v, vec![(2.0, 4), (2.0, 9), (1.0, 3)]);
    }
}
