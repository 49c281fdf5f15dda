//! An HF-style `config.json` rebuilt from `qwen2` / `llama` GGUF metadata (llama.cpp's converter,
//! `TextModel.set_gguf_parameters` plus `Qwen2Model` / `LlamaModel`, wrote it from the HF
//! config; this undoes that).

use serde_json::{json, Map, Value};

use super::deepseek2::{insert_token_keys, vocab_size};
use super::{GgufError, GgufFile};

/// The dense architectures whose files we read.
pub const DENSE_ARCHITECTURES: &[&str] = &["qwen2", "llama"];

fn key_error(f: &GgufFile, key: &str, msg: impl Into<String>) -> GgufError {
    GgufError::Key {
        path: f.path().to_path_buf(),
        key: key.to_string(),
        msg: msg.into(),
    }
}

/// The HF `config.json` that the metadata of a `qwen2` or `llama` file encodes.
///
/// - Sizes from `{arch}.embedding_length`, `block_count`, `feed_forward_length`,
///   `attention.head_count`, `attention.head_count_kv` (default: the head count),
///   `context_length`; `head_dim` from `attention.key_length` (written when the HF config had
///   an explicit `head_dim`), else `embedding_length / head_count`. `attention.value_length`
///   and `rope.dimension_count`, when present, must agree with it (no partial RoPE).
/// - `rope_theta` from `rope.freq_base` (default 10000), `rms_norm_eps` from
///   `attention.layer_norm_rms_epsilon` (default 1e-6).
/// - `rope.scaling.type` `linear` becomes `rope_scaling` {linear, factor}; Llama-3 scaling is
///   not in the metadata but in the `rope_freqs.weight` tensor, which the caller reads.
/// - `vocab_size` from `token_embd`'s dims; `tie_word_embeddings` when there is no `output`;
///   `llama`: `attention_bias` when `blk.0.attn_q.bias` exists (qwen2 always has q/k/v biases).
/// - Sliding windows are not stored by the converter for these architectures: none.
pub fn dense_config_json(f: &GgufFile) -> Result<Value, GgufError> {
    let arch = f.architecture()?.to_string();
    if !DENSE_ARCHITECTURES.contains(&arch.as_str()) {
        return Err(key_error(
            f,
            super::KEY_ARCHITECTURE,
            format!("expected qwen2 or llama, found {arch:?}"),
        ));
    }
    let key = |s: &str| format!("{arch}.{s}");
    let usize_req = |s: &str| f.get_usize(&key(s));
    let usize_opt = |s: &str| f.opt_usize(&key(s));

    let hidden_size = usize_req("embedding_length")?;
    let heads = usize_req("attention.head_count")?;
    let kv_heads = usize_opt("attention.head_count_kv")?.unwrap_or(heads);
    let head_dim = match usize_opt("attention.key_length")? {
        Some(d) => d,
        None if heads > 0 => hidden_size / heads,
        None => {
            return Err(key_error(
                f,
                &key("attention.head_count"),
                "must be greater than 0",
            ))
        }
    };
    for k in ["attention.value_length", "rope.dimension_count"] {
        if let Some(v) = usize_opt(k)? {
            if v != head_dim {
                return Err(key_error(
                    f,
                    &key(k),
                    format!("{v} differs from the head size {head_dim} (not supported)"),
                ));
            }
        }
    }
    let rope_theta = f.opt_f64(&key("rope.freq_base"))?.unwrap_or(10000.0);
    let rms_norm_eps = f
        .opt_f64(&key("attention.layer_norm_rms_epsilon"))?
        .unwrap_or(1e-6);
    let type_key = key("rope.scaling.type");
    let rope_scaling = match f.opt_str(&type_key)? {
        None | Some("none") => Value::Null,
        Some("linear") => json!({
            "rope_type": "linear",
            "factor": f.get_f64(&key("rope.scaling.factor"))?,
        }),
        Some(other) => {
            return Err(key_error(
                f,
                &type_key,
                format!(
                    "rope scaling {other:?} is not supported for {arch} (expected linear or none)"
                ),
            ))
        }
    };
    let vocab_size = vocab_size(f, &key("vocab_size"))?;

    let mut c = Map::new();
    let class = if arch == "qwen2" {
        "Qwen2ForCausalLM"
    } else {
        "LlamaForCausalLM"
    };
    c.insert("architectures".into(), json!([class]));
    c.insert("model_type".into(), json!(arch));
    c.insert("vocab_size".into(), json!(vocab_size));
    c.insert("hidden_size".into(), json!(hidden_size));
    c.insert(
        "intermediate_size".into(),
        json!(usize_req("feed_forward_length")?),
    );
    c.insert("num_hidden_layers".into(), json!(usize_req("block_count")?));
    c.insert("num_attention_heads".into(), json!(heads));
    c.insert("num_key_value_heads".into(), json!(kv_heads));
    c.insert("head_dim".into(), json!(head_dim));
    c.insert("hidden_act".into(), json!("silu"));
    if arch == "llama" {
        let bias = f.tensor("blk.0.attn_q.bias").is_some();
        c.insert("attention_bias".into(), json!(bias));
    }
    c.insert("rms_norm_eps".into(), json!(rms_norm_eps));
    c.insert("rope_theta".into(), json!(rope_theta));
    c.insert("rope_scaling".into(), rope_scaling);
    c.insert(
        "max_position_embeddings".into(),
        json!(usize_req("context_length")?),
    );
    insert_token_keys(f, &mut c)?;
    Ok(Value::Object(c))
}
