//! An HF-style `config.json` rebuilt from `deepseek2` / `deepseek32` GGUF metadata (llama.cpp's
//! converter, `DeepseekV2Model.set_gguf_parameters` and `DeepseekV32Model`'s additions, wrote it
//! from the HF config; this undoes that).

use serde_json::{json, Map, Value};

use super::{GgufError, GgufFile};

/// The MLA architectures: DeepSeek V2/V3 (`deepseek2`) and V3.2 (`deepseek32`: the same keys
/// under its own prefix, plus the indexer's, with `block_count` counting the NextN layers).
pub const MLA_ARCHS: [&str; 2] = ["deepseek2", "deepseek32"];
const V32: &str = "deepseek32";

/// llama.cpp's `expert_gating_func` values.
const GATING_SOFTMAX: u32 = 1;
const GATING_SIGMOID: u32 = 2;

pub(crate) fn key(arch: &str, suffix: &str) -> String {
    format!("{arch}.{suffix}")
}

/// `x` rounded to 12 significant digits (drops the noise of f32 → decimal → ×10 arithmetic).
fn round_sig(x: f64) -> f64 {
    format!("{x:.11e}").parse().unwrap_or(x)
}

pub(crate) fn key_error(f: &GgufFile, key: &str, msg: impl Into<String>) -> GgufError {
    GgufError::Key {
        path: f.path().to_path_buf(),
        key: key.to_string(),
        msg: msg.into(),
    }
}

/// Whether the file is a DeepSeek-V3-family model: sigmoid gating
/// (`deepseek2.expert_gating_func == 2`) or `exp_probs_b` (the V3 routing bias) tensors.
pub fn is_deepseek_v3(f: &GgufFile) -> Result<bool, GgufError> {
    let arch = f.architecture()?;
    let gating = f.opt_u32(&key(arch, "expert_gating_func"))?;
    Ok(arch == V32
        || gating == Some(GATING_SIGMOID)
        || f.tensors()
            .iter()
            .any(|t| t.name.ends_with(".exp_probs_b.bias")))
}

