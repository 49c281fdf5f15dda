//! Multi-head latent attention (DeepSeek V2/V3/V3.2): the layer's [`Attend`] implementation
//! (query and latent projections, the cached row, the output projection) and attention over a
//! sequence's latent cache in two exactly equal forms: the standard (decompressed) form — the
//! executable spec — and the absorbed form, with a batched decode step for many sequences.
//! With DeepSeek-V3.2's indexer ([`crate::indexer`]) each query attends to its selected keys
//! only, in both forms.

use moela_kernels::ops::dot;
use moela_kernels::{
    exp_sum, num_threads, parallel_chunks, rms_norm_in_place, rows_matmul, rows_weighted_sum,
    softmax_in_place, QMat, RowData,
};

use crate::cache::{BatchCache, LayerView, Rows, SeqCache};
use crate::config::{Config, MlaConfig};
use crate::error::ModelError;
use crate::indexer::Selection;
use crate::model::{Attend, SeqInput, Step};
use crate::tiled;
use crate::weights::{MlaAttention, QProj};

/// Dimensions of one MLA computation.
#[derive(Clone, Copy, Debug)]
pub struct MlaDims {
    pub heads: usize,
    pub nope: usize, // qk_nope_head_dim
    pub rope: usize, // qk_rope_head_dim
    pub v: usize,    // v_head_dim
    pub rank: usize, // kv_lora_rank
    pub scale: f32,  // softmax scale
}

impl MlaDims {
    /// The sizes of `cfg`'s attention `m`, with its softmax scale.
    pub fn new(cfg: &Config, m: &MlaConfig) -> Result<MlaDims, ModelError> {
        Ok(MlaDims {
            heads: cfg.num_attention_heads,
            nope: m.qk_nope_head_dim,
            rope: m.qk_rope_head_dim,
            v: m.v_head_dim,
            rank: m.kv_lora_rank,
            scale: cfg.softmax_scale()?,
        })
    }

    fn qk(&self) -> usize {
        self.nope + self.rope
    }
}

/// The most memory [`AttentionMode::Auto`] lets the standard form's decompressed keys and
/// values take (V2-Lite at 4096 cached tokens: 84 MB; V3's 128 heads at 128K: 21 GB).
pub const MAX_DECOMPRESSED_BYTES: usize = 256 << 20;

/// Which MLA form to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttentionMode {
    /// Choose by cost: absorbed for few new tokens, standard for long prefill.
    #[default]
    Auto,
    Standard,
    Absorbed,
}

impl AttentionMode {
    /// Resolves `Auto` for `n_new` query tokens over `len` cached ones: absorbed costs
    /// ~`2r + dr` per (query, key) pair, standard ~`r·(dn + dv)` per key to decompress plus
    /// `dn + dr + dv` per pair — and holds every key decompressed, so past
    /// [`MAX_DECOMPRESSED_BYTES`] the absorbed form runs whatever the cost.
    pub fn resolve(self, d: &MlaDims, n_new: usize, len: usize) -> AttentionMode {
        match self {
            AttentionMode::Auto => {
                let absorbed = n_new * (2 * d.rank + d.rope);
                let standard = d.rank * (d.nope + d.v) + n_new * (d.nope + d.rope + d.v);
                let decompressed = len * d.heads * (d.qk() + d.v) * std::mem::size_of::<f32>();
                if absorbed <= standard || decompressed > MAX_DECOMPRESSED_BYTES {
                    AttentionMode::Absorbed
                } else {
                    AttentionMode::Standard
                }
            }
            m => m,
        }
    }
}

/// The MLA weights one attention call reads.
pub(crate) struct MlaMats<'a> {
    pub kv_b: &'a QMat,
    pub uk_t: &'a QMat,
    pub uv: &'a QMat,
}

