//! DeepSeek-V4's `config.json` keys, in transformers' spelling (`layer_types`,
//! `mlp_layer_types`, `compress_rates`, nested `rope_parameters`) and the release's
//! (`compress_ratios` per layer including MTP layers, `num_hash_layers`, `compress_rate_*`,
//! `rope_scaling` + `compress_rope_theta`, `qk_rope_head_dim`), read as transformers'
//! `DeepseekV4Config.__post_init__` reads them.

use super::*;
use crate::config::{HyperConfig, V4Config, V4Layer, V4LayerKind};

/// `compress_rates`: tokens per compressed entry, per layer kind.
#[derive(Deserialize)]
pub(super) struct RawCompressRates {
    compressed_sparse_attention: Option<Count>,
    heavily_compressed_attention: Option<Count>,
}

/// An entry of `mlp_layer_types`.
#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum MlpLayerType {
    HashMoe,
    Moe,
}

/// `DeepseekV4Config`'s defaults for the behaviour knobs a config may leave out (the model's
/// sizes are required).
const HC_MULT: usize = 4;
const HC_SINKHORN_ITERS: usize = 20;
const HC_EPS: f64 = 1e-6;
const NUM_HASH_LAYERS: usize = 3;
const SWIGLU_LIMIT: f64 = 10.0;
const ROUTED_SCALING_FACTOR: f64 = 1.5;
const ROPE_THETA: f64 = 10000.0;
const COMPRESS_ROPE_THETA: f64 = 160000.0;
const CSA_RATIO: usize = 4;
const HCA_RATIO: usize = 128;
/// `qk_rope_head_dim / head_dim` when neither is stated (64 / 512).
const PARTIAL_ROTARY_FACTOR: f64 = 64.0 / 512.0;

/// The layer kind of `compress_ratios` entry `i`: 0 sliding, 4 CSA, 128 HCA.
fn ratio_kind(i: usize, ratio: usize) -> Result<V4LayerKind, ModelError> {
    match ratio {
        0 => Ok(V4LayerKind::Sliding),
        4 => Ok(V4LayerKind::Csa),
        128 => Ok(V4LayerKind::Hca),
        x => Err(cfg_err(
            "compress_ratios",
            format!("entry {i}: {x} is not 0, 4 or 128"),
        )),
    }
}

impl RawConfig {
    /// The V4 attention part and its MoE (every layer routed) for `layers` decoder layers.
    pub(super) fn v4(&self, layers: usize) -> Result<(Attention, Option<MoeConfig>), ModelError> {
        if self.attention_bias == Some(true) {
            return Err(cfg_err(
                "attention_bias",
                "attention biases are not part of this architecture",
            ));
        }
        if let Some(k) = n(self.num_key_value_heads).filter(|&k| k != 1) {
            return Err(cfg_err(
                "num_key_value_heads",
                format!("DeepSeek-V4 has one shared key/value head, found {k}"),
            ));
        }
        // One entry per layer: bound the count before allocating.
        sizes::in_range("num_hidden_layers", layers, MAX_LAYERS)?;
        let head_dim = required(n(self.head_dim), "head_dim")?;
        let kinds = self.v4_layer_kinds(layers)?;
        let hash = self.v4_hash_layers(layers)?;
        let (compress_rope_theta, compress_yarn) = self.v4_compress_rope()?;
        let v4 = V4Config {
            q_lora_rank: required(n(self.q_lora_rank), "q_lora_rank")?,
            head_dim,
            qk_rope_head_dim: self.v4_rope_dims(head_dim)?,
            o_groups: required(n(self.o_groups), "o_groups")?,
            o_lora_rank: required(n(self.o_lora_rank), "o_lora_rank")?,
            sliding_window: required(n(self.sliding_window), "sliding_window")?,
            csa_ratio: n(self.compress_rate_csa)
                .or(self
                    .compress_rates
                    .as_ref()
                    .and_then(|r| n(r.compressed_sparse_attention)))
                .unwrap_or(CSA_RATIO),
            hca_ratio: n(self.compress_rate_hca)
                .or(self
                    .compress_rates
                    .as_ref()
                    .and_then(|r| n(r.heavily_compressed_attention)))
                .unwrap_or(HCA_RATIO),
            layers: kinds
                .into_iter()
                .zip(hash)
                .map(|(kind, hash_moe)| V4Layer { kind, hash_moe })
                .collect(),
            mtp: self.v4_mtp_layer(layers)?,
            compress_rope_theta,
            compress_yarn,
            indexer: IndexerConfig {
                index_topk: required(n(self.index_topk), "index_topk")?,
                index_n_heads: required(n(self.index_n_heads), "index_n_heads")?,
                index_head_dim: required(n(self.index_head_dim), "index_head_dim")?,
            },
            hc: HyperConfig {
                hc_mult: n(self.hc_mult).unwrap_or(HC_MULT),
                sinkhorn_iters: n(self.hc_sinkhorn_iters).unwrap_or(HC_SINKHORN_ITERS),
                eps: self.hc_eps.unwrap_or(HC_EPS) as f32,
            },
        };
        Ok((Attention::V4(v4), Some(self.v4_moe()?)))
    }

