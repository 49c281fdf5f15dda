//! The model configuration: a common part plus one part per family, read from an HF
//! `config.json` (either the official spelling or the transformers-5 spelling), validated, with
//! derived sizes as checked methods.
//!
//! Three architecture families share the common part ([`Config`]): DeepSeek MLA + MoE
//! (`deepseek_v2`, `deepseek_v3`, `deepseek_v32`: [`Attention::Mla`], usually with a
//! [`MoeConfig`]; V3.2 adds an [`IndexerConfig`]), DeepSeek-V4 (`deepseek_v4`:
//! [`Attention::V4`], see `v4.rs`) and the dense
//! GQA decoders of the R1 distills (`qwen2`, `llama`: [`Attention::Gqa`], no MoE). Reading
//! `config.json` is `hf.rs` (V4's keys `hf/v4.rs`); the bounds and derived sizes are `sizes.rs`;
//! this file holds the types and the validation.

mod hf;
mod sizes;
mod v4;

use serde::Deserialize;

use crate::error::ModelError;

pub use sizes::{
    MAX_CONTEXT, MAX_DIM, MAX_EXPERTS, MAX_HEADS, MAX_LAYERS, MAX_MATRIX_ELEMENTS, MAX_VOCAB,
};
pub use v4::{HyperConfig, V4Config, V4Layer, V4LayerKind, MAX_HC_MULT, MAX_SINKHORN_ITERS};

/// A config error naming `field`.
pub(crate) fn cfg_err(field: &str, msg: impl Into<String>) -> ModelError {
    ModelError::Config {
        field: field.to_string(),
        msg: msg.into(),
    }
}

/// Which published model definition a checkpoint follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelType {
    /// DeepSeek-V2 / V2-Lite: MLA, MoE routed by softmax scores.
    DeepseekV2,
    /// DeepSeek-V3 / R1: MLA, MoE routed by sigmoid scores with a correction bias.
    DeepseekV3,
    /// DeepSeek-V3.2: V3 plus DeepSeek Sparse Attention (a lightning indexer picks the keys
    /// each query attends to).
    DeepseekV32,
    /// DeepSeek-V4: sliding-window attention with compressed branches (CSA, HCA), mHC
    /// hyper-connections, √softplus and hash routing.
    DeepseekV4,
    /// Qwen2 (R1-Distill-Qwen): GQA with q/k/v biases.
    Qwen2,
    /// Llama (R1-Distill-Llama): GQA, optional attention biases, Llama-3 RoPE scaling.
    Llama,
}

impl ModelType {
    /// The `model_type` string of `config.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::DeepseekV2 => "deepseek_v2",
            ModelType::DeepseekV3 => "deepseek_v3",
            ModelType::DeepseekV32 => "deepseek_v32",
            ModelType::DeepseekV4 => "deepseek_v4",
            ModelType::Qwen2 => "qwen2",
            ModelType::Llama => "llama",
        }
    }

    /// Whether the model uses multi-head latent attention (the DeepSeek family); otherwise it
    /// is a dense grouped-query-attention decoder.
    pub fn is_mla(self) -> bool {
        matches!(
            self,
            ModelType::DeepseekV2 | ModelType::DeepseekV3 | ModelType::DeepseekV32
        )
    }

    /// Whether routing follows DeepSeek-V3 (noaux_tc over sigmoid scores by default, weights
    /// normalized then scaled, a correction bias in every MoE layer): V3 and V3.2.
    pub fn routes_like_v3(self) -> bool {
        matches!(self, ModelType::DeepseekV3 | ModelType::DeepseekV32)
    }
}

/// How routed experts are selected (`topk_method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopkMethod {
    /// Top-k over all experts (V2-Lite).
    Greedy,
    /// Keep the `topk_group` groups with the highest max score, then top-k (V2).
    GroupLimitedGreedy,
    /// Sigmoid scores plus a selection-only correction bias; groups ranked by their top-2 sum (V3).
    NoauxTc,
}

/// How router logits become scores (`scoring_func`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoringFunc {
    Softmax,
    Sigmoid,
    /// `sqrt(softplus(logit))` (DeepSeek-V4).
    Sqrtsoftplus,
}

