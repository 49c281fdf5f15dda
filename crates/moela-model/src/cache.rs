//! The paged latent KV cache.
//!
//! Per layer and token it holds only the normalized latent `c_n` (`kv_lora_rank` values) and
//! the post-RoPE rope key (`qk_rope_head_dim` values) — never per-head keys or values — and,
//! for DeepSeek-V3.2, the indexer key after them (`index_head_dim`): a row
//! `[c_n | k_rope | k_index]` whose columns each reader narrows to its own. Layers may differ in
//! row width (DeepSeek-V4's sliding, CSA and HCA layers keep different rows; `v4/mod.rs`): a
//! block holds each layer's `block_tokens` rows one layer after the other. Storage
//! is a pool of fixed-size blocks (`block_tokens` tokens × all layers) with a free list; a
//! sequence holds a block table and takes blocks only as it grows. Full blocks can be shared
//! between sequences with the same token prefix (reference-counted, never written once full);
//! blocks kept only by the prefix index are evicted, least recently used first, when the pool
//! runs out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use moela_kernels::fp::{f16_slice_to_f32, f32_slice_to_f16};
use moela_kernels::quant::{dequantize_q8_0_split, quantize_q8_0_split};
use moela_kernels::RowData;

use crate::error::ModelError;

/// Tokens per block unless configured otherwise.
pub const DEFAULT_BLOCK_TOKENS: usize = 16;

type BlockId = usize;

/// The element type of cached rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KvType {
    /// Exact: what the reference computes with.
    #[default]
    F32,
    /// Half the memory (as llama.cpp's default cache); rows are rounded to f16 when written.
    F16,
    /// About a quarter of f32 (llama.cpp's `q8_0` cache): each 32 values of a row as 8-bit
    /// integers and one f16 scale (`d = amax/127`), quantized when written; a row whose width
    /// is not a multiple of 32 is stored zero-padded to one.
    Q8_0,
}

impl KvType {
    /// Bytes `values` cached values occupy (`Q8_0`: 34 bytes per 32).
    pub fn bytes(self, values: usize) -> Option<usize> {
        match self {
            KvType::F32 => values.checked_mul(4),
            KvType::F16 => values.checked_mul(2),
            KvType::Q8_0 => values.div_ceil(32).checked_mul(34),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
        }
    }
}

impl std::str::FromStr for KvType {
    type Err = String;
    fn from_str(s: &str) -> Result<KvType, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(KvType::F32),
            "f16" => Ok(KvType::F16),
            "q8_0" => Ok(KvType::Q8_0),
            _ => Err(format!(
                "unknown KV cache type `{s}` (expected f32, f16 or q8_0)"
            )),
        }
    }
}

/// A block's rows: per layer `l`, `[block_tokens, widths[l]]`, the layers one after another.
#[derive(Clone)]
enum BlockData {
    F32(Vec<f32>),
    F16(Vec<u16>),
    /// Quants, and one f16 scale per 32 of them.
    Q8(Vec<i8>, Vec<u16>),
}

struct Block {
    /// Allocated on first use, kept for reuse.
    data: BlockData,
    /// Sequences and the prefix index holding this block.
    refs: usize,
    /// Prefix-index key when the block is full and indexed.
    key: Option<u64>,
    /// The tokens it holds (checked on prefix lookups, so hash collisions are harmless).
    tokens: Vec<u32>,
    last_use: u64,
}

struct PoolInner {
    blocks: Vec<Block>,
    free: Vec<BlockId>,
    /// Prefix hash of a full block's tokens (including all earlier blocks) → block.
    index: HashMap<u64, BlockId>,
    tick: u64,
}