/// The HF `config.json` (official DeepSeek spelling: top-level `rope_theta`/`rope_scaling`,
/// explicit `topk_method`/`scoring_func`) that the metadata of a `deepseek2` file encodes.
///
/// - `model_type` is `deepseek_v3` when [`is_deepseek_v3`], else `deepseek_v2`.
/// - `n_group`/`topk_group` come from `expert_group_count`/`expert_group_used_count`, 1/1 when
///   absent; `topk_method` is `noaux_tc` for sigmoid gating, else `group_limited_greedy` when
///   there are several groups, else `greedy`.
/// - Head sizes: `qk_rope_head_dim = rope.dimension_count`; `qk_nope_head_dim =
///   key_length_mla − rope` and `v_head_dim = value_length_mla` (files without the `_mla` keys
///   store the per-head sizes in `key_length`/`value_length`).
/// - YaRN: `mscale_all_dim = yarn_log_multiplier / 0.1` (the converter wrote
///   `0.1 · mscale_all_dim`), and `mscale` = the same (DeepSeek's configs have them equal; the
///   file cannot say otherwise). `beta_fast`/`beta_slow` default to 32/1.
/// - `vocab_size` from `token_embd`'s dims; `tie_word_embeddings` when there is no `output`.
/// - `moe_layer_freq` is 1: GGUF has no key for it (llama.cpp makes every layer from
///   `leading_dense_block_count` on an MoE layer).
pub fn deepseek2_config_json(f: &GgufFile) -> Result<Value, GgufError> {
    let arch = f.architecture()?;
    if !MLA_ARCHS.contains(&arch) {
        return Err(key_error(
            f,
            super::KEY_ARCHITECTURE,
            format!("expected one of {MLA_ARCHS:?}, found {arch:?}"),
        ));
    }
    let key = |s: &str| key(arch, s);
    let usize_req = |s: &str| f.get_usize(&key(s));
    let usize_opt = |s: &str| f.opt_usize(&key(s));

    let hidden_size = usize_req("embedding_length")?;
    let block_count = usize_req("block_count")?;
    let nextn = usize_opt("nextn_predict_layers")?;
    // block_count counts the NextN (MTP) layers after the decoder's (llama.cpp: n_layer =
    // block_count − nextn_predict_layers, every architecture).
    let num_hidden_layers = match nextn {
        Some(n) => block_count.checked_sub(n).ok_or_else(|| {
            key_error(
                f,
                &key("nextn_predict_layers"),
                format!("{n} is more than block_count {block_count}"),
            )
        })?,
        _ => block_count,
    };
    let num_attention_heads = usize_req("attention.head_count")?;
    let intermediate_size = usize_req("feed_forward_length")?;
    let max_position_embeddings = usize_req("context_length")?;
    let rms_norm_eps = f
        .opt_f64(&key("attention.layer_norm_rms_epsilon"))?
        .unwrap_or(1e-6);
    let rope_theta = f.opt_f64(&key("rope.freq_base"))?.unwrap_or(10000.0);
    let qk_rope_head_dim = usize_req("rope.dimension_count")?;
    let kv_lora_rank = usize_req("attention.kv_lora_rank")?;
    // V2-Lite has no q-LoRA: the key is absent (some writers put 0).
    let q_lora_rank = usize_opt("attention.q_lora_rank")?.filter(|&r| r > 0);

    // Newer files: key_length/value_length are the MLA cache widths (576/512) and the per-head
    // sizes live in the `_mla` keys; older files have only the per-head sizes.
    let (k_key, k_len) = match usize_opt("attention.key_length_mla")? {
        Some(v) => (key("attention.key_length_mla"), v),
        None => (
            key("attention.key_length"),
            usize_req("attention.key_length")?,
        ),
    };
    let v_head_dim = match usize_opt("attention.value_length_mla")? {
        Some(v) => v,
        None => usize_req("attention.value_length")?,
    };
    let qk_nope_head_dim = k_len.checked_sub(qk_rope_head_dim).ok_or_else(|| {
        key_error(
            f,
            &k_key,
            format!("{k_len} is smaller than rope.dimension_count {qk_rope_head_dim}"),
        )
    })?;

    let n_routed_experts = usize_opt("expert_count")?.filter(|&e| e > 0);
    let n_shared_experts = usize_opt("expert_shared_count")?.unwrap_or(0);
    let num_experts_per_tok = usize_opt("expert_used_count")?.unwrap_or(0);
    let moe_intermediate_size = usize_opt("expert_feed_forward_length")?.unwrap_or(0);
    let first_k_dense_replace = usize_opt("leading_dense_block_count")?.unwrap_or(0);
    let n_group = usize_opt("expert_group_count")?.unwrap_or(1);
    let topk_group = usize_opt("expert_group_used_count")?.unwrap_or(1);
    let routed_scaling_factor = f.opt_f64(&key("expert_weights_scale"))?.unwrap_or(1.0);
    // The converter writes expert_weights_norm only when it is true.
    let norm_topk_prob = f.opt_bool(&key("expert_weights_norm"))?.unwrap_or(false);

    let v3 = is_deepseek_v3(f)?;
    let gating_key = key("expert_gating_func");
    let sigmoid = match f.opt_u32(&gating_key)? {
        Some(GATING_SIGMOID) => true,
        Some(GATING_SOFTMAX) => false,
        // Files from before the key existed are V2 (softmax, as llama.cpp assumes) unless they
        // carry the V3 routing bias, which only sigmoid/noaux_tc uses.
        None => v3,
        Some(other) => {
            return Err(key_error(
                f,
                &gating_key,
                format!("unknown gating function {other} (1 = softmax, 2 = sigmoid)"),
            ))
        }
    };
    let topk_method = if sigmoid {
        "noaux_tc"
    } else if n_group > 1 {
        "group_limited_greedy"
    } else {
        "greedy"
    };

    let rope_scaling = rope_scaling(f, arch)?;

    let vocab_size = vocab_size(f, &key("vocab_size"))?;

    let mut c = Map::new();
    let (class, model_type) = if arch == V32 {
        ("DeepseekV32ForCausalLM", "deepseek_v32")
    } else if v3 {
        ("DeepseekV3ForCausalLM", "deepseek_v3")
    } else {
        ("DeepseekV2ForCausalLM", "deepseek_v2")
    };
    c.insert("architectures".into(), json!([class]));
    c.insert("model_type".into(), json!(model_type));
    c.insert("vocab_size".into(), json!(vocab_size));
    c.insert("hidden_size".into(), json!(hidden_size));
    c.insert("intermediate_size".into(), json!(intermediate_size));
    c.insert("moe_intermediate_size".into(), json!(moe_intermediate_size));
    c.insert("num_hidden_layers".into(), json!(num_hidden_layers));
    c.insert("num_attention_heads".into(), json!(num_attention_heads));
    // MLA files say head_count_kv = 1; HF configs carry the head count (unused by inference).
    c.insert("num_key_value_heads".into(), json!(num_attention_heads));
    c.insert("q_lora_rank".into(), json!(q_lora_rank));
    c.insert("kv_lora_rank".into(), json!(kv_lora_rank));
    c.insert("qk_nope_head_dim".into(), json!(qk_nope_head_dim));
    c.insert("qk_rope_head_dim".into(), json!(qk_rope_head_dim));
    c.insert("v_head_dim".into(), json!(v_head_dim));
    c.insert("n_routed_experts".into(), json!(n_routed_experts));
    c.insert("n_shared_experts".into(), json!(n_shared_experts));
    c.insert("num_experts_per_tok".into(), json!(num_experts_per_tok));
    c.insert("n_group".into(), json!(n_group));
    c.insert("topk_group".into(), json!(topk_group));
    c.insert("topk_method".into(), json!(topk_method));
    c.insert(
        "scoring_func".into(),
        json!(if sigmoid { "sigmoid" } else { "softmax" }),
    );
    c.insert("norm_topk_prob".into(), json!(norm_topk_prob));
    c.insert("routed_scaling_factor".into(), json!(routed_scaling_factor));
    c.insert("first_k_dense_replace".into(), json!(first_k_dense_replace));
    c.insert("moe_layer_freq".into(), json!(1));
    c.insert("hidden_act".into(), json!("silu"));
    c.insert("attention_bias".into(), json!(false));
    c.insert("rms_norm_eps".into(), json!(rms_norm_eps));
    c.insert("rope_theta".into(), json!(rope_theta));
    c.insert("rope_scaling".into(), rope_scaling);
    c.insert(
        "max_position_embeddings".into(),
        json!(max_position_embeddings),
    );
    insert_token_keys(f, &mut c)?;
    if let Some(n) = nextn {
        c.insert("num_nextn_predict_layers".into(), json!(n));
    }
    if arch == V32 {
        insert_indexer_keys(f, arch, &mut c)?;
    }
    Ok(Value::Object(c))
}

