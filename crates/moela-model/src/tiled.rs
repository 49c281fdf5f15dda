//! Causal attention of many query tokens over a layer's cache blocks, run on the rows kernels
//! (`rows_matmul` for scores, `rows_weighted_sum` for values) straight from the cached rows —
//! f32 or f16, no copies, no transposes. Serves GQA prefill (keys and values are per-head
//! column windows of the cached row), absorbed MLA over a few query tokens (keys are the
//! whole latent ‖ rope row, values its latent part) and standard MLA over many (rows of
//! decompressed per-head keys and values); their plain loops stay as the spec.
//!
//! Tasks are (KV head, tile of query tokens): the tile's queries of that head's group are one
//! `[m, dk]` matrix; it runs over the visible keys in chunks of [`KEY_CHUNK`]: the chunk's
//! scores, each row's softmax over its visible keys carried from chunk to chunk (running max and
//! sum), then the chunk's value rows summed block by block.

use moela_kernels::{exp_sum, parallel_chunks, rows_matmul, rows_weighted_sum};

use crate::cache::LayerView;

/// Where a layer's keys and values sit in its cached rows, and which heads read them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    /// Query heads; head `h` reads KV head `h / (heads / kv_heads)`.
    pub heads: usize,
    pub kv_heads: usize,
    /// Column of KV head 0's key, the step to the next head's, and the key width (also the
    /// query width).
    pub key: usize,
    pub key_step: usize,
    pub dk: usize,
    /// Column of KV head 0's value, the step to the next head's, and the value width.
    pub value: usize,
    pub value_step: usize,
    pub dv: usize,
    pub scale: f32,
    /// Keys visible to a query: the last `window` positions (itself included), or all.
    pub window: Option<usize>,
}

/// Query tokens per task.
const TILE_TOKENS: usize = 16;

/// Keys per pass of a task: scores are kept for one chunk of keys at a time and the softmax is
/// carried across chunks (running max and sum, the partial output rescaled when the max
/// rises), so a task's memory does not grow with the context.
const KEY_CHUNK: usize = 256;

/// A task's query rows are padded with zero rows to a multiple of this, the height of the rows
/// kernels' SIMD tiles (4 queries, 4 heads), whose remainders run plainly (e.g. one decode
/// token's group of 6 heads runs as 8).
const ROW_PAD: usize = 4;

/// Attention of `n` new query tokens, the last `n` of the `cache` rows: `q` is
/// `[n, heads, dk]`, the result `[n, heads, dv]`.
pub(crate) fn attend(q: &[f32], cache: &LayerView<'_>, l: &Layout) -> Vec<f32> {
    attend_many(&[(q, cache)], l).remove(0)
}

