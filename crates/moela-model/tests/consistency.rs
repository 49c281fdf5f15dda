//! Internal consistency of the forward pass on random weights: absorbed MLA equals the
//! standard (decompressed) form, incremental decoding equals one prefill, and a sequence gives
//! the same logits alone or inside a batch. (Agreement with the reference is tested against
//! transformers goldens in the workspace's `tests/reference.rs`.)

mod common;

use common::{config, max_diff, RandomSource};
use moela_model::{AttentionMode, Config, ForwardOptions, KvType, Logits, Model, SeqInput};

fn v3_config() -> Config {
    config(
        r#"{"model_type":"deepseek_v3","vocab_size":97,"hidden_size":48,"intermediate_size":64,
        "moe_intermediate_size":24,"num_hidden_layers":3,"num_attention_heads":3,"q_lora_rank":32,
        "kv_lora_rank":24,"qk_nope_head_dim":16,"qk_rope_head_dim":8,"v_head_dim":12,
        "n_routed_experts":8,"n_shared_experts":1,"num_experts_per_tok":3,"n_group":4,"topk_group":2,
        "routed_scaling_factor":2.5,"first_k_dense_replace":1,"max_position_embeddings":256,
        "rope_theta":10000,"rope_scaling":{"type":"yarn","factor":8,"original_max_position_embeddings":16,
        "beta_fast":32,"beta_slow":1,"mscale":1.0,"mscale_all_dim":0.8}}"#,
    )
}

fn v2_lite_config() -> Config {
    config(
        r#"{"model_type":"deepseek_v2","vocab_size":61,"hidden_size":32,"intermediate_size":40,
        "moe_intermediate_size":16,"num_hidden_layers":2,"num_attention_heads":2,"q_lora_rank":null,
        "kv_lora_rank":16,"qk_nope_head_dim":8,"qk_rope_head_dim":4,"v_head_dim":8,
        "n_routed_experts":6,"n_shared_experts":2,"num_experts_per_tok":2,"first_k_dense_replace":1,
        "max_position_embeddings":128,"topk_method":"greedy","scoring_func":"softmax"}"#,
    )
}

fn model(cfg: Config) -> Model {
    Model::load(cfg, &mut RandomSource::new(42, 0.4), &mut |_, _| {}).unwrap()
}

fn tokens(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + 13) % vocab) as u32).collect()
}

fn run(m: &Model, toks: &[u32], mode: AttentionMode) -> Vec<f32> {
    let mut cache = m.new_cache();
    let mut seqs = [SeqInput {
        tokens: toks,
        cache: &mut cache,
        logits: Logits::All,
    }];
    m.forward(&mut seqs, &ForwardOptions { attention: mode })
        .unwrap()
        .remove(0)
}

#[test]
fn absorbed_mla_equals_standard() {
    // 8 tokens run the standard form's loops, 40 its matrix-product form.
    for cfg in [v3_config(), v2_lite_config()] {
        let m = model(cfg);
        for n in [8, 40] {
            let toks = tokens(n, m.config.vocab_size);
            let std = run(&m, &toks, AttentionMode::Standard);
            let abs = run(&m, &toks, AttentionMode::Absorbed);
            assert!(max_diff(&std, &abs) < 1e-4, "{n}: {}", max_diff(&std, &abs));
        }
    }
}

#[test]
fn incremental_decode_equals_prefill() {
    for kv in [KvType::F32, KvType::F16, KvType::Q8_0] {
        incremental_decode_equals_prefill_with(kv, 30, 10);
    }
}

/// Decode over 600 cached tokens: an 8-bit cache's decode tasks span several chunks of 64 rows,
/// whose running softmax max and rescaled sums must give what the prefill computes (an f32
/// cache's long tasks go as one chunk).
#[test]
fn long_decode_equals_prefill() {
    for kv in [KvType::F32, KvType::Q8_0] {
        incremental_decode_equals_prefill_with(kv, 600, 596);
    }
}

#[test]
fn f16_cache_stays_close_to_f32() {
    let mut m = model(v3_config());
    let toks = tokens(30, m.config.vocab_size);
    let exact = run(&m, &toks, AttentionMode::Standard);
    let f32_block = m.new_cache().pool().block_bytes();
    m.set_kv_type(KvType::F16);
    assert_eq!(m.new_cache().pool().block_bytes() * 2, f32_block);
    let half = run(&m, &toks, AttentionMode::Standard);
    let d = max_diff(&exact, &half);
    assert!(d > 0.0 && d < 2e-2, "{d}");
}