/// A pool of latent-cache blocks shared by the sequences of one model.
pub struct KvPool {
    /// Values per token of each layer.
    widths: Vec<usize>,
    /// Values each layer stores per token: its width, rounded up to whole 32-value blocks for
    /// `Q8_0` (the padding is zero and never read).
    strides: Vec<usize>,
    /// Where each layer's rows start in a block, in rows of one value (`Σ strides[..l]`).
    offsets: Vec<usize>,
    /// `Σ widths`: values per token across layers.
    row_total: usize,
    /// The widest layer's row.
    latent_dim: usize,
    kv_type: KvType,
    block_tokens: usize,
    /// Block limit; `None` grows without bound (single-sequence use).
    max_blocks: Option<usize>,
    prefix_caching: bool,
    inner: Mutex<PoolInner>,
}

/// Block counts of a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Blocks referenced by at least one sequence.
    pub used: usize,
    /// Blocks held only by the prefix index (reusable, evictable).
    pub cached: usize,
    /// Blocks available without eviction (allocated-but-free plus never allocated).
    pub free: usize,
    pub block_tokens: usize,
}

fn mix(h: u64, v: u64) -> u64 {
    // FNV-1a style mixing over 64-bit words, then a final avalanche.
    let mut x = (h ^ v).wrapping_mul(0x100_0000_01b3);
    x ^= x >> 29;
    x.wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

impl KvPool {
    pub fn new(
        layers: usize,
        latent_dim: usize,
        kv_type: KvType,
        block_tokens: usize,
        max_blocks: Option<usize>,
        prefix_caching: bool,
    ) -> Arc<KvPool> {
        let widths = vec![latent_dim; layers];
        KvPool::with_widths(widths, kv_type, block_tokens, max_blocks, prefix_caching)
    }

    /// A pool whose layer `l` keeps `widths[l]` values per token (the sizes come from a
    /// validated config, whose checked sum bounds them).
    pub fn with_widths(
        widths: Vec<usize>,
        kv_type: KvType,
        block_tokens: usize,
        max_blocks: Option<usize>,
        prefix_caching: bool,
    ) -> Arc<KvPool> {
        let strides: Vec<usize> = match kv_type {
            KvType::Q8_0 => widths.iter().map(|w| w.div_ceil(32) * 32).collect(),
            _ => widths.clone(),
        };
        let offsets = strides
            .iter()
            .scan(0, |acc, &w| {
                let at = *acc;
                *acc += w;
                Some(at)
            })
            .collect();
        Arc::new(KvPool {
            row_total: strides.iter().sum(),
            strides,
            latent_dim: widths.iter().copied().max().unwrap_or(0),
            widths,
            offsets,
            kv_type,
            block_tokens: block_tokens.max(1),
            max_blocks,
            prefix_caching,
            inner: Mutex::new(PoolInner {
                blocks: Vec::new(),
                free: Vec::new(),
                index: HashMap::new(),
                tick: 0,
            }),
        })
    }

    pub fn block_tokens(&self) -> usize {
        self.block_tokens
    }

    /// The widest layer's values per token.
    pub fn latent_dim(&self) -> usize {
        self.latent_dim
    }

    /// Values per token of each layer.
    pub fn widths(&self) -> &[usize] {
        &self.widths
    }

    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// Bytes of one block.
    pub fn block_bytes(&self) -> usize {
        self.kv_type
            .bytes(self.block_tokens * self.row_total)
            .unwrap_or(usize::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, PoolInner> {
        // A panic while holding the lock cannot leave block bookkeeping half-updated in a way
        // that matters more than losing the cache, so recover the guard.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An empty sequence on this pool.
    pub fn new_seq(self: &Arc<Self>) -> SeqCache {
        SeqCache {
            pool: self.clone(),
            blocks: Vec::new(),
            len: 0,
            tokens: Vec::new(),
        }
    }

    pub fn stats(&self) -> PoolStats {
        let g = self.lock();
        let mut s = PoolStats {
            block_tokens: self.block_tokens,
            ..Default::default()
        };
        for b in &g.blocks {
            if b.refs == 0 {
                s.free += 1;
            } else if self.only_index(b) {
                s.cached += 1;
            } else {
                s.used += 1;
            }
        }
        if let Some(m) = self.max_blocks {
            s.free += m.saturating_sub(g.blocks.len());
        }
        s
    }

    /// Whether a block's one reference is the prefix index's.
    fn only_index(&self, b: &Block) -> bool {
        b.refs == 1 && b.key.is_some()
    }

    /// Blocks that could be handed out now (free, never allocated, or evictable).
    pub fn available_blocks(&self) -> usize {
        let st = self.stats();
        st.free + st.cached
    }

    /// A sequence that starts with the longest indexed prefix of `tokens` (whole blocks only,
    /// leaving at least one token to compute). Its `len()` tells how many tokens were reused.
    pub fn seq_with_prefix(self: &Arc<Self>, tokens: &[u32]) -> SeqCache {
        let mut seq = self.new_seq();
        if !self.prefix_caching {
            return seq;
        }
        let bt = self.block_tokens;
        let mut g = self.lock();
        g.tick += 1;
        let tick = g.tick;
        let mut h = 0u64;
        for (bi, chunk) in tokens.chunks(bt).enumerate() {
            if chunk.len() < bt || (bi + 1) * bt >= tokens.len() {
                break;
            }
            for &t in chunk {
                h = mix(h, t as u64);
            }
            let Some(&id) = g.index.get(&h) else { break };
            if g.blocks[id].tokens != chunk {
                break;
            }
            g.blocks[id].refs += 1;
            g.blocks[id].last_use = tick;
            seq.blocks.push(id);
            seq.tokens.extend_from_slice(chunk);
            seq.len += bt;
        }
        seq
    }

    /// Takes a block: a free one, a new one, or the least recently used index-only block.
    fn take_block(&self, g: &mut PoolInner) -> Option<BlockId> {
        let id = if let Some(id) = g.free.pop() {
            id
        } else if self.max_blocks.is_none_or(|m| g.blocks.len() < m) {
            let len = self.block_tokens * self.row_total;
            g.blocks.push(Block {
                data: match self.kv_type {
                    KvType::F32 => BlockData::F32(vec![0.0; len]),
                    KvType::F16 => BlockData::F16(vec![0; len]),
                    KvType::Q8_0 => BlockData::Q8(vec![0; len], vec![0; len.div_ceil(32)]),
                },
                refs: 0,
                key: None,
                tokens: Vec::new(),
                last_use: 0,
            });
            g.blocks.len() - 1
        } else {
            let victim = g
                .blocks
                .iter()
                .enumerate()
                .filter(|(_, b)| self.only_index(b))
                .min_by_key(|(_, b)| b.last_use)
                .map(|(i, _)| i)?;
            if let Some(k) = g.blocks[victim].key.take() {
                g.index.remove(&k);
            }
            g.blocks[victim].refs = 0;
            victim
        };
        let b = &mut g.blocks[id];
        b.refs = 1;
        b.key = None;
        b.tokens.clear();
        Some(id)
    }

    fn release(&self, g: &mut PoolInner, id: BlockId) {
        let b = &mut g.blocks[id];
        b.refs = b.refs.saturating_sub(1);
        if b.refs == 0 {
            if let Some(k) = b.key.take() {
                g.index.remove(&k);
            }
            g.free.push(id);
        }
    }

    /// Clears the prefix index (its blocks become free).
    pub fn clear_prefix_cache(&self) {
        let mut g = self.lock();
        let ids: Vec<BlockId> = g.index.drain().map(|(_, id)| id).collect();
        for id in ids {
            g.blocks[id].key = None;
            let b = &mut g.blocks[id];
            b.refs = b.refs.saturating_sub(1);
            if b.refs == 0 {
                g.free.push(id);
            }
        }
    }
}

/// The latent cache of one sequence: a block table into a [`KvPool`]. Dropping it returns its
/// blocks at once.
pub struct SeqCache {
    pool: Arc<KvPool>,
    blocks: Vec<BlockId>,
    len: usize,
    tokens: Vec<u32>,
}

impl std::fmt::Debug for SeqCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeqCache")
            .field("len", &self.len)
            .field("blocks", &self.blocks)
            .finish()
    }
}

impl Drop for SeqCache {
    fn drop(&mut self) {
        let pool = self.pool.clone();
        let mut g = pool.lock();
        for &id in &self.blocks {
            pool.release(&mut g, id);
        }
    }
}

impl SeqCache {
    /// Tokens held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Values per token of the widest layer.
    pub fn latent_dim(&self) -> usize {
        self.pool.latent_dim
    }

    pub fn pool(&self) -> &Arc<KvPool> {
        &self.pool
    }

    /// Bytes of the blocks this sequence references.
    pub fn bytes(&self) -> usize {
        self.blocks.len() * self.pool.block_bytes()
    }

    /// Cuts the sequence back to its first `len` tokens (no-op when it holds no more), as if
    /// the later ones had never been decoded: whole blocks past `len` go back to the pool, and
    /// the block that `len` ends inside becomes this sequence's own again before it is written
    /// to — a block the prefix index or another sequence still holds is copied first (its rows
    /// stay valid for them), one held by the index alone leaves the index. Errs, changing
    /// nothing, when such a copy needs a block and the pool has none.
    pub fn truncate(&mut self, len: usize) -> Result<(), ModelError> {
        if len >= self.len {
            return Ok(());
        }
        let pool = self.pool.clone();
        let bt = pool.block_tokens;
        let keep = len.div_ceil(bt);
        let mut g = pool.lock();
        if !len.is_multiple_of(bt) {
            let id = self.blocks[keep - 1];
            let b = &g.blocks[id];
            if b.refs > 1 && !(b.refs == 2 && b.key.is_some()) {
                // Shared with another sequence: write from now on into a private copy.
                let Some(copy) = pool.take_block(&mut g) else {
                    return Err(ModelError::CacheFull {
                        blocks: pool.max_blocks.unwrap_or(0),
                        block_tokens: bt,
                    });
                };
                g.blocks[copy].data = g.blocks[id].data.clone();
                pool.release(&mut g, id);
                self.blocks[keep - 1] = copy;
            } else if let Some(k) = g.blocks[id].key.take() {
                // Held by the index and this sequence only: it leaves the index.
                g.index.remove(&k);
                g.blocks[id].tokens.clear();
                g.blocks[id].refs -= 1;
            }
        }
        for id in self.blocks.drain(keep..) {
            pool.release(&mut g, id);
        }
        self.len = len;
        self.tokens.truncate(len);
        Ok(())
    }
}

/// Everything the forward pass needs from the caches of a batch, under one lock.
pub(crate) struct BatchCache<'a> {
    pool: Arc<KvPool>,
    guard: MutexGuard<'a, PoolInner>,
}

/// Read access to one sequence's rows of one layer.
pub(crate) struct LayerView<'a> {
    /// One layer's rows of each block (`latent_dim` columns).
    blocks: Vec<RowData<'a>>,
    bt: usize,
    lat: usize,
    /// Values from one row's start to the next's (`lat`, or more for padded `Q8_0` rows).
    stride: usize,
    pub(crate) len: usize,
}

