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
//!
//! **Window state** ([`RingSpec`], DeepSeek-V4). What a layer reads only near a sequence's end —
//! its sliding-window keys and the compressor inputs of windows still filling — is kept per
//! sequence for its last [`RingSpec::keep`] tokens (a ring, under the pool's lock), not in the
//! blocks; the blocks hold the compressed entries only, each written into the rows of its
//! window's tokens when the window completes. So that a shared block is never written, a
//! window-state pool indexes a block only once every window over its rows is complete (below a
//! multiple of [`RingSpec::granule`] that the sequence has reached), a truncation makes the blocks
//! from the last such boundary its own again, and a prefix is reused only up to a boundary where
//! a finished prompt or sequence left a snapshot of its ring ([`SeqCache::snapshot_prefix`]).

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

/// Tokens a window-state sequence may be cut back by ([`SeqCache::truncate`]): the most
/// drafts one step verifies.
pub const MAX_ROLLBACK: usize = 32;

/// Ring snapshots a pool keeps for prefix reuse (least recently used dropped first).
const MAX_SNAPSHOTS: usize = 16;

/// The least common multiple of `a` and `b` (each taken as at least 1); `None` on overflow.
pub(crate) fn lcm(a: usize, b: usize) -> Option<usize> {
    let (a, b) = (a.max(1), b.max(1));
    let (mut x, mut y) = (a, b);
    while y != 0 {
        (x, y) = (y, x % y);
    }
    (a / x).checked_mul(b)
}

/// What each sequence of a pool keeps of its last tokens outside the blocks (DeepSeek-V4's
/// window keys and compressor inputs; `V4Config::ring_spec`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingSpec {
    /// Values per token of each layer's ring row.
    pub widths: Vec<usize>,
    /// Rows before a sequence's end that its next step may read.
    pub need: usize,
    /// Rows before a boundary that a sequence starting there reads.
    pub tail: usize,
    /// Every compressed window ends on a multiple of this.
    pub every: usize,
}

impl RingSpec {
    /// The boundaries for blocks of `bt` tokens: multiples of both `every` and `bt`.
    pub fn granule(&self, bt: usize) -> usize {
        lcm(self.every, bt).unwrap_or(usize::MAX)
    }

    /// Rows a sequence keeps before its end: what its next step reads after a rollback of
    /// [`MAX_ROLLBACK`], and the tail of the last boundary it passed (for its snapshot).
    pub fn keep(&self, bt: usize) -> usize {
        let last = self.granule(bt).saturating_sub(1).saturating_add(self.tail);
        self.need.saturating_add(MAX_ROLLBACK).max(last)
    }

    /// The most bytes one sequence's ring holds between steps (`keep` rows and one granule
    /// of slack: it is trimmed a granule at a time).
    pub fn bytes(&self, kv: KvType, bt: usize) -> usize {
        let rows = self.keep(bt).saturating_add(self.granule(bt));
        let per_row: usize = self.widths.iter().sum();
        rows.saturating_mul(per_row)
            .saturating_mul(RingRows::elem_bytes(kv))
    }
}

/// One layer's ring rows, as f32 (an f32 pool) or f16 (an f16 or q8_0 pool).
#[derive(Clone, Debug)]
enum RingRows {
    F32(Vec<f32>),
    F16(Vec<u16>),
}

impl RingRows {
    fn new(kv: KvType) -> RingRows {
        match kv {
            KvType::F32 => RingRows::F32(Vec::new()),
            KvType::F16 | KvType::Q8_0 => RingRows::F16(Vec::new()),
        }
    }

    fn elem_bytes(kv: KvType) -> usize {
        match kv {
            KvType::F32 => 4,
            KvType::F16 | KvType::Q8_0 => 2,
        }
    }

    fn values(&self) -> usize {
        match self {
            RingRows::F32(v) => v.len(),
            RingRows::F16(v) => v.len(),
        }
    }