/// A q8_0 cache: 34 bytes per 32 values (each layer's row zero-padded to whole blocks), logits
/// within 5e-2 of the exact cache's on this fixture.
#[test]
fn q8_cache_stays_close_to_f32() {
    let mut m = model(v3_config());
    let toks = tokens(30, m.config.vocab_size);
    let exact = run(&m, &toks, AttentionMode::Standard);
    m.set_kv_type(KvType::Q8_0);
    let pool = m.new_cache().pool().clone();
    let padded: usize = pool.widths().iter().map(|w| w.div_ceil(32) * 34).sum();
    assert_eq!(pool.block_bytes(), pool.block_tokens() * padded);
    assert_eq!(m.config.kv_bytes_per_token(KvType::Q8_0).unwrap(), padded);
    let q8 = run(&m, &toks, AttentionMode::Standard);
    let d = max_diff(&exact, &q8);
    println!("q8_0 cache: max |Δlogit| {d:.2e}");
    assert!(d > 0.0 && d < 5e-2, "{d}");
}

/// `n` tokens: `prefix` prefilled, the rest decoded one at a time, against one prefill of all.
fn incremental_decode_equals_prefill_with(kv: KvType, n: usize, prefix: usize) {
    let mut m = model(v3_config());
    m.set_kv_type(kv);
    assert_eq!(m.new_cache().pool().kv_type(), kv);
    let toks = tokens(n, m.config.vocab_size);
    let full = run(&m, &toks, AttentionMode::Standard);
    let v = m.config.vocab_size;
    // Prefill, then one at a time (Auto picks absorbed for single tokens).
    let mut cache = m.new_cache();
    let mut got = {
        let mut s = [SeqInput {
            tokens: &toks[..prefix],
            cache: &mut cache,
            logits: Logits::All,
        }];
        m.forward(&mut s, &ForwardOptions::default())
            .unwrap()
            .remove(0)
    };
    for t in prefix..n {
        let mut s = [SeqInput {
            tokens: &toks[t..t + 1],
            cache: &mut cache,
            logits: Logits::Last,
        }];
        got.extend(
            m.forward(&mut s, &ForwardOptions::default())
                .unwrap()
                .remove(0),
        );
    }
    assert_eq!(cache.len(), n);
    assert_eq!(got.len(), n * v);
    assert!(max_diff(&full, &got) < 1e-4, "{}", max_diff(&full, &got));
}

#[test]
fn batched_sequences_equal_solo_runs() {
    let m = model(v3_config());
    let v = m.config.vocab_size;
    let a = tokens(17, v);
    let b: Vec<u32> = tokens(9, v).iter().map(|t| (t + 5) % v as u32).collect();
    let solo_a = run(&m, &a, AttentionMode::Auto);
    let solo_b = run(&m, &b, AttentionMode::Auto);
    let (mut ca, mut cb, mut cc) = (m.new_cache(), m.new_cache(), m.new_cache());
    // The head runs once over every row asked for; each sequence gets back its own rows.
    let mut batch = [
        SeqInput {
            tokens: &a,
            cache: &mut ca,
            logits: Logits::All,
        },
        SeqInput {
            tokens: &b[..4],
            cache: &mut cc,
            logits: Logits::None,
        },
        SeqInput {
            tokens: &b,
            cache: &mut cb,
            logits: Logits::Last,
        },
    ];
    let out = m.forward(&mut batch, &ForwardOptions::default()).unwrap();
    assert_eq!(out.len(), 3);
    assert_eq!(out[0].len(), a.len() * v);
    assert!(out[1].is_empty());
    assert_eq!(out[2].len(), v);
    assert!(max_diff(&out[0], &solo_a) < 1e-5);
    assert!(max_diff(&out[2], &solo_b[(b.len() - 1) * v..]) < 1e-5);
}

#[test]
fn bad_token_id_is_an_error_and_leaves_cache_untouched() {
    let m = model(v2_lite_config());
    let mut cache = m.new_cache();
    let bad = [1u32, 999];
    let mut s = [SeqInput {
        tokens: &bad,
        cache: &mut cache,
        logits: Logits::Last,
    }];
    let err = m.forward(&mut s, &ForwardOptions::default()).unwrap_err();
    assert!(err.to_string().contains("999"), "{err}");
    assert_eq!(cache.len(), 0);
}

