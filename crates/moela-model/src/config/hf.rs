//! Reading an HF `config.json` (the official spelling and the transformers-5 spelling) into a
//! [`Config`]: serde reads it into [`RawConfig`] (every field optional, `null` = absent, a
//! wrongly typed value an error at its path), and each rule that turns it into a `Config` lives
//! in one function below (DeepSeek-V4's in `hf/v4.rs`).

mod v4;

use std::fmt;

use serde::de::{Deserializer, Unexpected, Visitor};
use serde::Deserialize;
use serde_json::Value;

use super::*;

/// A count or a width: a non-negative integer (so named in errors).
#[derive(Clone, Copy, Debug)]
struct Count(usize);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Count, D::Error> {
        struct CountVisitor;
        impl Visitor<'_> for CountVisitor {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative integer")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Count, E> {
                usize::try_from(v)
                    .map(Count)
                    .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
            }
        }
        d.deserialize_u64(CountVisitor)
    }
}

/// `v` as a `usize`.
fn n(v: Option<Count>) -> Option<usize> {
    v.map(|c| c.0)
}

/// `v`, or a "missing" error naming `field`.
fn required<T>(v: Option<T>, field: &str) -> Result<T, ModelError> {
    v.ok_or_else(|| cfg_err(field, "missing"))
}

/// `bos_token_id` / `eos_token_id`: one id or a list.
#[derive(Deserialize)]
#[serde(untagged, expecting = "expected a token id or a list of token ids")]
enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    fn into_vec(v: Option<TokenIds>) -> Vec<u32> {
        match v {
            None => vec![],
            Some(TokenIds::One(id)) => vec![id],
            Some(TokenIds::Many(ids)) => ids,
        }
    }
}

/// `type` / `rope_type` of a RoPE scaling.
#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RopeKind {
    Default,
    Yarn,
    Llama3,
    Linear,
}

/// `rope_scaling` (official) or `rope_parameters` (transformers 5, with `rope_theta` inside).
#[derive(Deserialize)]
struct RawRope {
    #[serde(rename = "type")]
    kind: Option<RopeKind>,
    rope_type: Option<RopeKind>,
    rope_theta: Option<f64>,
    factor: Option<f64>,
    original_max_position_embeddings: Option<Count>,
    beta_fast: Option<f64>,
    beta_slow: Option<f64>,
    mscale: Option<f64>,
    mscale_all_dim: Option<f64>,
    attention_factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    /// DeepSeek-V4's nested form: `{"main": {...}, "compress": {...}}`.
    main: Option<Box<RawRope>>,
    compress: Option<Box<RawRope>>,
}

/// `quantization_config`.
#[derive(Deserialize)]
struct RawQuant {
    quant_method: Option<String>,
    weight_block_size: Option<Vec<Count>>,
}

/// An entry of `layer_types` (transformers 5).
// The variants spell transformers' values, which all end in `_attention`.
#[allow(clippy::enum_variant_names)]
#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum LayerType {
    SlidingAttention,
    FullAttention,
    /// DeepSeek-V4's CSA and HCA layers.
    CompressedSparseAttention,
    HeavilyCompressedAttention,
}

/// `config.json` as written, for every supported `model_type`; unknown keys are ignored.
#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<ModelType>,
    hidden_act: Option<String>,
    vocab_size: Option<Count>,
    hidden_size: Option<Count>,
    intermediate_size: Option<Count>,
    num_hidden_layers: Option<Count>,
    num_attention_heads: Option<Count>,
    max_position_embeddings: Option<Count>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<RawRope>,
    rope_parameters: Option<RawRope>,
    bos_token_id: Option<TokenIds>,
    eos_token_id: Option<TokenIds>,
    tie_word_embeddings: Option<bool>,
    quantization_config: Option<RawQuant>,
    attention_bias: Option<bool>,
    // MLA + MoE.
    q_lora_rank: Option<Count>,
    kv_lora_rank: Option<Count>,
    qk_nope_head_dim: Option<Count>,
    qk_rope_head_dim: Option<Count>,
    v_head_dim: Option<Count>,
    n_routed_experts: Option<Count>,
    n_shared_experts: Option<Count>,
    num_experts_per_tok: Option<Count>,
    n_group: Option<Count>,
    topk_group: Option<Count>,
    topk_method: Option<TopkMethod>,
    scoring_func: Option<ScoringFunc>,
    norm_topk_prob: Option<bool>,
    routed_scaling_factor: Option<f64>,
    first_k_dense_replace: Option<Count>,
    moe_layer_freq: Option<Count>,
    moe_intermediate_size: Option<Count>,
    num_nextn_predict_layers: Option<Count>,
    // DeepSeek-V3.2's indexer.
    index_topk: Option<Count>,
    index_n_heads: Option<Count>,
    index_head_dim: Option<Count>,
    // GQA.
    num_key_value_heads: Option<Count>,
    head_dim: Option<Count>,
    mlp_bias: Option<bool>,
    partial_rotary_factor: Option<f64>,
    use_sliding_window: Option<bool>,
    sliding_window: Option<Count>,
    max_window_layers: Option<Count>,
    layer_types: Option<Vec<LayerType>>,
    // DeepSeek-V4.
    compress_ratios: Option<Vec<Count>>,
    compress_rates: Option<v4::RawCompressRates>,
    compress_rate_csa: Option<Count>,
    compress_rate_hca: Option<Count>,
    compress_rope_theta: Option<f64>,
    hc_mult: Option<Count>,
    hc_sinkhorn_iters: Option<Count>,
    hc_eps: Option<f64>,
    mlp_layer_types: Option<Vec<v4::MlpLayerType>>,
    num_hash_layers: Option<Count>,
    swiglu_limit: Option<f64>,
    o_groups: Option<Count>,
    o_lora_rank: Option<Count>,
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
        if !value.is_object() {
            return Err(cfg_err("config.json", "not a JSON object"));
        }
        let raw: RawConfig = serde_path_to_error::deserialize(value)
            .map_err(|e| cfg_err(&e.path().to_string(), e.inner().to_string()))?;
        let cfg = raw.into_config()?;
        cfg.validate()?;
        Ok(cfg)
    }
}

