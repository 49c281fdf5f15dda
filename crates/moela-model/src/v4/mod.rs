//! DeepSeek-V4 (`deepseek_v4`), computed as transformers 5.25's `DeepseekV4ForCausalLM` computes
//! it: its attention (`attention.rs`: a sliding window of one shared K = V head with a per-head
//! sink, plus CSA's or HCA's compressed entries; `compressor.rs`: windows pooled into entries
//! and CSA's indexer), its hyper-connections (`hyper.rs`) and its weights (`load.rs`,
//! transformers' tensor names). The MoE (√softplus, hash routing, SwiGLU clamp) is `moe.rs`'s.
//!
//! **The cache.** A V4 layer keeps two things per token (`cache.rs`'s window state):
//! - in the sequence's ring, for its last tokens only ([`RowLayout`]): the window key and the
//!   compressor inputs (the per-token `kv` and `gate` projections the softmax pooling reads);
//! - in the paged blocks, for good ([`EntryLayout`]): each completed window's compressed entry
//!   (and CSA's indexer key), cut into one piece per token of the window — 160 + 4 values per
//!   token at V4 sizes (CSA + HCA), 328 bytes in f16.
//!
//! A window's entry is computed from the ring when its last token arrives and written into its
//! tokens' rows; decoding one token at a time, chunked prefill, prefix reuse (from a boundary
//! that every window ends at) and truncation (within `MAX_ROLLBACK`) all read what one prefill
//! would have written.

mod attention;
mod compressor;
mod hyper;
mod load;

use moela_kernels::QMat;

use crate::cache::LayerView;
use crate::rope::Rope;
use crate::weights::TensorRef;

pub(crate) use hyper::Mix;
pub(crate) use load::names::{HC_HEAD, TID2EID};
pub(crate) use load::{load_attention, load_head, load_hyper, load_moe};

/// Where a V4 layer's values sit in its ring row (columns; all f32 or all f16 as the pool).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowLayout {
    /// The row's width (`V4Config::window_row`).
    pub width: usize,
    /// The window key (= value) after `kv_norm` and RoPE: columns `0..head_dim`.
    pub head_dim: usize,
    /// The layer's compressor (CSA, HCA).
    pub compressor: Option<CompressorCols>,
    /// The CSA indexer's compressor.
    pub indexer: Option<CompressorCols>,
}

/// A compressor's columns in the ring row, and where its entry sits in a window's entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompressorCols {
    /// The token's `kv` projection (`series · dim` values: CSA's two series, HCA's one).
    pub kv: usize,
    /// The token's `gate` projection (as wide), without the position bias.
    pub gate: usize,
    /// Its entry's first value within the window's entry (the compressor's, then CSA's
    /// indexer key: [`EntryLayout`]).
    pub entry: usize,
    /// Width of one series and of an entry.
    pub dim: usize,
    /// 2 for CSA's overlapping windows, 1 for HCA's.
    pub series: usize,
}

impl CompressorCols {
    fn at(start: usize, entry: usize, dim: usize, series: usize) -> CompressorCols {
        CompressorCols {
            kv: start,
            gate: start + series * dim,
            entry,
            dim,
            series,
        }
    }

    /// One past the last ring column.
    fn end(&self) -> usize {
        self.gate + self.series * self.dim
    }
}

/// Where a compressed layer keeps its entries in the paged blocks: window `w`'s entry (`total`
/// values: the compressor's, then CSA's indexer key) cut into `ratio` pieces of `share` values
/// (the last zero-padded), piece `j` in the row of token `w·ratio + j`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryLayout {
    pub ratio: usize,
    /// Values per token (`V4Config::cache_row`).
    pub share: usize,
    pub total: usize,
}

impl EntryLayout {
    pub fn new(ratio: usize, total: usize) -> EntryLayout {
        EntryLayout {
            ratio,
            share: total.div_ceil(ratio.max(1)),
            total,
        }
    }

    /// Values `from..from + out.len()` of window `w`'s entry, from its tokens' rows in `view`.
    pub(crate) fn read(&self, view: &LayerView<'_>, w: usize, from: usize, out: &mut [f32]) {
        let (mut i, mut o) = (from, 0);
        while o < out.len() {
            let (j, c) = (i / self.share, i % self.share);
            let n = (self.share - c).min(out.len() - o);
            view.copy_row(w * self.ratio + j, c, &mut out[o..o + n]);
            i += n;
            o += n;
        }
    }

    /// The rows (`[ratio, share]`) that hold `entry`.
    pub(crate) fn pieces(&self, entry: &[f32]) -> Vec<f32> {
        let mut rows = vec![0.0f32; self.ratio * self.share];
        rows[..entry.len()].copy_from_slice(entry);
        rows
    }
}