#[test]
fn config_errors_name_the_field() {
    let e = Config::from_hf_json(r#"{"model_type":"mixtral"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("model_type") && e.contains("mixtral"), "{e}");
    let e = Config::from_hf_json(r#"{"model_type":"deepseek_v3","vocab_size":10}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("hidden_size") && e.contains("missing"), "{e}");
    let e = Config::from_hf_json(r#"{"model_type":"deepseek_v2","vocab_size":"many"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("vocab_size"), "{e}");
    let e = Config::from_hf_json("{not json").unwrap_err().to_string();
    assert!(e.contains("JSON"), "{e}");
}

#[test]
fn published_softmax_scales() {
    // deepseek-architecture.md §1: V3 0.13523378, V2/V2-Lite 0.11472139.
    let base = |ms: f64| {
        format!(
            r#"{{"model_type":"deepseek_v3","vocab_size":8,"hidden_size":8,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":1,"kv_lora_rank":4,"qk_nope_head_dim":128,
            "qk_rope_head_dim":64,"v_head_dim":4,"max_position_embeddings":8,
            "rope_scaling":{{"type":"yarn","factor":40,"original_max_position_embeddings":4096,
            "mscale":{ms},"mscale_all_dim":{ms}}}}}"#
        )
    };
    let scale = |ms: f64| config(&base(ms)).softmax_scale().unwrap();
    assert!((scale(1.0) - 0.135_233_78).abs() < 1e-7);
    assert!((scale(0.707) - 0.114_721_39).abs() < 1e-7);
}

#[test]
fn paged_pool_shares_prefixes_frees_on_drop_and_evicts() {
    let m = model(v3_config());
    let v = m.config.vocab_size;
    // 4 tokens per block, at most 6 blocks.
    let pool = m.new_pool(4, Some(6), true);
    let fwd = |cache: &mut moela_model::SeqCache, toks: &[u32]| {
        let mut s = [SeqInput {
            tokens: toks,
            cache,
            logits: Logits::All,
        }];
        m.forward(&mut s, &ForwardOptions::default())
    };
    let a_toks = tokens(10, v);
    let mut a = pool.new_seq();
    let la = fwd(&mut a, &a_toks).unwrap().remove(0);
    assert_eq!(pool.stats().used, 3);
    // b shares a's first 8 tokens (2 full blocks) and diverges after.
    let mut b_toks = a_toks[..9].to_vec();
    b_toks.extend([1, 2, 3]);
    let mut b = pool.seq_with_prefix(&b_toks);
    assert_eq!(b.len(), 8);
    let lb = fwd(&mut b, &b_toks[8..]).unwrap().remove(0);
    // Same logits as computing b from scratch, and a's shared rows are unchanged.
    let fresh = run(&m, &b_toks, AttentionMode::Auto);
    assert!(max_diff(&lb, &fresh[8 * v..]) < 1e-5);
    assert!(max_diff(&la, &run(&m, &a_toks, AttentionMode::Auto)) < 1e-5);
    assert_eq!(pool.stats().used, 4, "2 shared + a's third + b's own");
    drop(a);
    drop(b);
    let st = pool.stats();
    assert_eq!(
        (st.used, st.cached),
        (0, 3),
        "full blocks stay indexed: a's 2, b's 1"
    );
    // An unrelated 24-token sequence needs all 6 blocks: the cached ones are evicted.
    let mut c = pool.new_seq();
    fwd(&mut c, &[7; 24]).unwrap();
    assert_eq!(pool.stats().used, 6);
    // One more token does not fit: a clear error, and the cache is unchanged.
    let err = fwd(&mut c, &[7]).unwrap_err();
    assert!(err.to_string().contains("KV cache is full"), "{err}");
    assert_eq!(c.len(), 24);
    drop(c);
    assert_eq!(pool.stats().used, 0);
}

#[test]
fn batched_decode_steps_equal_solo_steps_to_the_bit() {
    // Several sequences decoding one token each share one batched attention (MLA absorbed
    // form: one W_UK product, one pool job over every sequence's cache blocks, one W_UV
    // product; GQA: one pool job over every sequence's tiles).
    // Each must get exactly the logits it gets alone, with f32 and f16 caches and contexts on
    // both sides of a cache-block boundary.
    for kv in [KvType::F32, KvType::F16, KvType::Q8_0] {
        for cfg in [v3_config(), v2_lite_config(), qwen2_config()] {
            let mut m = model(cfg);
            m.set_kv_type(kv);
            let v = m.config.vocab_size;
            let prompts: Vec<Vec<u32>> = [3usize, 15, 16, 17, 40]
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    tokens(n, v)
                        .iter()
                        .map(|t| (t + i as u32) % v as u32)
                        .collect()
                })
                .collect();
            let prefilled = || {
                prompts
                    .iter()
                    .map(|p| {
                        let mut c = m.new_cache();
                        let mut s = [SeqInput {
                            tokens: p,
                            cache: &mut c,
                            logits: Logits::None,
                        }];
                        m.forward(&mut s, &ForwardOptions::default()).unwrap();
                        c
                    })
                    .collect::<Vec<_>>()
            };
            let (mut solo, mut batched) = (prefilled(), prefilled());
            for step in 0..3u32 {
                let next: Vec<[u32; 1]> = (0..prompts.len() as u32)
                    .map(|i| [(step * 11 + i * 5) % v as u32])
                    .collect();
                // Solo: each sequence in a pass of its own.
                let want: Vec<Vec<f32>> = solo
                    .chunks_mut(1)
                    .zip(next.chunks(1))
                    .map(|(c, t)| common::forward_each(&m, c, t, Logits::Last).remove(0))
                    .collect();
                let got = common::forward_each(&m, &mut batched, &next, Logits::Last);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        common::f32_bits(g),
                        common::f32_bits(w),
                        "{kv:?}, sequence {i}, step {step}"
                    );
                }
            }
        }
    }
}