/// [`attend`] for several sequences at once (`(q, cache)` each, as [`attend`] takes them): the
/// tasks of all of them — each exactly the task [`attend`] would run — in one pool job, so a
/// batched decode step costs one dispatch per layer, not one per sequence. Returns each
/// sequence's `[n, heads, dv]`.
pub(crate) fn attend_many(seqs: &[(&[f32], &LayerView<'_>)], l: &Layout) -> Vec<Vec<f32>> {
    let (h, dk, dv) = (l.heads, l.dk, l.dv);
    let group = h / l.kv_heads;
    let part = (TILE_TOKENS * group).next_multiple_of(ROW_PAD) * dv;
    // Per sequence: its query tokens, tiles and first task.
    let mut plan = Vec::with_capacity(seqs.len());
    let (mut tasks, mut work) = (0, 0);
    for (q, cache) in seqs {
        let n = q.len() / (h * dk);
        let tiles = n.div_ceil(TILE_TOKENS);
        plan.push((n, tiles, tasks));
        tasks += l.kv_heads * tiles;
        // About half of all (query, key) pairs are visible.
        work += n * h * cache.len * (dk + dv) / 2;
    }
    let mut parts = vec![0.0f32; tasks * part];
    parallel_chunks(&mut parts, part, work, |i, o| {
        let s = plan.partition_point(|&(_, _, first)| first <= i) - 1;
        let (n, tiles, first) = plan[s];
        let (q, cache) = seqs[s];
        let i = i - first;
        let (g, t0) = (i / tiles, (i % tiles) * TILE_TOKENS);
        task(q, cache, l, n, g, t0, o);
    });
    plan.iter()
        .map(|&(n, tiles, first)| {
            let mut out = vec![0.0f32; n * h * dv];
            let mine = &parts[first * part..(first + l.kv_heads * tiles) * part];
            for (i, o) in mine.chunks_exact(part).enumerate() {
                let (g, t0) = (i / tiles, (i % tiles) * TILE_TOKENS);
                let m = TILE_TOKENS.min(n - t0) * group;
                for (r, row) in o[..m * dv].chunks_exact(dv).enumerate() {
                    let (t, j) = (t0 + r / group, r % group);
                    out[(t * h + g * group + j) * dv..][..dv].copy_from_slice(row);
                }
            }
            out
        })
        .collect()
}

/// One task: KV head `g`'s query heads for tokens `t0..t0 + 16` of `q` (`n` tokens, the last
/// `n` rows of `cache`), written to `o` as `[rows, dv]`.
fn task(
    q: &[f32],
    cache: &LayerView<'_>,
    l: &Layout,
    n: usize,
    g: usize,
    t0: usize,
    o: &mut [f32],
) {
    let (h, dk, dv) = (l.heads, l.dk, l.dv);
    let group = h / l.kv_heads;
    let (len, start) = (cache.len, cache.len - n);
    let bt = cache.block_tokens();
    let first = |pos: usize| l.window.map_or(0, |w| (pos + 1).saturating_sub(w));
    let nt = TILE_TOKENS.min(n - t0);
    let m = nt * group;
    let mp = m.next_multiple_of(ROW_PAD);
    // Row r = t·group + j: query head g·group + j of token t0 + t (rows m.. stay 0).
    let mut qt = vec![0.0f32; mp * dk];
    for (r, row) in qt.chunks_exact_mut(dk).take(m).enumerate() {
        let (t, j) = (t0 + r / group, r % group);
        row.copy_from_slice(&q[(t * h + g * group + j) * dk..][..dk]);
    }
    // Row r's visible keys are lo_r..=pos_r; the tile's span is lo..hi.
    let visible = |r: usize| {
        let pos = start + t0 + r / group;
        first(pos)..pos + 1
    };
    let (lo, hi) = (visible(0).start, visible(m - 1).end);
    let chunk_blocks = (KEY_CHUNK / bt).max(1);
    let mut s = vec![0.0f32; m * chunk_blocks * bt]; // one chunk's scores, [m, keys]
    let mut y = vec![0.0f32; mp * bt];
    let (mut mx, mut sum) = (vec![f32::NEG_INFINITY; m], vec![0.0f32; m]);
    let out = &mut o[..mp * dv];
    let blocks = lo / bt..hi.div_ceil(bt);
    for c in blocks.clone().step_by(chunk_blocks) {
        let chunk = c..(c + chunk_blocks).min(blocks.end);
        let (k0, k1) = (chunk.start * bt, (chunk.end * bt).min(len));
        let w = k1 - k0;
        for b in chunk.clone() {
            let keys = cache.block(b).columns(l.key + g * l.key_step, dk);
            let (u0, nr) = (b * bt, keys.rows());
            rows_matmul(&qt, mp, keys, &mut y[..mp * nr]);
            for r in 0..m {
                let vis = visible(r);
                for u in vis.start.max(u0)..vis.end.min(u0 + nr) {
                    s[r * w + u - k0] = y[r * nr + u - u0] * l.scale;
                }
            }
        }
        // The softmax carried across chunks: a higher max rescales what was summed so far.
        for r in 0..m {
            let vis = visible(r);
            let (a, e) = (vis.start.max(k0), vis.end.min(k1));
            if a >= e {
                continue;
            }
            let row = &mut s[r * w + a - k0..r * w + e - k0];
            let cm = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            if cm > mx[r] {
                if mx[r] > f32::NEG_INFINITY {
                    let f = (mx[r] - cm).exp();
                    sum[r] *= f;
                    out[r * dv..(r + 1) * dv].iter_mut().for_each(|v| *v *= f);
                }
                mx[r] = cm;
            }
            sum[r] += exp_sum(row, mx[r]);
        }
        for b in chunk {
            let values = cache.block(b).columns(l.value + g * l.value_step, dv);
            let (u0, nr) = (b * bt, values.rows());
            let p = &mut y[..mp * nr];
            p[m * nr..].fill(0.0);
            for r in 0..m {
                let vis = visible(r);
                for (k, pu) in p[r * nr..(r + 1) * nr].iter_mut().enumerate() {
                    let u = u0 + k;
                    *pu = if vis.contains(&u) {
                        s[r * w + u - k0]
                    } else {
                        0.0
                    };
                }
            }
            rows_weighted_sum(p, mp, values, out);
        }
    }
    for (row, &total) in out.chunks_exact_mut(dv).zip(&sum) {
        row.iter_mut().for_each(|v| *v /= total);
    }
}