    fn push(&mut self, rows: &[f32]) {
        match self {
            RingRows::F32(v) => v.extend_from_slice(rows),
            RingRows::F16(v) => {
                let at = v.len();
                v.resize(at + rows.len(), 0);
                f32_slice_to_f16(rows, &mut v[at..]);
            }
        }
    }

    /// Keeps values `from..to`.
    fn keep_range(&mut self, from: usize, to: usize) {
        match self {
            RingRows::F32(v) => {
                v.truncate(to);
                v.drain(..from);
            }
            RingRows::F16(v) => {
                v.truncate(to);
                v.drain(..from);
            }
        }
    }

    fn data(&self, width: usize) -> RowData<'_> {
        match self {
            RingRows::F32(v) => RowData::f32(v, width),
            RingRows::F16(v) => RowData::f16(v, width),
        }
    }
}

/// A sequence's window state: each layer's rows of positions `start..`.
#[derive(Clone, Debug)]
struct Ring {
    start: usize,
    layers: Vec<RingRows>,
}

impl Ring {
    /// Keeps positions `from..to` (within what it holds) of every layer.
    fn keep(&mut self, widths: &[usize], from: usize, to: usize) {
        for (rows, &w) in self.layers.iter_mut().zip(widths) {
            rows.keep_range((from - self.start) * w, (to - self.start) * w);
        }
        self.start = from;
    }

    /// The positions it holds (of layer 0; every layer between steps).
    fn end(&self, widths: &[usize]) -> usize {
        let w = widths.first().copied().unwrap_or(0);
        self.start + self.layers.first().map_or(0, |r| r.values()) / w.max(1)
    }

    fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|r| match r {
                RingRows::F32(v) => v.len() * 4,
                RingRows::F16(v) => v.len() * 2,
            })
            .sum()
    }
}

/// Read access to one sequence's ring rows of one layer (positions `start..`).
pub(crate) struct RingView<'a> {
    start: usize,
    rows: RowData<'a>,
    width: usize,
}

impl RingView<'_> {
    /// Columns `c0..c0 + out.len()` of position `u`'s row, as f32.
    pub(crate) fn copy_row(&self, u: usize, c0: usize, out: &mut [f32]) {
        copy_values(self.rows, (u - self.start) * self.width + c0, out);
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
    /// A window-state pool's snapshot of a sequence's ring at this block's end (a boundary).
    snapshot: Option<Box<Ring>>,
}

struct PoolInner {
    blocks: Vec<Block>,
    free: Vec<BlockId>,
    /// Prefix hash of a full block's tokens (including all earlier blocks) → block.
    index: HashMap<u64, BlockId>,
    tick: u64,
    /// Every sequence's ring (window-state pools), by slot.
    rings: Vec<Option<Ring>>,
    free_rings: Vec<usize>,
    /// Blocks holding a snapshot.
    snapshots: usize,
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
    /// What sequences keep outside the blocks, if anything.
    ring: Option<RingSpec>,
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

/// The prefix hash `h` continued over `tokens` (a block's key: the hash of every token up to
/// its end).
fn chain(h: u64, tokens: &[u32]) -> u64 {
    tokens.iter().fold(h, |h, &t| mix(h, t as u64))
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
        KvPool::with_ring(
            widths,
            None,
            kv_type,
            block_tokens,
            max_blocks,
            prefix_caching,
        )
    }

