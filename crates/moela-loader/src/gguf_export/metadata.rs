//! The metadata `moela quantize` writes: the `general.*` keys, and the `{arch}.*` keys of
//! llama.cpp b11434's converter for `deepseek2` / `deepseek32` (MLA) and `deepseek4` (V4). Sizes
//! fit in u32: [`Config::validate`] bounds them.

use moela_kernels::DType;
use moela_model::{Config, MlaConfig, MoeConfig, ScoringFunc, TopkMethod, V4Config, V4LayerKind};

use crate::gguf::{GgufError, GgufValue, GgufWriter};

/// llama.cpp's `LLAMA_EXPERT_GATING_FUNC_TYPE_SQRTSOFTPLUS`.
const GATING_SQRTSOFTPLUS: u32 = 4;
/// llama.cpp's `LLAMA_FTYPE_MOSTLY_MXFP4_MOE`: the routed experts MXFP4.
const FTYPE_MXFP4_MOE: u32 = 38;

fn bad(msg: impl Into<String>) -> GgufError {
    GgufError::input("GGUF export", msg)
}

/// llama.cpp's `llama_ftype` for a file whose matrices are mostly `dtype`, or whose routed
/// experts are MXFP4 (`experts_mxfp4`, as llama.cpp's V4 converter labels its files).
fn file_type(dtype: DType, experts_mxfp4: bool) -> u32 {
    if experts_mxfp4 {
        return FTYPE_MXFP4_MOE;
    }
    match dtype {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::Q4_0 => 2,
        DType::Q8_0 => 7,
        DType::Q4_K => 14, // MOSTLY_Q4_K_S: Q4_K throughout
        DType::Q6_K => 18,
        DType::BF16 => 32,
        DType::MXFP4 | DType::F8E4M3Block128 => FTYPE_MXFP4_MOE,
    }
}

/// `general.*`: the architecture, the file's name and kind.
pub(super) fn write_general(w: &mut GgufWriter, arch: &str, name: &str) -> Result<(), GgufError> {
    w.add_string("general.architecture", arch)?;
    w.add_string("general.type", "model")?;
    w.add_string("general.name", name)
}

/// `general.file_type` and `general.quantization_version`, once the tensors' types are known.
pub(super) fn write_file_type(
    w: &mut GgufWriter,
    dtype: DType,
    experts_mxfp4: bool,
) -> Result<(), GgufError> {
    w.add_u32("general.file_type", file_type(dtype, experts_mxfp4))?;
    w.add_u32("general.quantization_version", 2)
}

/// The `{arch}.*` keys shared by both families: context, widths, heads, norm, RoPE base.
fn write_common(w: &mut GgufWriter, arch: &str, c: &Config, nextn: usize) -> Result<(), GgufError> {
    let k = |s: &str| format!("{arch}.{s}");
    w.add_u32(k("context_length"), c.max_position_embeddings as u32)?;
    w.add_u32(k("embedding_length"), c.hidden_size as u32)?;
    w.add_u32(k("block_count"), (c.num_hidden_layers + nextn) as u32)?;
    w.add_u32(k("attention.head_count"), c.num_attention_heads as u32)?;
    // MLA's split layout and V4 both have one key head.
    w.add_u32(k("attention.head_count_kv"), 1)?;
    w.add_f32(k("attention.layer_norm_rms_epsilon"), c.rms_norm_eps)?;
    w.add_f32(k("rope.freq_base"), c.rope_theta as f32)
}

