//! The model configuration: one typed struct read from an HF `config.json` (either the official
//! spelling or the transformers-5 spelling), validated, with derived sizes as methods.
//!
//! Two architecture families share it: DeepSeek MLA + MoE (`deepseek_v2`, `deepseek_v3`) and the
//! dense GQA decoders of the R1 distills (`qwen2`, `llama`). Fields of the other family are zero
//! (or `None`/`false`) and unused.

use serde_json::{Map, Value};

use crate::error::ModelError;

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

fn cfg_err(field: &str, msg: impl Into<String>) -> ModelError {
    ModelError::Config {
        field: field.to_string(),
        msg: msg.into(),
    }
}

struct Fields<'a> {
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }
    fn usize_req(&self, key: &str) -> Result<usize, ModelError> {
        match self.get(key) {
            None => Err(cfg_err(key, "missing")),
            Some(v) => as_usize(key, v),
        }
    }
    fn usize_or(&self, key: &str, default: usize) -> Result<usize, ModelError> {
        self.get(key).map_or(Ok(default), |v| as_usize(key, v))
    }
    fn f64_or(&self, key: &str, default: f64) -> Result<f64, ModelError> {
        self.get(key).map_or(Ok(default), |v| as_f64(key, v))
    }
    fn bool_or(&self, key: &str, default: bool) -> Result<bool, ModelError> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(cfg_err(key, format!("expected true or false, found {v}"))),
        }
    }
    fn str_opt(&self, key: &str) -> Result<Option<&'a str>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(cfg_err(key, format!("expected a string, found {v}"))),
        }
    }
}

fn as_usize(key: &str, v: &Value) -> Result<usize, ModelError> {
    v.as_u64()
        .map(|n| n as usize)
        .ok_or_else(|| cfg_err(key, format!("expected a non-negative integer, found {v}")))
}

fn as_f64(key: &str, v: &Value) -> Result<f64, ModelError> {
    v.as_f64()
        .ok_or_else(|| cfg_err(key, format!("expected a number, found {v}")))
}

fn token_ids(key: &str, v: Option<&Value>) -> Result<Vec<u32>, ModelError> {
    match v {
        None => Ok(vec![]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| as_usize(key, x).map(|n| n as u32))
            .collect(),
        Some(x) => Ok(vec![as_usize(key, x)? as u32]),
    }
}

/// `get_mscale` of DeepSeek's YaRN: 1 for s ≤ 1, else 0.1·m·ln(s) + 1.
pub fn yarn_get_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

