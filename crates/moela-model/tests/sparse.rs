//! DeepSeek-V3.2's sparse attention on random weights: both MLA forms agree when queries
//! attend to selected keys, incremental decoding equals one prefill, a sequence gets the same
//! bits alone or in a batched decode step (also when the indexer and the attention split a
//! long context over several tasks), truncation and prefix sharing keep the indexer keys
//! right, and with no query past `index_topk` the model is exactly DeepSeek-V3. (Agreement
//! with the reference is `tests/reference_v32.rs` in the workspace.)

mod common;

use common::{config, f32_bits as bits, max_diff, RandomSource};
use moela_model::{
    AttentionMode, Config, ForwardOptions, KvType, Logits, Model, SeqCache, SeqInput,
};

/// A small V3.2 model (`model_type` as given; the index keys are ignored by V3).
fn cfg(model_type: &str, index_topk: usize) -> Config {
    config(&format!(
        r#"{{"model_type":"{model_type}","vocab_size":97,"hidden_size":48,"intermediate_size":64,
        "moe_intermediate_size":24,"num_hidden_layers":3,"num_attention_heads":3,"q_lora_rank":32,
        "kv_lora_rank":24,"qk_nope_head_dim":16,"qk_rope_head_dim":8,"v_head_dim":12,
        "n_routed_experts":8,"n_shared_experts":1,"num_experts_per_tok":3,"n_group":4,"topk_group":2,
        "routed_scaling_factor":2.5,"first_k_dense_replace":1,"max_position_embeddings":4096,
        "rope_theta":10000,"rope_scaling":{{"type":"yarn","factor":8,"original_max_position_embeddings":16,
        "beta_fast":32,"beta_slow":1,"mscale":1.0,"mscale_all_dim":0.8}},
        "index_topk":{index_topk},"index_n_heads":4,"index_head_dim":16}}"#
    ))
}

fn model(c: Config) -> Model {
    Model::load(c, &mut RandomSource::by_name(0.4), &mut |_, _| {}).unwrap()
}

/// `index_topk` 6: queries from position 6 on attend to 6 keys.
fn v32() -> Model {
    model(cfg("deepseek_v32", 6))
}

fn tokens(n: usize, seed: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i * 7919 + 13 + seed * 31) % 97) as u32)
        .collect()
}

/// Feeds `tokens` to `cache` in one call; the logits of every new token.
fn feed(m: &Model, cache: &mut SeqCache, tokens: &[u32], mode: AttentionMode) -> Vec<f32> {
    let mut s = [SeqInput {
        tokens,
        cache,
        logits: Logits::All,
    }];
    m.forward(&mut s, &ForwardOptions { attention: mode })
        .unwrap()
        .remove(0)
}

fn run(m: &Model, toks: &[u32], mode: AttentionMode) -> Vec<f32> {
    feed(m, &mut m.new_cache(), toks, mode)
}

#[test]
fn absorbed_equals_standard_over_selected_keys() {
    let m = v32();
    // 5 tokens: all dense; 12: the standard form's loops; 40: sparse, so no tiles.
    for n in [5, 12, 40] {
        let toks = tokens(n, 0);
        let std = run(&m, &toks, AttentionMode::Standard);
        let abs = run(&m, &toks, AttentionMode::Absorbed);
        assert!(max_diff(&std, &abs) < 1e-4, "{n}: {}", max_diff(&std, &abs));
    }
}

#[test]
fn without_queries_past_index_topk_the_model_is_deepseek_v3() {
    // The same weights, seeded by name (the indexer's are not asked for by V3).
    let v3 = model(cfg("deepseek_v3", 6));
    let dense = model(cfg("deepseek_v32", 64));
    let sparse = v32();
    let toks = tokens(40, 1);
    let v = 97;
    for mode in [
        AttentionMode::Standard,
        AttentionMode::Absorbed,
        AttentionMode::Auto,
    ] {
        let want = run(&v3, &toks, mode);
        assert_eq!(bits(&run(&dense, &toks, mode)), bits(&want), "{mode:?}");
        // index_topk 6: the first 6 positions attend densely either way, later ones do not.
        let got = run(&sparse, &toks, mode);
        assert!(max_diff(&got[..6 * v], &want[..6 * v]) < 1e-5, "{mode:?}");
        assert!(max_diff(&got[6 * v..], &want[6 * v..]) > 1e-2, "{mode:?}");
    }
}