    /// transformers' `partial_rotary_factor` (which wins), else the release's
    /// `qk_rope_head_dim`, else `head_dim / 8`: rope dims = `int(head_dim · factor)`.
    fn v4_rope_dims(&self, head_dim: usize) -> Result<usize, ModelError> {
        match (self.partial_rotary_factor, n(self.qk_rope_head_dim)) {
            (Some(p), _) if !(p > 0.0 && p <= 1.0) => Err(cfg_err(
                "partial_rotary_factor",
                format!("must be in (0, 1], found {p}"),
            )),
            (Some(p), _) => Ok((head_dim as f64 * p) as usize),
            (None, Some(r)) => Ok(r),
            (None, None) => Ok((head_dim as f64 * PARTIAL_ROTARY_FACTOR) as usize),
        }
    }

    /// Each layer's attention: `layer_types` (one per layer), else the release's
    /// `compress_ratios` (0 / 4 / 128 per layer, MTP layers after them), else transformers'
    /// default (two HCA layers, then CSA and HCA alternating).
    fn v4_layer_kinds(&self, layers: usize) -> Result<Vec<V4LayerKind>, ModelError> {
        if let Some(t) = &self.layer_types {
            if t.len() != layers {
                return Err(cfg_err(
                    "layer_types",
                    format!("{} entries for {layers} layers", t.len()),
                ));
            }
            return t
                .iter()
                .enumerate()
                .map(|(i, t)| match t {
                    LayerType::SlidingAttention => Ok(V4LayerKind::Sliding),
                    LayerType::CompressedSparseAttention => Ok(V4LayerKind::Csa),
                    LayerType::HeavilyCompressedAttention => Ok(V4LayerKind::Hca),
                    LayerType::FullAttention => Err(cfg_err(
                        "layer_types",
                        format!("entry {i}: full_attention is not a DeepSeek-V4 layer type"),
                    )),
                })
                .collect();
        }
        if let Some(r) = &self.compress_ratios {
            if r.len() < layers {
                return Err(cfg_err(
                    "compress_ratios",
                    format!("{} entries for {layers} layers", r.len()),
                ));
            }
            let kinds = r
                .iter()
                .enumerate()
                .map(|(i, c)| ratio_kind(i, c.0))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(kinds[..layers].to_vec());
        }
        Ok((0..layers)
            .map(|l| match l {
                l if l >= 2 && (l - 2) % 2 == 1 => V4LayerKind::Csa,
                _ => V4LayerKind::Hca,
            })
            .collect())
    }

    /// The first MTP layer (index `layers`): its `compress_ratios` entry (sliding when the
    /// config lists none, as transformers' `layer_types` never does), routed unless
    /// `num_hash_layers` reaches it.
    fn v4_mtp_layer(&self, layers: usize) -> Result<V4Layer, ModelError> {
        let kind = match self.compress_ratios.as_ref().and_then(|r| r.get(layers)) {
            None => V4LayerKind::Sliding,
            Some(c) => ratio_kind(layers, c.0)?,
        };
        let hashed = match &self.mlp_layer_types {
            Some(_) => 0,
            None => n(self.num_hash_layers).unwrap_or(NUM_HASH_LAYERS),
        };
        Ok(V4Layer {
            kind,
            hash_moe: layers < hashed,
        })
    }

    /// Which layers route by the `tid2eid` table: `mlp_layer_types` (one per layer), else the
    /// first `num_hash_layers` (default 3).
    fn v4_hash_layers(&self, layers: usize) -> Result<Vec<bool>, ModelError> {
        match &self.mlp_layer_types {
            Some(t) if t.len() != layers => Err(cfg_err(
                "mlp_layer_types",
                format!("{} entries for {layers} layers", t.len()),
            )),
            Some(t) => Ok(t.iter().map(|&t| t == MlpLayerType::HashMoe).collect()),
            None => {
                let hashed = n(self.num_hash_layers).unwrap_or(NUM_HASH_LAYERS);
                Ok((0..layers).map(|l| l < hashed).collect())
            }
        }
    }

