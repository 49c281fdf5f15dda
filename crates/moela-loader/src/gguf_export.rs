//! `moela quantize`: writes a loaded model as a `deepseek2` (V2/V3) or `deepseek32` (V3.2) GGUF
//! file that llama.cpp loads — the metadata keys of its converter, the split `attn_k_b`/`attn_v_b` MLA layout, stacked
//! expert tensors, and the tokenizer.

use std::path::Path;

use moela_kernels::{DType, Mat, QMat};
use moela_model::{Config, MlaConfig, Model, ModelError, ScoringFunc, TensorRef, TopkMethod};

use crate::error::LoadError;
use crate::gguf::{
    hf_name_to_gguf, split_kv_b, write_tokenizer_metadata_padded, GgmlType, GgufError, GgufTarget,
    GgufValue, GgufWriter, KvBDims,
};

/// One tensor to write: its GGUF name, ggml dims (innermost first), type, and where it comes from.
struct Planned<'a> {
    name: String,
    dims: Vec<u64>,
    dtype: DType,
    parts: Vec<Part<'a>>,
}

enum Part<'a> {
    Vector(&'a [f32]),
    Matrix(&'a QMat),
    Owned(Mat),
}

fn gerr(e: GgufError) -> LoadError {
    LoadError::from(e)
}

/// The type a `[rows, cols]` matrix is written in: the target when its rows fit the target's
/// blocks, else F16 (F32 when the target is F32).
fn pick(target: DType, cols: usize) -> DType {
    if cols.is_multiple_of(target.block_size()) {
        target
    } else if target == DType::F32 {
        DType::F32
    } else {
        DType::F16
    }
}

fn ggml(d: DType) -> Result<GgmlType, LoadError> {
    d.ggml_type().map(GgmlType).ok_or_else(|| LoadError::File {
        path: "<export>".into(),
        msg: format!("{} has no GGUF type", d.name()),
    })
}

/// The architecture `m` is written as: `deepseek32` (llama.cpp's V3.2, DSA indexer) or
/// `deepseek2`.
fn mla_arch(m: &MlaConfig) -> &'static str {
    if m.indexer.is_some() {
        "deepseek32"
    } else {
        "deepseek2"
    }
}