/// Attention of `n` new query tokens, which are the last `n` of the `cache` rows, each over
/// its keys in `sel` (all its causal keys without a selection).
///
/// `q`: `[n, heads, nope + rope]` with RoPE applied; `cache`: rows whose first `rank + rope`
/// columns are the latent and the rope key; `kv_b`: `[heads·(nope + v), rank]`. Returns
/// `[n, heads, v]`.
pub(crate) fn mla(
    q: &[f32],
    cache: &LayerView<'_>,
    sel: Option<&Selection>,
    w: &MlaMats<'_>,
    d: &MlaDims,
    mode: AttentionMode,
) -> Vec<f32> {
    let n = q.len() / (d.heads * d.qk());
    match mode.resolve(d, n, cache.len) {
        AttentionMode::Absorbed => mla_absorbed(q, cache, sel, w.uk_t, w.uv, d),
        _ => mla_standard(q, cache, sel, w.kv_b, d),
    }
}

/// Whether some token of `sel` attends to a subset of its causal keys.
fn sparse(sel: Option<&Selection>) -> bool {
    sel.is_some_and(|s| !s.is_dense())
}

/// Query tokens from which the standard form runs on the rows kernels.
const STANDARD_TILED_MIN_TOKENS: usize = 16;

/// Standard form: decompress every cached latent into per-head keys and values. The
/// per-(query, head) loop below is the executable spec; from [`STANDARD_TILED_MIN_TOKENS`]
/// query tokens of dense attention the same formula runs in tiles ([`mla_standard_tiled`]).
pub(crate) fn mla_standard(
    q: &[f32],
    cache: &LayerView<'_>,
    sel: Option<&Selection>,
    kv_b: &QMat,
    d: &MlaDims,
) -> Vec<f32> {
    if !sparse(sel) && q.len() / (d.heads * d.qk()) >= STANDARD_TILED_MIN_TOKENS {
        return mla_standard_tiled(q, cache, kv_b, d);
    }
    mla_standard_loop(q, cache, sel, kv_b, d)
}

/// The cached rows as f32 and every cached latent decompressed by `kv_b`:
/// `[len, heads·(nope + v)]`.
fn decompress<'a>(cache: &'a LayerView<'a>, kv_b: &QMat, d: &MlaDims) -> (Rows<'a>, Vec<f32>) {
    let rows = cache.f32_rows();
    let mut c = Vec::with_capacity(cache.len * d.rank);
    for u in 0..cache.len {
        c.extend_from_slice(&rows.row(u)[..d.rank]);
    }
    let kv = kv_b.forward(&c);
    (rows, kv)
}

/// [`mla_standard`] as loops: one task per (query token, head), over the token's selected
/// keys or all its causal ones.
pub(crate) fn mla_standard_loop(
    q: &[f32],
    cache: &LayerView<'_>,
    sel: Option<&Selection>,
    kv_b: &QMat,
    d: &MlaDims,
) -> Vec<f32> {
    let (h, qk) = (d.heads, d.qk());
    let n = q.len() / (h * qk);
    let len = cache.len;
    let start = len - n;
    let (cache, kv) = decompress(cache, kv_b, d);
    let row = h * (d.nope + d.v);
    let mut out = vec![0.0f32; n * h * d.v];
    let work = n * h * len * (d.nope + d.rope + d.v);
    // One task per (query token, head): out[(t·h + hh)·v ..][..v].
    parallel_chunks(&mut out, d.v, work, |i, o| {
        let (t, hh) = (i / h, i % h);
        // Causal: keys 0..=position; the i-th key attended to is the selection's, or i.
        let visible = start + t + 1;
        let picked = sel.and_then(|s| s.keys(t));
        let key = |i: usize| picked.map_or(i, |k| k[i] as usize);
        let qh = &q[(t * h + hh) * qk..(t * h + hh + 1) * qk];
        let mut scores = vec![0.0f32; picked.map_or(visible, <[u32]>::len)];
        for (i, s) in scores.iter_mut().enumerate() {
            let u = key(i);
            let k_nope = &kv[u * row + hh * (d.nope + d.v)..][..d.nope];
            let k_pe = &cache.row(u)[d.rank..d.rank + d.rope];
            *s = (dot(&qh[..d.nope], k_nope) + dot(&qh[d.nope..], k_pe)) * d.scale;
        }
        softmax_in_place(&mut scores);
        for (i, &p) in scores.iter().enumerate() {
            let u = key(i);
            let v = &kv[u * row + hh * (d.nope + d.v) + d.nope..][..d.v];
            for j in 0..d.v {
                o[j] += p * v[j];
            }
        }
    });
    out
}

