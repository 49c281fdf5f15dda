//! DeepSeek-V4 in GGUF (llama.cpp b11434's `deepseek4`, written by its converter from a release
//! checkpoint): the release-spelled `config.json` its metadata encodes. Where each tensor is
//! stored is the shared name table's ([`super::names`], family `V4`).

use serde_json::{json, Map, Value};

use super::deepseek2::{insert_indexer_keys, insert_token_keys, key_error, rope_scaling};
use super::{GgufError, GgufFile};

const ARCH: &str = "deepseek4";
/// llama.cpp's `LLAMA_EXPERT_GATING_FUNC_TYPE_SQRTSOFTPLUS`.
const GATING_SQRTSOFTPLUS: u32 = 4;

fn key(suffix: &str) -> String {
    super::deepseek2::key(ARCH, suffix)
}

/// The release-spelled config (`compress_ratios`, `num_hash_layers`, `rope_scaling` for the
/// compressed branches) of a `deepseek4` file. The converter writes one SwiGLU clamp per layer;
/// V4 has one value, so they must agree.
pub fn deepseek4_config_json(f: &GgufFile) -> Result<Value, GgufError> {
    let usize_req = |s: &str| f.get_usize(&key(s));
    let f64_req = |s: &str| f.get_f64(&key(s));
    let gating_key = key("expert_gating_func");
    match f.opt_u32(&gating_key)? {
        None | Some(GATING_SQRTSOFTPLUS) => {}
        Some(g) => {
            return Err(key_error(
                f,
                &gating_key,
                format!("{g} is not √softplus ({GATING_SQRTSOFTPLUS}), DeepSeek-V4's routing"),
            ))
        }
    }
    let clamp_key = key("swiglu_clamp_exp");
    let clamps: Vec<f64> = f
        .get_array(&clamp_key)?
        .items
        .iter()
        .map(|v| {
            v.as_f64()
                .ok_or_else(|| key_error(f, &clamp_key, "not numbers"))
        })
        .collect::<Result<_, _>>()?;
    let swiglu_limit = match clamps.split_first() {
        Some((&first, rest)) if rest.iter().all(|&c| c == first) => first,
        _ => {
            return Err(key_error(
                f,
                &clamp_key,
                "one clamp for every layer expected",
            ))
        }
    };
    let ratios_key = key("attention.compress_ratios");
    let ratios: Vec<i64> = f.get_i64_array(&ratios_key)?;
    let vocab_size = super::deepseek2::vocab_size(f, &key("vocab_size"))?;
    let mut c = Map::new();
    c.insert("architectures".into(), json!(["DeepseekV4ForCausalLM"]));
    c.insert("model_type".into(), json!("deepseek_v4"));
    c.insert("vocab_size".into(), json!(vocab_size));
    c.insert("hidden_size".into(), json!(usize_req("embedding_length")?));
    c.insert("num_hidden_layers".into(), json!(usize_req("block_count")?));
    c.insert(
        "num_attention_heads".into(),
        json!(usize_req("attention.head_count")?),
    );
    c.insert("num_key_value_heads".into(), json!(1));
    c.insert("head_dim".into(), json!(usize_req("attention.key_length")?));
    c.insert(
        "qk_rope_head_dim".into(),
        json!(usize_req("rope.dimension_count")?),
    );
    c.insert(
        "q_lora_rank".into(),
        json!(usize_req("attention.q_lora_rank")?),
    );
    c.insert(
        "o_groups".into(),
        json!(usize_req("attention.output_group_count")?),
    );
    c.insert(
        "o_lora_rank".into(),
        json!(usize_req("attention.output_lora_rank")?),
    );
    c.insert(
        "sliding_window".into(),
        json!(usize_req("attention.sliding_window")?),
    );
    insert_indexer_keys(f, ARCH, &mut c)?;
    // The release lists its MTP layers' ratios after the decoder's (the converter copies it):
    // they are the MTP layers the config declares.
    let mtp = ratios.len().saturating_sub(usize_req("block_count")?);
    c.insert("compress_ratios".into(), json!(ratios));
    c.insert("num_nextn_predict_layers".into(), json!(mtp));
    c.insert(
        "compress_rope_theta".into(),
        json!(f64_req("attention.compress_rope_freq_base")?),
    );
    c.insert(
        "hc_mult".into(),
        json!(usize_req("hyper_connection.count")?),
    );
    c.insert(
        "hc_sinkhorn_iters".into(),
        json!(usize_req("hyper_connection.sinkhorn_iterations")?),
    );
    c.insert("hc_eps".into(), json!(f64_req("hyper_connection.epsilon")?));
    c.insert(
        "num_hash_layers".into(),
        json!(usize_req("hash_layer_count")?),
    );
    c.insert("n_routed_experts".into(), json!(usize_req("expert_count")?));
    c.insert(
        "num_experts_per_tok".into(),
        json!(usize_req("expert_used_count")?),
    );
    c.insert(
        "n_shared_experts".into(),
        json!(usize_req("expert_shared_count")?),
    );
    c.insert(
        "moe_intermediate_size".into(),
        json!(usize_req("expert_feed_forward_length")?),
    );
    c.insert(
        "routed_scaling_factor".into(),
        json!(f64_req("expert_weights_scale")?),
    );
    c.insert(
        "norm_topk_prob".into(),
        json!(f.opt_bool(&key("expert_weights_norm"))?.unwrap_or(false)),
    );
    c.insert("scoring_func".into(), json!("sqrtsoftplus"));
    c.insert("swiglu_limit".into(), json!(swiglu_limit));
    c.insert(
        "rms_norm_eps".into(),
        json!(f64_req("attention.layer_norm_rms_epsilon")?),
    );
    c.insert(
        "rope_theta".into(),
        json!(f.opt_f64(&key("rope.freq_base"))?.unwrap_or(10000.0)),
    );
    c.insert(
        "max_position_embeddings".into(),
        json!(usize_req("context_length")?),
    );
    c.insert("rope_scaling".into(), rope_scaling(f, ARCH)?);
    insert_token_keys(f, &mut c)?;
    Ok(Value::Object(c))
}
