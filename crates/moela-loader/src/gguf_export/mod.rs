//! `moela quantize`: writes a loaded model as a GGUF file that llama.cpp b11434 loads, with the
//! metadata keys, tensor names, shapes and layouts of its converter — `deepseek2` (V2/V3) or
//! `deepseek32` (V3.2: the split `attn_k_b`/`attn_v_b` MLA layout, stacked experts), or
//! `deepseek4` (V4: stacked experts, `tid2eid` as I32, compressor position biases 2-D) — and the
//! tokenizer. Names come from the one name table (`gguf::names`), in the model's family.
//!
//! Tensor types ([`tensor_type`]): vectors F32. MLA: the matrices in the requested type (routers
//! and the indexer's head weights F32). V4, as llama.cpp's converter writes DeepSeek's release:
//! the weights the release stores in FP8 or FP4 (attention projections, the indexer's query,
//! shared and routed experts) in the requested type — except routed experts held as MXFP4,
//! whose blocks are copied unchanged — and the rest (embeddings, head, routers, compressors,
//! the indexer's head weights, hyper-connections) in the type they are held in, an f32 copy in
//! BF16 when every value is a bf16 (as the release stores them), else F32.

mod metadata;

use std::path::Path;

use moela_kernels::fp::{bf16_to_f32, f32_to_bf16};
use moela_kernels::{DType, Mat, QMat};
use moela_model::{Attention, Model, ModelError, TensorRef};

use crate::error::LoadError;
use crate::gguf::{
    hf_name_to_gguf, split_kv_b, write_tokenizer_metadata_padded, Family, GgmlType, GgufError,
    GgufTarget, GgufWriter, KvBDims,
};

/// ggml's `GGML_TYPE_I32`.
const GGML_I32: GgmlType = GgmlType(26);

/// `deepseek4` tensors written in the requested type (suffixes after `blk.N.`): those the V4
/// release stores in FP8, and the stacked routed experts (FP4 there) unless held as MXFP4.
const V4_REQUESTED_TYPE: &[&str] = &[
    "attn_q_a.weight",
    "attn_q_b.weight",
    "attn_kv.weight",
    "attn_output_a.weight",
    "attn_output_b.weight",
    "indexer.attn_q_b.weight",
    "ffn_gate_shexp.weight",
    "ffn_up_shexp.weight",
    "ffn_down_shexp.weight",
    "ffn_gate_exps.weight",
    "ffn_up_exps.weight",
    "ffn_down_exps.weight",
];

/// One tensor to write: its GGUF name, ggml dims (innermost first), type, and where it comes from.
struct Planned<'a> {
    name: String,
    dims: Vec<u64>,
    ggml: GgmlType,
    /// The type matrices are converted to (F32 for vectors and tables).
    dtype: DType,
    parts: Vec<Part<'a>>,
}