/// How the chosen experts' scores become their weights (the published definitions differ; set
/// by the model type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteWeighting {
    /// DeepSeek-V2: normalized when `norm_topk_prob` and k > 1, otherwise scaled by
    /// `routed_scaling_factor`.
    NormalizeOrScale,
    /// DeepSeek-V3: normalized when `norm_topk_prob`, then always scaled.
    NormalizeThenScale,
}

/// YaRN parameters (`rope_scaling` with type `yarn`), applied at every position.
#[derive(Clone, Debug, PartialEq)]
pub struct Yarn {
    pub factor: f64,
    pub original_max_position_embeddings: usize,
    pub beta_fast: f64,
    pub beta_slow: f64,
    /// `mscale` (default 1) — numerator of the cos/sin amplitude.
    pub mscale: f64,
    /// `mscale_all_dim` (default 0) — denominator of the amplitude, and squared into the softmax scale.
    pub mscale_all_dim: f64,
    /// An explicit `attention_factor` overrides the amplitude.
    pub attention_factor: Option<f64>,
}

/// Llama-3 RoPE scaling (`rope_type: llama3`): frequencies whose wavelength exceeds
/// `original_max_position_embeddings / low_freq_factor` are divided by `factor`, those shorter
/// than `original / high_freq_factor` are kept, and the band between is blended smoothly.
#[derive(Clone, Debug, PartialEq)]
pub struct Llama3Rope {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// How RoPE frequencies are rescaled for long contexts.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// DeepSeek's YaRN (MLA models).
    Yarn(Yarn),
    /// Llama 3.1's frequency-dependent rescaling (dense models).
    Llama3(Llama3Rope),
    /// Every frequency divided by `factor` (`rope_type: linear`; dense models).
    Linear { factor: f64 },
    /// One divisor per rotated pair: what a GGUF file stores for Llama-3 scaling
    /// (`rope_freqs.weight`, `[head_dim / 2]`); dense models.
    FreqFactors(Vec<f32>),
}

/// Sliding-window attention of Qwen2 (`use_sliding_window`): layer `l` attends to the last
/// `size` tokens (itself included) when `layers[l]`.
#[derive(Clone, Debug, PartialEq)]
pub struct SlidingWindow {
    pub size: usize,
    pub layers: Vec<bool>,
}

/// Multi-head latent attention sizes (DeepSeek).
#[derive(Clone, Debug, PartialEq)]
pub struct MlaConfig {
    /// `None` when queries come from one `q_proj` (V2-Lite; written null or 0).
    pub q_lora_rank: Option<usize>,
    /// Width of the compressed key/value latent (the cached part besides the rope key).
    pub kv_lora_rank: usize,
    /// Per-head query/key width without RoPE.
    pub qk_nope_head_dim: usize,
    /// Per-head query/key width with RoPE (one rope key shared by all heads).
    pub qk_rope_head_dim: usize,
    /// Per-head value width.
    pub v_head_dim: usize,
    /// DeepSeek Sparse Attention's lightning indexer (V3.2); `None`: every query attends to
    /// all its causal keys.
    pub indexer: Option<IndexerConfig>,
}

/// The lightning indexer of DeepSeek-V3.2 (`index_*` in `config.json`): per layer it scores
/// every causal key for each query and keeps the best `index_topk`; MLA attends to those only.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexerConfig {
    /// Keys each query keeps (`index_topk`; 2048 in the release).
    pub index_topk: usize,
    /// Indexer query heads (`index_n_heads`; 64).
    pub index_n_heads: usize,
    /// Width of an indexer head and of the one indexer key cached per token
    /// (`index_head_dim`; 128). Its leading `qk_rope_head_dim` dims carry RoPE.
    pub index_head_dim: usize,
}

/// Grouped-query attention sizes and options (Qwen2, Llama).
#[derive(Clone, Debug, PartialEq)]
pub struct GqaConfig {
    /// Key/value heads; each serves `num_attention_heads / num_key_value_heads` query heads.
    pub num_key_value_heads: usize,
    /// The size of one query/key/value head (`head_dim`, or `hidden_size / num_attention_heads`).
    pub head_dim: usize,
    /// `q_proj`, `k_proj`, `v_proj` have biases (Qwen2 always; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// `o_proj` has a bias (Llama with `attention_bias`).
    pub o_bias: bool,
    /// Qwen2's sliding window, when enabled for some layer.
    pub sliding_window: Option<SlidingWindow>,
}