#[test]
fn cache_and_kv_b_sizes_are_checked_products() {
    // V2-Lite's attention sizes (27 layers, 16 heads, kv_lora_rank 512, rope 64, nope/v 128):
    // 27 × 576 values per token, 31,104 B as f16; kv_b_proj f32 = 27 × 16 × 256 × 512 × 4.
    let lite = config(
        r#"{"model_type":"deepseek_v2","vocab_size":64,"hidden_size":2048,"intermediate_size":64,
        "num_hidden_layers":27,"num_attention_heads":16,"q_lora_rank":null,"kv_lora_rank":512,
        "qk_nope_head_dim":128,"qk_rope_head_dim":64,"v_head_dim":128,"max_position_embeddings":64}"#,
    );
    assert_eq!(lite.kv_values_per_token().ok(), Some(27 * 576));
    assert_eq!(lite.kv_bytes_per_token(KvType::F16).ok(), Some(31_104));
    assert_eq!(lite.kv_bytes_per_token(KvType::F32).ok(), Some(62_208));
    assert_eq!(lite.kv_b_f32_bytes().ok(), Some(27 * 16 * 256 * 512 * 4));
    // Dense (GQA): keys and values of every KV head, no kv_b_proj.
    let qwen = config(
        r#"{"model_type":"qwen2","vocab_size":64,"hidden_size":64,"intermediate_size":64,
        "num_hidden_layers":28,"num_attention_heads":4,"num_key_value_heads":2,
        "max_position_embeddings":64}"#,
    );
    assert_eq!(qwen.kv_values_per_token().ok(), Some(28 * 2 * 2 * 16));
    assert_eq!(qwen.kv_b_f32_bytes().ok(), Some(0));
    // Sizes that would wrap are errors naming the field, never a wrapped number.
    let mut huge = lite.clone();
    huge.num_hidden_layers = usize::MAX / 2;
    for e in [
        huge.kv_values_per_token().unwrap_err(),
        huge.kv_bytes_per_token(KvType::F32).unwrap_err(),
        huge.kv_b_f32_bytes().unwrap_err(),
    ] {
        assert!(e.to_string().contains("num_hidden_layers"), "{e}");
    }
}

fn qwen2_config() -> Config {
    config(
        r#"{"model_type":"qwen2","vocab_size":53,"hidden_size":32,"intermediate_size":40,
        "num_hidden_layers":3,"num_attention_heads":4,"num_key_value_heads":2,
        "max_position_embeddings":256}"#,
    )
}

