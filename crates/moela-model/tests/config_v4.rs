//! DeepSeek-V4 config reading: transformers' spelling (`layer_types`, `mlp_layer_types`,
//! `compress_rates`, nested `rope_parameters`) and the release's (`compress_ratios` with the MTP
//! layers' entries, `num_hash_layers`, `rope_scaling` + `compress_rope_theta`,
//! `qk_rope_head_dim`) read the same; bad and absurd values are config errors naming the field,
//! never a panic.

use moela_model::{Config, KvType, ModelError, ScoringFunc, V4LayerKind, MAX_CONTEXT};
use serde_json::{json, Value};

/// The `v4` fixture's config.json, as transformers' `save_pretrained` writes it.
fn transformers_spelling() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/models/v4/config.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The same model in the release's spelling: one `compress_ratios` entry per layer plus the
/// MTP layer's, `num_hash_layers`, flat `rope_scaling` (its YaRN gets attention factor 1).
fn release_spelling() -> Value {
    let mut v = transformers_spelling();
    let o = v.as_object_mut().unwrap();
    for k in [
        "layer_types",
        "mlp_layer_types",
        "compress_rates",
        "rope_parameters",
        "partial_rotary_factor",
    ] {
        o.remove(k);
    }
    o.insert("compress_ratios".into(), json!([0, 4, 128, 0]));
    o.insert("num_hash_layers".into(), json!(2));
    o.insert(
        "rope_scaling".into(),
        json!({"type":"yarn","factor":16,"original_max_position_embeddings":64,"beta_fast":32,"beta_slow":1}),
    );
    v
}

fn with(mut base: Value, key: &str, v: Value) -> Value {
    base[key] = v;
    base
}

fn without(mut base: Value, key: &str) -> Value {
    base.as_object_mut().unwrap().remove(key);
    base
}

/// `v` is refused with an error naming `field`.
fn refused(v: &Value, field: &str) {
    match Config::from_hf_value(v) {
        Err(ModelError::Config { field: f, msg }) => assert_eq!(f, field, "{msg}"),
        other => panic!("expected a config error naming {field}, got {other:?}"),
    }
}

#[test]
fn both_spellings_read_the_same_model() {
    let t = Config::from_hf_value(&transformers_spelling()).unwrap();
    let r = Config::from_hf_value(&release_spelling()).unwrap();
    assert_eq!(t, r);
    let v = t.v4().unwrap();
    let kinds: Vec<V4LayerKind> = v.layers.iter().map(|l| l.kind).collect();
    assert_eq!(
        kinds,
        [V4LayerKind::Sliding, V4LayerKind::Csa, V4LayerKind::Hca]
    );
    let hashed: Vec<bool> = v.layers.iter().map(|l| l.hash_moe).collect();
    assert_eq!(hashed, [true, true, false]);
    assert_eq!((v.qk_rope_head_dim, v.compress_rope_theta), (8, 160000.0));
    let y = v.compress_yarn.as_ref().unwrap();
    assert_eq!((y.factor, y.attention_factor), (16.0, Some(1.0)));
    assert_eq!((t.rope_theta, t.rope_scaling.clone()), (10000.0, None));
    assert_eq!(t.num_nextn_predict_layers, 1);
    let moe = t.moe.as_ref().unwrap();
    assert_eq!(moe.scoring_func, ScoringFunc::Sqrtsoftplus);
    assert_eq!(
        (moe.n_group, moe.topk_group, moe.first_k_dense_replace),
        (1, 1, 0)
    );
    assert!((0..3).all(|l| t.is_moe_layer(l)));
    // Block rows: the entries' pieces, CSA (32 + 16) / 4, HCA ⌈32 / 128⌉, none for sliding.
    assert_eq!(t.cache_widths().unwrap(), [0, 12, 1]);
    assert_eq!(t.kv_bytes_per_token(KvType::F16).unwrap(), 13 * 2);
    assert_eq!(t.latent_dim().unwrap(), 12);
    assert_eq!(t.ring_spec().unwrap().unwrap().widths, [32, 224, 96]);
    assert_eq!(t.softmax_scale().unwrap(), 1.0 / 32f32.sqrt());
}