/// A layer's attention, by family. (Room for more kinds: a new variant, a new `Attend` impl.)
#[derive(Clone, Debug, PartialEq)]
pub enum Attention {
    /// DeepSeek's multi-head latent attention.
    Mla(MlaConfig),
    /// Grouped-query attention of the dense decoders.
    Gqa(GqaConfig),
    /// DeepSeek-V4's sliding-window + compressed attention, with its block structure
    /// (hyper-connections, hash-routed layers).
    V4(V4Config),
}

/// Routed experts (DeepSeekMoE): which layers have them and how tokens are routed.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    pub n_routed_experts: usize,
    /// Shared experts, run on every token as one MLP `moe_intermediate_size · n` wide.
    pub n_shared_experts: usize,
    pub num_experts_per_tok: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub topk_method: TopkMethod,
    pub scoring_func: ScoringFunc,
    pub norm_topk_prob: bool,
    pub routed_scaling_factor: f32,
    /// How the chosen experts' weights are formed (V2 or V3 rule).
    pub weighting: RouteWeighting,
    /// Layers before this one have a dense MLP.
    pub first_k_dense_replace: usize,
    /// From `first_k_dense_replace` on, every layer `l` with `l % moe_layer_freq == 0` is MoE.
    pub moe_layer_freq: usize,
    /// Width of one routed expert.
    pub moe_intermediate_size: usize,
    /// DeepSeek-V4's SwiGLU clamp on routed and shared experts: gate ≤ L, |up| ≤ L.
    pub swiglu_limit: Option<f32>,
}

/// The configuration of a DeepSeek MLA + MoE model or of a dense GQA decoder (Qwen2, Llama):
/// the common part, the family's attention and the routed experts if any.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub model_type: ModelType,
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// Width of the dense SwiGLU MLP (of every layer of a dense model, of the dense layers of
    /// an MoE model).
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub tie_word_embeddings: bool,
    /// MTP layers declared by the config (their weights may be absent: then there is no MTP).
    pub num_nextn_predict_layers: usize,
    /// `[rows, cols]` FP8 block size when `quantization_config` declares fp8 weights.
    pub fp8_block: Option<[usize; 2]>,
    /// The family's attention.
    pub attention: Attention,
    /// Routed experts; `None` for a dense model (and a DeepSeek config without experts).
    pub moe: Option<MoeConfig>,
}

/// `get_mscale` of DeepSeek's YaRN: 1 for s ≤ 1, else 0.1·m·ln(s) + 1.
pub fn yarn_get_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

/// `Ok` when `v` is finite and positive, else an error naming `field`.
pub(crate) fn positive(field: &str, v: f64) -> Result<(), ModelError> {
    if v > 0.0 && v.is_finite() {
        Ok(())
    } else {
        Err(cfg_err(
            field,
            format!("must be a positive number, found {v}"),
        ))
    }
}

impl Config {
    /// The MLA sizes, for a DeepSeek model.
    pub fn mla(&self) -> Option<&MlaConfig> {
        match &self.attention {
            Attention::Mla(m) => Some(m),
            _ => None,
        }
    }

    /// The GQA sizes and options, for a dense model.
    pub fn gqa(&self) -> Option<&GqaConfig> {
        match &self.attention {
            Attention::Gqa(g) => Some(g),
            _ => None,
        }
    }

    /// [`Config::gqa`], mutable (a GGUF file states its biases by the tensors it holds).
    pub fn gqa_mut(&mut self) -> Option<&mut GqaConfig> {
        match &mut self.attention {
            Attention::Gqa(g) => Some(g),
            _ => None,
        }
    }

    /// DeepSeek's YaRN parameters, when the model uses them.
    pub fn yarn(&self) -> Option<&Yarn> {
        match &self.rope_scaling {
            Some(RopeScaling::Yarn(y)) => Some(y),
            _ => None,
        }
    }

    /// Whether layer `l` has a routed-expert FFN (else a dense SwiGLU).
    pub fn is_moe_layer(&self, l: usize) -> bool {
        self.moe
            .as_ref()
            .is_some_and(|m| l >= m.first_k_dense_replace && l.is_multiple_of(m.moe_layer_freq))
    }