/// The keys every DeepSeek/dense architecture writes the same way: the special-token ids and
/// whether the head is tied to the embedding (no `output.weight`).
pub(crate) fn insert_token_keys(f: &GgufFile, c: &mut Map<String, Value>) -> Result<(), GgufError> {
    c.insert(
        "bos_token_id".into(),
        json!(f.opt_u32("tokenizer.ggml.bos_token_id")?),
    );
    c.insert(
        "eos_token_id".into(),
        json!(f.opt_u32("tokenizer.ggml.eos_token_id")?),
    );
    c.insert(
        "tie_word_embeddings".into(),
        json!(f.tensor("output.weight").is_none()),
    );
    Ok(())
}

/// The DSA indexer's sizes (`{arch}.attention.indexer.*`, V3.2 and V4).
pub(crate) fn insert_indexer_keys(
    f: &GgufFile,
    arch: &str,
    c: &mut Map<String, Value>,
) -> Result<(), GgufError> {
    for (field, suffix) in [
        ("index_n_heads", "attention.indexer.head_count"),
        ("index_head_dim", "attention.indexer.key_length"),
        ("index_topk", "attention.indexer.top_k"),
    ] {
        c.insert(field.into(), json!(f.get_usize(&key(arch, suffix))?));
    }
    Ok(())
}