/// Rows per block of [`mla_standard_tiled`]'s decompressed keys and values.
const DECOMPRESSED_BLOCK: usize = 64;

/// [`mla_standard`] for many query tokens on the rows kernels ([`crate::tiled`]): every
/// cached latent decompressed once into a row of per-head `[k_nope ‖ k_pe | v]`, then causal
/// attention with one KV head per query head.
pub(crate) fn mla_standard_tiled(
    q: &[f32],
    cache: &LayerView<'_>,
    kv_b: &QMat,
    d: &MlaDims,
) -> Vec<f32> {
    let (h, qk, nv) = (d.heads, d.qk(), d.nope + d.v);
    let (rows, kv) = decompress(cache, kv_b, d);
    let head = qk + d.v; // [k_nope ‖ k_pe | v] per head
    let mut kvr = vec![0.0f32; cache.len * h * head];
    for (u, row) in kvr.chunks_exact_mut(h * head).enumerate() {
        let k_pe = &rows.row(u)[d.rank..d.rank + d.rope];
        for (hh, hr) in row.chunks_exact_mut(head).enumerate() {
            let src = &kv[(u * h + hh) * nv..][..nv];
            hr[..d.nope].copy_from_slice(&src[..d.nope]);
            hr[d.nope..qk].copy_from_slice(k_pe);
            hr[qk..].copy_from_slice(&src[d.nope..]);
        }
    }
    let view = LayerView::of_rows(&kvr, h * head, DECOMPRESSED_BLOCK);
    let layout = tiled::Layout {
        heads: h,
        kv_heads: h,
        key: 0,
        key_step: head,
        dk: qk,
        value: qk,
        value_step: head,
        dv: d.v,
        scale: d.scale,
        window: None,
    };
    tiled::attend(q, &view, &layout)
}

/// Absorbed form: fold W_UK into the query and W_UV after the weighted sum, so attention is
/// MQA over the cached latents with one `rank + rope`-wide key (DeepSeek-V2 paper §2.1.2).
/// One token (decode) splits the cache over the workers, and tokens attending to selected
/// keys run one task each ([`attend_latents`]); more tokens of dense attention run in tiles of
/// query tokens on the rows kernels ([`crate::tiled`]).
pub(crate) fn mla_absorbed(
    q: &[f32],
    cache: &LayerView<'_>,
    sel: Option<&Selection>,
    uk_t: &QMat,
    uv: &QMat,
    d: &MlaDims,
) -> Vec<f32> {
    let qc = absorb_queries(q, uk_t, d);
    let n = q.len() / (d.heads * d.qk());
    let o_lat = if n == 1 || sparse(sel) {
        let lat = d.rank + d.rope;
        let start = cache.len - n;
        let queries: Vec<LatentQuery<'_>> = (0..n)
            .map(|t| LatentQuery {
                q: &qc[t * d.heads * lat..(t + 1) * d.heads * lat],
                cache,
                upto: start + t + 1,
                keys: sel.and_then(|s| s.keys(t)),
                split: n == 1,
            })
            .collect();
        attend_latents(&queries, d)
    } else {
        let layout = tiled::Layout {
            heads: d.heads,
            kv_heads: 1,
            key: 0,
            key_step: 0,
            dk: d.rank + d.rope,
            value: 0,
            value_step: 0,
            dv: d.rank,
            scale: d.scale,
            window: None,
        };
        tiled::attend(&qc, cache, &layout)
    };
    expand_values(&o_lat, uv, d)
}

