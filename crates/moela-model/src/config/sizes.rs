//! Bounds on the config's sizes and every size derived from them, in checked arithmetic: an
//! overflow is a [`ModelError::Config`] naming the field, never a wrapped number or a panic.
//!
//! The bounds are generous — 10× to 1000× the largest published model of each family — so that
//! no real config meets them, while every product the engine forms from bounded fields (a
//! matrix's elements, a layer's cache row, the parameter count) stays far from overflowing.

use super::{
    cfg_err, yarn_get_mscale, Attention, Config, GqaConfig, IndexerConfig, MlaConfig, MoeConfig,
};
use crate::cache::KvType;
use crate::error::ModelError;

/// The widest any size may be: `hidden_size`, `intermediate_size`, `moe_intermediate_size`,
/// head widths, LoRA ranks, FP8 block sides (DeepSeek-V3's widest: 18,432).
pub const MAX_DIM: usize = 1 << 20;
/// The most attention heads, query or key/value (DeepSeek-V3: 128).
pub const MAX_HEADS: usize = 1 << 16;
/// The largest vocabulary (the largest published: 262,144).
pub const MAX_VOCAB: usize = 1 << 24;
/// The most decoder (or MTP) layers (DeepSeek-V3: 61).
pub const MAX_LAYERS: usize = 1 << 12;
/// The most routed or shared experts (DeepSeek-V3: 256).
pub const MAX_EXPERTS: usize = 1 << 16;
/// The longest context, `max_position_embeddings` and RoPE's original context (DeepSeek-V3: 163,840).
pub const MAX_CONTEXT: usize = 1 << 26;
/// The most elements of one weight matrix, such that its f32 copy fits an allocation.
pub const MAX_MATRIX_ELEMENTS: usize = isize::MAX as usize / std::mem::size_of::<f32>();

/// `a × b`, or an error naming `field` (`what` says which product overflowed).
fn mul(field: &str, what: &str, a: usize, b: usize) -> Result<usize, ModelError> {
    a.checked_mul(b)
        .ok_or_else(|| cfg_err(field, format!("{what} = {a} × {b} overflows")))
}

/// `a + b`, or an error naming `field`.
fn add(field: &str, what: &str, a: usize, b: usize) -> Result<usize, ModelError> {
    a.checked_add(b)
        .ok_or_else(|| cfg_err(field, format!("{what} = {a} + {b} overflows")))
}

/// `Ok` when `1 ≤ v ≤ max`, else an error naming `field`.
pub(super) fn in_range(field: &str, v: usize, max: usize) -> Result<(), ModelError> {
    match v {
        0 => Err(cfg_err(field, "must be greater than 0")),
        v if v > max => Err(cfg_err(field, format!("must be at most {max}, found {v}"))),
        _ => Ok(()),
    }
}

/// `Ok` when the `[rows, cols]` matrix `what` has at most [`MAX_MATRIX_ELEMENTS`] elements.
fn matrix(field: &str, what: &str, rows: usize, cols: usize) -> Result<(), ModelError> {
    match mul(field, what, rows, cols)? {
        n if n > MAX_MATRIX_ELEMENTS => Err(cfg_err(
            field,
            format!("{what} has {n} elements, more than {MAX_MATRIX_ELEMENTS}"),
        )),
        _ => Ok(()),
    }
}

impl MlaConfig {
    /// `qk_nope_head_dim + qk_rope_head_dim`: one query/key head (192 at V3 sizes).
    pub fn qk_head_dim(&self) -> Result<usize, ModelError> {
        add(
            "qk_nope_head_dim",
            "qk_nope_head_dim + qk_rope_head_dim",
            self.qk_nope_head_dim,
            self.qk_rope_head_dim,
        )
    }

    /// `kv_lora_rank + qk_rope_head_dim`: the cached row (576 at V3 sizes), and `kv_a`'s rows.
    pub fn latent_dim(&self) -> Result<usize, ModelError> {
        add(
            "kv_lora_rank",
            "kv_lora_rank + qk_rope_head_dim",
            self.kv_lora_rank,
            self.qk_rope_head_dim,
        )
    }