    /// How many layers [`Config::is_moe_layer`] (counted, not iterated).
    pub fn moe_layer_count(&self) -> usize {
        let Some(m) = &self.moe else {
            return 0;
        };
        let (first, layers) = (
            m.first_k_dense_replace.min(self.num_hidden_layers),
            self.num_hidden_layers,
        );
        match m.moe_layer_freq {
            // `is_multiple_of(0)` holds for 0 only.
            0 => usize::from(first == 0 && layers > 0),
            // Multiples of f in first..layers.
            f => layers.div_ceil(f) - first.div_ceil(f),
        }
    }

    /// The sliding window of layer `l`, if it has one (Qwen2 `use_sliding_window`).
    pub fn attention_window(&self, l: usize) -> Option<usize> {
        let w = self.gqa()?.sliding_window.as_ref()?;
        w.layers.get(l).copied().unwrap_or(false).then_some(w.size)
    }

    /// Checks every field against its bounds ([`MAX_DIM`] and the other `MAX_*`), the
    /// relations between fields that the forward pass relies on, and that every derived size
    /// and matrix shape the weights will request is computable; errors name the field.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.check_bounds()?;
        let eps = self.rms_norm_eps;
        if !(eps.is_finite() && eps > 0.0 && eps < 1.0) {
            return Err(cfg_err(
                "rms_norm_eps",
                format!("must be a number in (0, 1), found {eps}"),
            ));
        }
        if !(self.rope_theta > 1.0 && self.rope_theta.is_finite()) {
            return Err(cfg_err("rope_theta", "must be greater than 1"));
        }
        let v4 = self.model_type == ModelType::DeepseekV4;
        if self.model_type.is_mla() != self.mla().is_some() || v4 != self.v4().is_some() {
            return Err(cfg_err(
                "model_type",
                format!(
                    "{} does not go with this attention kind",
                    self.model_type.as_str()
                ),
            ));
        }
        match &self.attention {
            Attention::Mla(m) => self.validate_mla(m)?,
            Attention::Gqa(g) => self.validate_gqa(g)?,
            Attention::V4(v) => self.validate_v4(v)?,
        }
        if let Some(m) = &self.moe {
            validate_moe(m)?;
        }
        self.check_sizes()
    }

    fn validate_mla(&self, m: &MlaConfig) -> Result<(), ModelError> {
        if !m.qk_rope_head_dim.is_multiple_of(2) {
            return Err(cfg_err(
                "qk_rope_head_dim",
                "must be a positive even number",
            ));
        }
        let v32 = self.model_type == ModelType::DeepseekV32;
        match &m.indexer {
            None if v32 => return Err(cfg_err("index_topk", "missing")),
            None => {}
            Some(_) if !v32 => {
                return Err(cfg_err(
                    "index_topk",
                    format!(
                        "{} has no sparse-attention indexer",
                        self.model_type.as_str()
                    ),
                ))
            }
            Some(ix) => validate_indexer(m, ix)?,
        }
        match &self.rope_scaling {
            None => {}
            Some(RopeScaling::Yarn(y)) => positive("rope_scaling.factor", y.factor)?,
            Some(_) => {
                return Err(cfg_err(
                    "rope_scaling.type",
                    "DeepSeek models use yarn scaling (or none)",
                ))
            }
        }
        Ok(())
    }

    fn validate_gqa(&self, g: &GqaConfig) -> Result<(), ModelError> {
        let (h, kv, hd) = (self.num_attention_heads, g.num_key_value_heads, g.head_dim);
        if !h.is_multiple_of(kv) {
            return Err(cfg_err(
                "num_key_value_heads",
                format!("must divide num_attention_heads {h}, found {kv}"),
            ));
        }
        if !hd.is_multiple_of(2) {
            return Err(cfg_err("head_dim", "must be a positive even number"));
        }
        if self.moe.is_some() {
            return Err(cfg_err(
                "n_routed_experts",
                "Qwen2 and Llama models have no routed experts",
            ));
        }
        if let Some(w) = &g.sliding_window {
            if w.size == 0 {
                return Err(cfg_err("sliding_window", "must be greater than 0"));
            }
            if w.layers.len() != self.num_hidden_layers {
                return Err(cfg_err(
                    "layer_types",
                    format!(
                        "{} entries for {} layers",
                        w.layers.len(),
                        self.num_hidden_layers
                    ),
                ));
            }
        }
        match &self.rope_scaling {
            None => {}
            Some(RopeScaling::Llama3(l)) => {
                positive("rope_scaling.factor", l.factor)?;
                positive("rope_scaling.low_freq_factor", l.low_freq_factor)?;
                positive("rope_scaling.high_freq_factor", l.high_freq_factor)?;
                if l.high_freq_factor <= l.low_freq_factor {
                    return Err(cfg_err(
                        "rope_scaling.high_freq_factor",
                        "must be greater than low_freq_factor",
                    ));
                }
            }
            Some(RopeScaling::Linear { factor }) => positive("rope_scaling.factor", *factor)?,
            Some(RopeScaling::FreqFactors(v)) => {
                if v.len() != hd / 2 {
                    return Err(cfg_err(
                        "rope_freqs",
                        format!(
                            "{} factors for head_dim {hd} (expected {})",
                            v.len(),
                            hd / 2
                        ),
                    ));
                }
                if let Some(bad) = v.iter().find(|x| !(**x > 0.0 && x.is_finite())) {
                    return Err(cfg_err(
                        "rope_freqs",
                        format!("factors must be positive, found {bad}"),
                    ));
                }
            }
            Some(RopeScaling::Yarn(_)) => {
                return Err(cfg_err(
                    "rope_scaling.type",
                    "yarn scaling is supported for DeepSeek models only",
                ))
            }
        }
        Ok(())
    }
}

