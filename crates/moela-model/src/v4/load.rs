//! DeepSeek-V4's weights, requested by transformers' names (the `DeepseekV4ForCausalLM` state
//! dict, which `from_pretrained` loads as is; the release's own names are another format).
//! Routed experts are stacked there: `mlp.experts.gate_up_proj` `[experts, 2·width, hidden]`
//! (each expert's gate rows, then its up rows) and `mlp.experts.down_proj`
//! `[experts, hidden, width]`, read one expert at a time ([`WeightSource::matrix_rows`]).

use std::sync::Arc;

use moela_kernels::{DType, QMat, FP8_BLOCK};

use super::{
    Compressor, HyperConnection, HyperHead, LayerHyper, RowLayout, V4Attention, V4Dims, V4Indexer,
};
use crate::config::{Config, MoeConfig, V4Config, V4LayerKind};
use crate::error::ModelError;
use crate::experts::{Experts, ResidentSet};
use crate::rope::Rope;
use crate::weights::{Mlp, Moe, WeightSource};

/// transformers' V4 tensor names below a layer (`model.layers.{l}`), spelled once.
pub(crate) mod names {
    pub const Q_A: &str = "self_attn.q_a_proj.weight";
    pub const Q_A_NORM: &str = "self_attn.q_a_norm.weight";
    pub const Q_B: &str = "self_attn.q_b_proj.weight";
    pub const KV: &str = "self_attn.kv_proj.weight";
    pub const KV_NORM: &str = "self_attn.kv_norm.weight";
    pub const O_A: &str = "self_attn.o_a_proj.weight";
    pub const O_B: &str = "self_attn.o_b_proj.weight";
    pub const SINKS: &str = "self_attn.sinks";
    pub const COMPRESSOR: &str = "self_attn.compressor";
    pub const INDEXER: &str = "self_attn.compressor.indexer";
    pub const ROUTER: &str = "mlp.gate.weight";
    pub const ROUTER_BIAS: &str = "mlp.gate.e_score_correction_bias";
    pub const TID2EID: &str = "mlp.gate.tid2eid";
    pub const GATE_UP: &str = "mlp.experts.gate_up_proj";
    pub const DOWN: &str = "mlp.experts.down_proj";
    pub const SHARED: &str = "mlp.shared_experts";
    pub const HC_HEAD: &str = "model.hc_head";
}

fn at(prefix: &str, name: &str) -> String {
    format!("{prefix}.{name}")
}

fn tensor_err(name: &str, e: impl std::fmt::Display) -> ModelError {
    ModelError::Tensor {
        name: name.to_string(),
        msg: e.to_string(),
    }
}