    /// Values cached per token per layer: the latent and rope key ([`MlaConfig::latent_dim`])
    /// plus, with an indexer, its key (`index_head_dim`): 576 at V3 sizes, 704 at V3.2's.
    pub fn cache_row(&self) -> Result<usize, ModelError> {
        let index_key = self.indexer.as_ref().map_or(0, |ix| ix.index_head_dim);
        add(
            "index_head_dim",
            "kv_lora_rank + qk_rope_head_dim + index_head_dim",
            self.latent_dim()?,
            index_key,
        )
    }

    /// Rows of `kv_b_proj` for `heads` heads: `heads × (qk_nope_head_dim + v_head_dim)`.
    pub fn kv_b_rows(&self, heads: usize) -> Result<usize, ModelError> {
        let per_head = add(
            "v_head_dim",
            "qk_nope_head_dim + v_head_dim",
            self.qk_nope_head_dim,
            self.v_head_dim,
        )?;
        mul(
            "num_attention_heads",
            "num_attention_heads × (qk_nope_head_dim + v_head_dim)",
            heads,
            per_head,
        )
    }

    /// Rows of W_UK transposed per head: `heads × kv_lora_rank`.
    pub fn uk_t_rows(&self, heads: usize) -> Result<usize, ModelError> {
        mul(
            "kv_lora_rank",
            "num_attention_heads × kv_lora_rank",
            heads,
            self.kv_lora_rank,
        )
    }
}

impl IndexerConfig {
    /// Rows of the indexer's `wq_b`: `index_n_heads × index_head_dim`.
    pub fn q_rows(&self) -> Result<usize, ModelError> {
        mul(
            "index_n_heads",
            "index_n_heads × index_head_dim",
            self.index_n_heads,
            self.index_head_dim,
        )
    }
}

impl MoeConfig {
    /// Width of the shared experts' one MLP: `n_shared_experts × moe_intermediate_size` (0:
    /// none).
    pub fn shared_width(&self) -> Result<usize, ModelError> {
        mul(
            "n_shared_experts",
            "n_shared_experts × moe_intermediate_size",
            self.n_shared_experts,
            self.moe_intermediate_size,
        )
    }
}

impl GqaConfig {
    /// Rows of `k_proj` and `v_proj`: `num_key_value_heads × head_dim`.
    pub fn kv_rows(&self) -> Result<usize, ModelError> {
        mul(
            "num_key_value_heads",
            "num_key_value_heads × head_dim",
            self.num_key_value_heads,
            self.head_dim,
        )
    }
}

