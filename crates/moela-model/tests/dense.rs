//! The dense GQA decoders (Qwen2, Llama) on random weights: config parsing rules (sliding
//! window, biases, head sizes, RoPE scaling), the rotate-half RoPE and Llama-3 frequencies, and
//! internal consistency — token-by-token decoding equals one prefill (also across a sliding
//! window's edge), and a sequence computes the same alone or in a batch. Agreement with
//! transformers is tested on goldens in the workspace's `tests/reference_dense.rs`.

mod common;

use common::{config, max_diff, RandomSource};
use moela_model::{Config, ForwardOptions, Logits, Model, ModelType, RopeScaling, SeqInput};

fn config_err(json: &str) -> String {
    Config::from_hf_json(json).unwrap_err().to_string()
}

const QWEN2: &str = r#""model_type":"qwen2","vocab_size":53,"hidden_size":32,"intermediate_size":40,
    "num_hidden_layers":3,"num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":256"#;

const LLAMA: &str = r#""model_type":"llama","vocab_size":53,"hidden_size":32,"intermediate_size":40,
    "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":1,"head_dim":12,
    "attention_bias":true,"max_position_embeddings":256,"rope_theta":500000,
    "rope_scaling":{"rope_type":"llama3","factor":8,"low_freq_factor":1,"high_freq_factor":4,
    "original_max_position_embeddings":64}"#;

fn with(base: &str, extra: &str) -> String {
    if extra.is_empty() {
        format!("{{{base}}}")
    } else {
        format!("{{{base},{extra}}}")
    }
}