/// The expert keys shared by both families (`gating`: llama.cpp's gating function id).
fn write_experts(
    w: &mut GgufWriter,
    arch: &str,
    moe: &MoeConfig,
    gating: u32,
) -> Result<(), GgufError> {
    let k = |s: &str| format!("{arch}.{s}");
    w.add_u32(
        k("expert_feed_forward_length"),
        moe.moe_intermediate_size as u32,
    )?;
    w.add_u32(k("expert_count"), moe.n_routed_experts as u32)?;
    w.add_u32(k("expert_shared_count"), moe.n_shared_experts as u32)?;
    w.add_u32(k("expert_used_count"), moe.num_experts_per_tok as u32)?;
    w.add_f32(k("expert_weights_scale"), moe.routed_scaling_factor)?;
    w.add_bool(k("expert_weights_norm"), moe.norm_topk_prob)?;
    w.add_u32(k("expert_gating_func"), gating)?;
    if moe.topk_method != TopkMethod::Greedy && moe.n_group > 1 {
        w.add_u32(k("expert_group_count"), moe.n_group as u32)?;
        w.add_u32(k("expert_group_used_count"), moe.topk_group as u32)?;
    }
    Ok(())
}

/// The lightning indexer's keys (V3.2 and V4).
fn write_indexer(
    w: &mut GgufWriter,
    arch: &str,
    ix: &moela_model::IndexerConfig,
) -> Result<(), GgufError> {
    let k = |s: &str| format!("{arch}.{s}");
    w.add_u32(k("attention.indexer.head_count"), ix.index_n_heads as u32)?;
    w.add_u32(k("attention.indexer.key_length"), ix.index_head_dim as u32)?;
    w.add_u32(k("attention.indexer.top_k"), ix.index_topk as u32)
}

/// YaRN's keys; `log_multiplier` only where the converter writes one (`deepseek2`).
fn write_yarn(
    w: &mut GgufWriter,
    arch: &str,
    y: &moela_model::Yarn,
    log_multiplier: bool,
) -> Result<(), GgufError> {
    let k = |s: &str| format!("{arch}.{s}");
    w.add_string(k("rope.scaling.type"), "yarn")?;
    w.add_f32(k("rope.scaling.factor"), y.factor as f32)?;
    w.add_u32(
        k("rope.scaling.original_context_length"),
        y.original_max_position_embeddings as u32,
    )?;
    w.add_f32(k("rope.scaling.yarn_beta_fast"), y.beta_fast as f32)?;
    w.add_f32(k("rope.scaling.yarn_beta_slow"), y.beta_slow as f32)?;
    if log_multiplier {
        w.add_f32(
            k("rope.scaling.yarn_log_multiplier"),
            (0.1 * y.mscale_all_dim) as f32,
        )?;
    }
    Ok(())
}

/// The `deepseek2` / `deepseek32` keys of `c`, whose attention is `m` with rows of `latent`
/// cached values and query/key heads `qk` wide, with `nextn` MTP layers written after the
/// decoder's (counted in `block_count` with `nextn_predict_layers`, as llama.cpp reads them;
/// none: the decoder's layers only, as llama.cpp's converter with `--no-mtp`).
pub(super) fn write_mla(
    w: &mut GgufWriter,
    arch: &str,
    c: &Config,
    m: &MlaConfig,
    (latent, qk): (usize, usize),
    nextn: usize,
) -> Result<(), GgufError> {
    let k = |s: &str| format!("{arch}.{s}");
    write_common(w, arch, c, nextn)?;
    if nextn > 0 {
        w.add_u32(k("nextn_predict_layers"), nextn as u32)?;
    }
    w.add_u32(k("feed_forward_length"), c.intermediate_size as u32)?;
    // The MLA split layout: one latent "head" of rank + rope for keys, rank for values.
    w.add_u32(k("attention.key_length"), latent as u32)?;
    w.add_u32(k("attention.value_length"), m.kv_lora_rank as u32)?;
    w.add_u32(k("attention.key_length_mla"), qk as u32)?;
    w.add_u32(k("attention.value_length_mla"), m.v_head_dim as u32)?;
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
        let gating = match moe.scoring_func {
            ScoringFunc::Softmax => 1,
            ScoringFunc::Sigmoid => 2,
            ScoringFunc::Sqrtsoftplus => GATING_SQRTSOFTPLUS,
        };
        write_experts(w, arch, moe, gating)?;
    }
    if let Some(ix) = &m.indexer {
        write_indexer(w, arch, ix)?;
    }
    if let Some(y) = c.yarn() {
        write_yarn(w, arch, y, true)?;
    }
    Ok(())
}