impl RawConfig {
    fn into_config(self) -> Result<Config, ModelError> {
        let model_type = required(self.model_type, "model_type")?;
        if let Some(act) = &self.hidden_act {
            if act != "silu" {
                return Err(cfg_err(
                    "hidden_act",
                    format!("unsupported activation {act:?} (expected silu)"),
                ));
            }
        }
        let vocab_size = required(n(self.vocab_size), "vocab_size")?;
        let hidden_size = required(n(self.hidden_size), "hidden_size")?;
        let v4 = model_type == ModelType::DeepseekV4;
        // V4 has no dense MLP; transformers reads `intermediate_size` as `moe_intermediate_size`.
        let intermediate_size = match v4 {
            true => required(n(self.moe_intermediate_size), "moe_intermediate_size")?,
            false => required(n(self.intermediate_size), "intermediate_size")?,
        };
        let num_hidden_layers = required(n(self.num_hidden_layers), "num_hidden_layers")?;
        let num_attention_heads = required(n(self.num_attention_heads), "num_attention_heads")?;
        let (attention, moe) = if v4 {
            self.v4(num_hidden_layers)?
        } else if model_type.is_mla() {
            (self.mla(model_type)?, self.moe(model_type)?)
        } else {
            (
                self.gqa(
                    model_type,
                    hidden_size,
                    num_attention_heads,
                    num_hidden_layers,
                )?,
                None,
            )
        };
        let (rope_theta, rope_scaling) = match v4 {
            true => self.v4_main_rope()?,
            false => self.rope()?,
        };
        let fp8_block = self.fp8_block(model_type)?;
        Ok(Config {
            model_type,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6) as f32,
            rope_theta,
            rope_scaling,
            max_position_embeddings: required(
                n(self.max_position_embeddings),
                "max_position_embeddings",
            )?,
            bos_token_id: TokenIds::into_vec(self.bos_token_id).first().copied(),
            eos_token_ids: TokenIds::into_vec(self.eos_token_id),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            num_nextn_predict_layers: match model_type.is_mla() || v4 {
                true => n(self.num_nextn_predict_layers).unwrap_or(0),
                false => 0,
            },
            fp8_block,
            attention,
            moe,
        })
    }

    /// `(rope_theta, rope_scaling)` in either spelling: official (`rope_theta` + `rope_scaling`)
    /// or transformers-5 (`rope_parameters` with `rope_theta` inside). Which family allows
    /// which scaling is [`Config::validate`]'s.
    fn rope(&self) -> Result<(f64, Option<RopeScaling>), ModelError> {
        let params = self.rope_parameters.as_ref();
        let theta = self
            .rope_theta
            .or(params.and_then(|p| p.rope_theta))
            .unwrap_or(10000.0);
        let scaling = match self.rope_scaling.as_ref().or(params) {
            None => None,
            Some(r) => r.scaling()?,
        };
        Ok((theta, scaling))
    }

    /// DeepSeek's attention sizes; it has no attention biases. V3.2's indexer sizes are
    /// required (its release config states them); other types ignore `index_*`.
    fn mla(&self, model_type: ModelType) -> Result<Attention, ModelError> {
        if self.attention_bias == Some(true) {
            return Err(cfg_err(
                "attention_bias",
                "attention biases are not part of this architecture",
            ));
        }
        Ok(Attention::Mla(MlaConfig {
            // V2-Lite has one q_proj: written null or 0.
            q_lora_rank: n(self.q_lora_rank).filter(|&r| r > 0),
            kv_lora_rank: required(n(self.kv_lora_rank), "kv_lora_rank")?,
            qk_nope_head_dim: required(n(self.qk_nope_head_dim), "qk_nope_head_dim")?,
            qk_rope_head_dim: required(n(self.qk_rope_head_dim), "qk_rope_head_dim")?,
            v_head_dim: required(n(self.v_head_dim), "v_head_dim")?,
            indexer: match model_type {
                ModelType::DeepseekV32 => Some(IndexerConfig {
                    index_topk: required(n(self.index_topk), "index_topk")?,
                    index_n_heads: required(n(self.index_n_heads), "index_n_heads")?,
                    index_head_dim: required(n(self.index_head_dim), "index_head_dim")?,
                }),
                _ => None,
            },
        }))
    }

    /// DeepSeekMoE routing, when `n_routed_experts` is set (0 or null: no experts). Defaults
    /// per model type follow the published definitions: V2 greedy/softmax, V3
    /// noaux_tc/sigmoid with `norm_topk_prob` true; the V2 and V3 weight rules differ too.
    /// V3.2 routes as V3 whatever `topk_method` / `scoring_func` say, and its MoE layers are
    /// all from `first_k_dense_replace` on (`moe_layer_freq` ignored), as transformers reads it.
    fn moe(&self, model_type: ModelType) -> Result<Option<MoeConfig>, ModelError> {
        let Some(e) = n(self.n_routed_experts).filter(|&e| e > 0) else {
            return Ok(None);
        };
        let v3 = model_type.routes_like_v3();
        let v32 = model_type == ModelType::DeepseekV32;
        let (topk_method, scoring_func, moe_layer_freq) = match v32 {
            true => (None, None, None),
            false => (self.topk_method, self.scoring_func, n(self.moe_layer_freq)),
        };
        if scoring_func == Some(ScoringFunc::Sqrtsoftplus) {
            return Err(cfg_err(
                "scoring_func",
                "sqrtsoftplus routing belongs to deepseek_v4",
            ));
        }
        Ok(Some(MoeConfig {
            n_routed_experts: e,
            n_shared_experts: n(self.n_shared_experts).unwrap_or(0),
            num_experts_per_tok: n(self.num_experts_per_tok).unwrap_or(0),
            n_group: n(self.n_group).unwrap_or(1),
            topk_group: n(self.topk_group).unwrap_or(1),
            topk_method: topk_method.unwrap_or(match v3 {
                true => TopkMethod::NoauxTc,
                false => TopkMethod::Greedy,
            }),
            scoring_func: scoring_func.unwrap_or(match v3 {
                true => ScoringFunc::Sigmoid,
                false => ScoringFunc::Softmax,
            }),
            norm_topk_prob: self.norm_topk_prob.unwrap_or(v3),
            routed_scaling_factor: self.routed_scaling_factor.unwrap_or(1.0) as f32,
            weighting: match v3 {
                true => RouteWeighting::NormalizeThenScale,
                false => RouteWeighting::NormalizeOrScale,
            },
            first_k_dense_replace: n(self.first_k_dense_replace).unwrap_or(0),
            moe_layer_freq: moe_layer_freq.unwrap_or(1),
            moe_intermediate_size: required(
                n(self.moe_intermediate_size),
                "moe_intermediate_size",
            )?,
            swiglu_limit: None,
        }))
    }

    /// A `qwen2` or `llama` attention (transformers' `Qwen2Config` / `LlamaConfig`).
    fn gqa(
        &self,
        model_type: ModelType,
        hidden_size: usize,
        heads: usize,
        layers: usize,
    ) -> Result<Attention, ModelError> {
        if self.mlp_bias == Some(true) {
            return Err(cfg_err("mlp_bias", "MLP biases are not supported"));
        }
        if self.partial_rotary_factor.is_some_and(|p| p != 1.0) {
            return Err(cfg_err(
                "partial_rotary_factor",
                "partial rotary embeddings are not supported",
            ));
        }
        let qwen2 = model_type == ModelType::Qwen2;
        // Qwen2: q/k/v always carry biases, o_proj never (Qwen2Attention). Llama:
        // `attention_bias` puts a bias on all four projections (LlamaAttention).
        let bias = self.attention_bias.unwrap_or(false);
        let (qkv_bias, o_bias) = if qwen2 { (true, false) } else { (bias, bias) };
        Ok(Attention::Gqa(GqaConfig {
            num_key_value_heads: n(self.num_key_value_heads).unwrap_or(heads),
            head_dim: match n(self.head_dim) {
                None | Some(0) => hidden_size.checked_div(heads).unwrap_or(0),
                Some(d) => d,
            },
            qkv_bias,
            o_bias,
            sliding_window: self.sliding_window(qwen2, layers)?,
        }))
    }

    /// Qwen2Config's window: it exists only with `use_sliding_window`, and applies to the layers
    /// that `layer_types` (checked whenever present) marks `sliding_attention`, by default
    /// those from `max_window_layers` on. Llama has none.
    fn sliding_window(
        &self,
        qwen2: bool,
        layers: usize,
    ) -> Result<Option<SlidingWindow>, ModelError> {
        if let Some(t) = &self.layer_types {
            if t.len() != layers {
                return Err(cfg_err(
                    "layer_types",
                    format!("{} entries for {layers} layers", t.len()),
                ));
            }
        }
        let size = match (
            qwen2 && self.use_sliding_window == Some(true),
            n(self.sliding_window),
        ) {
            (true, Some(size)) => size,
            _ => return Ok(None),
        };
        // One flag per layer: bound the count before allocating.
        sizes::in_range("num_hidden_layers", layers, MAX_LAYERS)?;
        let sliding: Vec<bool> = match &self.layer_types {
            Some(t) => t
                .iter()
                .map(|&t| t == LayerType::SlidingAttention)
                .collect(),
            None => {
                let from = n(self.max_window_layers).unwrap_or(28);
                (0..layers).map(|l| l >= from).collect()
            }
        };
        Ok(sliding.contains(&true).then_some(SlidingWindow {
            size,
            layers: sliding,
        }))
    }

    /// The FP8 block of a DeepSeek checkpoint's `quantization_config` (`fp8`, block default
    /// 128×128); Qwen2/Llama checkpoints may not be quantized.
    fn fp8_block(&self, model_type: ModelType) -> Result<Option<[usize; 2]>, ModelError> {
        let Some(q) = &self.quantization_config else {
            return Ok(None);
        };
        if !model_type.is_mla() && model_type != ModelType::DeepseekV4 {
            return Err(cfg_err(
                "quantization_config",
                "quantized Qwen2/Llama checkpoints are not supported (use a GGUF file or --quant)",
            ));
        }
        match q.quant_method.as_deref() {
            Some("fp8") => match q.weight_block_size.as_deref() {
                None => Ok(Some([128, 128])),
                Some(&[r, c]) => Ok(Some([r.0, c.0])),
                Some(v) => Err(cfg_err(
                    "quantization_config.weight_block_size",
                    format!("expected [rows, cols], found {} values", v.len()),
                )),
            },
            Some(o) => Err(cfg_err(
                "quantization_config.quant_method",
                format!("unsupported quantization {o:?} (expected fp8)"),
            )),
            None => Err(cfg_err("quantization_config.quant_method", "missing")),
        }
    }
}

