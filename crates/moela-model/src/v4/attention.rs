//! DeepSeek-V4's attention (`DeepseekV4Attention`): per query, one pass over its keys, gathered
//! from the cache as f32 (`[keys, head_dim]`). `attend_keys_spec` is the executable spec (one
//! scalar dot product per head and key); `attend_keys` computes the same with the rows kernels
//! (every head's scores in one product, one weighted sum), tested against it.
//!
//! - Query: `q_b(rms_norm(q_a x))`, then per head an RMSNorm without weight, then RoPE on the
//!   trailing `qk_rope_head_dim` dims (interleaved pairs).
//! - One shared head is both key and value: `rms_norm(kv x)` with RoPE, cached per token.
//! - A query at `p` attends to its window (positions `p − sliding_window + 1 ..= p`) plus, in a
//!   CSA layer, the indexer's choice of visible entries, in an HCA layer every visible entry
//!   (`compressor.rs`); scores `q·k / √head_dim`; each head's learned sink logit joins the softmax
//!   denominator only.
//! - The output's rope dims are rotated back (RoPE at `p` with the negated angle), then the grouped
//!   projection: group g's heads through rows `g·o_lora_rank..` of `o_a`, all groups through `o_b`.
//!
//! Sliding layers rotate with the main θ; CSA and HCA layers with the compressed θ and YaRN —
//! queries, window keys and entries alike.

use moela_kernels::{
    parallel_chunks, rms_norm_in_place, rows_matmul, rows_weighted_sum, QMat, RowData,
};

use crate::cache::{BatchCache, LayerView, RingView, SeqCache};
use crate::model::{Attend, SeqInput, Step};
use crate::rope::RopeTable;

use super::{EntryLayout, V4Attention};

