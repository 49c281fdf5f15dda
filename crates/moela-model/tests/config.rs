//! Config reading and bounds: both families' parts, the serde rules (`null` = absent, token
//! ids as one or a list, errors at a field's path), and crafted sizes that would overflow or are
//! absurd, each a config error naming the field — never a wrapped number or a panic.

use moela_model::{
    Attention, Config, KvType, Model, ModelError, RouteWeighting, ScoringFunc, TopkMethod,
    WeightSource, MAX_CONTEXT, MAX_DIM, MAX_EXPERTS, MAX_HEADS, MAX_LAYERS, MAX_VOCAB,
};
use serde_json::{json, Value};

fn v3() -> Value {
    json!({"model_type":"deepseek_v3","vocab_size":97,"hidden_size":48,"intermediate_size":64,
        "moe_intermediate_size":24,"num_hidden_layers":3,"num_attention_heads":3,"q_lora_rank":32,
        "kv_lora_rank":24,"qk_nope_head_dim":16,"qk_rope_head_dim":8,"v_head_dim":12,
        "n_routed_experts":8,"n_shared_experts":1,"num_experts_per_tok":3,"n_group":4,"topk_group":2,
        "first_k_dense_replace":1,"max_position_embeddings":256})
}

fn dense(model_type: &str) -> Value {
    json!({"model_type":model_type,"vocab_size":53,"hidden_size":32,"intermediate_size":40,
        "num_hidden_layers":3,"num_attention_heads":4,"num_key_value_heads":2,
        "max_position_embeddings":256})
}

fn with(mut base: Value, key: &str, v: Value) -> Value {
    base[key] = v;
    base
}

/// The `(field, message)` of the config error `v` gives.
fn error(v: &Value) -> (String, String) {
    match Config::from_hf_value(v) {
        Err(ModelError::Config { field, msg }) => (field, msg),
        other => panic!("expected a config error for {v}, got {other:?}"),
    }
}

/// A source that must not be asked: loading stops at the config.
struct NoWeights;

impl WeightSource for NoWeights {
    fn load(&mut self, name: &str, _: &[usize]) -> Result<Vec<f32>, ModelError> {
        panic!("{name} requested for an invalid config")
    }
    fn contains(&self, _: &str) -> bool {
        false
    }
}

/// `v` is refused with an error naming `field`.
fn refused(v: &Value, field: &str) {
    let (f, msg) = error(v);
    assert_eq!(f, field, "{msg}");
}

#[test]
fn families_read_into_their_parts() {
    let c = Config::from_hf_value(&v3()).unwrap();
    let Attention::Mla(m) = &c.attention else {
        panic!("{:?}", c.attention)
    };
    assert_eq!(
        (m.q_lora_rank, m.kv_lora_rank, m.v_head_dim),
        (Some(32), 24, 12)
    );
    assert_eq!(c.gqa(), None);
    let moe = c.moe.as_ref().unwrap();
    // V3's defaults: noaux_tc over sigmoid scores, normalized, then scaled.
    assert_eq!(moe.topk_method, TopkMethod::NoauxTc);
    assert_eq!(moe.scoring_func, ScoringFunc::Sigmoid);
    assert!(moe.norm_topk_prob);
    assert_eq!(moe.weighting, RouteWeighting::NormalizeThenScale);
    assert_eq!(c.qk_head_dim().unwrap(), 24);
    assert_eq!(c.latent_dim().unwrap(), 32);
    // V2's: greedy softmax, not normalized; no experts: no MoE part.
    let v2 = Config::from_hf_value(&with(v3(), "model_type", json!("deepseek_v2"))).unwrap();
    let moe = v2.moe.as_ref().unwrap();
    assert_eq!(
        (moe.topk_method, moe.scoring_func),
        (TopkMethod::Greedy, ScoringFunc::Softmax)
    );
    assert!(!moe.norm_topk_prob);
    assert_eq!(moe.weighting, RouteWeighting::NormalizeOrScale);
    let no_experts = Config::from_hf_value(&with(v3(), "n_routed_experts", json!(0))).unwrap();
    assert_eq!(no_experts.moe, None);
    assert!(!no_experts.is_moe_layer(2));
    // Dense: a GQA part and no MoE part.
    let q = Config::from_hf_value(&dense("qwen2")).unwrap();
    assert_eq!(q.mla(), None);
    assert_eq!((q.gqa().unwrap().head_dim, q.moe.clone()), (8, None));
}