#[test]
fn incremental_decode_equals_prefill() {
    for kv in [KvType::F32, KvType::F16] {
        let mut m = v32();
        m.set_kv_type(kv);
        let toks = tokens(30, 2);
        let full = run(&m, &toks, AttentionMode::Standard);
        let mut cache = m.new_cache();
        let mut got = feed(&m, &mut cache, &toks[..4], AttentionMode::Auto);
        for t in 4..30 {
            got.extend(feed(&m, &mut cache, &toks[t..t + 1], AttentionMode::Auto));
        }
        assert!(
            max_diff(&full, &got) < 1e-4,
            "{kv:?}: {}",
            max_diff(&full, &got)
        );
    }
}

#[test]
fn f16_cache_stays_close_to_f32() {
    let mut m = v32();
    let toks = tokens(30, 3);
    let exact = run(&m, &toks, AttentionMode::Standard);
    let f32_block = m.new_cache().pool().block_bytes();
    m.set_kv_type(KvType::F16);
    assert_eq!(m.new_cache().pool().block_bytes() * 2, f32_block);
    let d = max_diff(&exact, &run(&m, &toks, AttentionMode::Standard));
    assert!(d > 0.0 && d < 2e-2, "{d}");
}

/// Decode steps of sequences on both sides of `index_topk`, alone and batched: the same bits.
fn batched_equals_solo(m: &Model, lens: &[usize]) {
    let prefilled = || -> Vec<SeqCache> {
        lens.iter()
            .enumerate()
            .map(|(i, &n)| {
                let mut c = m.new_cache();
                feed(m, &mut c, &tokens(n, i), AttentionMode::Auto);
                c
            })
            .collect()
    };
    let (mut solo, mut batched) = (prefilled(), prefilled());
    for step in 0..3 {
        let next: Vec<[u32; 1]> = (0..lens.len())
            .map(|i| [((step * 11 + i * 5) % 97) as u32])
            .collect();
        let want: Vec<Vec<f32>> = solo
            .iter_mut()
            .zip(&next)
            .map(|(c, t)| feed(m, c, t, AttentionMode::Auto))
            .collect();
        let got = common::forward_each(m, &mut batched, &next, Logits::All);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                bits(g),
                bits(w),
                "{:?}, sequence {i}, step {step}",
                m.kv_type()
            );
        }
    }
}

#[test]
fn batched_decode_steps_equal_solo_steps_to_the_bit() {
    for kv in [KvType::F32, KvType::F16] {
        let mut m = v32();
        m.set_kv_type(kv);
        batched_equals_solo(&m, &[3, 5, 6, 7, 20, 40]);
    }
}

#[test]
fn long_contexts_split_over_tasks_stay_exact() {
    // index_topk 100 and contexts to 700: a decode step's indexer scores over several tasks
    // and its attention over the selected keys in several parts.
    let m = model(cfg("deepseek_v32", 100));
    batched_equals_solo(&m, &[50, 99, 100, 101, 700]);
    let toks = tokens(710, 4);
    let full = run(&m, &toks, AttentionMode::Standard);
    let mut cache = m.new_cache();
    let mut got = feed(&m, &mut cache, &toks[..650], AttentionMode::Absorbed);
    for t in 650..710 {
        got.extend(feed(&m, &mut cache, &toks[t..t + 1], AttentionMode::Auto));
    }
    assert!(max_diff(&full, &got) < 1e-4, "{}", max_diff(&full, &got));
}

#[test]
fn a_k_token_step_equals_k_one_token_steps() {
    let m = v32();
    let prompt = tokens(13, 5);
    let next = tokens(4, 6);
    let mut one = m.new_cache();
    feed(&m, &mut one, &prompt, AttentionMode::Auto);
    let want: Vec<f32> = next
        .iter()
        .flat_map(|t| feed(&m, &mut one, &[*t], AttentionMode::Auto))
        .collect();
    let mut k = m.new_cache();
    feed(&m, &mut k, &prompt, AttentionMode::Auto);
    let got = feed(&m, &mut k, &next, AttentionMode::Auto);
    assert!(max_diff(&got, &want) < 1e-5, "{}", max_diff(&got, &want));
}