impl<'a> LayerView<'a> {
    /// A view of `data`'s rows (`lat` f32 each) cut into blocks of `bt`, for attention over
    /// rows built outside the cache (e.g. decompressed MLA keys and values).
    pub(crate) fn of_rows(data: &'a [f32], lat: usize, bt: usize) -> LayerView<'a> {
        LayerView {
            blocks: data
                .chunks(bt * lat)
                .map(|b| RowData::f32(b, lat))
                .collect(),
            bt,
            lat,
            stride: lat,
            len: data.len() / lat,
        }
    }
}

impl LayerView<'_> {
    /// Tokens per block.
    pub(crate) fn block_tokens(&self) -> usize {
        self.bt
    }

    /// Block `b`'s rows that hold tokens (all but the last block are full).
    pub(crate) fn block(&self, b: usize) -> RowData<'_> {
        self.blocks[b].first_rows(self.bt.min(self.len - b * self.bt))
    }

    /// Columns `c0..c0 + out.len()` of row `u`, as f32 (gathering scattered rows).
    pub(crate) fn copy_row(&self, u: usize, c0: usize, out: &mut [f32]) {
        let at = (u % self.bt) * self.stride + c0;
        copy_values(self.blocks[u / self.bt], at, out);
    }

    /// Every row as f32, for loops that read each row many times (once per head): the
    /// stored rows of an f32 cache, or an f16 cache's rows converted once.
    pub(crate) fn f32_rows(&self) -> Rows<'_> {
        let stored: Option<Vec<&[f32]>> = self
            .blocks
            .iter()
            .map(|b| match *b {
                RowData::F32 { data, .. } => Some(data),
                RowData::F16 { .. } | RowData::Q8 { .. } => None,
            })
            .collect();
        if let Some(blocks) = stored {
            return Rows::Stored {
                blocks,
                bt: self.bt,
                lat: self.lat,
            };
        }
        let mut data = vec![0.0f32; self.len * self.lat];
        for (u, out) in data.chunks_exact_mut(self.lat).enumerate() {
            copy_values(self.blocks[u / self.bt], (u % self.bt) * self.stride, out);
        }
        Rows::Converted {
            data,
            lat: self.lat,
        }
    }
}

