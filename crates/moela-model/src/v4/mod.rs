//! DeepSeek-V4 (`deepseek_v4`), computed as transformers 5.25's `DeepseekV4ForCausalLM` computes
//! it: its attention (`attention.rs`: a sliding window of one shared K = V head with a per-head
//! sink, plus CSA's or HCA's compressed entries; `compressor.rs`: windows pooled into entries
//! and CSA's indexer), its hyper-connections (`hyper.rs`) and its weights (`load.rs`,
//! transformers' tensor names). The MoE (√softplus, hash routing, SwiGLU clamp) is `moe.rs`'s.
//!
//! **The cache row.** Everything a V4 layer keeps per token lives in that token's row of the
//! paged pool ([`RowLayout`]): its window key, its compressor inputs (the per-token `kv` and
//! `gate` projections the softmax pooling reads), and — in the row of the token that completes
//! a window — that window's compressed entry (and CSA's indexer key). A window still filling is
//! just the rows of its tokens so far; nothing mutable lives outside the paged rows, so a
//! token's row depends only on the tokens up to it, and decoding one token at a time, chunked
//! prefill, prefix sharing and truncation all read what one prefill would have written.

mod attention;
mod compressor;
mod hyper;
mod load;

use moela_kernels::QMat;

use crate::rope::Rope;
use crate::weights::TensorRef;

pub(crate) use hyper::Mix;
pub(crate) use load::names::TID2EID;
pub(crate) use load::{load_attention, load_head, load_hyper, load_moe};

/// Where a V4 layer's values sit in its cache row (columns; all f32 or all f16 as the pool).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowLayout {
    /// The row's width (`V4Config::cache_row`).
    pub width: usize,
    /// The window key (= value) after `kv_norm` and RoPE: columns `0..head_dim`.
    pub head_dim: usize,
    /// The layer's compressor (CSA, HCA).
    pub compressor: Option<CompressorCols>,
    /// The CSA indexer's compressor.
    pub indexer: Option<CompressorCols>,
}

/// A compressor's columns in the cache row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompressorCols {
    /// The token's `kv` projection (`series · dim` values: CSA's two series, HCA's one).
    pub kv: usize,
    /// The token's `gate` projection (as wide), without the position bias.
    pub gate: usize,
    /// The entry (`dim` values) of the window this token completes; unused in other rows.
    pub entry: usize,
    /// Width of one series and of an entry.
    pub dim: usize,
    /// 2 for CSA's overlapping windows, 1 for HCA's.
    pub series: usize,
}

impl CompressorCols {
    fn at(start: usize, dim: usize, series: usize) -> CompressorCols {
        CompressorCols {
            kv: start,
            gate: start + series * dim,
            entry: start + 2 * series * dim,
            dim,
            series,
        }
    }

    /// One past the last column.
    fn end(&self) -> usize {
        self.entry + self.dim
    }
}

impl RowLayout {
    /// The layout of a layer with `head_dim`-wide heads, a compressor of `series` series if
    /// any, and CSA's indexer of `index_dim`-wide keys if any (sizes checked by the config).
    pub fn new(head_dim: usize, compressor: Option<usize>, index_dim: Option<usize>) -> RowLayout {
        let compressor = compressor.map(|series| CompressorCols::at(head_dim, head_dim, series));
        let end = compressor.map_or(head_dim, |c| c.end());
        let indexer = index_dim.map(|d| CompressorCols::at(end, d, 2));
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
        assert_eq!((c.kv, c.gate, c.entry, hca.width), (32, 64, 96, 128));
        let csa = RowLayout::new(32, Some(2), Some(16));
        let (c, ix) = (csa.compressor.unwrap(), csa.indexer.unwrap());
        assert_eq!((c.kv, c.gate, c.entry), (32, 96, 160));
        assert_eq!((ix.kv, ix.gate, ix.entry, csa.width), (192, 224, 256, 272));
    }
}