    /// [`KvPool::with_widths`] whose sequences also keep the window state `ring` (sizes from
    /// a validated config).
    pub fn with_ring(
        widths: Vec<usize>,
        ring: Option<RingSpec>,
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
            ring,
            inner: Mutex::new(PoolInner {
                blocks: Vec::new(),
                free: Vec::new(),
                index: HashMap::new(),
                tick: 0,
                rings: Vec::new(),
                free_rings: Vec::new(),
                snapshots: 0,
            }),
        })
    }

    /// The window state its sequences keep, if any.
    pub fn ring(&self) -> Option<&RingSpec> {
        self.ring.as_ref()
    }

    /// Positions between the boundaries where blocks are indexed and prefixes reused: a block
    /// normally, a [`RingSpec::granule`] with window state.
    fn granule(&self) -> usize {
        self.ring
            .as_ref()
            .map_or(self.block_tokens, |r| r.granule(self.block_tokens))
    }

    /// A new ring slot holding `ring`.
    fn add_ring(g: &mut PoolInner, ring: Ring) -> usize {
        match g.free_rings.pop() {
            Some(i) => {
                g.rings[i] = Some(ring);
                i
            }
            None => {
                g.rings.push(Some(ring));
                g.rings.len() - 1
            }
        }
    }

    fn empty_ring(&self, start: usize) -> Ring {
        let n = self.ring.as_ref().map_or(0, |r| r.widths.len());
        Ring {
            start,
            layers: (0..n).map(|_| RingRows::new(self.kv_type)).collect(),
        }
    }

    /// Drops block `id`'s snapshot, if any.
    fn drop_snapshot(g: &mut PoolInner, id: BlockId) {
        if g.blocks[id].snapshot.take().is_some() {
            g.snapshots -= 1;
        }
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
        let ring = self.ring.as_ref().map(|_| {
            let r = self.empty_ring(0);
            KvPool::add_ring(&mut self.lock(), r)
        });
        SeqCache {
            pool: self.clone(),
            blocks: Vec::new(),
            len: 0,
            tokens: Vec::new(),
            ring,
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
    /// leaving at least one token to compute; with window state, up to the last boundary that
    /// holds a snapshot). Its `len()` tells how many tokens were reused.
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
            h = chain(h, chunk);
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
        if let (Some(spec), Some(slot)) = (&self.ring, seq.ring) {
            // Back to the last boundary whose block holds a snapshot; it becomes the ring.
            let gran = spec.granule(bt);
            let at = (1..=seq.blocks.len()).rev().find(|&n| {
                (n * bt).is_multiple_of(gran) && g.blocks[seq.blocks[n - 1]].snapshot.is_some()
            });
            let n = at.unwrap_or(0);
            for id in seq.blocks.drain(n..) {
                self.release(&mut g, id);
            }
            seq.len = n * bt;
            seq.tokens.truncate(seq.len);
            let ring = match n {
                0 => self.empty_ring(0),
                n => g.blocks[seq.blocks[n - 1]]
                    .snapshot
                    .as_deref()
                    .cloned()
                    .unwrap_or_else(|| self.empty_ring(seq.len)),
            };
            g.rings[slot] = Some(ring);
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
                snapshot: None,
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
            KvPool::drop_snapshot(g, victim);
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
            KvPool::drop_snapshot(g, id);
            g.free.push(id);
        }
    }

    /// Clears the prefix index (its blocks become free).
    pub fn clear_prefix_cache(&self) {
        let mut g = self.lock();
        let ids: Vec<BlockId> = g.index.drain().map(|(_, id)| id).collect();
        for id in ids {
            g.blocks[id].key = None;
            KvPool::drop_snapshot(&mut g, id);
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
    /// Its ring's slot (window-state pools).
    ring: Option<usize>,
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
        self.snapshot_locked(&mut g);
        for &id in &self.blocks {
            pool.release(&mut g, id);
        }
        if let Some(slot) = self.ring {
            g.rings[slot] = None;
            g.free_rings.push(slot);
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

    /// Bytes of the blocks this sequence references and of its window state.
    pub fn bytes(&self) -> usize {
        let ring = self.ring.map_or(0, |slot| {
            self.pool.lock().rings[slot].as_ref().map_or(0, Ring::bytes)
        });
        self.blocks.len() * self.pool.block_bytes() + ring
    }

    /// With window state and prefix caching: leaves a snapshot of the ring at the last boundary
    /// it passed, so that a sequence with the same tokens up to there starts from it (the engine
    /// calls it when a prompt is in; dropping a sequence does it too).
    pub fn snapshot_prefix(&self) {
        let pool = self.pool.clone();
        let mut g = pool.lock();
        self.snapshot_locked(&mut g);
    }

    fn snapshot_locked(&self, g: &mut PoolInner) {
        let (Some(spec), Some(slot)) = (&self.pool.ring, self.ring) else {
            return;
        };
        if !self.pool.prefix_caching {
            return;
        }
        let bt = self.pool.block_tokens;
        let at = self.len / spec.granule(bt) * spec.granule(bt);
        if at == 0 {
            return;
        }
        // The index key of the block ending at `at` (a multiple of the block size).
        let Some(&id) = g.index.get(&chain(0, &self.tokens[..at])) else {
            return;
        };
        g.tick += 1;
        g.blocks[id].last_use = g.tick;
        if g.blocks[id].snapshot.is_some() {
            return;
        }
        let Some(ring) = g.rings[slot].as_ref() else {
            return;
        };
        let from = at.saturating_sub(spec.tail);
        if ring.start > from || ring.end(&spec.widths) < at {
            return;
        }
        let mut snap = ring.clone();
        snap.keep(&spec.widths, from, at);
        g.blocks[id].snapshot = Some(Box::new(snap));
        g.snapshots += 1;
        while g.snapshots > MAX_SNAPSHOTS {
            let oldest = g
                .blocks
                .iter()
                .enumerate()
                .filter(|(_, b)| b.snapshot.is_some())
                .min_by_key(|(_, b)| b.last_use)
                .map(|(i, _)| i);
            match oldest {
                Some(i) => KvPool::drop_snapshot(g, i),
                None => break,
            }
        }
    }

    /// Cuts the sequence back to its first `len` tokens (no-op when it holds no more), as if
    /// the later ones had never been decoded: whole blocks past `len` go back to the pool, and
    /// the blocks that may still be written — the one `len` ends inside; with window state,
    /// every block from the last boundary on, whose windows are to be completed again — become
    /// this sequence's own again before they are written to: a block the prefix index or
    /// another sequence still holds is copied first (its rows stay valid for them), one held by
    /// the index alone leaves the index. Errs, changing nothing, when the window state no longer
    /// reaches back far enough (more than [`MAX_ROLLBACK`] tokens), or, keeping the copies made
    /// so far, when a copy needs a block and the pool has none.
    pub fn truncate(&mut self, len: usize) -> Result<(), ModelError> {
        if len >= self.len {
            return Ok(());
        }
        let pool = self.pool.clone();
        let bt = pool.block_tokens;
        let keep = len.div_ceil(bt);
        let mut g = pool.lock();
        if let (Some(spec), Some(slot)) = (&pool.ring, self.ring) {
            let start = g.rings[slot].as_ref().map_or(0, |r| r.start);
            if start > len.saturating_sub(spec.need) {
                return Err(ModelError::Input(format!(
                    "cannot cut a sequence of {} tokens back to {len}: its window state keeps \
                     positions {start}.. only",
                    self.len
                )));
            }
        }
        let first = len / pool.granule() * pool.granule() / bt;
        for i in first..keep {
            let id = self.blocks[i];
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
                self.blocks[i] = copy;
            } else if let Some(k) = g.blocks[id].key.take() {
                // Held by the index and this sequence only: it leaves the index.
                g.index.remove(&k);
                KvPool::drop_snapshot(&mut g, id);
                g.blocks[id].tokens.clear();
                g.blocks[id].refs -= 1;
            }
        }
        for id in self.blocks.drain(keep..) {
            pool.release(&mut g, id);
        }
        if let (Some(spec), Some(slot)) = (&pool.ring, self.ring) {
            if let Some(r) = g.rings[slot].as_mut() {
                let start = r.start;
                r.keep(&spec.widths, start, len);
            }
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
        self.write_at(seq, l, seq.len, rows);
    }

    /// Writes `rows` (`[n, widths[l]]`) at positions `at..` of layer `l`, within the blocks
    /// `seq` holds (a window's entry pieces, written into the rows of its tokens).
    pub(crate) fn write_at(&mut self, seq: &SeqCache, l: usize, at: usize, rows: &[f32]) {
        let (bt, lat, st) = (
            self.pool.block_tokens,
            self.pool.widths[l],
            self.pool.strides[l],
        );
        let base = bt * self.pool.offsets[l];
        let mut padded = vec![0.0f32; st];
        for (i, row) in rows.chunks_exact(lat).enumerate() {
            let u = at + i;
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

    /// Each sequence's view of layer `l`'s rows `0..len + new`.
    pub(crate) fn views(&self, seqs: &[(&SeqCache, usize)], l: usize) -> Vec<LayerView<'_>> {
        seqs.iter()
            .map(|&(seq, n)| self.view(seq, l, seq.len + n))
            .collect()
    }

    /// Appends layer `l`'s window-state rows of a batch's new tokens (`rows`: `[T,
    /// ring widths[l]]`, the `new` tokens of each `(seq, new)` in order) to their rings.
    pub(crate) fn write_ring(&mut self, seqs: &[(&SeqCache, usize)], l: usize, rows: &[f32]) {
        let w = self.pool.ring.as_ref().map_or(0, |r| r.widths[l]);
        let mut t0 = 0;
        for &(seq, n) in seqs {
            if let Some(r) = seq.ring.and_then(|slot| self.guard.rings[slot].as_mut()) {
                r.layers[l].push(&rows[t0 * w..(t0 + n) * w]);
            }
            t0 += n;
        }
    }

    /// Each sequence's window-state rows of layer `l` (positions up to its new tokens').
    pub(crate) fn ring_views(&self, seqs: &[(&SeqCache, usize)], l: usize) -> Vec<RingView<'_>> {
        let w = self.pool.ring.as_ref().map_or(0, |r| r.widths[l]);
        seqs.iter()
            .map(
                |&(seq, _)| match seq.ring.and_then(|slot| self.guard.rings[slot].as_ref()) {
                    Some(r) => RingView {
                        start: r.start,
                        rows: r.layers[l].data(w),
                        width: w,
                    },
                    None => RingView {
                        start: 0,
                        rows: RowData::f32(&[], w),
                        width: w,
                    },
                },
            )
            .collect()
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

    /// Records `tokens` as appended to `seq`; trims its window state; indexes the blocks that
    /// became full (with window state: that a boundary now closes).
    pub(crate) fn commit(&mut self, seq: &mut SeqCache, tokens: &[u32]) {
        let bt = self.pool.block_tokens;
        let gran = self.pool.granule();
        let before = seq.len / gran * gran / bt;
        seq.len += tokens.len();
        seq.tokens.extend_from_slice(tokens);
        if let (Some(spec), Some(slot)) = (&self.pool.ring, seq.ring) {
            let keep = spec.keep(bt);
            if let Some(r) = self.guard.rings[slot].as_mut() {
                // A granule at a time, so that rows move rarely.
                if seq.len.saturating_sub(r.start) > keep.saturating_add(gran.min(1 << 16)) {
                    r.keep(&spec.widths, seq.len - keep, seq.len);
                }
            }
        }
        if !self.pool.prefix_caching {
            return;
        }
        let full = seq.len / gran * gran / bt;
        if full <= before {
            return;
        }
        let mut h = 0u64;
        for (bi, chunk) in seq.tokens[..full * bt].chunks(bt).enumerate() {
            h = chain(h, chunk);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A window-state pool of one layer (block rows of 1 value, ring rows of 2), blocks of 4
    /// tokens, windows ending on multiples of 8, a window of 3 read back.
    fn ring_pool() -> Arc<KvPool> {
        let spec = RingSpec {
            widths: vec![2],
            need: 3,
            tail: 3,
            every: 8,
        };
        KvPool::with_ring(vec![1], Some(spec), KvType::F32, 4, Some(64), true)
    }

    /// Appends `tokens` to `seq` as a forward pass does, ring row of token `t` = `[t, -t]`.
    fn feed(pool: &Arc<KvPool>, seq: &mut SeqCache, tokens: &[u32]) {
        let mut b = BatchCache::prepare(pool, &mut [(&mut *seq, tokens.len())]).unwrap();
        let rows: Vec<f32> = tokens
            .iter()
            .flat_map(|&t| [t as f32, -(t as f32)])
            .collect();
        b.write_ring(&[(&*seq, tokens.len())], 0, &rows);
        b.commit(seq, tokens);
    }

    fn ring_row(pool: &Arc<KvPool>, seq: &SeqCache, u: usize) -> [f32; 2] {
        let b = BatchCache::prepare(pool, &mut []).unwrap();
        let mut out = [0.0f32; 2];
        b.ring_views(&[(seq, 0)], 0)[0].copy_row(u, 0, &mut out);
        out
    }

    #[test]
    fn window_state_is_reused_from_snapshots_at_boundaries_only() {
        let pool = ring_pool();
        let tokens: Vec<u32> = (100..120).collect();
        let mut a = pool.new_seq();
        feed(&pool, &mut a, &tokens[..13]);
        // Blocks are indexed below the last boundary (8) only; no snapshot, no reuse.
        assert_eq!(pool.lock().index.len(), 2);
        assert_eq!(pool.seq_with_prefix(&tokens).len(), 0);
        a.snapshot_prefix();
        let b = pool.seq_with_prefix(&tokens);
        assert_eq!(b.len(), 8);
        // The ring holds the tail before the boundary, as `a` wrote it.
        assert_eq!(ring_row(&pool, &b, 5), [105.0, -105.0]);
        assert_eq!(ring_row(&pool, &b, 7), [107.0, -107.0]);
        // A different token inside the prefix: nothing reused.
        let mut other = tokens.clone();
        other[2] = 7;
        assert_eq!(pool.seq_with_prefix(&other).len(), 0);
    }

    #[test]
    fn rollback_is_bounded_by_the_window_state() {
        let pool = ring_pool();
        let mut a = pool.new_seq();
        let tokens: Vec<u32> = (0..200).collect();
        feed(&pool, &mut a, &tokens);
        // keep = max(need + MAX_ROLLBACK, 8 - 1 + tail) = 35 rows before the end.
        let err = a.truncate(100).unwrap_err().to_string();
        assert!(err.contains("window state"), "{err}");
        assert_eq!(a.len(), 200);
        a.truncate(200 - MAX_ROLLBACK).unwrap();
        assert_eq!(a.len(), 200 - MAX_ROLLBACK);
        let u = 200 - MAX_ROLLBACK - 3;
        assert_eq!(ring_row(&pool, &a, u), [u as f32, -(u as f32)]);
    }

    #[test]
    fn snapshots_are_capped_least_recently_used_first() {
        let pool = ring_pool();
        let mut seqs = Vec::new();
        for s in 0..MAX_SNAPSHOTS as u32 + 2 {
            let tokens: Vec<u32> = (0..9).map(|t| s * 1000 + t).collect();
            let mut a = pool.new_seq();
            feed(&pool, &mut a, &tokens);
            a.snapshot_prefix();
            seqs.push((a, tokens));
        }
        assert_eq!(pool.lock().snapshots, MAX_SNAPSHOTS);
        // The first two sequences' snapshots went; the latest are reusable.
        assert_eq!(pool.seq_with_prefix(&seqs[0].1).len(), 0);
        assert_eq!(pool.seq_with_prefix(&seqs[MAX_SNAPSHOTS + 1].1).len(), 8);
    }
}