/// `[n, heads, rank + rope]`: per token and head `W_UK[h]ᵀ · q_nope ‖ q_pe`.
fn absorb_queries(q: &[f32], uk_t: &QMat, d: &MlaDims) -> Vec<f32> {
    let (h, qk, r) = (d.heads, d.qk(), d.rank);
    let q_lat = per_head_products(q, h, qk, d.nope, uk_t, r);
    let lat = r + d.rope;
    let mut qc = vec![0.0f32; q_lat.len() / r * lat];
    for (i, row) in qc.chunks_exact_mut(lat).enumerate() {
        row[..r].copy_from_slice(&q_lat[i * r..(i + 1) * r]);
        row[r..].copy_from_slice(&q[i * qk + d.nope..(i + 1) * qk]);
    }
    qc
}

/// `[n, heads, v]`: per token and head `W_UV[h] · o_lat` of the attended latents
/// `o_lat: [n, heads, rank]`.
fn expand_values(o_lat: &[f32], uv: &QMat, d: &MlaDims) -> Vec<f32> {
    per_head_products(o_lat, d.heads, d.rank, d.rank, uv, d.v)
}

/// `y[t, h] = W[h] · x[t, h][..k]` for a matrix `w` stacking `out` rows per head: `x` is
/// `[n, heads, stride]`, the result `[n, heads, out]`. One pool task per head, all tokens in one
/// product.
fn per_head_products(
    x: &[f32],
    heads: usize,
    stride: usize,
    k: usize,
    w: &QMat,
    out: usize,
) -> Vec<f32> {
    let n = x.len() / (heads * stride);
    let mut per_head = vec![0.0f32; heads * n * out]; // [heads][n, out]
    parallel_chunks(&mut per_head, n * out, n * heads * out * k, |hh, y| {
        let xh: Vec<f32> = (0..n)
            .flat_map(|t| &x[(t * heads + hh) * stride..][..k])
            .copied()
            .collect();
        w.matmul_rows(hh * out, out, &xh, n, y);
    });
    let mut result = vec![0.0f32; n * heads * out];
    for (i, row) in result.chunks_exact_mut(out).enumerate() {
        let (t, hh) = (i / heads, i % heads);
        row.copy_from_slice(&per_head[(hh * n + t) * out..][..out]);
    }
    result
}

/// `acc += p · x`.
#[inline]
fn axpy(acc: &mut [f32], p: f32, x: &[f32]) {
    for (a, &c) in acc.iter_mut().zip(x) {
        *a += p * c;
    }
}

/// Cache rows per task (at least) when [`attend_latents`] splits a query.
const ROWS_PER_TASK: usize = 64;

/// Selected keys gathered per pass of an [`attend_latents`] task.
const GATHER_ROWS: usize = 64;

/// One query token of [`attend_latents`].
struct LatentQuery<'a> {
    /// `[heads, rank + rope]`: the absorbed query.
    q: &'a [f32],
    cache: &'a LayerView<'a>,
    /// Its causal keys: `0..upto`.
    upto: usize,
    /// The keys it attends to (ascending, below `upto`); `None`: all its causal keys.
    keys: Option<&'a [u32]>,
    /// Cut its keys into several tasks (a decode step's lone token) rather than one.
    split: bool,
}

impl LatentQuery<'_> {
    /// Keys per task: whole blocks (dense) or selected keys, and the number of tasks. A split
    /// query gets tasks of at least [`ROWS_PER_TASK`] keys, about 4 per thread (each keeps an
    /// `[h, rank]` partial sum to add up at the end), fixed by its own keys only.
    fn plan(&self) -> (usize, usize) {
        let bt = self.cache.block_tokens();
        match self.keys {
            None => {
                let blocks = self.upto.div_ceil(bt);
                let per = match self.split {
                    true => ROWS_PER_TASK
                        .div_ceil(bt)
                        .max(blocks.div_ceil(4 * num_threads())),
                    false => blocks.max(1),
                };
                (per, self.upto.div_ceil(per * bt))
            }
            Some(k) => {
                let per = match self.split {
                    true => ROWS_PER_TASK.max(k.len().div_ceil(4 * num_threads())),
                    false => k.len().max(1),
                };
                (per, k.len().div_ceil(per))
            }
        }
    }
}