/// A matrix for the matmul kernels, placed as the source asks.
fn mat(
    src: &mut dyn WeightSource,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<QMat, ModelError> {
    let m = src.matrix(name, rows, cols)?;
    if (m.rows, m.cols) != (rows, cols) {
        return Err(ModelError::Shape {
            name: name.to_string(),
            expected: vec![rows, cols],
            found: vec![m.rows, m.cols],
        });
    }
    Ok(m.place(src.placement()))
}

/// A matrix computed in f32 as the reference computes it (routers, the indexer's weights, the
/// hyper-connections), never requantized.
fn f32_mat(
    src: &mut dyn WeightSource,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<QMat, ModelError> {
    let data = src.load(name, &[rows, cols])?;
    QMat::from_f32(DType::F32, rows, cols, &data).map_err(|e| tensor_err(name, e))
}

/// A compressor at `prefix` over `ratio`-token windows of `series` series of `cols.dim`.
fn load_compressor(
    src: &mut dyn WeightSource,
    d: usize,
    prefix: &str,
    ratio: usize,
    cols: super::CompressorCols,
) -> Result<Compressor, ModelError> {
    let w = cols.series * cols.dim;
    Ok(Compressor {
        kv: mat(src, &at(prefix, "kv_proj.weight"), w, d)?,
        gate: mat(src, &at(prefix, "gate_proj.weight"), w, d)?,
        position_bias: src.load(&at(prefix, "position_bias"), &[ratio, w])?,
        norm: src.load(&at(prefix, "kv_norm.weight"), &[cols.dim])?,
        ratio,
        cols,
    })
}

/// The attention of V4 layer `layer` at `p` (`model.layers.{layer}`).
pub(crate) fn load_attention(
    src: &mut dyn WeightSource,
    cfg: &Config,
    v: &V4Config,
    layer: usize,
    p: &str,
) -> Result<V4Attention, ModelError> {
    let (d, h, hd) = (cfg.hidden_size, cfg.num_attention_heads, v.head_dim);
    let kind = v.layer(layer).map(|l| l.kind).ok_or_else(|| {
        crate::config::cfg_err("layer_types", format!("no entry for layer {layer}"))
    })?;
    let ix = &v.indexer;
    let row = RowLayout::new(
        hd,
        match kind {
            V4LayerKind::Sliding => None,
            V4LayerKind::Csa => Some(2),
            V4LayerKind::Hca => Some(1),
        },
        (kind == V4LayerKind::Csa).then_some(ix.index_head_dim),
    );
    // The entry a window leaves in the blocks: the compressor's, then CSA's indexer key.
    let entries = v.ratio(kind).map(|ratio| {
        let index = row.indexer.map_or(0, |c| c.dim);
        super::EntryLayout::new(ratio, hd + index)
    });
    let rope = match kind {
        V4LayerKind::Sliding => Rope::interleaved(v.qk_rope_head_dim, cfg.rope_theta, cfg.yarn()),
        _ => Rope::interleaved(
            v.qk_rope_head_dim,
            v.compress_rope_theta,
            v.compress_yarn.as_ref(),
        ),
    };
    let q_rows = cfg.q_rows()?;
    let o_rank = v.o_rank()?;
    let o_a_name = at(p, names::O_A);
    // Kept as stored and unpacked: the grouped product takes it by row ranges. FP8 rows can
    // only be taken from a 128-row scale block on; groups that do not start on one (tiny models:
    // V4's o_lora_rank is 1024) get the exact f32 values their blocks decode to.
    let o_a = src.matrix(&o_a_name, o_rank, v.o_group_cols(h)?)?;
    let o_a = match o_a.dtype {
        DType::F8E4M3Block128 if !v.o_lora_rank.is_multiple_of(FP8_BLOCK) => {
            QMat::from_mat(DType::F32, &o_a.to_f32()).map_err(|e| tensor_err(&o_a_name, e))?
        }
        _ => o_a,
    };
    let compressor = match (v.ratio(kind), row.compressor) {
        (Some(ratio), Some(cols)) => Some(load_compressor(
            src,
            d,
            &at(p, names::COMPRESSOR),
            ratio,
            cols,
        )?),
        _ => None,
    };
    let indexer = match row.indexer {
        Some(cols) => {
            let q = at(p, names::INDEXER);
            Some(V4Indexer {
                compressor: load_compressor(src, d, &q, v.csa_ratio, cols)?,
                q_b: mat(src, &at(&q, "q_b_proj.weight"), ix.q_rows()?, v.q_lora_rank)?,
                weights_proj: f32_mat(
                    src,
                    &at(&q, "scorer.weights_proj.weight"),
                    ix.index_n_heads,
                    d,
                )?,
                heads: ix.index_n_heads,
                topk: ix.index_topk,
            })
        }
        None => None,
    };
    Ok(V4Attention {
        q_a: mat(src, &at(p, names::Q_A), v.q_lora_rank, d)?,
        q_a_norm: src.load(&at(p, names::Q_A_NORM), &[v.q_lora_rank])?,
        q_b: mat(src, &at(p, names::Q_B), q_rows, v.q_lora_rank)?,
        kv: mat(src, &at(p, names::KV), hd, d)?,
        kv_norm: src.load(&at(p, names::KV_NORM), &[hd])?,
        o_a,
        o_b: mat(src, &at(p, names::O_B), d, o_rank)?,
        sinks: src.load(&at(p, names::SINKS), &[h])?,
        compressor,
        indexer,
        dims: V4Dims {
            heads: h,
            head_dim: hd,
            rope_dim: v.qk_rope_head_dim,
            q_lora_rank: v.q_lora_rank,
            o_groups: v.o_groups,
            o_lora_rank: v.o_lora_rank,
            window: v.sliding_window,
            eps: cfg.rms_norm_eps,
            scale: (1.0 / (hd as f64).sqrt()) as f32,
            rope,
            row,
            entries,
        },
    })
}

/// One hyper-connection at `prefix` (`{layer}.attn_hc` or `{layer}.ffn_hc`).
fn hyper(
    src: &mut dyn WeightSource,
    cfg: &Config,
    v: &V4Config,
    prefix: &str,
) -> Result<HyperConnection, ModelError> {
    let n = v.hc.hc_mult;
    let mixes = v.hc_mixes()?;
    let name = at(prefix, "scale");
    let scale: [f32; 3] = src
        .load(&name, &[3])?
        .try_into()
        .map_err(|v: Vec<f32>| tensor_err(&name, format!("{} values, expected 3", v.len())))?;
    Ok(HyperConnection {
        fn_: f32_mat(src, &at(prefix, "fn"), mixes, n * cfg.hidden_size)?,
        base: src.load(&at(prefix, "base"), &[mixes])?,
        scale,
        streams: n,
        sinkhorn_iters: v.hc.sinkhorn_iters,
        hc_eps: v.hc.eps,
        norm_eps: cfg.rms_norm_eps,
    })
}

/// The two hyper-connections of the layer at `p`.
pub(crate) fn load_hyper(
    src: &mut dyn WeightSource,
    cfg: &Config,
    v: &V4Config,
    p: &str,
) -> Result<LayerHyper, ModelError> {
    Ok(LayerHyper {
        attn: hyper(src, cfg, v, &at(p, "attn_hc"))?,
        ffn: hyper(src, cfg, v, &at(p, "ffn_hc"))?,
    })
}

/// A stream collapse at `p`: `model.hc_head`, or an MTP layer's.
pub(crate) fn load_head(
    src: &mut dyn WeightSource,
    cfg: &Config,
    v: &V4Config,
    p: &str,
) -> Result<HyperHead, ModelError> {
    let n = v.hc.hc_mult;
    let name = at(p, "hc_scale");
    let scale = src.load(&name, &[1])?;
    let scale = *scale.first().ok_or_else(|| tensor_err(&name, "no value"))?;
    Ok(HyperHead {
        fn_: f32_mat(src, &at(p, "hc_fn"), n, n * cfg.hidden_size)?,
        base: src.load(&at(p, "hc_base"), &[n])?,
        scale,
        streams: n,
        hc_eps: v.hc.eps,
        norm_eps: cfg.rms_norm_eps,
    })
}

/// The MoE of V4 layer `layer` at `p`: routed by the biased √softplus scores, or (a hash layer)
/// by `tid2eid`; stacked routed experts; one shared expert; the SwiGLU clamp on all of them.
pub(crate) fn load_moe(
    src: &mut dyn WeightSource,
    cfg: &Config,
    m: &MoeConfig,
    v: &V4Config,
    layer: usize,
    p: &str,
    resident: Option<&Arc<ResidentSet>>,
) -> Result<Moe, ModelError> {
    let (d, e, w, k) = (
        cfg.hidden_size,
        m.n_routed_experts,
        m.moe_intermediate_size,
        m.num_experts_per_tok,
    );
    let hash_moe = v.layer(layer).is_some_and(|l| l.hash_moe);
    let (bias, hash) = match hash_moe {
        false => (Some(src.load(&at(p, names::ROUTER_BIAS), &[e])?), None),
        true => {
            let name = at(p, names::TID2EID);
            let ids = src.load_ints(&name, &[cfg.vocab_size, k])?;
            if Some(ids.len()) != cfg.vocab_size.checked_mul(k) {
                return Err(tensor_err(
                    &name,
                    format!("{} ids, expected vocab × {k}", ids.len()),
                ));
            }
            let table = ids
                .iter()
                .map(|&x| {
                    u32::try_from(x)
                        .ok()
                        .filter(|&x| (x as usize) < e)
                        .ok_or_else(|| tensor_err(&name, format!("expert id {x} is not below {e}")))
                })
                .collect::<Result<Vec<u32>, _>>()?;
            (None, Some(table))
        }
    };
    let place = src.placement().for_experts();
    let (gate_up, down) = (at(p, names::GATE_UP), at(p, names::DOWN));
    let mut experts = Vec::with_capacity(e);
    for i in 0..e {
        let rows = |src: &mut dyn WeightSource, name: &str, shape: &[usize], first, n| {
            src.matrix_rows(name, shape, first, n)
                .map(|m| m.place(place))
        };
        experts.push(Mlp {
            gate: rows(src, &gate_up, &[e, 2 * w, d], 2 * w * i, w)?,
            up: rows(src, &gate_up, &[e, 2 * w, d], 2 * w * i + w, w)?,
            down: rows(src, &down, &[e, d, w], d * i, d)?,
            swiglu_limit: m.swiglu_limit,
        });
    }
    let s = at(p, names::SHARED);
    let shared = Mlp {
        gate: mat(src, &at(&s, "gate_proj.weight"), w, d)?,
        up: mat(src, &at(&s, "up_proj.weight"), w, d)?,
        down: mat(src, &at(&s, "down_proj.weight"), d, w)?,
        swiglu_limit: m.swiglu_limit,
    };
    Ok(Moe {
        config: m.clone(),
        router: f32_mat(src, &at(p, names::ROUTER), e, d)?,
        bias,
        experts: Experts::placed(experts, resident),
        shared: Some(shared),
        hash,
    })
}
