//! The model configuration: one typed struct read from an HF `config.json` (either the official
//! spelling or the transformers-5 spelling), validated, with derived sizes as methods.
//!
//! Two architecture families share it: DeepSeek MLA + MoE (`deepseek_v2`, `deepseek_v3`) and the
//! dense GQA decoders of the R1 distills (`qwen2`, `llama`). Fields of the other family are zero
//! (or `None`/`false`) and unused. Reading `config.json` is `hf.rs`; this file holds the types,
//! the validation and the derived sizes.

mod hf;

use crate::error::ModelError;

use hf::cfg_err;

/// Which published model definition a checkpoint follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelType {
    DeepseekV2,
    DeepseekV3,
    /// Qwen2 (R1-Distill-Qwen): GQA with q/k/v biases.
    Qwen2,
    /// Llama (R1-Distill-Llama): GQA, optional attention biases, Llama-3 RoPE scaling.
    Llama,
}

impl ModelType {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::DeepseekV2 => "deepseek_v2",
            ModelType::DeepseekV3 => "deepseek_v3",
            ModelType::Qwen2 => "qwen2",
            ModelType::Llama => "llama",
        }
    }

    /// Whether the model uses multi-head latent attention (the DeepSeek family); otherwise it
    /// is a dense grouped-query-attention decoder.
    pub fn is_mla(self) -> bool {
        matches!(self, ModelType::DeepseekV2 | ModelType::DeepseekV3)
    }
}

/// How routed experts are selected (`topk_method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopkMethod {
    /// Top-k over all experts (V2-Lite).
    Greedy,
    /// Keep the `topk_group` groups with the highest max score, then top-k (V2).
    GroupLimitedGreedy,
    /// Sigmoid scores plus a selection-only correction bias; groups ranked by their top-2 sum (V3).
    NoauxTc,
}

/// How router logits become scores (`scoring_func`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScoringFunc {
    Softmax,
    Sigmoid,
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

/// The configuration of a DeepSeek MLA + MoE model or of a dense GQA decoder (Qwen2, Llama).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub model_type: ModelType,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub moe_intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Dense models: key/value heads (each serves `num_attention_heads / num_key_value_heads`
    /// query heads). MLA models: as written, unused.
    pub num_key_value_heads: usize,
    /// Dense models: the size of one query/key/value head (`head_dim`, or
    /// `hidden_size / num_attention_heads`). 0 for MLA models.
    pub head_dim: usize,
    /// Dense models: `q_proj`, `k_proj`, `v_proj` have biases (Qwen2 always; Llama with
    /// `attention_bias`).
    pub qkv_bias: bool,
    /// Dense models: `o_proj` has a bias (Llama with `attention_bias`).
    pub o_bias: bool,
    /// Dense models: Qwen2's sliding window, when enabled for some layer.
    pub sliding_window: Option<SlidingWindow>,
    /// `None` when queries come from one `q_proj` (V2-Lite; written null or 0).
    pub q_lora_rank: Option<usize>,
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
    /// `None` for a dense model.
    pub n_routed_experts: Option<usize>,
    pub n_shared_experts: usize,
    pub num_experts_per_tok: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub topk_method: TopkMethod,
    pub scoring_func: ScoringFunc,
    pub norm_topk_prob: bool,
    pub routed_scaling_factor: f32,
    pub first_k_dense_replace: usize,
    pub moe_layer_freq: usize,
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
}

pub fn yarn_get_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