/// [`mla_absorbed`]'s attention for query tokens each over its own keys (`queries`; the
/// absorbed queries `[heads, rank + rope]`), cache-block outer: the scores of all heads
/// against a block of cached rows are one small matrix product, and the weighted sum of the
/// block's latents one more, so each cached row is read (and widened, for an f16 cache) once
/// per head group rather than once per head. Selected keys are gathered [`GATHER_ROWS`] at a
/// time and go the same way. Each query is cut into tasks by its own keys only
/// ([`LatentQuery::plan`]), and the tasks of all queries run as one pool job: a decode step of
/// many sequences costs one dispatch, and each sequence's result is the same to the bit as
/// alone. Returns the attended latents `[queries, heads, rank]`.
fn attend_latents(queries: &[LatentQuery<'_>], d: &MlaDims) -> Vec<f32> {
    let (h, r) = (d.heads, d.rank);
    let lat = r + d.rope;
    // Per query: keys per task and the first task's index.
    let mut plan = Vec::with_capacity(queries.len());
    let mut tasks = 0;
    let mut work = 0;
    for query in queries {
        let (per, n) = query.plan();
        plan.push((per, tasks));
        tasks += n;
        work += query.keys.map_or(query.upto, <[u32]>::len) * h * (lat + r);
    }
    // Each task: scores of its rows for every head, a softmax local to the task (its max m
    // and sum l per head) and the weighted latent sum acc; the tasks' parts are then combined
    // with the usual rescaling by exp(m_task − m). Cached rows are read from memory once.
    let part_len = h * r + 2 * h;
    let mut parts = vec![0.0f32; tasks * part_len];
    parallel_chunks(&mut parts, part_len, work, |task, part| {
        let s = plan.partition_point(|&(_, first)| first <= task) - 1;
        let (query, (per, first)) = (&queries[s], plan[s]);
        match query.keys {
            None => dense_task(query, task - first, per, d, part),
            Some(k) => {
                let k = &k[(task - first) * per..((task - first + 1) * per).min(k.len())];
                selected_task(query, k, d, part)
            }
        }
    });
    let mut o_lat = vec![0.0f32; queries.len() * h * r];
    for (s, o_seq) in o_lat.chunks_exact_mut(h * r).enumerate() {
        let first = plan[s].1;
        let last = plan.get(s + 1).map_or(tasks, |p| p.1);
        let part = |t: usize| &parts[t * part_len..(t + 1) * part_len];
        for hh in 0..h {
            let mx = (first..last)
                .map(|t| part(t)[h * r + hh])
                .fold(f32::NEG_INFINITY, f32::max);
            let mut total = 0.0f32;
            let o = &mut o_seq[hh * r..(hh + 1) * r];
            for t in first..last {
                let p = part(t);
                let w = (p[h * r + hh] - mx).exp();
                total += w * p[h * r + h + hh];
                axpy(o, w, &p[hh * r..(hh + 1) * r]);
            }
            o.iter_mut().for_each(|v| *v /= total);
        }
    }
    o_lat
}

/// Splits an [`attend_latents`] task's part into `(acc [h, rank], m [h], l [h])` and sets each
/// head's local max and exponential sum from its scores `sc` (`[h, keys]`, exponentiated in
/// place).
fn local_softmax<'p>(sc: &mut [f32], part: &'p mut [f32], d: &MlaDims) -> &'p mut [f32] {
    let (h, r) = (d.heads, d.rank);
    let n = sc.len() / h;
    let (acc, ml) = part.split_at_mut(h * r);
    let (m, l) = ml.split_at_mut(h);
    for hh in 0..h {
        let row = &mut sc[hh * n..(hh + 1) * n];
        let mx = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        (m[hh], l[hh]) = (mx, exp_sum(row, mx));
    }
    acc
}

/// Rows of an 8-bit cache scored, softmaxed and summed as one chunk: widened once for both
/// passes, they stay in L2 between them (64 rows × 576 f32: 147 KB). f16 and f32 rows are
/// read as they are, and a task's rows go as one chunk (chunks of 64 measured f16 decode at
/// 4096 context 10 % slower on the EPYC Zen 3: 10.4 against 11.5 tok/s, means of four runs).
const Q8_CHUNK_ROWS: usize = 64;

