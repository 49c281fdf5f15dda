//! DeepSeek-V4's part of the configuration ([`V4Config`], `Attention::V4`): the per-layer
//! attention kinds (sliding window only, CSA, HCA), the compressed branches' RoPE, the lightning
//! indexer of CSA layers, the hash-routed layers and the mHC hyper-connections — with their
//! validation, derived sizes and parameter count (all in checked arithmetic).
//!
//! Facts from transformers 5.25 (`configuration_deepseek_v4.py`, `modeling_deepseek_v4.py`):
//! every layer is MoE (no dense layers); a layer's attention is a sliding window of one shared
//! K = V head, plus for CSA (`compressed_sparse_attention`) the top-`index_topk` entries of an
//! overlapping ratio-`csa_ratio` compressor chosen by an indexer, or for HCA
//! (`heavily_compressed_attention`) every entry of a ratio-`hca_ratio` compressor.

use super::{cfg_err, sizes, Config, IndexerConfig, Yarn, MAX_CONTEXT, MAX_DIM, MAX_HEADS};
use crate::cache::{lcm, RingSpec};
use crate::error::ModelError;

/// The most hyper-connection streams (`hc_mult`; V4: 4).
pub const MAX_HC_MULT: usize = 1 << 8;
/// The most Sinkhorn–Knopp iterations (`hc_sinkhorn_iters`; V4: 20).
pub const MAX_SINKHORN_ITERS: usize = 1 << 16;

/// A V4 layer's attention (`layer_types`, or the release's `compress_ratios` 0 / 4 / 128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum V4LayerKind {
    /// `sliding_attention`: the window only (RoPE: the main θ, no YaRN).
    Sliding,
    /// `compressed_sparse_attention`: the window plus the top-`index_topk` entries of an
    /// overlapping compressor (windows of `2·csa_ratio` tokens, stride `csa_ratio`).
    Csa,
    /// `heavily_compressed_attention`: the window plus every entry of a compressor over
    /// disjoint windows of `hca_ratio` tokens.
    Hca,
}

/// One decoder layer of a V4 model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct V4Layer {
    pub kind: V4LayerKind,
    /// `hash_moe` (`mlp_layer_types`): experts from the frozen `tid2eid[token]` table, weighted by
    /// the router's scores; otherwise routed by the biased scores.
    pub hash_moe: bool,
}

/// Manifold-constrained hyper-connections (mHC): `hc_mult` residual streams mixed around every
/// sublayer.
#[derive(Clone, Debug, PartialEq)]
pub struct HyperConfig {
    /// Residual streams (`hc_mult`).
    pub hc_mult: usize,
    /// Sinkhorn–Knopp iterations making the stream-mixing matrix doubly stochastic.
    pub sinkhorn_iters: usize,
    /// `hc_eps`: added to the pre weights, the mixing matrix and every Sinkhorn denominator.
    pub eps: f32,
}

/// DeepSeek-V4's attention and block structure.
#[derive(Clone, Debug, PartialEq)]
pub struct V4Config {
    /// Width of the query latent (`q_lora_rank`).
    pub q_lora_rank: usize,
    /// Width of a query head and of the one shared K = V head (`head_dim`; 512 in V4).
    pub head_dim: usize,
    /// The trailing dims of a head that carry RoPE (`head_dim · partial_rotary_factor`, or the
    /// release's `qk_rope_head_dim`; 64).
    pub qk_rope_head_dim: usize,
    /// Head groups of the grouped output projection (`o_groups`).
    pub o_groups: usize,
    /// Each group's projected width (`o_lora_rank`).
    pub o_lora_rank: usize,
    /// Keys a query sees in its window, itself included (`sliding_window`).
    pub sliding_window: usize,
    /// Tokens per compressed entry of CSA layers (`compress_rates`; 4).
    pub csa_ratio: usize,
    /// Tokens per compressed entry of HCA layers (128).
    pub hca_ratio: usize,
    /// Every decoder layer's attention kind and routing (MTP layers excluded).
    pub layers: Vec<V4Layer>,
    /// The first MTP layer's (index `layers.len()`; used when the checkpoint has one).
    pub mtp: V4Layer,
    /// θ of the compressed layers' RoPE (`compress_rope_theta`; the sliding layers use
    /// `Config::rope_theta`).
    pub compress_rope_theta: f64,
    /// YaRN of the compressed layers' RoPE; transformers sets its `attention_factor` to 1 (no
    /// cos/sin amplitude) unless the config states one.
    pub compress_yarn: Option<Yarn>,
    /// The CSA layers' lightning indexer (`index_topk`, `index_n_heads`, `index_head_dim`).
    pub indexer: IndexerConfig,
    pub hc: HyperConfig,
}

