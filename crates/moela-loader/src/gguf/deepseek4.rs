//! DeepSeek-V4 in GGUF (llama.cpp b11434's `deepseek4`, written by its converter from a release
//! checkpoint): the release-spelled `config.json` its metadata encodes, and where each tensor the
//! model asks for (by transformers' name) is stored.

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
    c.insert("compress_ratios".into(), json!(ratios));
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

/// The GGUF tensor holding transformers' V4 tensor `name` (layer tensors below
/// `model.layers.N.`), for everything but the stacked experts.
pub fn v4_gguf_name(name: &str) -> Option<String> {
    const GLOBAL: &[(&str, &str)] = &[
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
        ("model.hc_head.hc_fn", "output_hc_fn.weight"),
        ("model.hc_head.hc_base", "output_hc_base.weight"),
        ("model.hc_head.hc_scale", "output_hc_scale.weight"),
    ];
    const LAYER: &[(&str, &str)] = &[
        ("input_layernorm.weight", "attn_norm.weight"),
        ("post_attention_layernorm.weight", "ffn_norm.weight"),
        ("attn_hc.fn", "hc_attn_fn.weight"),
        ("attn_hc.base", "hc_attn_base.weight"),
        ("attn_hc.scale", "hc_attn_scale.weight"),
        ("ffn_hc.fn", "hc_ffn_fn.weight"),
        ("ffn_hc.base", "hc_ffn_base.weight"),
        ("ffn_hc.scale", "hc_ffn_scale.weight"),
        ("self_attn.q_a_proj.weight", "attn_q_a.weight"),
        ("self_attn.q_a_norm.weight", "attn_q_a_norm.weight"),
        ("self_attn.q_b_proj.weight", "attn_q_b.weight"),
        ("self_attn.kv_proj.weight", "attn_kv.weight"),
        ("self_attn.kv_norm.weight", "attn_kv_a_norm.weight"),
        ("self_attn.o_a_proj.weight", "attn_output_a.weight"),
        ("self_attn.o_b_proj.weight", "attn_output_b.weight"),
        ("self_attn.sinks", "attn_sinks.weight"),
        (
            "self_attn.compressor.kv_proj.weight",
            "attn_compressor_kv.weight",
        ),
        (
            "self_attn.compressor.gate_proj.weight",
            "attn_compressor_gate.weight",
        ),
        (
            "self_attn.compressor.position_bias",
            "attn_compressor_ape.weight",
        ),
        (
            "self_attn.compressor.kv_norm.weight",
            "attn_compressor_norm.weight",
        ),
        (
            "self_attn.compressor.indexer.kv_proj.weight",
            "indexer_compressor_kv.weight",
        ),
        (
            "self_attn.compressor.indexer.gate_proj.weight",
            "indexer_compressor_gate.weight",
        ),
        (
            "self_attn.compressor.indexer.position_bias",
            "indexer_compressor_ape.weight",
        ),
        (
            "self_attn.compressor.indexer.kv_norm.weight",
            "indexer_compressor_norm.weight",
        ),
        (
            "self_attn.compressor.indexer.q_b_proj.weight",
            "indexer.attn_q_b.weight",
        ),
        (
            "self_attn.compressor.indexer.scorer.weights_proj.weight",
            "indexer.proj.weight",
        ),
        ("mlp.gate.weight", "ffn_gate_inp.weight"),
        ("mlp.gate.e_score_correction_bias", "exp_probs_b.bias"),
        ("mlp.gate.tid2eid", "ffn_gate_tid2eid.weight"),
        (
            "mlp.shared_experts.gate_proj.weight",
            "ffn_gate_shexp.weight",
        ),
        ("mlp.shared_experts.up_proj.weight", "ffn_up_shexp.weight"),
        (
            "mlp.shared_experts.down_proj.weight",
            "ffn_down_shexp.weight",
        ),
    ];
    if let Some((_, g)) = GLOBAL.iter().find(|(hf, _)| *hf == name) {
        return Some(g.to_string());
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (_, g) = LAYER.iter().find(|(hf, _)| *hf == rest)?;
    Some(format!("blk.{layer}.{g}"))
}

#[cfg(test)]
mod tests {
    use super::v4_gguf_name;

    #[test]
    fn names() {
        assert_eq!(
            v4_gguf_name("model.layers.1.self_attn.compressor.indexer.scorer.weights_proj.weight")
                .as_deref(),
            Some("blk.1.indexer.proj.weight")
        );
        assert_eq!(
            v4_gguf_name("model.hc_head.hc_fn").as_deref(),
            Some("output_hc_fn.weight")
        );
        assert_eq!(
            v4_gguf_name("model.layers.1.mlp.experts.gate_up_proj"),
            None
        );
    }
}
