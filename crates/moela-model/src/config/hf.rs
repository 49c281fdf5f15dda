//! Reading an HF `config.json` (the official spelling and the transformers-5 spelling) into a
//! [`Config`]: field access with the field named in every error, RoPE scaling in both
//! spellings, the MLA + MoE families and the dense GQA ones.

use serde_json::{Map, Value};

use super::*;

pub(crate) fn cfg_err(field: &str, msg: impl Into<String>) -> ModelError {
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