/// The indexer's relations to the attention: it reads the q-LoRA latent, and its heads carry
/// the rope dims in their leading half-split pairs.
fn validate_indexer(m: &MlaConfig, ix: &IndexerConfig) -> Result<(), ModelError> {
    if m.q_lora_rank.is_none() {
        return Err(cfg_err(
            "q_lora_rank",
            "deepseek_v32 needs a q-LoRA latent (its indexer reads it)",
        ));
    }
    let d = ix.index_head_dim;
    if !d.is_multiple_of(2) {
        return Err(cfg_err(
            "index_head_dim",
            format!("must be a positive even number, found {d}"),
        ));
    }
    if m.qk_rope_head_dim > d {
        return Err(cfg_err(
            "index_head_dim",
            format!(
                "must hold the {} rope dims (qk_rope_head_dim), found {d}",
                m.qk_rope_head_dim
            ),
        ));
    }
    Ok(())
}

/// The relations between the routing fields.
fn validate_moe(m: &MoeConfig) -> Result<(), ModelError> {
    let (e, k) = (m.n_routed_experts, m.num_experts_per_tok);
    if k == 0 || k > e {
        return Err(cfg_err(
            "num_experts_per_tok",
            format!("must be in 1..={e}, found {k}"),
        ));
    }
    if m.n_group == 0 || !e.is_multiple_of(m.n_group) {
        return Err(cfg_err(
            "n_group",
            format!("{} does not divide n_routed_experts {e}", m.n_group),
        ));
    }
    if m.topk_group == 0 || m.topk_group > m.n_group {
        return Err(cfg_err(
            "topk_group",
            format!("must be in 1..={}, found {}", m.n_group, m.topk_group),
        ));
    }
    // topk_group ≤ n_group, so this product is at most e.
    if m.topk_method != TopkMethod::Greedy && k > m.topk_group * (e / m.n_group) {
        return Err(cfg_err(
            "num_experts_per_tok",
            format!(
                "{k} is more than the experts in topk_group={} groups",
                m.topk_group
            ),
        ));
    }
    if m.topk_method == TopkMethod::NoauxTc && e / m.n_group < 2 {
        return Err(cfg_err(
            "n_group",
            "noaux_tc needs at least 2 experts per group",
        ));
    }
    if m.moe_layer_freq == 0 {
        return Err(cfg_err("moe_layer_freq", "must be greater than 0"));
    }
    if !m.routed_scaling_factor.is_finite() {
        return Err(cfg_err(
            "routed_scaling_factor",
            format!("must be a finite number, found {}", m.routed_scaling_factor),
        ));
    }
    Ok(())
}