enum Part<'a> {
    Floats(&'a [f32]),
    Ids(&'a [u32]),
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

/// `m` in the type it is held in, where GGUF has that type; an f32 matrix all of whose values
/// are bf16 as BF16 (exact either way). FP8 (no GGUF type) in `target`.
fn held_type(m: &QMat, target: DType) -> DType {
    match m.dtype {
        DType::F32 => {
            let bf16 = |b: &[u8]| {
                let x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                bf16_to_f32(f32_to_bf16(x)).to_bits() == x.to_bits()
            };
            if m.file_bytes().chunks_exact(4).all(bf16) {
                DType::BF16
            } else {
                DType::F32
            }
        }
        d if d.ggml_type().is_some() => d,
        _ => pick(target, m.cols),
    }
}

/// The type matrix `m` (HF `hf`, GGUF `gguf`) of a `family` file is written in for the
/// requested `target` (see the module docs).
fn tensor_type(family: Family, hf: &str, gguf: &str, m: &QMat, target: DType) -> DType {
    match family {
        Family::Standard => {
            // Routers and the indexer's head weights stay F32 (the reference computes them in
            // f32; llama.cpp's converter writes `indexer.proj` so too).
            if hf.ends_with(".mlp.gate.weight") || hf.ends_with(".indexer.weights_proj.weight") {
                DType::F32
            } else {
                pick(target, m.cols)
            }
        }
        Family::V4 => {
            // The name after `blk.N.`, for layer tensors.
            let suffix = gguf
                .strip_prefix("blk.")
                .and_then(|r| r.split_once('.'))
                .map(|(_, s)| s);
            match suffix {
                Some(s) if s.ends_with("_exps.weight") && m.dtype == DType::MXFP4 => DType::MXFP4,
                Some(s) if V4_REQUESTED_TYPE.contains(&s) => pick(target, m.cols),
                _ => held_type(m, target),
            }
        }
    }
}

/// `len` values as `[len / cols, cols]` (ggml `{cols, rows}`).
fn table_dims(name: &str, len: usize, cols: usize, out: &Path) -> Result<Vec<u64>, LoadError> {
    match len.checked_rem(cols) {
        Some(0) => Ok(vec![cols as u64, (len / cols) as u64]),
        _ => Err(LoadError::file(
            out,
            format!("tensor `{name}`: {len} values are not rows of {cols}"),
        )),
    }
}

/// Every tensor of `model` as a `family` file names and lays it out.
fn plan<'a>(
    model: &'a Model,
    family: Family,
    dtype: DType,
    out: &Path,
) -> Result<Vec<Planned<'a>>, LoadError> {
    let c = &model.config;
    let mut plan: Vec<Planned> = Vec::new();
    for (hf, t) in model.weights.named_tensors() {
        let target = hf_name_to_gguf(family, &hf)
            .ok_or_else(|| LoadError::file(out, format!("no GGUF name for tensor `{hf}`")))?;
        match (target, t) {
            (GgufTarget::Whole(g), t) => {
                let (dims, dtype, part) = match t {
                    TensorRef::Vector(v) => (vec![v.len() as u64], DType::F32, Part::Floats(v)),
                    TensorRef::Table { data, cols } => {
                        let dims = table_dims(&g, data.len(), cols, out)?;
                        (dims, DType::F32, Part::Floats(data))
                    }
                    TensorRef::Ids { data, cols } => {
                        let dims = table_dims(&g, data.len(), cols, out)?;
                        (dims, DType::F32, Part::Ids(data))
                    }
                    TensorRef::Matrix(m) => {
                        let d = tensor_type(family, &hf, &g, m, dtype);
                        (vec![m.cols as u64, m.rows as u64], d, Part::Matrix(m))
                    }
                };
                let ggml = match part {
                    Part::Ids(_) => GGML_I32,
                    _ => ggml(dtype)?,
                };
                plan.push(Planned {
                    name: g,
                    dims,
                    ggml,
                    dtype,
                    parts: vec![part],
                })
            }
            (GgufTarget::Expert { name: g, expert }, TensorRef::Matrix(m)) => {
                // Experts arrive interleaved (gate, up, down of expert 0, then 1, ...).
                match plan.iter_mut().rev().find(|p| p.name == g) {
                    Some(p) if expert == p.parts.len() => {
                        if tensor_type(family, &hf, &g, m, dtype) != p.dtype {
                            return Err(LoadError::file(
                                out,
                                format!("the experts of `{g}` are held in different types"),
                            ));
                        }
                        p.parts.push(Part::Matrix(m));
                        p.dims[2] += 1;
                    }
                    _ if expert == 0 => {
                        let d = tensor_type(family, &hf, &g, m, dtype);
                        plan.push(Planned {
                            name: g,
                            dims: vec![m.cols as u64, m.rows as u64, 1],
                            ggml: ggml(d)?,
                            dtype: d,
                            parts: vec![Part::Matrix(m)],
                        })
                    }
                    _ => {
                        return Err(LoadError::file(
                            out,
                            format!("expert tensors of `{g}` out of order"),
                        ))
                    }
                }
            }
            (GgufTarget::KvB { k_b, v_b, .. }, TensorRef::Matrix(kv)) => {
                let mla = c.mla().ok_or_else(|| {
                    LoadError::file(out, format!("`{hf}` in a model without MLA"))
                })?;
                let kv = kv.to_f32();
                let d = KvBDims::of(c.num_attention_heads, mla);
                let (kb, vb) = split_kv_b(&kv.data, d).map_err(gerr)?;
                let (h, r, dn, dv) = (d.n_heads, d.kv_lora_rank, d.qk_nope_head_dim, d.v_head_dim);
                // k_b: [H, r, dn] (ggml {dn, r, H}); v_b: [H, dv, r] (ggml {r, dv, H}).
                for (name, data, rows, cols) in [(k_b, kb, r, dn), (v_b, vb, dv, r)] {
                    let t = pick(dtype, cols);
                    plan.push(Planned {
                        name,
                        dims: vec![cols as u64, rows as u64, h as u64],
                        ggml: ggml(t)?,
                        dtype: t,
                        parts: vec![Part::Owned(Mat {
                            rows: h * rows,
                            cols,
                            data,
                        })],
                    });
                }
            }
            _ => {
                return Err(LoadError::file(
                    out,
                    format!("tensor `{hf}` does not fit its GGUF form"),
                ))
            }
        }
    }
    Ok(plan)
}