#[test]
fn qwen2_defaults_biases_and_sliding_window_rules() {
    let c = config(&with(QWEN2, ""));
    assert_eq!(c.model_type, ModelType::Qwen2);
    assert!(!c.model_type.is_mla());
    let g = c.gqa().unwrap();
    assert_eq!((g.head_dim, g.num_key_value_heads), (8, 2));
    assert!(g.qkv_bias && !g.o_bias, "Qwen2: q/k/v biases, never o");
    assert_eq!(c.latent_dim().unwrap(), 2 * 2 * 8);
    assert_eq!(c.softmax_scale().unwrap(), 1.0 / 8f32.sqrt());
    // A window is only real with use_sliding_window, and then from max_window_layers on.
    let off = config(&with(QWEN2, r#""sliding_window":16,"max_window_layers":1"#));
    assert_eq!(off.gqa().unwrap().sliding_window, None);
    let on = config(&with(
        QWEN2,
        r#""use_sliding_window":true,"sliding_window":16,"max_window_layers":1"#,
    ));
    assert_eq!(
        (0..3).map(|l| on.attention_window(l)).collect::<Vec<_>>(),
        [None, Some(16), Some(16)]
    );
    // Explicit layer_types win; all-full means no window at all.
    let typed = config(&with(
        QWEN2,
        r#""use_sliding_window":true,"sliding_window":16,"max_window_layers":1,
        "layer_types":["sliding_attention","full_attention","full_attention"]"#,
    ));
    assert_eq!(typed.attention_window(0), Some(16));
    assert_eq!(typed.attention_window(1), None);
    let none = config(&with(
        QWEN2,
        r#""use_sliding_window":true,"sliding_window":16,"max_window_layers":3"#,
    ));
    assert_eq!(none.gqa().unwrap().sliding_window, None);
    // use_sliding_window with a null window (what save_pretrained writes when disabled).
    let null = config(&with(
        QWEN2,
        r#""use_sliding_window":true,"sliding_window":null,"max_window_layers":0"#,
    ));
    assert_eq!(null.gqa().unwrap().sliding_window, None);
    let (total, active) = c.parameter_counts().unwrap();
    // embed + 3 × (q,k,v,o + biases + mlp + 2 norms) + norm + head
    let layer = 32 * (32 + 16 + 16) + 32 * 32 + (32 + 16 + 16) + 3 * 32 * 40 + 2 * 32;
    assert_eq!(total, 2 * 53 * 32 + 3 * layer as u64 + 32);
    assert_eq!(total, active);
}

#[test]
fn llama_fields_and_rope_scaling() {
    let c = config(&with(LLAMA, ""));
    assert_eq!(c.model_type, ModelType::Llama);
    let g = c.gqa().unwrap();
    assert_eq!((g.head_dim, g.num_key_value_heads), (12, 1));
    assert!(
        g.qkv_bias && g.o_bias,
        "attention_bias covers all four projections"
    );
    let Some(RopeScaling::Llama3(l)) = &c.rope_scaling else {
        panic!("{:?}", c.rope_scaling)
    };
    assert_eq!((l.factor, l.original_max_position_embeddings), (8.0, 64));
    // transformers-5 spelling: rope_parameters with rope_theta inside, type default.
    let t5 = config(&with(
        r#""model_type":"llama","vocab_size":53,"hidden_size":32,"intermediate_size":40,
        "num_hidden_layers":2,"num_attention_heads":4,"max_position_embeddings":256"#,
        r#""rope_parameters":{"rope_type":"default","rope_theta":1000000.0}"#,
    ));
    assert_eq!(t5.rope_theta, 1e6);
    assert_eq!(t5.rope_scaling, None);
    let g = t5.gqa().unwrap();
    assert_eq!(g.num_key_value_heads, 4, "defaults to the head count");
    assert!(!g.qkv_bias && !g.o_bias);
}

#[test]
fn llama3_frequencies_follow_the_published_rule() {
    // head_dim 12, theta 5e5: wavelengths 2π·5e5^(i/6) = 6.3, 56, 497, 4.4e3, 3.9e4, 3.5e5;
    // orig 64 / high 4 = 16, orig / low 1 = 64: pair 0 kept, 1 blended, 2.. divided by 8.
    let plain: Vec<f64> = (0..6)
        .map(|i| 1.0 / 500000f64.powf(2.0 * i as f64 / 12.0))
        .collect();
    let wl = |f: f64| 2.0 * std::f64::consts::PI / f;
    assert!(wl(plain[0]) < 16.0);
    assert!(wl(plain[1]) > 16.0 && wl(plain[1]) < 64.0);
    assert!(wl(plain[2]) > 64.0);
    let rope = moela_model::rope::Rope::new(&config(&with(LLAMA, "")));
    let got = rope.inv_freq();
    assert_eq!(got[0] as f64, plain[0] as f32 as f64);
    let smooth = (64.0 / wl(plain[1]) - 1.0) / (4.0 - 1.0);
    let want1 = (1.0 - smooth) * plain[1] / 8.0 + smooth * plain[1];
    assert!((got[1] as f64 - want1).abs() < 1e-7 * want1);
    for i in 2..6 {
        assert!((got[i] as f64 - plain[i] / 8.0).abs() < 1e-7 * plain[i]);
    }
    // GGUF's rope_freqs divisors give the same frequencies.
    let mut g = config(&with(LLAMA, ""));
    g.rope_scaling = Some(RopeScaling::FreqFactors(
        plain
            .iter()
            .zip(got)
            .map(|(p, &f)| (p / f as f64) as f32)
            .collect(),
    ));
    let from_factors = moela_model::rope::Rope::new(&g);
    for (a, b) in from_factors.inv_freq().iter().zip(got) {
        assert!((a - b).abs() <= 1e-6 * b.abs(), "{a} vs {b}");
    }
}

#[test]
fn rotate_half_rope_is_a_relative_rotation() {
    let rope = moela_model::rope::Rope::new(&config(&with(QWEN2, "")));
    let q: Vec<f32> = (0..8).map(|i| (i as f32 * 0.7).sin()).collect();
    let k: Vec<f32> = (0..8).map(|i| (i as f32 * 1.3).cos()).collect();
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let at = |v: &[f32], p: usize| {
        let mut v = v.to_vec();
        rope.apply_half(&mut v, p);
        v
    };
    // Norm kept; the score depends on the distance only.
    assert!((dot(&at(&q, 37), &at(&q, 37)) - dot(&q, &q)).abs() < 1e-5);
    let d1 = dot(&at(&q, 10), &at(&k, 3));
    let d2 = dot(&at(&q, 57), &at(&k, 50));
    assert!((d1 - d2).abs() < 1e-4, "{d1} vs {d2}");
    // Pair i is (x[i], x[i + 4]): rotating [1,0,0,0, 0,0,0,0] at position 1 by angle 1.
    let mut e = vec![0.0f32; 8];
    e[0] = 1.0;
    rope.apply_half(&mut e, 1);
    assert!((e[0] - 1f32.cos()).abs() < 1e-6 && (e[4] - 1f32.sin()).abs() < 1e-6);
}

#[test]
fn bad_dense_configs_name_the_field() {
    for (extra, needles) in [
        (
            r#""num_key_value_heads":3"#,
            &["num_key_value_heads", "divide"][..],
        ),
        (r#""head_dim":7"#, &["head_dim", "even"]),
        (r#""mlp_bias":true"#, &["mlp_bias"]),
        (r#""hidden_act":"gelu""#, &["hidden_act", "gelu"]),
        (r#""partial_rotary_factor":0.5"#, &["partial_rotary_factor"]),
        (
            r#""rope_scaling":{"type":"yarn","factor":4,"original_max_position_embeddings":64}"#,
            &["rope_scaling", "yarn"],
        ),
        (
            r#""rope_scaling":{"rope_type":"llama3","factor":8,"low_freq_factor":4,"high_freq_factor":1,"original_max_position_embeddings":64}"#,
            &["high_freq_factor"],
        ),
        (
            r#""rope_scaling":{"rope_type":"llama3","factor":8,"high_freq_factor":4,"original_max_position_embeddings":64}"#,
            &["low_freq_factor", "missing"],
        ),
        (
            r#""rope_scaling":{"rope_type":"dynamic","factor":2}"#,
            &["rope_scaling", "dynamic"],
        ),
        (
            r#""use_sliding_window":true,"sliding_window":8,"layer_types":["full_attention"]"#,
            &["layer_types", "3 layers"],
        ),
        (
            r#""use_sliding_window":true,"sliding_window":8,"layer_types":["full_attention","local","full_attention"]"#,
            &["layer_types", "local"],
        ),
        (
            r#""quantization_config":{"quant_method":"fp8"}"#,
            &["quantization_config"],
        ),
    ] {
        let e = config_err(&with(QWEN2, extra));
        for n in needles {
            assert!(e.contains(n), "{extra}: {e}");
        }
    }
    // DeepSeek keeps rejecting what it always rejected.
    let e = config_err(
        r#"{"model_type":"deepseek_v2","vocab_size":10,"hidden_size":8,"intermediate_size":8,
        "num_hidden_layers":1,"num_attention_heads":1,"kv_lora_rank":4,"qk_nope_head_dim":4,
        "qk_rope_head_dim":2,"v_head_dim":4,"max_position_embeddings":16,
        "rope_scaling":{"rope_type":"llama3","factor":8,"low_freq_factor":1,"high_freq_factor":4,
        "original_max_position_embeddings":64}}"#,
    );
    assert!(e.contains("yarn"), "{e}");
}

fn run(m: &Model, toks: &[u32]) -> Vec<f32> {
    let mut cache = m.new_cache();
    let mut s = [SeqInput {
        tokens: toks,
        cache: &mut cache,
        logits: Logits::All,
    }];
    m.forward(&mut s, &ForwardOptions::default())
        .unwrap()
        .remove(0)
}

#[test]
fn decoding_token_by_token_equals_prefill_and_batching_is_transparent() {
    let swa = with(
        QWEN2,
        r#""use_sliding_window":true,"sliding_window":5,"max_window_layers":1"#,
    );
    for json in [with(QWEN2, ""), swa, with(LLAMA, "")] {
        let m = Model::load(
            config(&json),
            &mut RandomSource::new(7, 0.6),
            &mut |_, _| {},
        )
        .unwrap();
        let v = m.config.vocab_size;
        let toks: Vec<u32> = (0..37).map(|i| ((i * 31 + 5) % v) as u32).collect();
        let all = run(&m, &toks);
        let mut cache = m.new_cache();
        for (i, t) in toks.iter().enumerate() {
            let mut s = [SeqInput {
                tokens: std::slice::from_ref(t),
                cache: &mut cache,
                logits: Logits::Last,
            }];
            let l = m
                .forward(&mut s, &ForwardOptions::default())
                .unwrap()
                .remove(0);
            assert!(
                max_diff(&l, &all[i * v..(i + 1) * v]) < 1e-4,
                "{json} at {i}"
            );
        }
        assert_eq!(cache.len(), toks.len());
        // Two sequences of different lengths in one batch.
        let pool = m.new_pool(4, None, false);
        let (mut c1, mut c2) = (pool.new_seq(), pool.new_seq());
        let (a, b) = (&toks[..7], &toks[3..]);
        let mut batch = [
            SeqInput {
                tokens: a,
                cache: &mut c1,
                logits: Logits::All,
            },
            SeqInput {
                tokens: b,
                cache: &mut c2,
                logits: Logits::Last,
            },
        ];
        let out = m.forward(&mut batch, &ForwardOptions::default()).unwrap();
        assert!(max_diff(&out[0], &all[..7 * v]) < 1e-4);
        let solo_b = run(&m, b);
        assert!(max_diff(&out[1], &solo_b[(b.len() - 1) * v..]) < 1e-4);
    }
}

#[test]
fn the_window_changes_what_a_layer_sees() {
    let full = Model::load(
        config(&with(QWEN2, "")),
        &mut RandomSource::new(9, 0.6),
        &mut |_, _| {},
    )
    .unwrap();
    let swa = Model::load(
        config(&with(
            QWEN2,
            r#""use_sliding_window":true,"sliding_window":4,"max_window_layers":0"#,
        )),
        &mut RandomSource::new(9, 0.6),
        &mut |_, _| {},
    )
    .unwrap();
    let v = full.config.vocab_size;
    let toks: Vec<u32> = (0..12).map(|i| ((i * 7 + 1) % v) as u32).collect();
    let (a, b) = (run(&full, &toks), run(&swa, &toks));
    // Within the window both see everything; beyond it they differ.
    assert!(max_diff(&a[..4 * v], &b[..4 * v]) < 1e-5);
    assert!(max_diff(&a[8 * v..], &b[8 * v..]) > 1e-3);
}