/// `x · 1/sqrt(mean(x²) + eps)` (mean in f64), in place.
fn unweighted_rms_norm(x: &mut [f32], eps: f32) {
    let ms = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len() as f64;
    let inv = (1.0 / (ms + eps as f64).sqrt()) as f32;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// Copies `src`'s `[T, width]` rows into columns `at..at + width` of `rows` (`[T, row]`).
fn put_cols(rows: &mut [f32], row: usize, at: usize, src: &[f32]) {
    let width = src.len() / (rows.len() / row).max(1);
    for (r, s) in rows.chunks_exact_mut(row).zip(src.chunks_exact(width)) {
        r[at..at + width].copy_from_slice(s);
    }
}

/// One query's attention over `keys` (`[n, head_dim]`, key = value) for every head of `q`
/// (`[heads, head_dim]`): softmax of `q·k · scale` with the head's sink logit in the
/// denominator only, then the weighted sum of the keys into `out` (`[heads, head_dim]`). The
/// executable spec of [`attend_keys`].
#[cfg(test)]
fn attend_keys_spec(q: &[f32], keys: &[f32], scale: f32, sinks: &[f32], out: &mut [f32]) {
    let hd = out.len() / sinks.len().max(1);
    let mut p = vec![0.0f32; keys.len() / hd.max(1)];
    for (head, (qh, oh)) in q.chunks_exact(hd).zip(out.chunks_exact_mut(hd)).enumerate() {
        for (pk, k) in p.iter_mut().zip(keys.chunks_exact(hd)) {
            *pk = qh.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale;
        }
        let sink = sinks[head];
        let max = p.iter().copied().fold(sink, f32::max);
        let mut den = (sink - max).exp();
        for v in p.iter_mut() {
            *v = (*v - max).exp();
            den += *v;
        }
        oh.fill(0.0);
        for (&pk, k) in p.iter().zip(keys.chunks_exact(hd)) {
            let w = pk / den;
            oh.iter_mut().zip(k).for_each(|(o, &kv)| *o += w * kv);
        }
    }
}

/// [`attend_keys_spec`] on the rows kernels (calling thread): the scores of every head in one
/// product, the softmax per head as the spec takes it, one weighted sum.
fn attend_keys(q: &[f32], keys: &[f32], scale: f32, sinks: &[f32], out: &mut [f32]) {
    let heads = sinks.len();
    let hd = out.len() / heads.max(1);
    let n = keys.len() / hd.max(1);
    if n == 0 || heads == 0 {
        out.fill(0.0);
        return;
    }
    let rows = RowData::f32(keys, hd);
    let mut p = vec![0.0f32; heads * n];
    rows_matmul(q, heads, rows, &mut p);
    for (ph, &sink) in p.chunks_exact_mut(n).zip(sinks) {
        ph.iter_mut().for_each(|v| *v *= scale);
        let max = ph.iter().copied().fold(sink, f32::max);
        let mut den = (sink - max).exp();
        for v in ph.iter_mut() {
            *v = (*v - max).exp();
            den += *v;
        }
        ph.iter_mut().for_each(|v| *v /= den);
    }
    out.fill(0.0);
    rows_weighted_sum(&p, heads, rows, out);
}

/// A new token: its sequence and position.
#[derive(Clone, Copy)]
struct Query {
    seq: usize,
    pos: usize,
}

impl V4Attention {
    /// The `kv` and `gate` projections of a compressor for every row of `x`, into `rows`.
    fn project(&self, comp: &super::Compressor, x: &[f32], rows: &mut [f32]) {
        let [kv, gate] = QMat::forward_many([&comp.kv, &comp.gate], x);
        let w = self.dims.row.width;
        put_cols(rows, w, comp.cols.kv, &kv);
        put_cols(rows, w, comp.cols.gate, &gate);
    }

    /// The windows the new tokens complete, `(sequence, window, entry)`: each entry (laid out
    /// as `at`) pooled from the projections now in the rings.
    fn new_entries(
        &self,
        ring: &[RingView<'_>],
        queries: &[Query],
        at: &EntryLayout,
    ) -> Vec<(usize, usize, Vec<f32>)> {
        let d = &self.dims;
        let comps = [
            self.compressor.as_ref(),
            self.indexer.as_ref().map(|ix| &ix.compressor),
        ];
        queries
            .iter()
            .filter(|q| (q.pos + 1).is_multiple_of(at.ratio))
            .map(|q| {
                let w = (q.pos + 1) / at.ratio - 1;
                let mut e = vec![0.0f32; at.total];
                for comp in comps.into_iter().flatten() {
                    let v = comp.entry(&ring[q.seq], w, &d.rope, d.rope_dim, d.eps);
                    e[comp.cols.entry..comp.cols.entry + v.len()].copy_from_slice(&v);
                }
                (q.seq, w, e)
            })
            .collect()
    }

    /// The compressor entries (`head_dim` values each) of windows `ws` in `view`, into `out`
    /// (`[ws, head_dim]`).
    fn gather_entries(
        &self,
        view: &LayerView<'_>,
        at: &EntryLayout,
        ws: &[usize],
        out: &mut [f32],
    ) {
        for (o, &w) in out.chunks_exact_mut(self.dims.head_dim).zip(ws) {
            at.read(view, w, 0, o);
        }
    }

    /// The compressed entries query `q` attends to (window indices, ascending): CSA's
    /// selection (`keys`: the indexer keys of its sequence's entries, at least the visible
    /// ones), HCA's every visible entry, none in a sliding layer.
    fn entries_for(&self, keys: &[f32], q: Query, iq: &[f32], iw: &[f32]) -> Vec<usize> {
        match (&self.indexer, &self.compressor) {
            (Some(ix), Some(c)) => {
                let visible = (q.pos + 1) / c.ratio;
                let dim = ix.compressor.cols.dim;
                ix.select(&super::compressor::index_scores(
                    iq,
                    iw,
                    &keys[..visible * dim],
                    dim,
                ))
            }
            (None, Some(c)) => (0..(q.pos + 1) / c.ratio).collect(),
            _ => Vec::new(),
        }
    }

    /// One query's attention over its window (from `ring`) and the `n_entries` compressed
    /// entries it sees (`entries` fills their `[n_entries, head_dim]` keys), every head:
    /// `[heads, head_dim]` into `out`, the rope dims rotated back at the query's position (row
    /// `t` of `rope`).
    #[allow(clippy::too_many_arguments)]
    fn attend_one(
        &self,
        ring: &RingView<'_>,
        q: &[f32],
        pos: usize,
        n_entries: usize,
        entries: impl FnOnce(&mut [f32]),
        rope: (&RopeTable, usize),
        out: &mut [f32],
    ) {
        let d = &self.dims;
        let hd = d.head_dim;
        let first = (pos + 1).saturating_sub(d.window);
        // Keys (= values): the window's rows, then the entries.
        let n_win = pos + 1 - first;
        let mut keys = vec![0.0f32; (n_win + n_entries) * hd];
        for (k, u) in keys.chunks_exact_mut(hd).zip(first..=pos) {
            ring.copy_row(u, 0, k);
        }
        entries(&mut keys[n_win * hd..]);
        attend_keys(q, &keys, d.scale, &self.sinks, out);
        for oh in out.chunks_exact_mut(hd) {
            rope.0.apply_inverse(rope.1, &mut oh[hd - d.rope_dim..]);
        }
    }
}

impl Attend for V4Attention {
    fn attend(
        &self,
        step: &Step<'_>,
        x: &[f32],
        batch: &[SeqInput<'_>],
        cache: &mut BatchCache<'_>,
    ) -> Vec<f32> {
        let d = &self.dims;
        let (h, hd, rd) = (d.heads, d.head_dim, d.rope_dim);
        let n_tok = step.positions.len();
        let rope = d.rope.table(step.positions);
        // Queries: [T, heads·head_dim], per-head norm and RoPE.
        let mut q_res = self.q_a.forward(x); // [T, q_lora_rank]
        rms_norm_in_place(&mut q_res, &self.q_a_norm, d.eps);
        let mut q = self.q_b.forward(&q_res);
        for (t, qt) in q.chunks_exact_mut(h * hd).enumerate() {
            for qh in qt.chunks_exact_mut(hd) {
                unweighted_rms_norm(qh, d.eps);
                rope.apply(t, &mut qh[hd - rd..]);
            }
        }
        step.record("q", &q);
        // The cache rows of the new tokens, entries still empty: [T, row].
        let width = d.row.width;
        let mut rows = vec![0.0f32; n_tok * width];
        let mut kv = self.kv.forward(x); // [T, head_dim]
        rms_norm_in_place(&mut kv, &self.kv_norm, d.eps);
        for (t, k) in kv.chunks_exact_mut(hd).enumerate() {
            rope.apply(t, &mut k[hd - rd..]);
        }
        put_cols(&mut rows, width, 0, &kv);
        step.record("kv", &kv);
        if let Some(c) = &self.compressor {
            self.project(c, x, &mut rows);
        }
        // The indexer's queries ([T, heads, dim], RoPE on the trailing rope dims) and head
        // weights ([T, heads] × heads^-½).
        let (mut iq, mut iw) = (Vec::new(), Vec::new());
        if let Some(ix) = &self.indexer {
            self.project(&ix.compressor, x, &mut rows);
            let dim = ix.compressor.cols.dim;
            iq = ix.q_b.forward(&q_res);
            for (t, qt) in iq.chunks_exact_mut(ix.heads * dim).enumerate() {
                for qh in qt.chunks_exact_mut(dim) {
                    rope.apply(t, &mut qh[dim - rd..]);
                }
            }
            iw = ix.weights_proj.forward(x);
            let s = 1.0 / (ix.heads as f32).sqrt();
            iw.iter_mut().for_each(|w| *w *= s);
        }
        let seqs: Vec<(&SeqCache, usize)> =
            batch.iter().map(|s| (&*s.cache, s.tokens.len())).collect();
        let queries: Vec<Query> = seqs
            .iter()
            .enumerate()
            .flat_map(|(i, &(s, n))| (s.len()..s.len() + n).map(move |pos| Query { seq: i, pos }))
            .collect();
        // The ring rows first; then the windows the new tokens complete, pooled from the rings
        // and written into their tokens' rows of the blocks.
        let l = step.layer;
        cache.write_ring(&seqs, l, &rows);
        if let Some(at) = &d.entries {
            let done = self.new_entries(&cache.ring_views(&seqs, l), &queries, at);
            for (i, w, e) in &done {
                cache.write_at(seqs[*i].0, l, w * at.ratio, &at.pieces(e));
            }
        }
        let ring = cache.ring_views(&seqs, l);
        let views = match d.entries {
            Some(_) => cache.views(&seqs, l),
            None => Vec::new(),
        };
        // Each query's compressed entries (CSA: the indexer's choice).
        let mut chosen: Vec<Vec<usize>> = vec![Vec::new(); n_tok];
        let idim = self.indexer.as_ref().map_or(0, |ix| ix.compressor.cols.dim);
        let ih = self.indexer.as_ref().map_or(0, |ix| ix.heads);
        // A rough multiply-add count (saturating: it only decides whether to use the pool).
        let longest = step.positions.iter().max().map_or(1, |&p| p + 1);
        let work = [longest, ih.max(1), idim.max(1)]
            .iter()
            .fold(n_tok, |w, &f| w.saturating_mul(f));
        // The indexer keys each sequence's queries may see, gathered once.
        let index_keys: Vec<Vec<f32>> = match (&self.indexer, &d.entries) {
            (Some(ix), Some(at)) => seqs
                .iter()
                .zip(&views)
                .map(|(&(s, n), v)| ix.entry_keys(v, at, (s.len() + n) / at.ratio))
                .collect(),
            _ => vec![Vec::new(); seqs.len()],
        };
        parallel_chunks(&mut chosen, 1, work, |t, c| {
            let q = queries[t];
            let iq_t = iq.get(t * ih * idim..(t + 1) * ih * idim).unwrap_or(&[]);
            let iw_t = iw.get(t * ih..(t + 1) * ih).unwrap_or(&[]);
            c[0] = self.entries_for(&index_keys[q.seq], q, iq_t, iw_t);
        });
        if step.tracing() && self.indexer.is_some() {
            let k = self.indexer.as_ref().map_or(0, |ix| ix.topk);
            let mut table = vec![-1.0f32; n_tok * k];
            for (t, c) in chosen.iter().enumerate() {
                for (slot, &w) in table[t * k..(t + 1) * k].iter_mut().zip(c) {
                    *slot = w as f32;
                }
            }
            step.record("index_topk", &table);
        }
        // Attention, one query per task: [T, heads·head_dim].
        let mut heads = vec![0.0f32; n_tok * h * hd];
        let keys = d.window + chosen.iter().map(Vec::len).max().unwrap_or(0);
        let work = [keys, h, hd, 2]
            .iter()
            .fold(n_tok, |w, &f| w.saturating_mul(f));
        // HCA's entries (each query sees all visible ones), gathered once per sequence.
        let all: Vec<Vec<f32>> = match (&d.entries, &self.indexer) {
            (Some(at), None) => seqs
                .iter()
                .zip(&views)
                .map(|(&(s, n), v)| {
                    let ws: Vec<usize> = (0..(s.len() + n) / at.ratio).collect();
                    let mut all = vec![0.0f32; ws.len() * hd];
                    self.gather_entries(v, at, &ws, &mut all);
                    all
                })
                .collect(),
            _ => Vec::new(),
        };
        parallel_chunks(&mut heads, h * hd, work, |t, out| {
            let q_t = &q[t * h * hd..(t + 1) * h * hd];
            let qy = queries[t];
            // HCA's from the sequence's gathered entries; CSA's chosen ones straight from the
            // blocks.
            let fill = |keys: &mut [f32]| match (&d.entries, all.get(qy.seq)) {
                (Some(_), Some(all)) => keys.copy_from_slice(&all[..keys.len()]),
                (Some(at), None) => self.gather_entries(&views[qy.seq], at, &chosen[t], keys),
                (None, _) => {}
            };
            let (r, n) = (&ring[qy.seq], chosen[t].len());
            self.attend_one(r, q_t, qy.pos, n, fill, (&rope, t), out);
        });
        drop((ring, views));
        step.record("heads", &heads);
        self.output(&heads, n_tok)
    }
}

impl V4Attention {
    /// The grouped output projection of `[T, heads·head_dim]`: `[T, hidden]`.
    fn output(&self, heads: &[f32], n_tok: usize) -> Vec<f32> {
        let d = &self.dims;
        let group_in = heads.len() / n_tok.max(1) / d.o_groups;
        let r = d.o_lora_rank;
        let mut mid = vec![0.0f32; n_tok * d.o_groups * r]; // [T, groups·o_lora_rank]
        let mut x = vec![0.0f32; n_tok * group_in];
        let mut y = vec![0.0f32; n_tok * r];
        for g in 0..d.o_groups {
            for (t, xt) in x.chunks_exact_mut(group_in).enumerate() {
                let at = (t * d.o_groups + g) * group_in;
                xt.copy_from_slice(&heads[at..at + group_in]);
            }
            self.o_a.matmul_rows(g * r, r, &x, n_tok, &mut y);
            for (t, yt) in y.chunks_exact(r).enumerate() {
                let at = (t * d.o_groups + g) * r;
                mid[at..at + r].copy_from_slice(yt);
            }
        }
        self.o_b.forward(&mid)
    }
}

#[cfg(test)]
mod tests {
    use super::super::compressor::{index_scores, index_scores_spec};
    use super::{attend_keys, attend_keys_spec};
    use crate::test_data as data;

    fn close(got: &[f32], want: &[f32], tol: f32, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol * (1.0 + w.abs()),
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    /// The kernel form of one query's attention equals the spec, with sinks that dominate
    /// some heads, for key counts with and without kernel tile tails (and none at all).
    #[test]
    fn attention_over_keys_matches_spec() {
        let (heads, hd) = (6, 72);
        for n in [0usize, 1, 5, 16, 67] {
            let q = data(heads * hd, 1 + n as u64);
            let keys = data(n * hd, 100 + n as u64);
            let sinks: Vec<f32> = (0..heads).map(|h| h as f32 * 1.5 - 3.0).collect();
            let (mut want, mut got) = (vec![f32::NAN; heads * hd], vec![f32::NAN; heads * hd]);
            attend_keys_spec(&q, &keys, 0.3, &sinks, &mut want);
            attend_keys(&q, &keys, 0.3, &sinks, &mut got);
            close(&got, &want, 1e-5, &format!("attention, {n} keys"));
        }
    }

    /// The kernel form of the indexer's scores equals the spec (relu'd dot products weighted
    /// per head), ties and all-negative dots included.
    #[test]
    fn index_scores_match_spec() {
        let (heads, dim) = (5, 40);
        for n in [0usize, 1, 9, 33] {
            let q = data(heads * dim, 7 + n as u64);
            let w = data(heads, 70 + n as u64);
            let mut keys = data(n * dim, 700 + n as u64);
            if n > 2 {
                let first = keys[..dim].to_vec();
                keys[dim..2 * dim].copy_from_slice(&first); // a tie
                keys[2 * dim..3 * dim].iter_mut().for_each(|v| *v = 0.0);
            }
            let want = index_scores_spec(&q, &w, &keys, dim);
            let got = index_scores(&q, &w, &keys, dim);
            close(&got, &want, 1e-5, &format!("index scores, {n} entries"));
            if n > 2 {
                assert_eq!(got[0], got[1], "a tie stays a tie");
            }
        }
    }
}