impl V4LayerKind {
    /// `layer_types`' spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            V4LayerKind::Sliding => "sliding_attention",
            V4LayerKind::Csa => "compressed_sparse_attention",
            V4LayerKind::Hca => "heavily_compressed_attention",
        }
    }
}

/// `a × b`, or an error naming `field`.
fn mul(field: &str, a: usize, b: usize) -> Result<usize, ModelError> {
    a.checked_mul(b)
        .ok_or_else(|| cfg_err(field, format!("{a} × {b} overflows")))
}

/// The sum of `terms`, or an error naming `field`.
fn sum(field: &str, terms: &[usize]) -> Result<usize, ModelError> {
    terms.iter().try_fold(0usize, |acc, &t| {
        acc.checked_add(t)
            .ok_or_else(|| cfg_err(field, "the sum overflows"))
    })
}

impl V4Config {
    /// Layer `l`: a decoder layer, or the MTP layer right after them.
    pub fn layer(&self, l: usize) -> Option<V4Layer> {
        match l.cmp(&self.layers.len()) {
            std::cmp::Ordering::Less => self.layers.get(l).copied(),
            std::cmp::Ordering::Equal => Some(self.mtp),
            std::cmp::Ordering::Greater => None,
        }
    }

    /// Tokens per compressed entry of a layer of kind `kind` (`None`: sliding only).
    pub fn ratio(&self, kind: V4LayerKind) -> Option<usize> {
        match kind {
            V4LayerKind::Sliding => None,
            V4LayerKind::Csa => Some(self.csa_ratio),
            V4LayerKind::Hca => Some(self.hca_ratio),
        }
    }

    /// Values a layer of kind `kind` keeps per token in the paged blocks (see `v4::EntryLayout`):
    /// its compressed entries only, each window's entry (the compressor's `head_dim` values, CSA's
    /// indexer key after them) cut into one piece per token of the window: `⌈(head_dim +
    /// index_head_dim) / csa_ratio⌉` for CSA, `⌈head_dim / hca_ratio⌉` for HCA, 0 for a sliding
    /// layer. 160 and 4 at V4 sizes.
    pub fn cache_row(&self, kind: V4LayerKind) -> Result<usize, ModelError> {
        let (hd, id) = (self.head_dim, self.indexer.index_head_dim);
        Ok(match kind {
            V4LayerKind::Sliding => 0,
            V4LayerKind::Hca => hd.div_ceil(self.hca_ratio.max(1)),
            V4LayerKind::Csa => sum("index_head_dim", &[hd, id])?.div_ceil(self.csa_ratio.max(1)),
        })
    }

    /// Values a layer of kind `kind` keeps per token of its window state (see
    /// `v4::RowLayout`), held per sequence for its last tokens only: the window key (`head_dim`)
    /// and, with a compressor, its per-token `kv` and `gate` projections (`2·head_dim` each for
    /// CSA's two series, `head_dim` for HCA; CSA's indexer `2·index_head_dim` each). Sliding
    /// 512, HCA 1536, CSA 3072 at V4 sizes.
    pub fn window_row(&self, kind: V4LayerKind) -> Result<usize, ModelError> {
        let (hd, id) = (self.head_dim, self.indexer.index_head_dim);
        match kind {
            V4LayerKind::Sliding => Ok(hd),
            V4LayerKind::Hca => mul("head_dim", 3, hd),
            V4LayerKind::Csa => sum(
                "index_head_dim",
                &[mul("head_dim", 5, hd)?, mul("index_head_dim", 4, id)?],
            ),
        }
    }