impl RawRope {
    /// The scaling this object describes (`None` for `default`).
    fn scaling(&self) -> Result<Option<RopeScaling>, ModelError> {
        let kind = required(self.kind.or(self.rope_type), "rope_scaling.type")?;
        let req = |v: Option<f64>, k: &str| required(v, &format!("rope_scaling.{k}"));
        let original = || {
            required(
                n(self.original_max_position_embeddings),
                "rope_scaling.original_max_position_embeddings",
            )
        };
        Ok(match kind {
            RopeKind::Default => None,
            RopeKind::Yarn => {
                // beta defaults 32/1 (YaRN paper); a 0 means "default" in the reference too.
                let nz = |v: Option<f64>, d: f64| v.filter(|&v| v != 0.0).unwrap_or(d);
                Some(RopeScaling::Yarn(Yarn {
                    factor: req(self.factor, "factor")?,
                    original_max_position_embeddings: original()?,
                    beta_fast: nz(self.beta_fast, 32.0),
                    beta_slow: nz(self.beta_slow, 1.0),
                    mscale: self.mscale.unwrap_or(1.0),
                    mscale_all_dim: self.mscale_all_dim.unwrap_or(0.0),
                    attention_factor: self.attention_factor,
                }))
            }
            RopeKind::Llama3 => Some(RopeScaling::Llama3(Llama3Rope {
                factor: req(self.factor, "factor")?,
                low_freq_factor: req(self.low_freq_factor, "low_freq_factor")?,
                high_freq_factor: req(self.high_freq_factor, "high_freq_factor")?,
                original_max_position_embeddings: original()?,
            })),
            RopeKind::Linear => Some(RopeScaling::Linear {
                factor: req(self.factor, "factor")?,
            }),
        })
    }
}