    /// The routing of every layer: √softplus scores (or sigmoid), the correction bias for
    /// selection only, weights always normalized then scaled; one shared expert as wide as a
    /// routed one; the SwiGLU clamp.
    fn v4_moe(&self) -> Result<MoeConfig, ModelError> {
        let shared = n(self.n_shared_experts).unwrap_or(1);
        if shared != 1 {
            return Err(cfg_err(
                "n_shared_experts",
                format!(
                    "DeepSeek-V4 has one shared expert (as wide as a routed one), found {shared}"
                ),
            ));
        }
        let scoring_func = match self.scoring_func.unwrap_or(ScoringFunc::Sqrtsoftplus) {
            ScoringFunc::Softmax => {
                return Err(cfg_err(
                    "scoring_func",
                    "DeepSeek-V4 scores experts by sqrtsoftplus or sigmoid",
                ))
            }
            s => s,
        };
        Ok(MoeConfig {
            n_routed_experts: required(n(self.n_routed_experts), "n_routed_experts")?,
            n_shared_experts: 1,
            num_experts_per_tok: required(n(self.num_experts_per_tok), "num_experts_per_tok")?,
            // Top-k over all experts: noaux_tc with a single group.
            n_group: 1,
            topk_group: 1,
            topk_method: TopkMethod::NoauxTc,
            scoring_func,
            // transformers always renormalizes the chosen weights.
            norm_topk_prob: true,
            routed_scaling_factor: self.routed_scaling_factor.unwrap_or(ROUTED_SCALING_FACTOR)
                as f32,
            weighting: RouteWeighting::NormalizeThenScale,
            first_k_dense_replace: 0,
            moe_layer_freq: 1,
            moe_intermediate_size: required(
                n(self.moe_intermediate_size),
                "moe_intermediate_size",
            )?,
            swiglu_limit: Some(self.swiglu_limit.unwrap_or(SWIGLU_LIMIT) as f32),
        })
    }

    /// The nested `rope_parameters` of transformers, when it has both parts.
    fn v4_nested_rope(&self) -> Option<(&RawRope, &RawRope)> {
        let p = self.rope_parameters.as_ref()?;
        Some((p.main.as_deref()?, p.compress.as_deref()?))
    }

    /// The sliding layers' RoPE: `rope_parameters.main`, else plain `rope_theta`.
    pub(super) fn v4_main_rope(&self) -> Result<(f64, Option<RopeScaling>), ModelError> {
        let Some((main, _)) = self.v4_nested_rope() else {
            let flat = self.rope_parameters.as_ref().and_then(|p| p.rope_theta);
            return Ok((self.rope_theta.or(flat).unwrap_or(ROPE_THETA), None));
        };
        let theta = main.rope_theta.or(self.rope_theta).unwrap_or(ROPE_THETA);
        Ok((
            theta,
            v4_scaling(main, "rope_parameters.main", None)?.map(RopeScaling::Yarn),
        ))
    }

    /// The compressed layers' RoPE: `rope_parameters.compress`, else `compress_rope_theta`
    /// with the flat `rope_scaling` / `rope_parameters`, whose YaRN gets `attention_factor` 1
    /// unless it states one (transformers' `__post_init__`: no cos/sin amplitude).
    fn v4_compress_rope(&self) -> Result<(f64, Option<Yarn>), ModelError> {
        if let Some((_, compress)) = self.v4_nested_rope() {
            let theta = compress
                .rope_theta
                .or(self.compress_rope_theta)
                .unwrap_or(COMPRESS_ROPE_THETA);
            return Ok((
                theta,
                v4_scaling(compress, "rope_parameters.compress", None)?,
            ));
        }
        let theta = self.compress_rope_theta.unwrap_or(COMPRESS_ROPE_THETA);
        let yarn = match self.rope_scaling.as_ref().or(self.rope_parameters.as_ref()) {
            None => None,
            Some(r) => v4_scaling(r, "rope_scaling", Some(1.0))?,
        };
        Ok((theta, yarn))
    }
}

/// A V4 RoPE part's YaRN (`None` for the default type, also when no type is written), with
/// `attention_factor` defaulting to `default_factor`; other scalings are refused.
fn v4_scaling(
    r: &RawRope,
    field: &str,
    default_factor: Option<f64>,
) -> Result<Option<Yarn>, ModelError> {
    if r.kind.or(r.rope_type).is_none() {
        return Ok(None);
    }
    match r.scaling()? {
        None => Ok(None),
        Some(RopeScaling::Yarn(mut y)) => {
            y.attention_factor = y.attention_factor.or(default_factor);
            Ok(Some(y))
        }
        Some(_) => Err(cfg_err(field, "DeepSeek-V4 uses yarn scaling (or none)")),
    }
}