/// Writes `model` to `out` as a `deepseek2`, `deepseek32` or `deepseek4` file with matrices in
/// `dtype` as the module docs say.
pub fn export_gguf(
    model: &Model,
    tokenizer_json: &str,
    tokenizer_config_json: Option<&str>,
    dtype: DType,
    name: &str,
    out: &Path,
) -> Result<(), LoadError> {
    let c = &model.config;
    if c.moe.as_ref().is_some_and(|m| m.moe_layer_freq != 1) {
        return Err(LoadError::file(
            out,
            "GGUF deepseek2 cannot express moe_layer_freq other than 1",
        ));
    }
    let model_err = |source: ModelError| LoadError::Model {
        path: out.to_path_buf(),
        source,
    };
    let mut w = GgufWriter::new();
    let family = match &c.attention {
        Attention::Mla(m) => {
            let arch = if m.indexer.is_some() {
                "deepseek32"
            } else {
                "deepseek2"
            };
            let sizes = (
                m.latent_dim().map_err(model_err)?,
                m.qk_head_dim().map_err(model_err)?,
            );
            metadata::write_general(&mut w, arch, name).map_err(gerr)?;
            let nextn = usize::from(model.has_mtp());
            metadata::write_mla(&mut w, arch, c, m, sizes, nextn).map_err(gerr)?;
            Family::Standard
        }
        Attention::V4(v) => {
            let moe = c
                .moe
                .as_ref()
                .ok_or_else(|| LoadError::file(out, "a DeepSeek-V4 model without experts"))?;
            metadata::write_general(&mut w, "deepseek4", name).map_err(gerr)?;
            metadata::write_v4(&mut w, c, v, moe).map_err(gerr)?;
            Family::V4
        }
        Attention::Gqa(_) => {
            return Err(LoadError::file(
                out,
                format!(
                    "GGUF export writes DeepSeek (deepseek2 / deepseek32 / deepseek4) models only; this is a {} model",
                    c.model_type.as_str()
                ),
            ))
        }
    };
    let plan = plan(model, family, dtype, out)?;
    let experts_mxfp4 = plan
        .iter()
        .any(|p| p.name.ends_with("_exps.weight") && p.dtype == DType::MXFP4);
    metadata::write_file_type(&mut w, dtype, experts_mxfp4).map_err(gerr)?;
    write_tokenizer_metadata_padded(
        &mut w,
        tokenizer_json,
        tokenizer_config_json,
        "deepseek-v3",
        Some(c.vocab_size),
    )
    .map_err(gerr)?;
    for p in &plan {
        w.add_tensor(p.name.clone(), &p.dims, p.ggml)
            .map_err(gerr)?;
    }
    let mut tw = w.create(out).map_err(gerr)?;
    for p in &plan {
        for part in &p.parts {
            let bytes: Vec<u8> = match part {
                Part::Floats(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                Part::Ids(v) => ids_bytes(v, &p.name, out)?,
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

/// Ids as little-endian i32 (llama.cpp's `tid2eid` type).
fn ids_bytes(ids: &[u32], name: &str, out: &Path) -> Result<Vec<u8>, LoadError> {
    let mut bytes = Vec::with_capacity(ids.len() * 4);
    for &id in ids {
        let id = i32::try_from(id)
            .map_err(|_| LoadError::file(out, format!("tensor `{name}`: id {id} exceeds i32")))?;
        bytes.extend_from_slice(&id.to_le_bytes());
    }
    Ok(bytes)
}

fn convert(dtype: DType, m: &Mat, name: &str, out: &Path) -> Result<Vec<u8>, LoadError> {
    QMat::from_mat(dtype, m)
        .map(|q| q.bytes().to_vec())
        .map_err(|e| LoadError::file(out, format!("tensor `{name}`: {e}")))
}