/// The `{arch}.*` and `general.*` metadata for `c`, whose attention is `m` with rows of
/// `latent` cached values and query/key heads `qk` wide. Sizes fit in u32: [`Config::validate`]
/// bounds them. No NextN layers are written, so `block_count` is the decoder's layers for
/// `deepseek32` too (as llama.cpp's converter with `--no-mtp`).
fn write_metadata(
    w: &mut GgufWriter,
    c: &Config,
    m: &MlaConfig,
    (latent, qk): (usize, usize),
    name: &str,
) -> Result<(), GgufError> {
    let arch = mla_arch(m);
    let k = |s: &str| format!("{arch}.{s}");
    w.add_string("general.architecture", arch)?;
    w.add_string("general.name", name)?;
    w.add_u32(k("context_length"), c.max_position_embeddings as u32)?;
    w.add_u32(k("embedding_length"), c.hidden_size as u32)?;
    w.add_u32(k("block_count"), c.num_hidden_layers as u32)?;
    w.add_u32(k("feed_forward_length"), c.intermediate_size as u32)?;
    w.add_u32(k("attention.head_count"), c.num_attention_heads as u32)?;
    // The MLA split layout: one latent "head" of rank + rope for keys, rank for values.
    w.add_u32(k("attention.head_count_kv"), 1)?;
    w.add_u32(k("attention.key_length"), latent as u32)?;
    w.add_u32(k("attention.value_length"), m.kv_lora_rank as u32)?;
    w.add_u32(k("attention.key_length_mla"), qk as u32)?;
    w.add_u32(k("attention.value_length_mla"), m.v_head_dim as u32)?;
    w.add_f32(k("attention.layer_norm_rms_epsilon"), c.rms_norm_eps)?;
    w.add_f32(k("rope.freq_base"), c.rope_theta as f32)?;
    w.add_u32(k("rope.dimension_count"), m.qk_rope_head_dim as u32)?;
    if let Some(q) = m.q_lora_rank {
        w.add_u32(k("attention.q_lora_rank"), q as u32)?;
    }
    w.add_u32(k("attention.kv_lora_rank"), m.kv_lora_rank as u32)?;
    w.add_u32(k("vocab_size"), c.vocab_size as u32)?;
    if let Some(moe) = &c.moe {
        w.add_u32(
            k("leading_dense_block_count"),
            moe.first_k_dense_replace as u32,
        )?;
        w.add_u32(
            k("expert_feed_forward_length"),
            moe.moe_intermediate_size as u32,
        )?;
        w.add_u32(k("expert_count"), moe.n_routed_experts as u32)?;
        w.add_u32(k("expert_shared_count"), moe.n_shared_experts as u32)?;
        w.add_u32(k("expert_used_count"), moe.num_experts_per_tok as u32)?;
        w.add_f32(k("expert_weights_scale"), moe.routed_scaling_factor)?;
        w.add_bool(k("expert_weights_norm"), moe.norm_topk_prob)?;
        let gating = match moe.scoring_func {
            ScoringFunc::Softmax => 1,
            // √softplus is DeepSeek-V4's, which has no MLA part and never gets here.
            ScoringFunc::Sigmoid | ScoringFunc::Sqrtsoftplus => 2,
        };
        w.add_u32(k("expert_gating_func"), gating)?;
        if moe.topk_method != TopkMethod::Greedy && moe.n_group > 1 {
            w.add_u32(k("expert_group_count"), moe.n_group as u32)?;
            w.add_u32(k("expert_group_used_count"), moe.topk_group as u32)?;
        }
    }
    if let Some(ix) = &m.indexer {
        w.add_u32(k("attention.indexer.head_count"), ix.index_n_heads as u32)?;
        w.add_u32(k("attention.indexer.key_length"), ix.index_head_dim as u32)?;
        w.add_u32(k("attention.indexer.top_k"), ix.index_topk as u32)?;
    }
    if let Some(y) = c.yarn() {
        w.add_string(k("rope.scaling.type"), "yarn")?;
        w.add_f32(k("rope.scaling.factor"), y.factor as f32)?;
        w.add_u32(
            k("rope.scaling.original_context_length"),
            y.original_max_position_embeddings as u32,
        )?;
        w.add_f32(k("rope.scaling.yarn_beta_fast"), y.beta_fast as f32)?;
        w.add_f32(k("rope.scaling.yarn_beta_slow"), y.beta_slow as f32)?;
        w.add_f32(
            k("rope.scaling.yarn_log_multiplier"),
            (0.1 * y.mscale_all_dim) as f32,
        )?;
    }
    Ok(())
}