impl RowLayout {
    /// The layout of a layer with `head_dim`-wide heads, a compressor of `series` series if
    /// any, and CSA's indexer of `index_dim`-wide keys if any (sizes checked by the config).
    pub fn new(head_dim: usize, compressor: Option<usize>, index_dim: Option<usize>) -> RowLayout {
        let compressor = compressor.map(|series| CompressorCols::at(head_dim, 0, head_dim, series));
        let end = compressor.map_or(head_dim, |c| c.end());
        let indexer = index_dim.map(|d| CompressorCols::at(end, head_dim, d, 2));
        RowLayout {
            width: indexer.map_or(end, |c| c.end()),
            head_dim,
            compressor,
            indexer,
        }
    }
}

/// A compressor's weights (`self_attn.compressor`, or its `indexer`): each window of `ratio`
/// tokens becomes one entry, `norm(Σ softmax(gate + position_bias) ⊙ kv)` per channel, rotated
/// at the window's first position.
#[derive(Clone, Debug)]
pub struct Compressor {
    pub kv: QMat,                // [series·dim, hidden]
    pub gate: QMat,              // [series·dim, hidden]
    pub position_bias: Vec<f32>, // [ratio, series·dim]
    pub norm: Vec<f32>,          // [dim]
    /// Tokens per window.
    pub ratio: usize,
    pub cols: CompressorCols,
}

/// The CSA lightning indexer (`self_attn.compressor.indexer`): its compressor's entries are
/// the keys; each query scores them by `Σ_h w_h · relu(q_h · k) / √dim` and keeps the best
/// `topk` visible ones.
#[derive(Clone, Debug)]
pub struct V4Indexer {
    pub compressor: Compressor,
    pub q_b: QMat,          // [heads·dim, q_lora_rank]
    pub weights_proj: QMat, // [heads, hidden], F32 as the reference computes the scores
    pub heads: usize,
    pub topk: usize,
}

/// The sizes and rotations of one V4 attention layer, fixed at load.
#[derive(Clone, Debug)]
pub struct V4Dims {
    pub heads: usize,
    pub head_dim: usize,
    pub rope_dim: usize,
    pub q_lora_rank: usize,
    pub o_groups: usize,
    pub o_lora_rank: usize,
    /// Keys of a query's window, itself included.
    pub window: usize,
    pub eps: f32,
    /// `head_dim^-0.5`.
    pub scale: f32,
    /// The layer's rotation: the main θ for sliding layers, the compressed θ with YaRN
    /// otherwise (queries, window keys, entries, the output's inverse, the indexer).
    pub rope: Rope,
    pub row: RowLayout,
    /// Where a compressed layer's entries sit in the blocks.
    pub entries: Option<EntryLayout>,
}

/// One V4 attention layer's weights (`self_attn.*`).
#[derive(Clone, Debug)]
pub struct V4Attention {
    pub q_a: QMat,          // [q_lora_rank, hidden]
    pub q_a_norm: Vec<f32>, // [q_lora_rank]
    pub q_b: QMat,          // [heads·head_dim, q_lora_rank]
    pub kv: QMat,           // [head_dim, hidden]
    pub kv_norm: Vec<f32>,  // [head_dim]
    /// The grouped projection `[o_groups·o_lora_rank, heads·head_dim / o_groups]`: group g's
    /// rows apply to heads `g·heads/o_groups..`; kept unpacked (products by row ranges).
    pub o_a: QMat,
    pub o_b: QMat,       // [hidden, o_groups·o_lora_rank]
    pub sinks: Vec<f32>, // [heads]: each head's sink logit
    /// CSA's or HCA's compressor.
    pub compressor: Option<Compressor>,
    /// CSA's indexer.
    pub indexer: Option<V4Indexer>,
    pub dims: V4Dims,
}

/// One hyper-connection (`attn_hc` / `ffn_hc`): from the `hc_mult` streams, the weights that
/// collapse them into the sublayer's input (pre), spread its output back (post) and mix them
/// (comb, made doubly stochastic by Sinkhorn–Knopp).
#[derive(Clone, Debug)]
pub struct HyperConnection {
    pub fn_: QMat,       // [(2 + n)·n, n·hidden], F32
    pub base: Vec<f32>,  // [(2 + n)·n]
    pub scale: [f32; 3], // pre, post, comb
    pub streams: usize,  // n = hc_mult
    pub sinkhorn_iters: usize,
    pub hc_eps: f32,
    /// `rms_norm_eps` of the unweighted RMSNorm of the flattened streams.
    pub norm_eps: f32,
}