/// Task `ti` of a dense query: whole blocks `ti·per..` of its causal keys, a chunk at a time
/// (all of them, or [`Q8_CHUNK_ROWS`] of an 8-bit cache): the chunk's scores for all heads,
/// then its weighted sum into the task's `acc` under a running max per head (`acc` and the sum
/// `l` rescaled by `exp(m_old − m_new)` when a chunk raises it).
fn dense_task(query: &LatentQuery<'_>, ti: usize, per: usize, d: &MlaDims, part: &mut [f32]) {
    let (h, r, lat) = (d.heads, d.rank, d.rank + d.rope);
    let (q, cache, len) = (query.q, query.cache, query.upto);
    let bt = cache.block_tokens();
    // Block b's causal rows, narrowed to [c_n | k_rope].
    let block = |b: usize| cache.block(b).first_rows(len - b * bt).columns(0, lat);
    let (first, n_rows) = (ti * per, (per * bt).min(len - ti * per * bt));
    let blocks = first..first + n_rows.div_ceil(bt);
    let (acc, ml) = part.split_at_mut(h * r);
    let (m, l) = ml.split_at_mut(h);
    m.fill(f32::NEG_INFINITY);
    l.fill(0.0);
    let chunk_blocks = match block(first) {
        RowData::Q8 { .. } => Q8_CHUNK_ROWS.div_ceil(bt),
        _ => blocks.len(),
    };
    let mut sc = vec![0.0f32; h * chunk_blocks * bt]; // [h, chunk rows]
    let mut y = vec![0.0f32; h * bt];
    // The chunk's blocks, an 8-bit cache's expanded once for both passes and all heads.
    let mut wide = vec![Vec::new(); chunk_blocks];
    for c0 in blocks.clone().step_by(chunk_blocks) {
        let rows: Vec<_> = (c0..blocks.end.min(c0 + chunk_blocks))
            .zip(wide.iter_mut())
            .map(|(b, w)| block(b).widened(w))
            .collect();
        let cn: usize = rows.iter().map(|b| b.rows()).sum();
        let mut at = 0;
        for b in &rows {
            let nr = b.rows();
            rows_matmul(q, h, *b, &mut y[..h * nr]);
            for hh in 0..h {
                for i in 0..nr {
                    sc[hh * cn + at + i] = y[hh * nr + i] * d.scale;
                }
            }
            at += nr;
        }
        for hh in 0..h {
            let row = &mut sc[hh * cn..(hh + 1) * cn];
            let mx = row.iter().copied().fold(m[hh], f32::max);
            if mx > m[hh] && l[hh] > 0.0 {
                let f = (m[hh] - mx).exp();
                acc[hh * r..(hh + 1) * r].iter_mut().for_each(|v| *v *= f);
                l[hh] *= f;
            }
            m[hh] = mx;
            l[hh] += exp_sum(row, mx);
        }
        let mut at = 0;
        for b in &rows {
            let nr = b.rows();
            for hh in 0..h {
                y[hh * nr..(hh + 1) * nr].copy_from_slice(&sc[hh * cn + at..][..nr]);
            }
            rows_weighted_sum(&y[..h * nr], h, *b, acc);
            at += nr;
        }
    }
}

