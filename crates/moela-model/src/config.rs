//! The model configuration: one typed struct read from an HF `config.json` (either the official
//! DeepSeek spelling or the transformers-5 spelling), validated, with derived sizes as methods.

use serde_json::{Map, Value};

use crate::error::ModelError;

/// Which published model definition a checkpoint follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelType {
    DeepseekV2,
    DeepseekV3,
}

impl ModelType {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::DeepseekV2 => "deepseek_v2",
            ModelType::DeepseekV3 => "deepseek_v3",
        }
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

/// The configuration of a DeepSeek MLA + MoE model.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub model_type: ModelType,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub moe_intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
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
    pub rope_scaling: Option<Yarn>,
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
            Some(other) => {
                return Err(cfg_err(
                    "model_type",
                    format!(
                        "unsupported model_type {other:?} (expected deepseek_v2 or deepseek_v3)"
                    ),
                ))
            }
            None => return Err(cfg_err("model_type", "missing")),
        };
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

        // Rope: official spelling (rope_theta + rope_scaling) or transformers-5 (rope_parameters).
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
        let rope_scaling = match scaling {
            None => None,
            Some(s) => parse_rope_scaling(s)?,
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
        let nonzero = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("kv_lora_rank", self.kv_lora_rank),
            ("qk_nope_head_dim", self.qk_nope_head_dim),
            ("v_head_dim", self.v_head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
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
        if let Some(y) = &self.rope_scaling {
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
        if self.rope_theta <= 1.0 {
            return Err(cfg_err("rope_theta", "must be greater than 1"));
        }
        Ok(())
    }

    /// `qk_nope_head_dim + qk_rope_head_dim` (192 at V3 sizes).
    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// Values cached per token per layer: the normalized latent plus the rope key (576 at V3 sizes).
    pub fn latent_dim(&self) -> usize {
        self.kv_lora_rank + self.qk_rope_head_dim
    }

    /// Whether layer `l` has a routed-expert FFN (else a dense SwiGLU).
    pub fn is_moe_layer(&self, l: usize) -> bool {
        self.n_routed_experts.is_some()
            && l >= self.first_k_dense_replace
            && l.is_multiple_of(self.moe_layer_freq)
    }

    /// `qk_head_dim^-0.5`, times `get_mscale(factor, mscale_all_dim)²` under YaRN.
    pub fn softmax_scale(&self) -> f32 {
        let mut s = 1.0 / (self.qk_head_dim() as f64).sqrt();
        if let Some(y) = &self.rope_scaling {
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
        let attn = match self.q_lora_rank {
            Some(q) => d * q as u64 + q as u64 + q as u64 * h * self.qk_head_dim() as u64,
            None => d * h * self.qk_head_dim() as u64,
        } + d * (r + self.qk_rope_head_dim as u64)
            + r
            + r * h * (self.qk_nope_head_dim + self.v_head_dim) as u64
            + h * self.v_head_dim as u64 * d
            + 2 * d;
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

fn parse_rope_scaling(s: &Map<String, Value>) -> Result<Option<Yarn>, ModelError> {
    let f = Fields { map: s };
    let kind = match (f.str_opt("type")?, f.str_opt("rope_type")?) {
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => return Err(cfg_err("rope_scaling.type", "missing")),
    };
    match kind {
        "default" => Ok(None),
        "yarn" => {
            let key = |k: &str| format!("rope_scaling.{k}");
            let factor = match f.get("factor") {
                Some(v) => as_f64(&key("factor"), v)?,
                None => return Err(cfg_err(&key("factor"), "missing")),
            };
            let orig = match f.get("original_max_position_embeddings") {
                Some(v) => as_usize(&key("original_max_position_embeddings"), v)?,
                None => return Err(cfg_err(&key("original_max_position_embeddings"), "missing")),
            };
            // beta defaults 32/1 (YaRN paper); a 0 means "default" in the reference too.
            let nz = |v: f64, d: f64| if v == 0.0 { d } else { v };
            Ok(Some(Yarn {
                factor,
                original_max_position_embeddings: orig,
                beta_fast: nz(f.f64_or("beta_fast", 32.0)?, 32.0),
                beta_slow: nz(f.f64_or("beta_slow", 1.0)?, 1.0),
                mscale: f.f64_or("mscale", 1.0)?,
                mscale_all_dim: f.f64_or("mscale_all_dim", 0.0)?,
                attention_factor: f
                    .get("attention_factor")
                    .map(|v| as_f64(&key("attention_factor"), v))
                    .transpose()?,
            }))
        }
        other => Err(cfg_err(
            "rope_scaling.type",
            format!("unsupported rope scaling {other:?} (expected yarn)"),
        )),
    }
}