#[test]
fn null_is_absent_and_token_ids_are_one_or_a_list() {
    let c = Config::from_hf_value(&with(
        with(v3(), "q_lora_rank", Value::Null),
        "eos_token_id",
        json!([7, 9]),
    ))
    .unwrap();
    assert_eq!(c.mla().unwrap().q_lora_rank, None);
    assert_eq!(c.eos_token_ids, [7, 9]);
    let c = Config::from_hf_value(&with(
        with(v3(), "bos_token_id", json!(3)),
        "rms_norm_eps",
        Value::Null,
    ))
    .unwrap();
    assert_eq!((c.bos_token_id, c.rms_norm_eps), (Some(3), 1e-6));
    for (key, v) in [
        ("eos_token_id", json!("two")),
        ("eos_token_id", json!(-1)),
        ("bos_token_id", json!(1u64 << 40)),
    ] {
        let (field, msg) = error(&with(v3(), key, v));
        assert_eq!(field, key, "{msg}");
        assert!(msg.contains("token id"), "{msg}");
    }
    // A wrongly typed nested value is named by its path.
    let (field, msg) = error(&with(
        v3(),
        "rope_scaling",
        json!({"type":"yarn","factor":"big","original_max_position_embeddings":64}),
    ));
    assert_eq!(field, "rope_scaling.factor", "{msg}");
    let (field, msg) = error(&with(v3(), "n_group", json!(-2)));
    assert_eq!(field, "n_group");
    assert!(msg.contains("non-negative integer"), "{msg}");
}

#[test]
fn overflowing_sizes_are_config_errors() {
    let (p62, p63) = (1u64 << 62, 1u64 << 63);
    for (key, v) in [
        ("v_head_dim", p62 + 5),
        ("num_attention_heads", p62 + 5),
        ("qk_nope_head_dim", p62 + 16),
        ("kv_lora_rank", p63 - 1),
        ("max_position_embeddings", p62),
        ("vocab_size", 1 << 40),
        ("vocab_size", u64::MAX),
        ("q_lora_rank", p63),
        ("moe_intermediate_size", p62),
        ("n_routed_experts", p62),
    ] {
        refused(&with(v3(), key, json!(v)), key);
    }
    for model_type in ["llama", "qwen2"] {
        for (key, v) in [
            ("head_dim", p63 + 16),
            ("num_attention_heads", p62 + 5),
            ("num_key_value_heads", p62),
            ("intermediate_size", p62),
        ] {
            refused(&with(dense(model_type), key, json!(v)), key);
        }
    }
    // A window over 2^62 layers is refused before one flag per layer is allocated.
    let swa = with(
        with(dense("qwen2"), "use_sliding_window", json!(true)),
        "sliding_window",
        json!(8),
    );
    refused(
        &with(swa, "num_hidden_layers", json!(p62)),
        "num_hidden_layers",
    );
}

#[test]
fn rms_norm_eps_must_be_a_small_positive_number() {
    for eps in [json!(-1), json!(0), json!(1), json!(1e300), json!(1e-300)] {
        let (field, msg) = error(&with(v3(), "rms_norm_eps", eps.clone()));
        assert_eq!(field, "rms_norm_eps", "{eps}: {msg}");
    }
    // NaN and infinities (which JSON cannot spell, but a GGUF file can).
    let mut c = Config::from_hf_value(&v3()).unwrap();
    for eps in [f32::NAN, f32::INFINITY, -f32::INFINITY] {
        c.rms_norm_eps = eps;
        let Err(ModelError::Config { field, .. }) = c.validate() else {
            panic!("{eps} accepted")
        };
        assert_eq!(field, "rms_norm_eps");
    }
    c.rms_norm_eps = 1e-5;
    c.validate().unwrap();
}