/// A task of a query over selected keys `keys`: gathered [`GATHER_ROWS`] at a time, scored,
/// then gathered again for the weighted sum.
fn selected_task(query: &LatentQuery<'_>, keys: &[u32], d: &MlaDims, part: &mut [f32]) {
    let (h, lat) = (d.heads, d.rank + d.rope);
    let n = keys.len();
    let mut rows = vec![0.0f32; GATHER_ROWS * lat]; // gathered [c_n | k_rope] rows
    let gather = |chunk: &[u32], rows: &mut [f32]| {
        for (&u, row) in chunk.iter().zip(rows.chunks_exact_mut(lat)) {
            query.cache.copy_row(u as usize, 0, row);
        }
    };
    let mut sc = vec![0.0f32; h * n]; // [h, keys]
    let mut y = vec![0.0f32; h * GATHER_ROWS];
    for (c, chunk) in keys.chunks(GATHER_ROWS).enumerate() {
        let nr = chunk.len();
        gather(chunk, &mut rows);
        rows_matmul(
            query.q,
            h,
            RowData::f32(&rows[..nr * lat], lat),
            &mut y[..h * nr],
        );
        for hh in 0..h {
            for i in 0..nr {
                sc[hh * n + c * GATHER_ROWS + i] = y[hh * nr + i] * d.scale;
            }
        }
    }
    let acc = local_softmax(&mut sc, part, d);
    for (c, chunk) in keys.chunks(GATHER_ROWS).enumerate() {
        let nr = chunk.len();
        gather(chunk, &mut rows);
        for hh in 0..h {
            let at = hh * n + c * GATHER_ROWS;
            y[hh * nr..(hh + 1) * nr].copy_from_slice(&sc[at..at + nr]);
        }
        rows_weighted_sum(&y[..h * nr], h, RowData::f32(&rows[..nr * lat], lat), acc);
    }
}