    /// The MTP layer's cache: its block row width and its window state (a pool of one layer).
    pub fn mtp_cache(&self) -> Result<(usize, RingSpec), ModelError> {
        let one = V4Config {
            layers: vec![self.mtp],
            ..self.clone()
        };
        Ok((one.cache_row(self.mtp.kind)?, one.ring_spec()?))
    }

    /// What a sequence keeps of its last tokens outside the paged blocks ([`RingSpec`]).
    pub fn ring_spec(&self) -> Result<RingSpec, ModelError> {
        let window = self.sliding_window.saturating_sub(1);
        let has = |k: V4LayerKind| self.layers.iter().any(|l| l.kind == k);
        // The windows a step may complete start at most `series·ratio - 1` tokens back.
        let mut need = window;
        let mut tail = window;
        let mut every = 1usize;
        for (kind, ratio, series) in [
            (V4LayerKind::Csa, self.csa_ratio, 2),
            (V4LayerKind::Hca, self.hca_ratio, 1),
        ] {
            if has(kind) {
                need = need.max(mul("compress_ratios", series, ratio)?.saturating_sub(1));
                // From a boundary every window ends at, CSA still reads the previous one.
                tail = tail.max((series - 1) * ratio);
                every = lcm(every, ratio).ok_or_else(|| {
                    cfg_err("compress_ratios", "the ratios' common multiple overflows")
                })?;
            }
        }
        Ok(RingSpec {
            widths: self
                .layers
                .iter()
                .map(|l| self.window_row(l.kind))
                .collect::<Result<_, _>>()?,
            need,
            tail,
            every,
        })
    }

    /// Input width of one group of the grouped output projection:
    /// `num_attention_heads · head_dim / o_groups`.
    pub fn o_group_cols(&self, heads: usize) -> Result<usize, ModelError> {
        Ok(mul("num_attention_heads", heads, self.head_dim)? / self.o_groups.max(1))
    }

    /// `o_groups · o_lora_rank`: the grouped projection's output, `o_b_proj`'s input.
    pub fn o_rank(&self) -> Result<usize, ModelError> {
        mul("o_lora_rank", self.o_groups, self.o_lora_rank)
    }

    /// Rows of a hyper-connection's `fn`: `(2 + hc_mult) · hc_mult` (pre, post, comb).
    pub fn hc_mixes(&self) -> Result<usize, ModelError> {
        let n = self.hc.hc_mult;
        mul("hc_mult", sum("hc_mult", &[n, 2])?, n)
    }
}

impl Config {
    /// The V4 part, for a DeepSeek-V4 model.
    pub fn v4(&self) -> Option<&V4Config> {
        match &self.attention {
            super::Attention::V4(v) => Some(v),
            _ => None,
        }
    }

    /// Values each layer caches per token (`Config::latent_dim` for every layer but a V4
    /// model's, whose layer kinds differ; see [`V4Config::cache_row`]).
    pub fn cache_widths(&self) -> Result<Vec<usize>, ModelError> {
        match self.v4() {
            Some(v) => v.layers.iter().map(|l| v.cache_row(l.kind)).collect(),
            None => Ok(vec![self.latent_dim()?; self.num_hidden_layers]),
        }
    }

    /// What each sequence keeps of its last tokens outside the paged blocks (DeepSeek-V4's window
    /// state), `None` for models that keep everything in the blocks.
    pub fn ring_spec(&self) -> Result<Option<RingSpec>, ModelError> {
        self.v4().map(V4Config::ring_spec).transpose()
    }