/// A decoder layer's two hyper-connections.
#[derive(Clone, Debug)]
pub struct LayerHyper {
    pub attn: HyperConnection,
    pub ffn: HyperConnection,
}

/// The final collapse of the streams (`model.hc_head`): weights `sigmoid(mix·scale + base) + ε`.
#[derive(Clone, Debug)]
pub struct HyperHead {
    pub fn_: QMat,      // [n, n·hidden], F32
    pub base: Vec<f32>, // [n]
    pub scale: f32,
    pub streams: usize,
    pub hc_eps: f32,
    pub norm_eps: f32,
}

/// `(name, tensor)` pairs for exporters.
type Named<'a> = Vec<(String, TensorRef<'a>)>;

impl V4Attention {
    /// This layer's tensors (transformers' names; `p` = `model.layers.{l}`).
    pub(crate) fn named_tensors<'a>(&'a self, v: &mut Named<'a>, p: &str) {
        use TensorRef::{Matrix, Vector};
        let a = |n: &str| format!("{p}.self_attn.{n}");
        v.push((a("q_a_proj.weight"), Matrix(&self.q_a)));
        v.push((a("q_a_norm.weight"), Vector(&self.q_a_norm)));
        v.push((a("q_b_proj.weight"), Matrix(&self.q_b)));
        v.push((a("kv_proj.weight"), Matrix(&self.kv)));
        v.push((a("kv_norm.weight"), Vector(&self.kv_norm)));
        v.push((a("o_a_proj.weight"), Matrix(&self.o_a)));
        v.push((a("o_b_proj.weight"), Matrix(&self.o_b)));
        v.push((a("sinks"), Vector(&self.sinks)));
        let comp = |v: &mut Named<'a>, at: &str, c: &'a Compressor| {
            v.push((format!("{at}.kv_proj.weight"), Matrix(&c.kv)));
            v.push((format!("{at}.gate_proj.weight"), Matrix(&c.gate)));
            let (data, cols) = (&c.position_bias, c.cols.series * c.cols.dim);
            v.push((
                format!("{at}.position_bias"),
                TensorRef::Table { data, cols },
            ));
            v.push((format!("{at}.kv_norm.weight"), Vector(&c.norm)));
        };
        if let Some(c) = &self.compressor {
            comp(v, &a("compressor"), c);
        }
        if let Some(ix) = &self.indexer {
            let at = a("compressor.indexer");
            comp(v, &at, &ix.compressor);
            v.push((format!("{at}.q_b_proj.weight"), Matrix(&ix.q_b)));
            v.push((
                format!("{at}.scorer.weights_proj.weight"),
                Matrix(&ix.weights_proj),
            ));
        }
    }
}

impl LayerHyper {
    pub(crate) fn named_tensors<'a>(&'a self, v: &mut Named<'a>, p: &str) {
        for (n, h) in [("attn_hc", &self.attn), ("ffn_hc", &self.ffn)] {
            v.push((format!("{p}.{n}.fn"), TensorRef::Matrix(&h.fn_)));
            v.push((format!("{p}.{n}.base"), TensorRef::Vector(&h.base)));
            v.push((format!("{p}.{n}.scale"), TensorRef::Vector(&h.scale)));
        }
    }
}

impl HyperHead {
    pub(crate) fn named_tensors<'a>(&'a self, v: &mut Named<'a>) {
        v.push(("model.hc_head.hc_fn".into(), TensorRef::Matrix(&self.fn_)));
        v.push((
            "model.hc_head.hc_base".into(),
            TensorRef::Vector(&self.base),
        ));
        v.push((
            "model.hc_head.hc_scale".into(),
            TensorRef::Vector(std::slice::from_ref(&self.scale)),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_layouts_match_the_config_widths() {
        // head_dim 32, index_head_dim 16: the v4 fixture's rows.
        assert_eq!(RowLayout::new(32, None, None).width, 32);
        let hca = RowLayout::new(32, Some(1), None);
        let c = hca.compressor.unwrap();
        assert_eq!((c.kv, c.gate, c.entry, hca.width), (32, 64, 0, 96));
        let csa = RowLayout::new(32, Some(2), Some(16));
        let (c, ix) = (csa.compressor.unwrap(), csa.indexer.unwrap());
        assert_eq!((c.kv, c.gate, c.entry), (32, 96, 0));
        assert_eq!((ix.kv, ix.gate, ix.entry, csa.width), (160, 192, 32, 224));
        // Entries: CSA's 32 + 16 values over 4 tokens, HCA's 32 over 128 (one value each).
        assert_eq!(EntryLayout::new(4, 48).share, 12);
        assert_eq!(EntryLayout::new(128, 32).share, 1);
    }
}