/// Feeds `steps` to `cache`, each a forward call of its tokens; the last row's logits of each.
fn feed(m: &Model, cache: &mut moela_model::SeqCache, steps: &[&[u32]]) -> Vec<Vec<f32>> {
    steps
        .iter()
        .map(|toks| {
            let mut s = [SeqInput {
                tokens: toks,
                cache: &mut *cache,
                logits: Logits::Last,
            }];
            m.forward(&mut s, &ForwardOptions::default())
                .unwrap()
                .remove(0)
        })
        .collect()
}

fn bits(x: &[Vec<f32>]) -> Vec<Vec<u32>> {
    x.iter()
        .map(|r| r.iter().map(|f| f.to_bits()).collect())
        .collect()
}

#[test]
fn truncate_then_redecode_equals_never_having_decoded_the_removed_tokens() {
    // 14 prompt tokens, then 5 decoded (positions 14..19 cross the 16-token block boundary);
    // cut back to 14 (block 1 released), 16 (exactly one block) or 17 (inside block 1), then
    // 3 other tokens. The reference decodes only the kept tokens and the 3 others: the same
    // forward calls for every kept row, so the logits must match to the bit.
    for kv in [KvType::F32, KvType::F16, KvType::Q8_0] {
        for cfg in [v3_config(), v2_lite_config(), qwen2_config()] {
            let mut m = model(cfg);
            m.set_kv_type(kv);
            let v = m.config.vocab_size as u32;
            let prompt: Vec<u32> = (0..14).map(|i| (i * 7 + 3) % v).collect();
            let removed: Vec<[u32; 1]> = (0..5).map(|i| [(i * 11 + 5) % v]).collect();
            let others: Vec<[u32; 1]> = (0..3).map(|i| [(i * 13 + 1) % v]).collect();
            for cut in [14usize, 16, 17] {
                let mut c = m.new_cache();
                let mut steps: Vec<&[u32]> = vec![&prompt];
                steps.extend(removed.iter().map(|t| &t[..]));
                feed(&m, &mut c, &steps);
                assert_eq!(c.len(), 19);
                c.truncate(cut).unwrap();
                assert_eq!(c.len(), cut);
                assert_eq!(
                    c.bytes(),
                    cut.div_ceil(16) * m.new_cache().pool().block_bytes()
                );
                let others_steps: Vec<&[u32]> = others.iter().map(|t| &t[..]).collect();
                let got = feed(&m, &mut c, &others_steps);

                let mut fresh = m.new_cache();
                let mut steps: Vec<&[u32]> = vec![&prompt];
                steps.extend(removed[..cut - 14].iter().map(|t| &t[..]));
                feed(&m, &mut fresh, &steps);
                let want = feed(&m, &mut fresh, &others_steps);
                assert_eq!(bits(&got), bits(&want), "{kv:?}, cut {cut}");
            }
        }
    }
}

#[test]
fn truncating_a_shared_prefix_copies_the_block_and_leaves_the_owner_intact() {
    let m = model(v3_config());
    let v = m.config.vocab_size as u32;
    let pool = m.new_pool(16, Some(16), true);
    let prompt: Vec<u32> = (0..32).map(|i| (i * 5 + 2) % v).collect();
    let w: [u32; 1] = [7];
    let ys: Vec<[u32; 1]> = (0..3).map(|i| [(i * 3 + 4) % v]).collect();
    let y_steps: Vec<&[u32]> = ys.iter().map(|t| &t[..]).collect();
    // A computes the prompt; its two full blocks enter the prefix index.
    let mut a = pool.new_seq();
    feed(&m, &mut a, &[&prompt]);
    // B reuses both blocks, then cuts back into the second (shared with A and the index).
    let mut longer = prompt.clone();
    longer.push(1);
    let mut b = pool.seq_with_prefix(&longer);
    assert_eq!(b.len(), 32);
    let used = pool.stats().used;
    b.truncate(20).unwrap();
    assert_eq!(pool.stats().used, used + 1, "B's block 1 is a private copy");
    let got_b = feed(&m, &mut b, &y_steps);
    // A continues as if B had never touched its blocks, and the index still serves them.
    let got_a = feed(&m, &mut a, &[&w]);
    let mut fresh_a = m.new_cache();
    feed(&m, &mut fresh_a, &[&prompt]);
    assert_eq!(bits(&got_a), bits(&feed(&m, &mut fresh_a, &[&w])));
    assert_eq!(pool.seq_with_prefix(&longer).len(), 32);
    // B equals the same prompt computed alone, cut back to 20 and continued.
    let mut fresh_b = m.new_cache();
    feed(&m, &mut fresh_b, &[&prompt]);
    fresh_b.truncate(20).unwrap();
    assert_eq!(bits(&got_b), bits(&feed(&m, &mut fresh_b, &y_steps)));
    // A block only the index shares leaves the index when its owner cuts into it (A's second
    // block may be rewritten now): the prefix served is one block shorter.
    a.truncate(20).unwrap();
    assert_eq!(pool.seq_with_prefix(&longer).len(), 16);
    // Cutting more than it holds, or to its length, changes nothing.
    let len = b.len();
    b.truncate(len + 5).unwrap();
    assert_eq!(b.len(), len);
}