/// At V4's sizes (head_dim 512, index_head_dim 128, window 128) a token costs 160 + 4 values in
/// the blocks — 328 bytes in f16, what llama.cpp's `deepseek4` cache holds per token — and a
/// sequence keeps the window state of its last 254 tokens (sliding 512, CSA 3072, HCA 1536 values each).
#[test]
fn v4_sizes_cost_328_bytes_per_token_in_f16() {
    let mut v = transformers_spelling();
    for (k, x) in [
        ("head_dim", 512),
        ("index_head_dim", 128),
        ("sliding_window", 128),
    ] {
        v[k] = json!(x);
    }
    v["hidden_size"] = json!(512);
    v["num_attention_heads"] = json!(8);
    v["o_groups"] = json!(2);
    let c = Config::from_hf_value(&v).unwrap();
    c.validate().unwrap();
    assert_eq!(c.cache_widths().unwrap(), [0, 160, 4]);
    assert_eq!(c.kv_bytes_per_token(KvType::F16).unwrap(), 328);
    let ring = c.ring_spec().unwrap().unwrap();
    assert_eq!(ring.widths, [512, 3072, 1536]);
    assert_eq!((ring.need, ring.tail, ring.every), (127, 127, 128));
    assert_eq!(ring.keep(16), 254);
}

#[test]
fn defaults_follow_transformers() {
    // No layer_types / compress_ratios: two HCA layers, then CSA and HCA alternating; no
    // mlp_layer_types: the first 3 layers hash-routed; qk_rope_head_dim = head_dim / 8.
    let mut v = without(
        without(
            without(transformers_spelling(), "layer_types"),
            "mlp_layer_types",
        ),
        "qk_rope_head_dim",
    );
    v = without(v, "partial_rotary_factor");
    v["num_hidden_layers"] = json!(6);
    let c = Config::from_hf_value(&v).unwrap();
    let v4 = c.v4().unwrap();
    let kinds: Vec<V4LayerKind> = v4.layers.iter().map(|l| l.kind).collect();
    use V4LayerKind::{Csa, Hca};
    assert_eq!(kinds, [Hca, Hca, Hca, Csa, Hca, Csa]);
    let hashed: Vec<bool> = v4.layers.iter().map(|l| l.hash_moe).collect();
    assert_eq!(hashed, [true, true, true, false, false, false]);
    assert_eq!(v4.qk_rope_head_dim, 4);
    let moe = c.moe.as_ref().unwrap();
    assert_eq!(moe.swiglu_limit, Some(1.5));
    let c = Config::from_hf_value(&without(transformers_spelling(), "swiglu_limit")).unwrap();
    assert_eq!(c.moe.unwrap().swiglu_limit, Some(10.0));
}

