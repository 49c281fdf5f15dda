//! DeepSeek-V4's compressed branches: entries pooled from the ring rows (`RowLayout`), kept in
//! the blocks (`EntryLayout`).
//!
//! **Entries.** Window `w` (tokens `w·r..(w+1)·r`, `r` = ratio) becomes one entry once its last
//! token is cached: per channel `c`, `Σ_j softmax_j(gate_j[c] + bias_j[c]) · kv_j[c]` over its
//! slots, then the compressor's RMSNorm, then RoPE at position `w·r` on the trailing rope dims.
//! HCA's slots are the window's tokens (one series). CSA's are `2r`: the previous window's
//! tokens through the first series (`Ca`) and this window's through the second (`Cb`); window 0
//! has no previous window (those slots weigh 0). transformers (`DeepseekV4CSACompressor`,
//! `DeepseekV4HCACompressor`) computes the same per window, whatever its call boundaries.
//!
//! **Visibility.** A query at position `p` sees the entries `w < (p + 1) / r`: those whose
//! window ended at or before it.
//!
//! **CSA's selection.** The indexer's entries are its keys; a query scores each visible one by
//! `Σ_h w_h · relu(q_h · k) / √dim` (f32, as the reference) and keeps the best
//! `min(index_topk, visible)`, ties to the earlier entry. The keys are gathered once per sequence
//! and step (`entry_keys`); `index_scores_spec` is the executable spec (a scalar dot product per head
//! and entry), `index_scores` the same on the rows kernels, tested against it.

use moela_kernels::{rows_matmul, RowData};

use crate::cache::{LayerView, RingView};
use crate::rope::Rope;

use super::{Compressor, EntryLayout, V4Indexer};

impl Compressor {
    /// The entry of window `w` from the projections in the ring `view` (every row of the
    /// window, and of the previous one for CSA, must be held), with `rope` at `w·ratio` on its
    /// trailing `rope_dim` values.
    pub(crate) fn entry(
        &self,
        view: &RingView<'_>,
        w: usize,
        rope: &Rope,
        rope_dim: usize,
        eps: f32,
    ) -> Vec<f32> {
        let (r, c) = (self.ratio, &self.cols);
        let dim = c.dim;
        let width = c.series * dim; // one row of position_bias
                                    // Slots as (token row, series): CSA's previous window through series 0, then this
                                    // window through its last series.
        let mut slots: Vec<(usize, usize, usize)> = Vec::with_capacity(2 * r);
        if c.series == 2 && w > 0 {
            slots.extend((0..r).map(|j| ((w - 1) * r + j, j, 0)));
        }
        slots.extend((0..r).map(|j| (w * r + j, j, c.series - 1)));
        let n = slots.len();
        let mut kv = vec![0.0f32; n * dim]; // [slots, dim]
        let mut score = vec![0.0f32; n * dim];
        for (s, &(u, j, series)) in slots.iter().enumerate() {
            let off = series * dim;
            view.copy_row(u, c.kv + off, &mut kv[s * dim..(s + 1) * dim]);
            let g = &mut score[s * dim..(s + 1) * dim];
            view.copy_row(u, c.gate + off, g);
            let bias = &self.position_bias[j * width + off..j * width + off + dim];
            g.iter_mut().zip(bias).for_each(|(g, b)| *g += b);
        }
        let mut e = vec![0.0f32; dim];
        for (ch, out) in e.iter_mut().enumerate() {
            let max = (0..n)
                .map(|s| score[s * dim + ch])
                .fold(f32::NEG_INFINITY, f32::max);
            let (mut num, mut den) = (0.0f32, 0.0f32);
            for s in 0..n {
                let p = (score[s * dim + ch] - max).exp();
                num += p * kv[s * dim + ch];
                den += p;
            }
            *out = num / den;
        }
        moela_kernels::rms_norm_in_place(&mut e, &self.norm, eps);
        rope.table(&[w * r]).apply(0, &mut e[dim - rope_dim..]);
        e
    }
}

impl V4Indexer {
    /// The indexer keys of the first `visible` entries in `view` (laid out as `at`):
    /// `[visible, dim]`.
    pub(crate) fn entry_keys(
        &self,
        view: &LayerView<'_>,
        at: &EntryLayout,
        visible: usize,
    ) -> Vec<f32> {
        let c = &self.compressor.cols;
        let mut keys = vec![0.0f32; visible * c.dim];
        for (w, k) in keys.chunks_exact_mut(c.dim).enumerate() {
            at.read(view, w, c.entry, k);
        }
        keys
    }

    /// The entries a query keeps: the best `min(topk, scores.len())` by score (ties: the
    /// earlier entry), ascending.
    pub(crate) fn select(&self, scores: &[f32]) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..scores.len()).collect();
        if scores.len() > self.topk {
            idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
            idx.truncate(self.topk);
            idx.sort_unstable();
        }
        idx
    }
}

/// The index scores of one query (`q`: `[heads, dim]` after RoPE; `weights`: `[heads]`,
/// already `× heads^-½`) against `keys` (`[entries, dim]`, [`V4Indexer::entry_keys`]): the
/// executable spec of [`index_scores`].
#[cfg(test)]
pub(crate) fn index_scores_spec(q: &[f32], weights: &[f32], keys: &[f32], dim: usize) -> Vec<f32> {
    let scale = 1.0 / (dim as f32).sqrt();
    keys.chunks_exact(dim)
        .map(|k| {
            q.chunks_exact(dim)
                .zip(weights)
                .map(|(qh, &wh)| {
                    let dot: f32 = qh.iter().zip(k).map(|(a, b)| a * b).sum();
                    dot.max(0.0) * scale * wh
                })
                .sum()
        })
        .collect()
}

/// [`index_scores_spec`] with every head's dot products in one rows-kernel product
/// (calling thread); the heads summed per entry in the spec's order.
pub(crate) fn index_scores(q: &[f32], weights: &[f32], keys: &[f32], dim: usize) -> Vec<f32> {
    let scale = 1.0 / (dim as f32).sqrt();
    let (heads, n) = (weights.len(), keys.len() / dim.max(1));
    if n == 0 || heads == 0 {
        return vec![0.0; n];
    }
    let mut dots = vec![0.0f32; heads * n];
    rows_matmul(q, heads, RowData::f32(keys, dim), &mut dots);
    (0..n)
        .map(|e| {
            weights
                .iter()
                .enumerate()
                .map(|(h, &wh)| dots[h * n + e].max(0.0) * scale * wh)
                .sum()
        })
        .collect()
}