impl Config {
    /// Checks the relations between fields that the forward pass relies on.
    pub fn validate(&self) -> Result<(), ModelError> {
        let common = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, v) in common {
            if v == 0 {
                return Err(cfg_err(name, "must be greater than 0"));
            }
        }
        if self.rope_theta <= 1.0 {
            return Err(cfg_err("rope_theta", "must be greater than 1"));
        }
        if self.model_type.is_mla() {
            self.validate_mla()
        } else {
            self.validate_dense()
        }
    }

    fn validate_mla(&self) -> Result<(), ModelError> {
        let nonzero = [
            ("kv_lora_rank", self.kv_lora_rank),
            ("qk_nope_head_dim", self.qk_nope_head_dim),
            ("v_head_dim", self.v_head_dim),
            ("moe_layer_freq", self.moe_layer_freq),
        ];
        for (name, v) in nonzero {
            if v == 0 {
                return Err(cfg_err(name, "must be greater than 0"));
            }
        }
        if self.qk_rope_head_dim == 0 || !self.qk_rope_head_dim.is_multiple_of(2) {
            return Err(cfg_err(
                "qk_rope_head_dim",
                "must be a positive even number",
            ));
        }
        if let Some(e) = self.n_routed_experts {
            let k = self.num_experts_per_tok;
            if k == 0 || k > e {
                return Err(cfg_err(
                    "num_experts_per_tok",
                    format!("must be in 1..={e}, found {k}"),
                ));
            }
            if self.n_group == 0 || e % self.n_group != 0 {
                return Err(cfg_err(
                    "n_group",
                    format!("{} does not divide n_routed_experts {e}", self.n_group),
                ));
            }
            if self.topk_group == 0 || self.topk_group > self.n_group {
                return Err(cfg_err(
                    "topk_group",
                    format!("must be in 1..={}, found {}", self.n_group, self.topk_group),
                ));
            }
            if self.topk_method != TopkMethod::Greedy && k > self.topk_group * (e / self.n_group) {
                return Err(cfg_err(
                    "num_experts_per_tok",
                    format!(
                        "{k} is more than the experts in topk_group={} groups",
                        self.topk_group
                    ),
                ));
            }
            if self.topk_method == TopkMethod::NoauxTc && e / self.n_group < 2 {
                return Err(cfg_err(
                    "n_group",
                    "noaux_tc needs at least 2 experts per group",
                ));
            }
            if self.moe_intermediate_size == 0 {
                return Err(cfg_err("moe_intermediate_size", "must be greater than 0"));
            }
        }
        match &self.rope_scaling {
            None => {}
            Some(RopeScaling::Yarn(y)) => {
                if y.factor <= 0.0 {
                    return Err(cfg_err("rope_scaling.factor", "must be positive"));
                }
                if y.original_max_position_embeddings == 0 {
                    return Err(cfg_err(
                        "rope_scaling.original_max_position_embeddings",
                        "must be positive",
                    ));
                }
            }
            Some(_) => {
                return Err(cfg_err(
                    "rope_scaling.type",
                    "DeepSeek models use yarn scaling (or none)",
                ))
            }
        }
        Ok(())
    }

    fn validate_dense(&self) -> Result<(), ModelError> {
        let (h, kv, hd) = (
            self.num_attention_heads,
            self.num_key_value_heads,
            self.head_dim,
        );
        if kv == 0 || !h.is_multiple_of(kv) {
            return Err(cfg_err(
                "num_key_value_heads",
                format!("must divide num_attention_heads {h}, found {kv}"),
            ));
        }
        if hd == 0 || !hd.is_multiple_of(2) {
            return Err(cfg_err("head_dim", "must be a positive even number"));
        }
        if self.intermediate_size == 0 {
            return Err(cfg_err("intermediate_size", "must be greater than 0"));
        }
        if self.n_routed_experts.is_some() {
            return Err(cfg_err(
                "n_routed_experts",
                "Qwen2 and Llama models have no routed experts",
            ));
        }
        if let Some(w) = &self.sliding_window {
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
        let positive = |name: &str, v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(cfg_err(
                    name,
                    format!("must be a positive number, found {v}"),
                ))
            }
        };
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
                if l.original_max_position_embeddings == 0 {
                    return Err(cfg_err(
                        "rope_scaling.original_max_position_embeddings",
                        "must be positive",
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

    /// DeepSeek's YaRN parameters, when the model uses them.
    pub fn yarn(&self) -> Option<&Yarn> {
        match &self.rope_scaling {
            Some(RopeScaling::Yarn(y)) => Some(y),
            _ => None,
        }
    }

    /// `qk_nope_head_dim + qk_rope_head_dim` (192 at V3 sizes); `head_dim` for dense models.
    pub fn qk_head_dim(&self) -> usize {
        if self.model_type.is_mla() {
            self.qk_nope_head_dim + self.qk_rope_head_dim
        } else {
            self.head_dim
        }
    }

    /// Values cached per token per layer. MLA: the normalized latent plus the rope key (576 at
    /// V3 sizes). Dense: the post-RoPE keys then the values of every KV head
    /// (`2 · num_key_value_heads · head_dim`).
    pub fn latent_dim(&self) -> usize {
        if self.model_type.is_mla() {
            self.kv_lora_rank + self.qk_rope_head_dim
        } else {
            2 * self.num_key_value_heads * self.head_dim
        }
    }

    /// Cache values one token occupies across all layers (`num_hidden_layers · latent_dim`);
    /// `None` when the product overflows.
    pub fn kv_values_per_token(&self) -> Option<usize> {
        self.num_hidden_layers.checked_mul(self.latent_dim())
    }

    /// Cache bytes one token occupies across all layers with values of `kv`; `None` on overflow.
    pub fn kv_bytes_per_token(&self, kv: crate::cache::KvType) -> Option<usize> {
        self.kv_values_per_token()?.checked_mul(kv.size())
    }

    /// Bytes of the f32 `kv_b_proj` copies an MLA model keeps beside its mapped weights (one
    /// `[heads·(nope + v), kv_lora_rank]` matrix per layer); 0 for dense models, `None` on
    /// overflow.
    pub fn kv_b_f32_bytes(&self) -> Option<usize> {
        if !self.model_type.is_mla() {
            return Some(0);
        }
        self.num_hidden_layers
            .checked_mul(self.num_attention_heads)?
            .checked_mul(self.qk_nope_head_dim.checked_add(self.v_head_dim)?)?
            .checked_mul(self.kv_lora_rank)?
            .checked_mul(4)
    }

    /// Whether layer `l` has a routed-expert FFN (else a dense SwiGLU).
    pub fn is_moe_layer(&self, l: usize) -> bool {
        self.n_routed_experts.is_some()
            && l >= self.first_k_dense_replace
            && l.is_multiple_of(self.moe_layer_freq)
    }

    /// The sliding window of layer `l`, if it has one (Qwen2 `use_sliding_window`).
    pub fn attention_window(&self, l: usize) -> Option<usize> {
        let w = self.sliding_window.as_ref()?;
        w.layers.get(l).copied().unwrap_or(false).then_some(w.size)
    }

    /// `qk_head_dim^-0.5`, times `get_mscale(factor, mscale_all_dim)²` under YaRN;
    /// `head_dim^-0.5` for dense models.
    pub fn softmax_scale(&self) -> f32 {
        let mut s = 1.0 / (self.qk_head_dim() as f64).sqrt();
        if let Some(y) = self.yarn() {
            // DeepSeek's definition: only a non-zero mscale_all_dim enters the softmax scale.
            if y.mscale_all_dim != 0.0 {
                let m = yarn_get_mscale(y.factor, y.mscale_all_dim);
                s *= m * m;
            }
        }
        s as f32
    }

    /// Parameters: (total, active per token), counting embeddings and the output head.
    pub fn parameter_counts(&self) -> (u64, u64) {
        let d = self.hidden_size as u64;
        let h = self.num_attention_heads as u64;
        let r = self.kv_lora_rank as u64;
        let attn = if self.model_type.is_mla() {
            let q_proj = match self.q_lora_rank {
                Some(q) => d * q as u64 + q as u64 + q as u64 * h * self.qk_head_dim() as u64,
                None => d * h * self.qk_head_dim() as u64,
            };
            q_proj
                + d * (r + self.qk_rope_head_dim as u64)
                + r
                + r * h * (self.qk_nope_head_dim + self.v_head_dim) as u64
                + h * self.v_head_dim as u64 * d
                + 2 * d
        } else {
            let q = h * self.head_dim as u64;
            let kv = 2 * self.num_key_value_heads as u64 * self.head_dim as u64;
            let bias = if self.qkv_bias { q + kv } else { 0 } + if self.o_bias { d } else { 0 };
            d * (q + kv) + q * d + bias + 2 * d
        };
        let mlp = |width: u64| 3 * d * width;
        let (mut total, mut active) = (0u64, 0u64);
        for l in 0..self.num_hidden_layers {
            total += attn;
            active += attn;
            if self.is_moe_layer(l) {
                let e = self.n_routed_experts.unwrap_or(0) as u64;
                let w = self.moe_intermediate_size as u64;
                let shared = mlp(w * self.n_shared_experts as u64);
                total += e * d + e * mlp(w) + shared;
                active += e * d + self.num_experts_per_tok as u64 * mlp(w) + shared;
            } else {
                total += mlp(self.intermediate_size as u64);
                active += mlp(self.intermediate_size as u64);
            }
        }
        let emb = self.vocab_size as u64 * d;
        let head = if self.tie_word_embeddings { 0 } else { emb };
        (total + emb + head + d, active + emb + head + d)
    }
}