#[test]
fn bad_values_name_their_field() {
    let t = transformers_spelling;
    let r = release_spelling;
    refused(
        &with(r(), "compress_ratios", json!([0, 8, 128])),
        "compress_ratios",
    );
    refused(
        &with(r(), "compress_ratios", json!([0, 4])),
        "compress_ratios",
    );
    refused(
        &with(r(), "compress_ratios", json!([0, 4, 128, 64])),
        "compress_ratios",
    );
    refused(
        &with(t(), "layer_types", json!(["sliding_attention"])),
        "layer_types",
    );
    let full = json!(["sliding_attention", "full_attention", "sliding_attention"]);
    refused(&with(t(), "layer_types", full), "layer_types");
    refused(
        &with(t(), "mlp_layer_types", json!(["moe"])),
        "mlp_layer_types",
    );
    refused(&with(t(), "hc_mult", json!(0)), "hc_mult");
    refused(&with(t(), "hc_mult", json!(1u64 << 40)), "hc_mult");
    refused(
        &with(t(), "hc_sinkhorn_iters", json!(0)),
        "hc_sinkhorn_iters",
    );
    refused(&with(t(), "hc_eps", json!(-1.0)), "hc_eps");
    refused(&with(t(), "o_groups", json!(3)), "o_groups");
    refused(&with(t(), "o_groups", json!(0)), "o_groups");
    refused(&with(t(), "o_lora_rank", json!(0)), "o_lora_rank");
    refused(&with(t(), "index_topk", json!(0)), "index_topk");
    refused(&with(t(), "index_topk", json!(1u64 << 40)), "index_topk");
    refused(&with(t(), "index_n_heads", json!(0)), "index_n_heads");
    refused(&with(t(), "index_head_dim", json!(4)), "index_head_dim");
    refused(&with(t(), "head_dim", json!(1u64 << 40)), "head_dim");
    refused(&without(t(), "head_dim"), "head_dim");
    refused(
        &with(t(), "partial_rotary_factor", json!(1.5)),
        "partial_rotary_factor",
    );
    refused(&with(r(), "qk_rope_head_dim", json!(7)), "qk_rope_head_dim");
    refused(
        &with(r(), "qk_rope_head_dim", json!(64)),
        "qk_rope_head_dim",
    );
    refused(&with(t(), "sliding_window", json!(0)), "sliding_window");
    refused(
        &with(t(), "sliding_window", json!(MAX_CONTEXT + 1)),
        "sliding_window",
    );
    refused(&with(t(), "swiglu_limit", json!(-1.0)), "swiglu_limit");
    refused(
        &with(t(), "num_key_value_heads", json!(2)),
        "num_key_value_heads",
    );
    refused(&with(t(), "n_shared_experts", json!(2)), "n_shared_experts");
    refused(&with(t(), "scoring_func", json!("softmax")), "scoring_func");
    refused(
        &with(t(), "num_experts_per_tok", json!(7)),
        "num_experts_per_tok",
    );
    refused(&without(t(), "n_routed_experts"), "n_routed_experts");
    refused(
        &with(t(), "num_hidden_layers", json!(1u64 << 40)),
        "num_hidden_layers",
    );
    let rates = json!({"compressed_sparse_attention": 0});
    refused(
        &with(t(), "compress_rates", rates),
        "compress_rates.compressed_sparse_attention",
    );
    refused(
        &with(r(), "compress_rope_theta", json!(0.5)),
        "compress_rope_theta",
    );
    // The release's FP8 declaration is read (128×128 blocks); another method is refused.
    let q = json!({"quant_method":"fp8","fmt":"e4m3","scale_fmt":"ue8m0","weight_block_size":[128,128]});
    let c = moela_model::Config::from_hf_value(&with(t(), "quantization_config", q)).unwrap();
    assert_eq!(c.fp8_block, Some([128, 128]));
    let q = json!({"quant_method":"gptq"});
    refused(
        &with(t(), "quantization_config", q),
        "quantization_config.quant_method",
    );
    let linear = json!({"type":"linear","factor":2.0});
    refused(&with(r(), "rope_scaling", linear), "rope_scaling");
    // √softplus routing is V4's.
    let mut v3 = json!({"model_type":"deepseek_v3","vocab_size":97,"hidden_size":48,
        "intermediate_size":64,"moe_intermediate_size":24,"num_hidden_layers":3,
        "num_attention_heads":3,"q_lora_rank":32,"kv_lora_rank":24,"qk_nope_head_dim":16,
        "qk_rope_head_dim":8,"v_head_dim":12,"n_routed_experts":8,"n_shared_experts":1,
        "num_experts_per_tok":3,"n_group":4,"topk_group":2,"first_k_dense_replace":1,
        "max_position_embeddings":256});
    v3["scoring_func"] = json!("sqrtsoftplus");
    refused(&v3, "scoring_func");
}

/// Sizes at their bounds give a result (a model or a config error), never an overflow.
#[test]
fn huge_sizes_are_clean_results() {
    for (key, v) in [
        ("hidden_size", json!(1 << 20)),
        ("head_dim", json!(1 << 20)),
        ("index_head_dim", json!(1 << 20)),
        ("hc_mult", json!(256)),
        ("o_lora_rank", json!(1 << 20)),
        ("index_n_heads", json!(1 << 16)),
        ("sliding_window", json!(MAX_CONTEXT)),
        ("index_topk", json!(MAX_CONTEXT)),
    ] {
        let c = Config::from_hf_value(&with(transformers_spelling(), key, v));
        if let Ok(c) = c {
            c.kv_bytes_per_token(KvType::F32).unwrap();
            c.parameter_counts().unwrap();
        }
    }
}

/// The parameter count is the fixture's stored elements (238,985, from make_v4_fixtures.py) less
/// its buffers: `tid2eid` (2 × 512 × 2) and the correction bias (6), which V3 does not count
/// either.
#[test]
fn parameter_count_matches_the_fixture() {
    let c = Config::from_hf_value(&transformers_spelling()).unwrap();
    assert_eq!(c.parameter_counts().unwrap().0, 238_985 - 2048 - 6);
}