/// The `deepseek4` keys of `c` (V4 part `v`, experts `moe`). What the format cannot say is an
/// error: YaRN on the sliding layers (llama.cpp scales only the compressed ones), a compressed
/// YaRN with a cos/sin amplitude other than 1, hash layers that are not the first ones, no
/// SwiGLU clamp. `compress_ratios` lists the decoder layers, then 0 for each declared MTP layer
/// (as DeepSeek's release config, which the converter copies).
pub(super) fn write_v4(
    w: &mut GgufWriter,
    c: &Config,
    v: &V4Config,
    moe: &MoeConfig,
) -> Result<(), GgufError> {
    const ARCH: &str = "deepseek4";
    let k = |s: &str| format!("{ARCH}.{s}");
    if c.rope_scaling.is_some() {
        return Err(bad(
            "deepseek4 cannot express RoPE scaling on the sliding-window layers",
        ));
    }
    let hash_layers = v.layers.iter().take_while(|l| l.hash_moe).count();
    if v.layers.iter().skip(hash_layers).any(|l| l.hash_moe) {
        return Err(bad(
            "deepseek4 needs the hash-routed layers to be the first ones",
        ));
    }
    let limit = moe
        .swiglu_limit
        .ok_or_else(|| bad("deepseek4 needs a SwiGLU clamp (swiglu_limit)"))?;
    write_common(w, ARCH, c, 0)?;
    if let Some(y) = &v.compress_yarn {
        if y.attention_factor != Some(1.0) {
            return Err(bad(format!(
                "deepseek4 fixes the compressed layers' YaRN amplitude at 1, this model's is {:?}",
                y.attention_factor
            )));
        }
        write_yarn(w, ARCH, y, false)?;
    }
    w.add_u32(k("attention.key_length"), v.head_dim as u32)?;
    w.add_u32(k("attention.value_length"), v.head_dim as u32)?;
    w.add_u32(k("rope.dimension_count"), v.qk_rope_head_dim as u32)?;
    w.add_u32(k("attention.q_lora_rank"), v.q_lora_rank as u32)?;
    w.add_u32(k("attention.sliding_window"), v.sliding_window as u32)?;
    write_experts(w, ARCH, moe, GATING_SQRTSOFTPLUS)?;
    let clamps = vec![limit; c.num_hidden_layers];
    w.add(k("swiglu_clamp_exp"), GgufValue::f32_array(clamps.clone()))?;
    w.add(k("swiglu_clamp_shexp"), GgufValue::f32_array(clamps))?;
    write_indexer(w, ARCH, &v.indexer)?;
    w.add_u32(k("attention.output_group_count"), v.o_groups as u32)?;
    w.add_u32(k("attention.output_lora_rank"), v.o_lora_rank as u32)?;
    let ratios = v
        .layers
        .iter()
        .map(|l| match l.kind {
            V4LayerKind::Sliding => 0,
            kind => v.ratio(kind).unwrap_or(0) as i32,
        })
        .chain(std::iter::repeat_n(0, c.num_nextn_predict_layers));
    w.add(k("attention.compress_ratios"), GgufValue::i32_array(ratios))?;
    w.add_f32(
        k("attention.compress_rope_freq_base"),
        v.compress_rope_theta as f32,
    )?;
    w.add_u32(k("hyper_connection.count"), v.hc.hc_mult as u32)?;
    w.add_u32(
        k("hyper_connection.sinkhorn_iterations"),
        v.hc.sinkhorn_iters as u32,
    )?;
    w.add_f32(k("hyper_connection.epsilon"), v.hc.eps)?;
    w.add_u32(k("hash_layer_count"), hash_layers as u32)?;
    w.add_u32(
        k("embedding_length_out"),
        (c.hidden_size * v.hc.hc_mult) as u32,
    )
}