#[test]
fn truncate_then_redecode_equals_never_having_decoded_the_removed_tokens() {
    for kv in [KvType::F32, KvType::F16] {
        let mut m = v32();
        m.set_kv_type(kv);
        let prompt = tokens(14, 7);
        let removed: Vec<u32> = tokens(5, 8);
        let others: Vec<u32> = tokens(3, 9);
        for cut in [14usize, 16, 17] {
            let mut c = m.new_cache();
            feed(&m, &mut c, &prompt, AttentionMode::Auto);
            for t in &removed {
                feed(&m, &mut c, &[*t], AttentionMode::Auto);
            }
            c.truncate(cut).unwrap();
            let got: Vec<f32> = others
                .iter()
                .flat_map(|t| feed(&m, &mut c, &[*t], AttentionMode::Auto))
                .collect();
            let mut fresh = m.new_cache();
            feed(&m, &mut fresh, &prompt, AttentionMode::Auto);
            for t in &removed[..cut - 14] {
                feed(&m, &mut fresh, &[*t], AttentionMode::Auto);
            }
            let want: Vec<f32> = others
                .iter()
                .flat_map(|t| feed(&m, &mut fresh, &[*t], AttentionMode::Auto))
                .collect();
            assert_eq!(bits(&got), bits(&want), "{kv:?}, cut {cut}");
        }
    }
}

#[test]
fn a_shared_prefix_gives_what_computing_it_does() {
    let m = v32();
    let pool = m.new_pool(4, Some(16), true);
    let a_toks = tokens(10, 10);
    let mut a = pool.new_seq();
    feed(&m, &mut a, &a_toks, AttentionMode::Auto);
    let mut b_toks = a_toks[..9].to_vec();
    b_toks.extend([1, 2, 3]);
    let mut b = pool.seq_with_prefix(&b_toks);
    assert_eq!(b.len(), 8);
    let lb = feed(&m, &mut b, &b_toks[8..], AttentionMode::Auto);
    let fresh = run(&m, &b_toks, AttentionMode::Auto);
    assert!(max_diff(&lb, &fresh[8 * 97..]) < 1e-5);
}

#[test]
fn the_trace_names_the_indexer_intermediates() {
    let m = v32();
    let (t, d, k) = (9usize, 16, 6);
    let mut cache = m.new_cache();
    let mut trace = Vec::new();
    let toks = tokens(t, 11);
    let mut s = [SeqInput {
        tokens: &toks,
        cache: &mut cache,
        logits: Logits::Last,
    }];
    m.forward_traced(&mut s, &ForwardOptions::default(), Some(&mut trace))
        .unwrap();
    let get = |name: &str| -> &Vec<f32> {
        &trace
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no {name} in the trace"))
            .1
    };
    for l in 0..3 {
        let n = |s: &str| format!("layer.{l}.attn.{s}");
        assert_eq!(get(&n("index_k")).len(), t * d);
        assert_eq!(get(&n("kv_latent")).len(), t * (24 + 8 + d));
        let scores = get(&n("index_scores"));
        assert_eq!(scores.len(), t * t);
        let sel = get(&n("index_topk"));
        assert_eq!(sel.len(), t * k);
        for p in 0..t {
            let row = &sel[p * k..(p + 1) * k];
            let keys: Vec<usize> = row
                .iter()
                .filter(|&&x| x >= 0.0)
                .map(|&x| x as usize)
                .collect();
            // Dense up to index_topk causal keys, then the 6 best-scoring ones, ascending.
            assert_eq!(keys.len(), (p + 1).min(k), "position {p}");
            assert!(keys.windows(2).all(|w| w[0] < w[1]) && keys.iter().all(|&u| u <= p));
            let s = &scores[p * t..(p + 1) * t];
            assert!(s[p + 1..].iter().all(|x| *x == f32::NEG_INFINITY));
            if p + 1 > k {
                let worst_kept = keys.iter().map(|&u| s[u]).fold(f32::INFINITY, f32::min);
                let best_left = (0..=p)
                    .filter(|u| !keys.contains(u))
                    .map(|u| s[u])
                    .fold(f32::NEG_INFINITY, f32::max);
                assert!(worst_kept >= best_left, "position {p}");
            }
        }
    }
}