/// Writes `model` to `out` with matrices in `dtype` (norms, biases and routers stay F32;
/// matrices whose width does not fit the blocks are F16).
pub fn export_mla_gguf(
    model: &Model,
    tokenizer_json: &str,
    tokenizer_config_json: Option<&str>,
    dtype: DType,
    name: &str,
    out: &Path,
) -> Result<(), LoadError> {
    let c = &model.config;
    let Some(mla) = c.mla() else {
        return Err(LoadError::file(
            out,
            format!(
                "GGUF export writes DeepSeek (deepseek2 / deepseek32) models only; this is a {} model",
                c.model_type.as_str()
            ),
        ));
    };
    if c.moe.as_ref().is_some_and(|m| m.moe_layer_freq != 1) {
        return Err(LoadError::file(
            out,
            "GGUF deepseek2 cannot express moe_layer_freq other than 1",
        ));
    }
    let mut plan: Vec<Planned> = Vec::new();
    for (hf, t) in model.weights.named_tensors() {
        let target = hf_name_to_gguf(&hf)
            .ok_or_else(|| LoadError::file(out, format!("no GGUF name for tensor `{hf}`")))?;
        match (target, t) {
            (GgufTarget::Whole(g), TensorRef::Vector(v)) => plan.push(Planned {
                name: g,
                dims: vec![v.len() as u64],
                dtype: DType::F32,
                parts: vec![Part::Vector(v)],
            }),
            (GgufTarget::Whole(g), TensorRef::Matrix(m)) => {
                // Routers and the indexer's head weights stay F32 (the reference computes
                // them in f32; llama.cpp's converter writes `indexer.proj` so too).
                let d = if hf.ends_with(".mlp.gate.weight")
                    || hf.ends_with(".indexer.weights_proj.weight")
                {
                    DType::F32
                } else {
                    pick(dtype, m.cols)
                };
                plan.push(Planned {
                    name: g,
                    dims: vec![m.cols as u64, m.rows as u64],
                    dtype: d,
                    parts: vec![Part::Matrix(m)],
                })
            }
            (GgufTarget::Expert { name: g, expert }, TensorRef::Matrix(m)) => {
                // Experts arrive interleaved (gate, up, down of expert 0, then 1, ...).
                match plan.iter_mut().rev().find(|p| p.name == g) {
                    Some(p) if expert == p.parts.len() => {
                        p.parts.push(Part::Matrix(m));
                        p.dims[2] += 1;
                    }
                    _ if expert == 0 => plan.push(Planned {
                        name: g,
                        dims: vec![m.cols as u64, m.rows as u64, 1],
                        dtype: pick(dtype, m.cols),
                        parts: vec![Part::Matrix(m)],
                    }),
                    _ => {
                        return Err(LoadError::file(
                            out,
                            format!("expert tensors of `{g}` out of order"),
                        ))
                    }
                }
            }
            (GgufTarget::KvB { k_b, v_b, .. }, TensorRef::Matrix(kv)) => {
                let kv = kv.to_f32();
                let d = KvBDims::of(c.num_attention_heads, mla);
                let (kb, vb) = split_kv_b(&kv.data, d).map_err(gerr)?;
                let (h, r, dn, dv) = (d.n_heads, d.kv_lora_rank, d.qk_nope_head_dim, d.v_head_dim);
                // k_b: [H, r, dn] (ggml {dn, r, H}); v_b: [H, dv, r] (ggml {r, dv, H}).
                plan.push(Planned {
                    name: k_b,
                    dims: vec![dn as u64, r as u64, h as u64],
                    dtype: pick(dtype, dn),
                    parts: vec![Part::Owned(Mat {
                        rows: h * r,
                        cols: dn,
                        data: kb,
                    })],
                });
                plan.push(Planned {
                    name: v_b,
                    dims: vec![r as u64, dv as u64, h as u64],
                    dtype: pick(dtype, r),
                    parts: vec![Part::Owned(Mat {
                        rows: h * dv,
                        cols: r,
                        data: vb,
                    })],
                });
            }
            _ => {
                return Err(LoadError::file(
                    out,
                    format!("tensor `{hf}` does not fit its GGUF form"),
                ))
            }
        }
    }
    let mut w = GgufWriter::new();
    let model_err = |source: ModelError| LoadError::Model {
        path: out.to_path_buf(),
        source,
    };
    let sizes = (
        mla.latent_dim().map_err(model_err)?,
        mla.qk_head_dim().map_err(model_err)?,
    );
    write_metadata(&mut w, c, mla, sizes, name).map_err(gerr)?;
    write_tokenizer_metadata_padded(
        &mut w,
        tokenizer_json,
        tokenizer_config_json,
        "deepseek-v3",
        Some(c.vocab_size),
    )
    .map_err(gerr)?;
    w.add("general.quantization_version", GgufValue::U32(2))
        .map_err(gerr)?;
    for p in &plan {
        w.add_tensor(p.name.clone(), &p.dims, ggml(p.dtype)?)
            .map_err(gerr)?;
    }
    let mut tw = w.create(out).map_err(gerr)?;
    for p in &plan {
        for part in &p.parts {
            let bytes: Vec<u8> = match part {
                Part::Vector(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                Part::Matrix(m) if m.dtype == p.dtype => m.file_bytes().into_owned(),
                Part::Matrix(m) => convert(p.dtype, &m.to_f32(), &p.name, out)?,
                Part::Owned(m) => convert(p.dtype, m, &p.name, out)?,
            };
            tw.write_tensor_data(&bytes).map_err(gerr)?;
        }
    }
    tw.finish().map_err(gerr)?;
    Ok(())
}

fn convert(dtype: DType, m: &Mat, name: &str, out: &Path) -> Result<Vec<u8>, LoadError> {
    QMat::from_mat(dtype, m)
        .map(|q| q.bytes().to_vec())
        .map_err(|e| LoadError::file(out, format!("tensor `{name}`: {e}")))
}