    /// The V4 part's bounds, relations and matrix shapes (from [`Config::validate`]).
    pub(super) fn validate_v4(&self, v: &V4Config) -> Result<(), ModelError> {
        let ix = &v.indexer;
        for (field, value, max) in [
            ("q_lora_rank", v.q_lora_rank, MAX_DIM),
            ("head_dim", v.head_dim, MAX_DIM),
            ("qk_rope_head_dim", v.qk_rope_head_dim, MAX_DIM),
            ("o_groups", v.o_groups, MAX_HEADS),
            ("o_lora_rank", v.o_lora_rank, MAX_DIM),
            ("sliding_window", v.sliding_window, MAX_CONTEXT),
            (
                "compress_rates.compressed_sparse_attention",
                v.csa_ratio,
                MAX_CONTEXT,
            ),
            (
                "compress_rates.heavily_compressed_attention",
                v.hca_ratio,
                MAX_CONTEXT,
            ),
            ("index_topk", ix.index_topk, MAX_CONTEXT),
            ("index_n_heads", ix.index_n_heads, MAX_HEADS),
            ("index_head_dim", ix.index_head_dim, MAX_DIM),
            ("hc_mult", v.hc.hc_mult, MAX_HC_MULT),
            ("hc_sinkhorn_iters", v.hc.sinkhorn_iters, MAX_SINKHORN_ITERS),
        ] {
            sizes::in_range(field, value, max)?;
        }
        let rope = v.qk_rope_head_dim;
        if !rope.is_multiple_of(2) || rope > v.head_dim {
            return Err(cfg_err(
                "qk_rope_head_dim",
                format!(
                    "must be an even number of at most head_dim {}, found {rope}",
                    v.head_dim
                ),
            ));
        }
        if rope > ix.index_head_dim {
            return Err(cfg_err(
                "index_head_dim",
                format!(
                    "must hold the {rope} rope dims, found {}",
                    ix.index_head_dim
                ),
            ));
        }
        if !self.num_attention_heads.is_multiple_of(v.o_groups) {
            return Err(cfg_err(
                "o_groups",
                format!(
                    "must divide num_attention_heads {}, found {}",
                    self.num_attention_heads, v.o_groups
                ),
            ));
        }
        if !(v.hc.eps.is_finite() && v.hc.eps >= 0.0 && v.hc.eps < 1.0) {
            return Err(cfg_err(
                "hc_eps",
                format!("must be a number in [0, 1), found {}", v.hc.eps),
            ));
        }
        if v.layers.len() != self.num_hidden_layers {
            return Err(cfg_err(
                "layer_types",
                format!(
                    "{} entries for {} layers",
                    v.layers.len(),
                    self.num_hidden_layers
                ),
            ));
        }
        if !(v.compress_rope_theta > 1.0 && v.compress_rope_theta.is_finite()) {
            return Err(cfg_err("compress_rope_theta", "must be greater than 1"));
        }
        for (field, yarn) in [
            ("rope_parameters.compress", v.compress_yarn.as_ref()),
            ("rope_parameters.main", self.yarn()),
        ] {
            if let Some(y) = yarn {
                super::positive(&format!("{field}.factor"), y.factor)?;
                sizes::in_range(
                    &format!("{field}.original_max_position_embeddings"),
                    y.original_max_position_embeddings,
                    MAX_CONTEXT,
                )?;
            }
        }
        if !matches!(self.rope_scaling, None | Some(super::RopeScaling::Yarn(_))) {
            return Err(cfg_err(
                "rope_parameters.main",
                "DeepSeek-V4 uses yarn scaling (or none)",
            ));
        }
        let Some(moe) = &self.moe else {
            return Err(cfg_err(
                "n_routed_experts",
                "DeepSeek-V4 has routed experts in every layer",
            ));
        };
        if let Some(l) = moe.swiglu_limit {
            if !(l > 0.0 && l.is_finite()) {
                return Err(cfg_err(
                    "swiglu_limit",
                    format!("must be a positive number, found {l}"),
                ));
            }
        }
        self.v4_shapes(v)
    }