impl Config {
    /// Every count and width within `1..=` its bound (see the `MAX_*` constants).
    pub(super) fn check_bounds(&self) -> Result<(), ModelError> {
        let mut fields = vec![
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("hidden_size", self.hidden_size, MAX_DIM),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, MAX_HEADS),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                MAX_CONTEXT,
            ),
        ];
        // The dense MLP's width matters where some layer has one.
        if self.moe_layer_count() < self.num_hidden_layers {
            fields.push(("intermediate_size", self.intermediate_size, MAX_DIM));
        }
        if self.num_nextn_predict_layers > 0 {
            let n = self.num_nextn_predict_layers;
            fields.push(("num_nextn_predict_layers", n, MAX_LAYERS));
        }
        if let Some([r, c]) = self.fp8_block {
            fields.push(("quantization_config.weight_block_size", r, MAX_DIM));
            fields.push(("quantization_config.weight_block_size", c, MAX_DIM));
        }
        let original = match &self.rope_scaling {
            Some(super::RopeScaling::Yarn(y)) => Some(y.original_max_position_embeddings),
            Some(super::RopeScaling::Llama3(l)) => Some(l.original_max_position_embeddings),
            _ => None,
        };
        if let Some(o) = original {
            fields.push((
                "rope_scaling.original_max_position_embeddings",
                o,
                MAX_CONTEXT,
            ));
        }
        match &self.attention {
            Attention::Mla(m) => {
                if let Some(q) = m.q_lora_rank {
                    fields.push(("q_lora_rank", q, MAX_DIM));
                }
                fields.extend([
                    ("kv_lora_rank", m.kv_lora_rank, MAX_DIM),
                    ("qk_nope_head_dim", m.qk_nope_head_dim, MAX_DIM),
                    ("qk_rope_head_dim", m.qk_rope_head_dim, MAX_DIM),
                    ("v_head_dim", m.v_head_dim, MAX_DIM),
                ]);
                if let Some(ix) = &m.indexer {
                    fields.extend([
                        ("index_topk", ix.index_topk, MAX_CONTEXT),
                        ("index_n_heads", ix.index_n_heads, MAX_HEADS),
                        ("index_head_dim", ix.index_head_dim, MAX_DIM),
                    ]);
                }
            }
            Attention::Gqa(g) => fields.extend([
                ("num_key_value_heads", g.num_key_value_heads, MAX_HEADS),
                ("head_dim", g.head_dim, MAX_DIM),
            ]),
            // Bounded with the rest of the V4 part (`validate_v4`).
            Attention::V4(_) => {}
        }
        if let Some(m) = &self.moe {
            fields.extend([
                ("n_routed_experts", m.n_routed_experts, MAX_EXPERTS),
                ("moe_intermediate_size", m.moe_intermediate_size, MAX_DIM),
            ]);
            if m.n_shared_experts > 0 {
                fields.push(("n_shared_experts", m.n_shared_experts, MAX_EXPERTS));
            }
        }
        fields
            .into_iter()
            .try_for_each(|(name, v, max)| in_range(name, v, max))
    }

    /// Every derived size and every matrix shape the weights will request, computed (an
    /// overflow or an over-large matrix is an error naming the field).
    pub(super) fn check_sizes(&self) -> Result<(), ModelError> {
        let d = self.hidden_size;
        let mut shapes = vec![
            ("vocab_size", "embed_tokens", self.vocab_size, d),
            ("intermediate_size", "the MLP", self.intermediate_size, d),
            ("num_attention_heads", "q_proj", self.q_rows()?, d),
            ("num_attention_heads", "o_proj", d, self.o_cols()?),
        ];
        match &self.attention {
            Attention::Mla(m) => {
                let h = self.num_attention_heads;
                let rank = m.kv_lora_rank;
                if let Some(q) = m.q_lora_rank {
                    shapes.push(("q_lora_rank", "q_b_proj", self.q_rows()?, q));
                }
                shapes.extend([
                    ("kv_lora_rank", "kv_a_proj_with_mqa", m.latent_dim()?, d),
                    ("num_attention_heads", "kv_b_proj", m.kv_b_rows(h)?, rank),
                    ("kv_lora_rank", "W_UK", m.uk_t_rows(h)?, m.qk_nope_head_dim),
                    ("num_attention_heads", "W_UV", self.o_cols()?, rank),
                ]);
                if let (Some(ix), Some(q)) = (&m.indexer, m.q_lora_rank) {
                    shapes.extend([
                        ("index_n_heads", "indexer.wq_b", ix.q_rows()?, q),
                        ("index_head_dim", "indexer.wk", ix.index_head_dim, d),
                        ("index_n_heads", "indexer.weights_proj", ix.index_n_heads, d),
                    ]);
                }
            }
            Attention::Gqa(g) => shapes.push(("num_key_value_heads", "k_proj", g.kv_rows()?, d)),
            // Checked with the rest of the V4 part (`validate_v4`).
            Attention::V4(_) => {}
        }
        if let Some(m) = &self.moe {
            let (w, shared) = (m.moe_intermediate_size, m.shared_width()?);
            shapes.extend([
                ("n_routed_experts", "the router", m.n_routed_experts, d),
                ("moe_intermediate_size", "an expert", w, d),
                ("n_shared_experts", "the shared experts", shared, d),
            ]);
        }
        for (field, what, rows, cols) in shapes {
            matrix(field, what, rows, cols)?;
        }
        self.kv_bytes_per_token(KvType::F32)?;
        self.kv_b_f32_bytes()?;
        self.softmax_scale()?;
        self.parameter_counts()?;
        Ok(())
    }

    /// One query/key head: `qk_nope_head_dim + qk_rope_head_dim` (MLA), `head_dim` (GQA, V4).
    pub fn qk_head_dim(&self) -> Result<usize, ModelError> {
        match &self.attention {
            Attention::Mla(m) => m.qk_head_dim(),
            Attention::Gqa(g) => Ok(g.head_dim),
            Attention::V4(v) => Ok(v.head_dim),
        }
    }

    /// Rows of the query projection (`q_proj` or `q_b_proj`): `num_attention_heads × qk_head_dim`.
    pub fn q_rows(&self) -> Result<usize, ModelError> {
        mul(
            "num_attention_heads",
            "num_attention_heads × qk_head_dim",
            self.num_attention_heads,
            self.qk_head_dim()?,
        )
    }

    /// Columns of `o_proj`, the heads' concatenated outputs: `num_attention_heads × v_head_dim`
    /// (MLA) or `num_attention_heads × head_dim` (GQA; V4, the grouped projection's input).
    pub fn o_cols(&self) -> Result<usize, ModelError> {
        let v = match &self.attention {
            Attention::Mla(m) => m.v_head_dim,
            Attention::Gqa(g) => g.head_dim,
            Attention::V4(v) => v.head_dim,
        };
        mul(
            "num_attention_heads",
            "num_attention_heads × v_head_dim",
            self.num_attention_heads,
            v,
        )
    }

    /// Values cached per token per layer. MLA: the normalized latent plus the rope key (576 at
    /// V3 sizes), plus the indexer key with DSA ([`MlaConfig::cache_row`]). GQA: the post-RoPE keys then the values of every KV head
    /// (`2 · num_key_value_heads · head_dim`). V4: the widest layer's row (its layers differ;
    /// [`Config::cache_widths`] lists them).
    pub fn latent_dim(&self) -> Result<usize, ModelError> {
        match &self.attention {
            Attention::Mla(m) => m.cache_row(),
            Attention::Gqa(g) => mul("num_key_value_heads", "2 × k_proj rows", 2, g.kv_rows()?),
            Attention::V4(v) => v
                .layers
                .iter()
                .try_fold(0, |w, l| Ok(w.max(v.cache_row(l.kind)?))),
        }
    }

    /// Cache values one token occupies across all layers (`num_hidden_layers · latent_dim`;
    /// V4: the sum of its layers' rows).
    pub fn kv_values_per_token(&self) -> Result<usize, ModelError> {
        if let Some(v) = self.v4() {
            return v.layers.iter().try_fold(0usize, |acc, l| {
                acc.checked_add(v.cache_row(l.kind)?)
                    .ok_or_else(|| cfg_err("num_hidden_layers", "cache values per token overflow"))
            });
        }
        mul(
            "num_hidden_layers",
            "num_hidden_layers × latent_dim",
            self.num_hidden_layers,
            self.latent_dim()?,
        )
    }

    /// Cache bytes one token occupies across all layers with values of `kv`.
    pub fn kv_bytes_per_token(&self, kv: KvType) -> Result<usize, ModelError> {
        let values = self.kv_values_per_token()?;
        let bytes = match kv {
            // Each layer's row padded to whole 32-value blocks (`KvPool`).
            KvType::Q8_0 => self.cache_widths()?.iter().try_fold(0usize, |acc, &w| {
                kv.bytes(w).and_then(|b| acc.checked_add(b))
            }),
            _ => kv.bytes(values),
        };
        bytes.ok_or_else(|| ModelError::Config {
            field: "num_hidden_layers".into(),
            msg: format!("cache bytes per token of {values} values overflow"),
        })
    }

    /// Bytes of the f32 `kv_b_proj` copies an MLA model keeps beside its mapped weights (one
    /// `[heads·(nope + v), kv_lora_rank]` matrix per layer); 0 for GQA models.
    pub fn kv_b_f32_bytes(&self) -> Result<usize, ModelError> {
        let Some(m) = self.mla() else {
            return Ok(0);
        };
        let what = "f32 kv_b_proj bytes";
        let per_layer = mul(
            "kv_lora_rank",
            what,
            m.kv_b_rows(self.num_attention_heads)?,
            m.kv_lora_rank,
        )?;
        let all = mul("num_hidden_layers", what, self.num_hidden_layers, per_layer)?;
        mul("num_hidden_layers", what, all, std::mem::size_of::<f32>())
    }

    /// `qk_head_dim^-0.5`, times `get_mscale(factor, mscale_all_dim)²` under YaRN;
    /// `head_dim^-0.5` for GQA models.
    pub fn softmax_scale(&self) -> Result<f32, ModelError> {
        let mut s = 1.0 / (self.qk_head_dim()? as f64).sqrt();
        // V4 (`head_dim^-0.5`) takes no YaRN factor.
        if let (Some(y), Some(_)) = (self.yarn(), self.mla()) {
            // DeepSeek's definition: only a non-zero mscale_all_dim enters the softmax scale.
            if y.mscale_all_dim != 0.0 {
                let m = yarn_get_mscale(y.factor, y.mscale_all_dim);
                s *= m * m;
            }
        }
        Ok(s as f32)
    }

    /// Parameters: (total, active per token), counting embeddings and the output head.
    pub fn parameter_counts(&self) -> Result<(u64, u64), ModelError> {
        // Checked u64 arithmetic, blaming `field` for an overflow.
        let m = |field: &str, a: u64, b: u64| {
            a.checked_mul(b)
                .ok_or_else(|| cfg_err(field, "the parameter count overflows"))
        };
        let s = |field: &str, terms: &[u64]| {
            terms.iter().try_fold(0u64, |acc, &t| {
                acc.checked_add(t)
                    .ok_or_else(|| cfg_err(field, "the parameter count overflows"))
            })
        };
        let n = |v: usize| v as u64;
        let d = n(self.hidden_size);
        let h = "num_attention_heads";
        let attn = match &self.attention {
            Attention::Mla(a) => {
                let r = n(a.kv_lora_rank);
                let q_rows = n(self.q_rows()?);
                let q_proj = match a.q_lora_rank.map(n) {
                    Some(q) => s(h, &[m(h, d, q)?, q, m(h, q, q_rows)?])?,
                    None => m(h, d, q_rows)?,
                };
                let kv_a = m(h, d, n(a.latent_dim()?))?;
                let kv_b = m(h, r, n(a.kv_b_rows(self.num_attention_heads)?))?;
                let o = m(h, n(self.o_cols()?), d)?;
                // wq_b, wk, k_norm's weight and bias, weights_proj.
                let indexer = match (&a.indexer, a.q_lora_rank.map(n)) {
                    (Some(ix), Some(q)) => {
                        let (i, w) = ("index_n_heads", n(ix.index_head_dim));
                        let proj = m(i, n(ix.index_n_heads), d)?;
                        s(
                            i,
                            &[m(i, n(ix.q_rows()?), q)?, m(i, w, d)?, m(i, 2, w)?, proj],
                        )?
                    }
                    _ => 0,
                };
                s(h, &[q_proj, kv_a, r, kv_b, o, m(h, 2, d)?, indexer])?
            }
            Attention::Gqa(g) => {
                let q = n(self.q_rows()?);
                let kv = m(h, 2, n(g.kv_rows()?))?;
                let bias = if g.qkv_bias { s(h, &[q, kv])? } else { 0 };
                let bias = s(h, &[bias, if g.o_bias { d } else { 0 }])?;
                s(
                    h,
                    &[m(h, d, s(h, &[q, kv])?)?, m(h, q, d)?, bias, m(h, 2, d)?],
                )?
            }
            // Counted over all layers below (their kinds differ).
            Attention::V4(_) => 0,
        };
        let mlp = |field: &str, width: u64| m(field, m(field, 3, d)?, width);
        let dense = mlp("intermediate_size", n(self.intermediate_size))?;
        let (moe_total, moe_active) = match &self.moe {
            Some(moe) => {
                let f = "n_routed_experts";
                let (e, w) = (n(moe.n_routed_experts), n(moe.moe_intermediate_size));
                let shared = mlp(f, n(moe.shared_width()?))?;
                let router = m(f, e, d)?;
                let routed = m(f, e, mlp(f, w)?)?;
                let chosen = m(f, n(moe.num_experts_per_tok), mlp(f, w)?)?;
                (
                    s(f, &[router, routed, shared])?,
                    s(f, &[router, chosen, shared])?,
                )
            }
            None => (0, 0),
        };
        let l = "num_hidden_layers";
        let moe_layers = n(self.moe_layer_count());
        let dense_layers = n(self.num_hidden_layers) - moe_layers;
        let layers = match self.v4() {
            Some(v) => self.v4_attention_parameters(v)?,
            None => m(l, n(self.num_hidden_layers), attn)?,
        };
        let dense = m(l, dense_layers, dense)?;
        let total = s(l, &[layers, dense, m(l, moe_layers, moe_total)?])?;
        let active = s(l, &[layers, dense, m(l, moe_layers, moe_active)?])?;
        let emb = m("vocab_size", n(self.vocab_size), d)?;
        let head = if self.tie_word_embeddings { 0 } else { emb };
        Ok((
            s("vocab_size", &[total, emb, head, d])?,
            s("vocab_size", &[active, emb, head, d])?,
        ))
    }
}