/// `rope_scaling` from `{arch}.rope.scaling.*`: `null` when absent or `none`.
pub(crate) fn rope_scaling(f: &GgufFile, arch: &str) -> Result<Value, GgufError> {
    let key = |s: &str| key(arch, s);
    let type_key = key("rope.scaling.type");
    let kind = f.opt_str(&type_key)?;
    match kind {
        None | Some("none") => Ok(Value::Null),
        Some("linear") => Ok(json!({
            "type": "linear",
            "factor": f.get_f64(&key("rope.scaling.factor"))?,
        })),
        Some("yarn") => {
            let mut y = Map::new();
            y.insert("type".into(), json!("yarn"));
            y.insert(
                "factor".into(),
                json!(f.get_f64(&key("rope.scaling.factor"))?),
            );
            y.insert(
                "original_max_position_embeddings".into(),
                json!(f.get_usize(&key("rope.scaling.original_context_length"))?),
            );
            y.insert(
                "beta_fast".into(),
                json!(f
                    .opt_f64(&key("rope.scaling.yarn_beta_fast"))?
                    .unwrap_or(32.0)),
            );
            y.insert(
                "beta_slow".into(),
                json!(f
                    .opt_f64(&key("rope.scaling.yarn_beta_slow"))?
                    .unwrap_or(1.0)),
            );
            // llama.cpp's converter writes yarn_log_multiplier = 0.1 · mscale_all_dim
            // ([TAG_DEEPSEEK2_YARN_LOG_MUL_FIX]); mscale is not stored, and DeepSeek's own
            // configs have mscale == mscale_all_dim.
            if let Some(m) = f.opt_f64(&key("rope.scaling.yarn_log_multiplier"))? {
                let all_dim = round_sig(m * 10.0);
                y.insert("mscale".into(), json!(all_dim));
                y.insert("mscale_all_dim".into(), json!(all_dim));
            }
            Ok(Value::Object(y))
        }
        Some(other) => Err(key_error(
            f,
            &type_key,
            format!("unsupported rope scaling type {other:?} (expected yarn, linear or none)"),
        )),
    }
}

/// The vocabulary size: the embedding's rows, else the `{arch}.vocab_size` key (`size_key`), else
/// the token list's length.
pub(crate) fn vocab_size(f: &GgufFile, size_key: &str) -> Result<usize, GgufError> {
    match f.tensor("token_embd.weight") {
        Some(t) => match t.dims.as_slice() {
            [_, v] => usize::try_from(*v).map_err(|_| GgufError::Tensor {
                path: f.path().to_path_buf(),
                name: t.name.clone(),
                msg: format!("vocabulary size {v} does not fit in usize"),
            }),
            other => Err(GgufError::Tensor {
                path: f.path().to_path_buf(),
                name: t.name.clone(),
                msg: format!("expected 2 dims {{hidden, vocab}}, found {other:?}"),
            }),
        },
        None => match f.opt_usize(size_key)? {
            Some(v) => Ok(v),
            None => Ok(f.get_array("tokenizer.ggml.tokens")?.items.len()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::round_sig;

    #[test]
    fn mscale_from_log_multiplier() {
        // f32 0.0707 → "0.0707" → 0.707 (not 0.7070000000000001).
        let m = super::super::f32_to_f64_decimal(0.0707f32);
        assert_eq!(round_sig(m * 10.0), 0.707);
        let m = super::super::f32_to_f64_decimal(0.1f32);
        assert_eq!(round_sig(m * 10.0), 1.0);
    }
}