impl Config {
    /// Parses and validates an HF `config.json`.
    pub fn from_hf_json(text: &str) -> Result<Config, ModelError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| cfg_err("config.json", format!("not valid JSON: {e}")))?;
        Config::from_hf_value(&value)
    }

    /// Parses and validates an already-decoded `config.json`.
    pub fn from_hf_value(value: &Value) -> Result<Config, ModelError> {
        let map = value
            .as_object()
            .ok_or_else(|| cfg_err("config.json", "not a JSON object"))?;
        let f = Fields { map };
        let model_type = match f.str_opt("model_type")? {
            Some("deepseek_v2") => ModelType::DeepseekV2,
            Some("deepseek_v3") => ModelType::DeepseekV3,
            Some("qwen2") => ModelType::Qwen2,
            Some("llama") => ModelType::Llama,
            Some(other) => {
                return Err(cfg_err(
                    "model_type",
                    format!(
                        "unsupported model_type {other:?} (expected deepseek_v2, deepseek_v3, qwen2 or llama)"
                    ),
                ))
            }
            None => return Err(cfg_err("model_type", "missing")),
        };
        if !model_type.is_mla() {
            return dense_from_hf(&f, model_type);
        }
        let v3 = model_type == ModelType::DeepseekV3;
        if f.bool_or("attention_bias", false)? {
            return Err(cfg_err(
                "attention_bias",
                "attention biases are not part of this architecture",
            ));
        }
        if let Some(act) = f.str_opt("hidden_act")? {
            if act != "silu" {
                return Err(cfg_err(
                    "hidden_act",
                    format!("unsupported activation {act:?} (expected silu)"),
                ));
            }
        }

        let q_lora_rank = match f.usize_or("q_lora_rank", 0)? {
            0 => None,
            r => Some(r),
        };
        let n_routed_experts = match f.usize_or("n_routed_experts", 0)? {
            0 => None,
            n => Some(n),
        };
        // Defaults per model type follow the published definitions: V2 greedy/softmax, V3 noaux_tc/sigmoid.
        let topk_method = match f.str_opt("topk_method")? {
            None if v3 => TopkMethod::NoauxTc,
            None => TopkMethod::Greedy,
            Some("greedy") => TopkMethod::Greedy,
            Some("group_limited_greedy") => TopkMethod::GroupLimitedGreedy,
            Some("noaux_tc") => TopkMethod::NoauxTc,
            Some(o) => return Err(cfg_err("topk_method", format!("unknown topk_method {o:?}"))),
        };
        let scoring_func = match f.str_opt("scoring_func")? {
            None if v3 => ScoringFunc::Sigmoid,
            None => ScoringFunc::Softmax,
            Some("softmax") => ScoringFunc::Softmax,
            Some("sigmoid") => ScoringFunc::Sigmoid,
            Some(o) => {
                return Err(cfg_err(
                    "scoring_func",
                    format!("unknown scoring_func {o:?}"),
                ))
            }
        };

        let (rope_theta, rope_scaling) = rope_fields(&f)?;
        let rope_scaling = match rope_scaling {
            None => None,
            Some(RopeScaling::Yarn(y)) => Some(RopeScaling::Yarn(y)),
            Some(_) => {
                return Err(cfg_err(
                    "rope_scaling.type",
                    "DeepSeek models use yarn scaling (or none)",
                ))
            }
        };

        let fp8_block = match f.get("quantization_config").and_then(Value::as_object) {
            None => None,
            Some(q) => {
                let qf = Fields { map: q };
                match qf.str_opt("quant_method")? {
                    Some("fp8") => {
                        let bs = match qf.get("weight_block_size") {
                            None => [128, 128],
                            Some(Value::Array(a)) if a.len() == 2 => [
                                as_usize("quantization_config.weight_block_size", &a[0])?,
                                as_usize("quantization_config.weight_block_size", &a[1])?,
                            ],
                            Some(v) => {
                                return Err(cfg_err(
                                    "quantization_config.weight_block_size",
                                    format!("expected [rows, cols], found {v}"),
                                ))
                            }
                        };
                        if bs[0] == 0 || bs[1] == 0 {
                            return Err(cfg_err(
                                "quantization_config.weight_block_size",
                                "zero block size",
                            ));
                        }
                        Some(bs)
                    }
                    Some(o) => {
                        return Err(cfg_err(
                            "quantization_config.quant_method",
                            format!("unsupported quantization {o:?} (expected fp8)"),
                        ))
                    }
                    None => return Err(cfg_err("quantization_config.quant_method", "missing")),
                }
            }
        };

        let num_experts_per_tok = f.usize_or("num_experts_per_tok", 0)?;
        let cfg = Config {
            model_type,
            vocab_size: f.usize_req("vocab_size")?,
            hidden_size: f.usize_req("hidden_size")?,
            intermediate_size: f.usize_req("intermediate_size")?,
            moe_intermediate_size: if n_routed_experts.is_some() {
                f.usize_req("moe_intermediate_size")?
            } else {
                f.usize_or("moe_intermediate_size", 0)?
            },
            num_hidden_layers: f.usize_req("num_hidden_layers")?,
            num_attention_heads: f.usize_req("num_attention_heads")?,
            // MLA: as written (HF configs carry the head count); unused.
            num_key_value_heads: f.usize_or("num_key_value_heads", 0)?,
            head_dim: 0,
            qkv_bias: false,
            o_bias: false,
            sliding_window: None,
            q_lora_rank,
            kv_lora_rank: f.usize_req("kv_lora_rank")?,
            qk_nope_head_dim: f.usize_req("qk_nope_head_dim")?,
            qk_rope_head_dim: f.usize_req("qk_rope_head_dim")?,
            v_head_dim: f.usize_req("v_head_dim")?,
            n_routed_experts,
            n_shared_experts: f.usize_or("n_shared_experts", 0)?,
            num_experts_per_tok,
            n_group: f.usize_or("n_group", 1)?,
            topk_group: f.usize_or("topk_group", 1)?,
            topk_method,
            scoring_func,
            norm_topk_prob: f.bool_or("norm_topk_prob", v3)?,
            routed_scaling_factor: f.f64_or("routed_scaling_factor", 1.0)? as f32,
            first_k_dense_replace: f.usize_or("first_k_dense_replace", 0)?,
            moe_layer_freq: f.usize_or("moe_layer_freq", 1)?,
            rms_norm_eps: f.f64_or("rms_norm_eps", 1e-6)? as f32,
            rope_theta,
            rope_scaling,
            max_position_embeddings: f.usize_req("max_position_embeddings")?,
            bos_token_id: token_ids("bos_token_id", f.get("bos_token_id"))?
                .first()
                .copied(),
            eos_token_ids: token_ids("eos_token_id", f.get("eos_token_id"))?,
            tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
            num_nextn_predict_layers: f.usize_or("num_nextn_predict_layers", 0)?,
            fp8_block,
        };
        cfg.validate()?;
        Ok(cfg)
    }

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