#[test]
fn a_k_token_step_equals_k_one_token_steps() {
    for cfg in [v3_config(), v2_lite_config(), qwen2_config()] {
        let m = model(cfg);
        let v = m.config.vocab_size as u32;
        let prompt: Vec<u32> = (0..13).map(|i| (i * 7 + 3) % v).collect();
        let next: Vec<u32> = (0..4).map(|i| (i * 11 + 5) % v).collect();
        let mut one = m.new_cache();
        feed(&m, &mut one, &[&prompt]);
        let singles: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let want: Vec<f32> = feed(
            &m,
            &mut one,
            &singles.iter().map(|t| &t[..]).collect::<Vec<_>>(),
        )
        .concat();
        let mut k = m.new_cache();
        feed(&m, &mut k, &[&prompt]);
        let mut s = [SeqInput {
            tokens: &next,
            cache: &mut k,
            logits: Logits::All,
        }];
        let got = m
            .forward(&mut s, &ForwardOptions::default())
            .unwrap()
            .remove(0);
        assert_eq!(k.len(), one.len());
        assert!(max_diff(&got, &want) < 1e-5, "{}", max_diff(&got, &want));
    }
}

#[test]
fn the_trace_names_every_intermediate_of_a_layer() {
    let m = model(v3_config()); // layer 0 dense, layers 1–2 MoE
    let c = m.config.clone();
    let (d, t) = (c.hidden_size, 5usize);
    let toks = tokens(t, c.vocab_size);
    let mut cache = m.new_cache();
    let mut trace = Vec::new();
    let mut s = [SeqInput {
        tokens: &toks,
        cache: &mut cache,
        logits: Logits::Last,
    }];
    let traced = m
        .forward_traced(&mut s, &ForwardOptions::default(), Some(&mut trace))
        .unwrap();
    let get = |name: &str| -> &Vec<f32> {
        &trace
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no {name} in the trace"))
            .1
    };
    let (h, lat) = (c.num_attention_heads, c.latent_dim().unwrap());
    let mut prev = get("embed").clone();
    for l in 0..c.num_hidden_layers {
        let n = |s: &str| format!("layer.{l}{s}");
        assert_eq!(get(&n(".attn_norm")).len(), t * d);
        assert_eq!(get(&n(".attn.q")).len(), t * h * c.qk_head_dim().unwrap());
        assert_eq!(get(&n(".attn.kv_latent")).len(), t * lat);
        assert_eq!(
            get(&n(".attn.heads")).len(),
            t * h * c.mla().unwrap().v_head_dim
        );
        assert_eq!(get(&n(".ffn_norm")).len(), t * d);
        let has_router = trace.iter().any(|(x, _)| *x == n(".moe.router_logits"));
        assert_eq!(has_router, c.is_moe_layer(l), "layer {l}");
        if has_router {
            let e = c.moe.as_ref().unwrap().n_routed_experts;
            assert_eq!(get(&n(".moe.router_logits")).len(), t * e);
        }
        // The residual stream is the previous one plus the attention's and the FFN's outputs.
        let (attn, ffn, out) = (get(&n(".attn")), get(&n(".ffn")), get(&n("")));
        let want: Vec<f32> = (0..t * d).map(|i| (prev[i] + attn[i]) + ffn[i]).collect();
        assert_eq!(out, &want, "layer {l}");
        prev = out.clone();
    }
    // Tracing changes nothing of the result.
    let mut c2 = m.new_cache();
    let mut s2 = [SeqInput {
        tokens: &toks,
        cache: &mut c2,
        logits: Logits::Last,
    }];
    let plain = m.forward(&mut s2, &ForwardOptions::default()).unwrap();
    assert_eq!(plain, traced);
}