#[test]
fn checked_methods_fail_cleanly_on_unvalidated_configs() {
    // Fields set past their bounds by hand: every derived size is an error naming a field,
    // and validate (hence Model::load) refuses the config.
    let mut c = Config::from_hf_value(&v3()).unwrap();
    if let Attention::Mla(m) = &mut c.attention {
        m.v_head_dim = usize::MAX - 3;
        m.qk_nope_head_dim = usize::MAX - 1;
    }
    for e in [
        c.qk_head_dim().unwrap_err(),
        c.q_rows().unwrap_err(),
        c.o_cols().unwrap_err(),
        c.kv_b_f32_bytes().unwrap_err(),
        c.softmax_scale().unwrap_err(),
        c.parameter_counts().unwrap_err(),
    ] {
        assert!(matches!(e, ModelError::Config { .. }), "{e}");
    }
    let e = Model::load(c, &mut NoWeights, &mut |_, _| {}).err();
    assert!(matches!(e, Some(ModelError::Config { .. })), "{e:?}");
    let mut d = Config::from_hf_value(&dense("llama")).unwrap();
    d.num_hidden_layers = usize::MAX;
    if let Some(g) = d.gqa_mut() {
        g.head_dim = usize::MAX / 2;
    }
    for e in [
        d.latent_dim().unwrap_err(),
        d.kv_values_per_token().unwrap_err(),
        d.kv_bytes_per_token(KvType::F16).unwrap_err(),
        d.parameter_counts().unwrap_err(),
        d.validate().unwrap_err(),
    ] {
        assert!(matches!(e, ModelError::Config { .. }), "{e}");
    }
}

#[test]
fn every_field_at_its_bound_is_a_clean_result() {
    // The largest sizes the bounds let through: the parameter count no longer fits in u64, so
    // validation refuses it by name; nothing wraps or panics.
    let big = json!({"model_type":"deepseek_v3","vocab_size":MAX_VOCAB,"hidden_size":MAX_DIM,
        "intermediate_size":MAX_DIM,"moe_intermediate_size":MAX_DIM,
        "num_hidden_layers":MAX_LAYERS,"num_attention_heads":MAX_HEADS,"q_lora_rank":MAX_DIM,
        "kv_lora_rank":MAX_DIM,"qk_nope_head_dim":MAX_DIM,"qk_rope_head_dim":MAX_DIM,
        "v_head_dim":MAX_DIM,"n_routed_experts":MAX_EXPERTS,"n_shared_experts":MAX_EXPERTS,
        "num_experts_per_tok":8,"max_position_embeddings":MAX_CONTEXT});
    let (field, msg) = error(&big);
    assert!(msg.contains("overflows"), "{field}: {msg}");
    // One past a bound is refused as such.
    let (field, msg) = error(&with(big, "vocab_size", json!(MAX_VOCAB + 1)));
    assert_eq!(field, "vocab_size");
    assert!(msg.contains(&MAX_VOCAB.to_string()), "{msg}");
    // Within the bounds, a model many times today's largest is still a valid config.
    let wide = json!({"model_type":"deepseek_v3","vocab_size":1 << 20,"hidden_size":1 << 16,
        "intermediate_size":1 << 17,"moe_intermediate_size":1 << 14,"num_hidden_layers":512,
        "num_attention_heads":1024,"q_lora_rank":1 << 13,"kv_lora_rank":1 << 12,
        "qk_nope_head_dim":512,"qk_rope_head_dim":256,"v_head_dim":512,
        "n_routed_experts":4096,"n_shared_experts":4,"num_experts_per_tok":16,
        "max_position_embeddings":1 << 24});
    let c = Config::from_hf_value(&wide).unwrap();
    let (total, active) = c.parameter_counts().unwrap();
    assert!(total > active && active > 0);
}

/// A DeepSeek-V3.2 config: V3's sizes plus the indexer; `topk_method` and `moe_layer_freq`
/// as written are ignored (transformers' `DeepseekV32Config` does not read them).
fn v32() -> Value {
    let mut v = with(v3(), "model_type", json!("deepseek_v32"));
    for (key, x) in [
        ("index_topk", json!(16)),
        ("index_n_heads", json!(4)),
        ("index_head_dim", json!(16)),
        ("topk_method", json!("greedy")),
        ("scoring_func", json!("softmax")),
        ("moe_layer_freq", json!(2)),
    ] {
        v[key] = x;
    }
    v
}