/// `out.len()` values of `rows`' data from element `at`, as f32.
fn copy_values(rows: RowData<'_>, at: usize, out: &mut [f32]) {
    let end = at + out.len();
    match rows {
        RowData::F32 { data, .. } => out.copy_from_slice(&data[at..end]),
        RowData::F16 { data, .. } => f16_slice_to_f32(&data[at..end], out),
        RowData::Q8 {
            data,
            scales,
            offset,
            ..
        } => dequantize_q8_0_split(&data[at..end], scales, offset + at, out),
    }
}

/// Rows of a [`LayerView`] as f32 (see [`LayerView::f32_rows`]).
pub(crate) enum Rows<'a> {
    Stored {
        blocks: Vec<&'a [f32]>,
        bt: usize,
        lat: usize,
    },
    Converted {
        data: Vec<f32>,
        lat: usize,
    },
}

impl Rows<'_> {
    /// Row `u`.
    #[inline]
    pub(crate) fn row(&self, u: usize) -> &[f32] {
        match self {
            Rows::Stored { blocks, bt, lat } => &blocks[u / bt][(u % bt) * lat..][..*lat],
            Rows::Converted { data, lat } => &data[u * lat..(u + 1) * lat],
        }
    }
}

impl<'a> BatchCache<'a> {
    /// Locks `pool` and makes room in every sequence for its `new` tokens (all or nothing).
    pub(crate) fn prepare(
        pool: &'a Arc<KvPool>,
        seqs: &mut [(&mut SeqCache, usize)],
    ) -> Result<Self, ModelError> {
        let mut guard = pool.lock();
        let bt = pool.block_tokens;
        let need: usize = seqs
            .iter()
            .map(|(s, n)| (s.len + n).div_ceil(bt).saturating_sub(s.blocks.len()))
            .sum();
        let mut taken = Vec::with_capacity(need);
        for _ in 0..need {
            match pool.take_block(&mut guard) {
                Some(id) => taken.push(id),
                None => {
                    for id in taken {
                        pool.release(&mut guard, id);
                    }
                    return Err(ModelError::CacheFull {
                        blocks: pool.max_blocks.unwrap_or(0),
                        block_tokens: bt,
                    });
                }
            }
        }
        let mut it = taken.into_iter();
        for (s, n) in seqs.iter_mut() {
            while s.blocks.len() * bt < s.len + *n {
                if let Some(id) = it.next() {
                    s.blocks.push(id);
                }
            }
        }
        Ok(BatchCache {
            pool: pool.clone(),
            guard,
        })
    }