/// Decode step of several sequences in the absorbed form: `q` holds one query token per
/// sequence (`[seqs, heads, nope + rope]`, RoPE applied), whose latent is already the last
/// row of its `caches[s]`, attending to its keys in `sels[s]` (all without). The W_UK and W_UV
/// products run over all the sequences' tokens at once and the attention as one pool job
/// ([`attend_latents`]); each sequence's output equals [`mla_absorbed`] on it alone, to the
/// bit. Returns `[seqs, heads, v]`.
pub(crate) fn mla_absorbed_batch(
    q: &[f32],
    caches: &[LayerView<'_>],
    sels: &[Selection],
    uk_t: &QMat,
    uv: &QMat,
    d: &MlaDims,
) -> Vec<f32> {
    let qc = absorb_queries(q, uk_t, d);
    let lat = d.rank + d.rope;
    let queries: Vec<LatentQuery<'_>> = caches
        .iter()
        .enumerate()
        .map(|(s, cache)| LatentQuery {
            q: &qc[s * d.heads * lat..(s + 1) * d.heads * lat],
            cache,
            upto: cache.len,
            keys: sels.get(s).and_then(|sel| sel.keys(0)),
            split: true,
        })
        .collect();
    let o_lat = attend_latents(&queries, d);
    expand_values(&o_lat, uv, d)
}

impl Attend for MlaAttention {
    /// MLA for all token rows `x`; caches the normalized latent and the rotated rope key (and,
    /// with an indexer, its key), then attends to each token's selected keys.
    fn attend(
        &self,
        step: &Step<'_>,
        x: &[f32],
        batch: &[SeqInput<'_>],
        cache: &mut BatchCache<'_>,
    ) -> Vec<f32> {
        let c = step.config;
        let a = self;
        let positions = step.positions;
        let dims = &a.dims;
        let (h, qk, r, dr) = (dims.heads, dims.qk(), dims.rank, dims.rope);
        let ix = a.indexer.as_deref();
        // The products of x share one dispatch: the query's first, kv_a and, with an indexer,
        // its key and head weights (index_x: [T, index_dim] and [T, index_heads]).
        let first = match &a.q {
            QProj::Direct(w) => w,
            QProj::LowRank { a, .. } => a,
        };
        let (q0, mut rows, index_x) = match ix {
            None => {
                let [q0, rows] = QMat::forward_many([first, &a.kv_a], x);
                (q0, rows, None)
            }
            Some(ix) => {
                let [q0, rows, k, w] =
                    QMat::forward_many([first, &a.kv_a, &ix.wk, &ix.weights_proj], x);
                (q0, rows, Some((k, w)))
            }
        };
        let (index_k, index_w) = index_x.unzip();
        // The indexer's queries only when some token has more causal keys than it keeps.
        let index_q = ix.filter(|ix| ix.needs_queries(positions, step.tracing()));
        // q: [T, heads, nope + rope]; iq: [T, index_heads·index_dim] from the same normalized
        // q-LoRA latent, in the same dispatch.
        let (mut q, iq) = match &a.q {
            QProj::Direct(_) => (q0, None),
            QProj::LowRank { norm, b, .. } => {
                let mut ql = q0;
                rms_norm_in_place(&mut ql, norm, c.rms_norm_eps);
                match index_q {
                    Some(ix) => {
                        let [q, iq] = QMat::forward_many([b, &ix.wq_b], &ql);
                        (q, Some(iq))
                    }
                    None => (b.forward(&ql), None),
                }
            }
        };
        // kv: [T, rank + rope] → normalized latent and rotated rope key, the cached row.
        let lat = r + dr;
        for t in 0..positions.len() {
            let row = &mut rows[t * lat..(t + 1) * lat];
            rms_norm_in_place(&mut row[..r], &a.kv_a_norm, c.rms_norm_eps);
            step.rope.apply(t, &mut row[r..]);
            for hh in 0..h {
                let qh = &mut q[(t * h + hh) * qk..(t * h + hh + 1) * qk];
                step.rope.apply(t, &mut qh[dims.nope..]);
            }
        }
        // With an indexer the cached row is [c_n | k_rope | k_index]: [T, cache row].
        let rows = match (ix, index_k) {
            (Some(ix), Some(k)) => ix.append_keys(&rows, lat, k, step),
            _ => rows,
        };
        step.record("q", &q);
        step.record("kv_latent", &rows);
        let seqs: Vec<(&SeqCache, usize)> =
            batch.iter().map(|s| (&*s.cache, s.tokens.len())).collect();
        let views = cache.write_and_view(&seqs, step.layer, &rows);
        // Each sequence's selected keys (none without an indexer: dense attention).
        let sels = match (ix, index_w) {
            (Some(ix), Some(w)) => {
                let seq_views: Vec<(&LayerView<'_>, usize)> =
                    views.iter().zip(&seqs).map(|(v, &(_, n))| (v, n)).collect();
                ix.select_keys(iq, w, &seq_views, step)
            }
            _ => Vec::new(),
        };
        // A decode step of several sequences (one new token each, all in the absorbed form):
        // one batched attention instead of three small dispatches per sequence.
        let absorbed = |s: &SeqInput<'_>| {
            step.opts.attention.resolve(dims, 1, s.cache.len() + 1) == AttentionMode::Absorbed
        };
        let o = if batch.len() > 1 && batch.iter().all(|s| s.tokens.len() == 1 && absorbed(s)) {
            mla_absorbed_batch(&q, &views, &sels, &a.uk_t, &a.uv, dims)
        } else {
            let mut o = Vec::with_capacity(positions.len() * h * dims.v);
            let mut t0 = 0;
            let mats = MlaMats {
                kv_b: &a.kv_b,
                uk_t: &a.uk_t,
                uv: &a.uv,
            };
            for (i, (&(_, n), view)) in seqs.iter().zip(&views).enumerate() {
                let qs = &q[t0 * h * qk..(t0 + n) * h * qk];
                let mode = step.opts.attention;
                o.extend(mla(qs, view, sels.get(i), &mats, dims, mode));
                t0 += n;
            }
            o
        };
        step.record("heads", &o);
        a.o.forward(&o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_by_cost_and_caps_the_decompressed_memory() {
        // DeepSeek-V3's attention sizes.
        let d = MlaDims {
            heads: 128,
            nope: 128,
            rope: 64,
            v: 128,
            rank: 512,
            scale: 0.1,
        };
        let auto = AttentionMode::Auto;
        assert_eq!(auto.resolve(&d, 1, 100), AttentionMode::Absorbed);
        assert_eq!(auto.resolve(&d, 512, 1000), AttentionMode::Standard);
        // 128K cached tokens would decompress to 21 GB.
        assert_eq!(auto.resolve(&d, 512, 131_072), AttentionMode::Absorbed);
        let explicit = AttentionMode::Standard;
        assert_eq!(explicit.resolve(&d, 512, 131_072), AttentionMode::Standard);
    }
}