/// `(rope_theta, rope_scaling)` in either spelling: official (`rope_theta` + `rope_scaling`) or
/// transformers-5 (`rope_parameters` with `rope_theta` inside). Type-specific checks (which
/// family allows which scaling) are the caller's.
fn rope_fields(f: &Fields<'_>) -> Result<(f64, Option<RopeScaling>), ModelError> {
    let rope_params = f.get("rope_parameters").and_then(Value::as_object);
    let scaling = f
        .get("rope_scaling")
        .and_then(Value::as_object)
        .or(rope_params);
    let rope_theta = match (
        f.get("rope_theta"),
        rope_params.and_then(|p| p.get("rope_theta")),
    ) {
        (Some(v), _) => as_f64("rope_theta", v)?,
        (None, Some(v)) => as_f64("rope_parameters.rope_theta", v)?,
        (None, None) => 10000.0,
    };
    let scaling = match scaling {
        None => None,
        Some(s) => parse_rope_scaling(s)?,
    };
    Ok((rope_theta, scaling))
}

fn parse_rope_scaling(s: &Map<String, Value>) -> Result<Option<RopeScaling>, ModelError> {
    let f = Fields { map: s };
    let kind = match (f.str_opt("type")?, f.str_opt("rope_type")?) {
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => return Err(cfg_err("rope_scaling.type", "missing")),
    };
    let key = |k: &str| format!("rope_scaling.{k}");
    let f64_req = |k: &str| match f.get(k) {
        Some(v) => as_f64(&key(k), v),
        None => Err(cfg_err(&key(k), "missing")),
    };
    let usize_req = |k: &str| match f.get(k) {
        Some(v) => as_usize(&key(k), v),
        None => Err(cfg_err(&key(k), "missing")),
    };
    match kind {
        "default" => Ok(None),
        "yarn" => {
            // beta defaults 32/1 (YaRN paper); a 0 means "default" in the reference too.
            let nz = |v: f64, d: f64| if v == 0.0 { d } else { v };
            Ok(Some(RopeScaling::Yarn(Yarn {
                factor: f64_req("factor")?,
                original_max_position_embeddings: usize_req("original_max_position_embeddings")?,
                beta_fast: nz(f.f64_or("beta_fast", 32.0)?, 32.0),
                beta_slow: nz(f.f64_or("beta_slow", 1.0)?, 1.0),
                mscale: f.f64_or("mscale", 1.0)?,
                mscale_all_dim: f.f64_or("mscale_all_dim", 0.0)?,
                attention_factor: f
                    .get("attention_factor")
                    .map(|v| as_f64(&key("attention_factor"), v))
                    .transpose()?,
            })))
        }
        "llama3" => Ok(Some(RopeScaling::Llama3(Llama3Rope {
            factor: f64_req("factor")?,
            low_freq_factor: f64_req("low_freq_factor")?,
            high_freq_factor: f64_req("high_freq_factor")?,
            original_max_position_embeddings: usize_req("original_max_position_embeddings")?,
        }))),
        "linear" => Ok(Some(RopeScaling::Linear {
            factor: f64_req("factor")?,
        })),
        other => Err(cfg_err(
            "rope_scaling.type",
            format!(
                "unsupported rope scaling {other:?} (expected yarn, llama3, linear or default)"
            ),
        )),
    }
}