#[test]
fn v32_reads_its_indexer_and_routes_as_v3() {
    let c = Config::from_hf_value(&v32()).unwrap();
    let m = c.mla().unwrap();
    let ix = m.indexer.as_ref().unwrap();
    assert_eq!(
        (ix.index_topk, ix.index_n_heads, ix.index_head_dim),
        (16, 4, 16)
    );
    // The cached row: latent 24 + rope key 8 + indexer key 16; kv_a still 32 rows.
    assert_eq!((c.latent_dim().unwrap(), m.latent_dim().unwrap()), (48, 32));
    assert_eq!(c.kv_bytes_per_token(KvType::F16).unwrap(), 3 * 48 * 2);
    let moe = c.moe.as_ref().unwrap();
    assert_eq!(
        (moe.topk_method, moe.scoring_func, moe.weighting),
        (
            TopkMethod::NoauxTc,
            ScoringFunc::Sigmoid,
            RouteWeighting::NormalizeThenScale
        )
    );
    assert!(moe.norm_topk_prob);
    assert!((0..3).map(|l| c.is_moe_layer(l)).eq([false, true, true]));
    // The indexer's parameters per layer: wq_b 4·16×32, wk 16×48, k_norm 2×16, weights_proj 4×48.
    let v3 = Config::from_hf_value(&v3()).unwrap();
    let per_layer = 4 * 16 * 32 + 16 * 48 + 2 * 16 + 4 * 48;
    let (t32, a32) = c.parameter_counts().unwrap();
    let (t3, a3) = v3.parameter_counts().unwrap();
    assert_eq!((t32 - t3, a32 - a3), (3 * per_layer, 3 * per_layer));
    // Other model types ignore index_* keys.
    let with_keys = with(v32(), "model_type", json!("deepseek_v3"));
    assert_eq!(
        Config::from_hf_value(&with_keys)
            .unwrap()
            .mla()
            .unwrap()
            .indexer,
        None
    );
}

#[test]
fn v32_index_fields_missing_or_invalid_are_named() {
    for key in ["index_topk", "index_n_heads", "index_head_dim"] {
        let mut v = v32();
        v.as_object_mut().unwrap().remove(key);
        let (field, msg) = error(&v);
        assert_eq!((field.as_str(), msg.as_str()), (key, "missing"));
        refused(&with(v32(), key, json!(0)), key);
        refused(&with(v32(), key, json!(-1)), key);
        refused(&with(v32(), key, json!(1u64 << 62)), key);
    }
    refused(
        &with(v32(), "index_topk", json!(MAX_CONTEXT + 1)),
        "index_topk",
    );
    refused(
        &with(v32(), "index_n_heads", json!(MAX_HEADS + 1)),
        "index_n_heads",
    );
    refused(
        &with(v32(), "index_head_dim", json!(MAX_DIM + 1)),
        "index_head_dim",
    );
    // Odd, or too narrow for the 8 rope dims.
    refused(&with(v32(), "index_head_dim", json!(15)), "index_head_dim");
    refused(&with(v32(), "index_head_dim", json!(6)), "index_head_dim");
    Config::from_hf_value(&with(v32(), "index_head_dim", json!(8))).unwrap();
    // The indexer reads the q-LoRA latent.
    refused(&with(v32(), "q_lora_rank", Value::Null), "q_lora_rank");
    refused(&with(v32(), "q_lora_rank", json!(0)), "q_lora_rank");
    // Hand-built: an indexer only on V3.2, and V3.2 only with one.
    let mut c = Config::from_hf_value(&v32()).unwrap();
    c.model_type = moela_model::ModelType::DeepseekV3;
    let Err(ModelError::Config { field, .. }) = c.validate() else {
        panic!("a V3 config with an indexer was accepted")
    };
    assert_eq!(field, "index_topk");
    let mut c = Config::from_hf_value(&v32()).unwrap();
    if let Attention::Mla(m) = &mut c.attention {
        m.indexer = None;
    }
    let e = Model::load(c, &mut NoWeights, &mut |_, _| {}).err();
    assert!(
        matches!(&e, Some(ModelError::Config { field, .. }) if field == "index_topk"),
        "{e:?}"
    );
}