    /// Every matrix a V4 layer requests is within bounds, and the cache rows computable.
    fn v4_shapes(&self, v: &V4Config) -> Result<(), ModelError> {
        let (d, h, ix) = (self.hidden_size, self.num_attention_heads, &v.indexer);
        let q_rows = mul("num_attention_heads", h, v.head_dim)?;
        let streams = mul("hc_mult", v.hc.hc_mult, d)?;
        let shapes = [
            ("q_lora_rank", v.q_lora_rank, d),
            ("num_attention_heads", q_rows, v.q_lora_rank),
            ("o_lora_rank", v.o_rank()?, v.o_group_cols(h)?),
            ("o_lora_rank", d, v.o_rank()?),
            ("head_dim", mul("head_dim", 2, v.head_dim)?, d),
            ("index_n_heads", ix.q_rows()?, v.q_lora_rank),
            (
                "index_head_dim",
                mul("index_head_dim", 2, ix.index_head_dim)?,
                d,
            ),
            ("hc_mult", v.hc_mixes()?, streams),
        ];
        for (field, rows, cols) in shapes {
            let n = mul(field, rows, cols)?;
            if n > super::MAX_MATRIX_ELEMENTS {
                return Err(cfg_err(field, format!("a matrix of {n} elements")));
            }
        }
        for k in [V4LayerKind::Sliding, V4LayerKind::Csa, V4LayerKind::Hca] {
            v.cache_row(k)?;
        }
        if let Some(m) = &self.moe {
            // The hash table: one row of expert ids per token.
            mul("vocab_size", self.vocab_size, m.num_experts_per_tok)?;
        }
        Ok(())
    }

    /// Parameters of a V4 model's layers without the MoE (attention, compressors, indexer,
    /// norms, hyper-connections), summed over its layers; plus the hc head.
    pub(super) fn v4_attention_parameters(&self, v: &V4Config) -> Result<u64, ModelError> {
        let f = "num_hidden_layers";
        let over = || cfg_err(f, "the parameter count overflows");
        // Products and sums of sizes, in checked u64.
        let m = |a: u64, b: u64| a.checked_mul(b).ok_or_else(over);
        let s = |terms: &[u64]| {
            terms
                .iter()
                .try_fold(0u64, |acc, &t| acc.checked_add(t).ok_or_else(over))
        };
        let u = |x: usize| x as u64;
        let (d, h, hd, ix) = (
            u(self.hidden_size),
            u(self.num_attention_heads),
            u(v.head_dim),
            &v.indexer,
        );
        let (q, mixes, n) = (u(v.q_lora_rank), u(v.hc_mixes()?), u(v.hc.hc_mult));
        let hc = s(&[m(mixes, m(n, d)?)?, mixes, 3])?;
        let base = s(&[
            m(q, d)?,
            q,
            m(m(h, hd)?, q)?,
            m(hd, d)?,
            hd,
            m(u(v.o_rank()?), u(v.o_group_cols(self.num_attention_heads)?))?,
            m(d, u(v.o_rank()?))?,
            h,
            m(2, d)?,
            m(2, hc)?,
        ])?;
        // A compressor over `ratio`-token windows of `width`-wide series normalized to `dim`.
        let comp =
            |ratio: u64, width: u64, dim: u64| s(&[m(2, m(width, d)?)?, m(ratio, width)?, dim]);
        let (id, ih) = (u(ix.index_head_dim), u(ix.index_n_heads));
        let mut total = 0u64;
        for l in &v.layers {
            let extra = match l.kind {
                V4LayerKind::Sliding => 0,
                V4LayerKind::Hca => comp(u(v.hca_ratio), hd, hd)?,
                V4LayerKind::Csa => s(&[
                    comp(u(v.csa_ratio), m(2, hd)?, hd)?,
                    comp(u(v.csa_ratio), m(2, id)?, id)?,
                    m(m(ih, id)?, q)?,
                    m(ih, d)?,
                ])?,
            };
            total = s(&[total, base, extra])?;
        }
        let head = s(&[m(n, m(n, d)?)?, n, 1])?;
        s(&[total, head])
    }
}