/// A `qwen2` or `llama` config.json (transformers' `Qwen2Config` / `LlamaConfig`).
fn dense_from_hf(f: &Fields<'_>, model_type: ModelType) -> Result<Config, ModelError> {
    let qwen2 = model_type == ModelType::Qwen2;
    if let Some(act) = f.str_opt("hidden_act")? {
        if act != "silu" {
            return Err(cfg_err(
                "hidden_act",
                format!("unsupported activation {act:?} (expected silu)"),
            ));
        }
    }
    if f.bool_or("mlp_bias", false)? {
        return Err(cfg_err("mlp_bias", "MLP biases are not supported"));
    }
    if let Some(v) = f.get("partial_rotary_factor") {
        if as_f64("partial_rotary_factor", v)? != 1.0 {
            return Err(cfg_err(
                "partial_rotary_factor",
                "partial rotary embeddings are not supported",
            ));
        }
    }
    let hidden_size = f.usize_req("hidden_size")?;
    let heads = f.usize_req("num_attention_heads")?;
    let num_hidden_layers = f.usize_req("num_hidden_layers")?;
    let head_dim = match f.usize_or("head_dim", 0)? {
        0 if heads > 0 => hidden_size / heads,
        d => d,
    };
    let (rope_theta, rope_scaling) = rope_fields(f)?;
    // Qwen2: q/k/v always carry biases, o_proj never (Qwen2Attention). Llama: `attention_bias`
    // puts a bias on all four projections (LlamaAttention).
    let attention_bias = f.bool_or("attention_bias", false)?;
    let (qkv_bias, o_bias) = if qwen2 {
        (true, false)
    } else {
        (attention_bias, attention_bias)
    };
    // `layer_types` (transformers 5), checked whenever present.
    let layer_types = match f.get("layer_types") {
        None => None,
        Some(Value::Array(a)) => {
            let types = a
                .iter()
                .map(|t| match t.as_str() {
                    Some("sliding_attention") => Ok(true),
                    Some("full_attention") => Ok(false),
                    _ => Err(cfg_err(
                        "layer_types",
                        format!("expected sliding_attention or full_attention, found {t}"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            if types.len() != num_hidden_layers {
                return Err(cfg_err(
                    "layer_types",
                    format!("{} entries for {num_hidden_layers} layers", types.len()),
                ));
            }
            Some(types)
        }
        Some(v) => {
            return Err(cfg_err(
                "layer_types",
                format!("expected a list, found {v}"),
            ))
        }
    };
    // Qwen2Config: the window exists only with `use_sliding_window`; it applies to the layers
    // that `layer_types` marks `sliding_attention`, by default those from `max_window_layers` on.
    let sliding_window = match (
        qwen2 && f.bool_or("use_sliding_window", false)?,
        f.get("sliding_window"),
    ) {
        (true, Some(v)) => {
            let size = as_usize("sliding_window", v)?;
            let layers = match layer_types {
                Some(t) => t,
                None => {
                    let from = f.usize_or("max_window_layers", 28)?;
                    (0..num_hidden_layers).map(|l| l >= from).collect()
                }
            };
            layers
                .contains(&true)
                .then_some(SlidingWindow { size, layers })
        }
        _ => None,
    };
    let cfg = Config {
        model_type,
        vocab_size: f.usize_req("vocab_size")?,
        hidden_size,
        intermediate_size: f.usize_req("intermediate_size")?,
        moe_intermediate_size: 0,
        num_hidden_layers,
        num_attention_heads: heads,
        num_key_value_heads: f.usize_or("num_key_value_heads", heads)?,
        head_dim,
        qkv_bias,
        o_bias,
        sliding_window,
        q_lora_rank: None,
        kv_lora_rank: 0,
        qk_nope_head_dim: 0,
        qk_rope_head_dim: 0,
        v_head_dim: 0,
        n_routed_experts: None,
        n_shared_experts: 0,
        num_experts_per_tok: 0,
        n_group: 1,
        topk_group: 1,
        topk_method: TopkMethod::Greedy,
        scoring_func: ScoringFunc::Softmax,
        norm_topk_prob: false,
        routed_scaling_factor: 1.0,
        first_k_dense_replace: 0,
        moe_layer_freq: 1,
        rms_norm_eps: f.f64_or("rms_norm_eps", 1e-6)? as f32,
        rope_theta,
        rope_scaling,
        max_position_embeddings: f.usize_req("max_position_embeddings")?,
        bos_token_id: token_ids("bos_token_id", f.get("bos_token_id"))?
            .first()
            .copied(),
        eos_token_ids: token_ids("eos_token_id", f.get("eos_token_id"))?,
        tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
        num_nextn_predict_layers: 0,
        fp8_block: None,
    };
    if f.get("quantization_config").is_some() {
        return Err(cfg_err(
            "quantization_config",
            "quantized Qwen2/Llama checkpoints are not supported (use a GGUF file or --quant)",
        ));
    }
    cfg.validate()?;
    Ok(cfg)
}