    /// Writes layer `l`'s rows of a batch's new tokens — `rows` is `[T, widths[l]]`, the
    /// `new` tokens of each `(seq, new)` in order — then returns each sequence's view of its
    /// rows `0..len + new` of that layer (every write before any read).
    pub(crate) fn write_and_view(
        &mut self,
        seqs: &[(&SeqCache, usize)],
        l: usize,
        rows: &[f32],
    ) -> Vec<LayerView<'_>> {
        let lat = self.pool.widths[l];
        let mut t0 = 0;
        for &(seq, n) in seqs {
            self.write(seq, l, &rows[t0 * lat..(t0 + n) * lat]);
            t0 += n;
        }
        seqs.iter()
            .map(|&(seq, n)| self.view(seq, l, seq.len + n))
            .collect()
    }

    /// Writes `rows` (`[n, widths[l]]`) at positions `seq.len..` of layer `l`.
    fn write(&mut self, seq: &SeqCache, l: usize, rows: &[f32]) {
        let (bt, lat, st) = (
            self.pool.block_tokens,
            self.pool.widths[l],
            self.pool.strides[l],
        );
        let base = bt * self.pool.offsets[l];
        let mut padded = vec![0.0f32; st];
        for (i, row) in rows.chunks_exact(lat).enumerate() {
            let u = seq.len + i;
            let b = &mut self.guard.blocks[seq.blocks[u / bt]];
            let off = base + (u % bt) * st;
            match &mut b.data {
                BlockData::F32(d) => d[off..off + lat].copy_from_slice(row),
                BlockData::F16(d) => f32_slice_to_f16(row, &mut d[off..off + lat]),
                BlockData::Q8(q, d) => {
                    padded[..lat].copy_from_slice(row);
                    quantize_q8_0_split(
                        &padded,
                        &mut q[off..off + st],
                        &mut d[off / 32..(off + st) / 32],
                    )
                }
            }
        }
    }

    /// Rows `0..upto` of layer `l` of `seq`.
    fn view(&self, seq: &SeqCache, l: usize, upto: usize) -> LayerView<'_> {
        let (bt, lat, st) = (
            self.pool.block_tokens,
            self.pool.widths[l],
            self.pool.strides[l],
        );
        let base = bt * self.pool.offsets[l];
        let blocks = seq.blocks[..upto.div_ceil(bt)]
            .iter()
            .map(|&id| {
                let r = base..base + bt * st;
                let rows = match &self.guard.blocks[id].data {
                    BlockData::F32(d) => RowData::f32(&d[r], st),
                    BlockData::F16(d) => RowData::f16(&d[r], st),
                    BlockData::Q8(q, d) => {
                        RowData::q8(&q[r.clone()], &d[r.start / 32..r.end / 32], st)
                    }
                };
                rows.columns(0, lat)
            })
            .collect();
        LayerView {
            blocks,
            bt,
            lat,
            stride: st,
            len: upto,
        }
    }

    /// Records `tokens` as appended to `seq`; indexes blocks that became full.
    pub(crate) fn commit(&mut self, seq: &mut SeqCache, tokens: &[u32]) {
        let bt = self.pool.block_tokens;
        let before = seq.len / bt;
        seq.len += tokens.len();
        seq.tokens.extend_from_slice(tokens);
        if !self.pool.prefix_caching {
            return;
        }
        let full = seq.len / bt;
        if full <= before {
            return;
        }
        let mut h = 0u64;
        for (bi, chunk) in seq.tokens[..full * bt].chunks(bt).enumerate() {
            for &t in chunk {
                h = mix(h, t as u64);
            }
            if bi < before {
                continue;
            }
            let id = seq.blocks[bi];
            if self.guard.index.contains_key(&h) || self.guard.blocks[id].key.is_some() {
                continue;
            }
            self.guard.index.insert(h, id);
            let b = &mut self.guard.blocks[id];
            b.key = Some(h);
            b.tokens = chunk.to_vec();
            b.refs += 1; // the index's own reference
        }
    }
}
