//! The built-in model (`models/moela-demo`, trained by `tools/train_demo_model.py`) loads, its
//! chat prompt tokenizes as the reference's, its greedy continuations equal the reference's, and
//! its held-out per-token NLL equals what transformers computes (goldens written by the script);
//! its MTP layer (`tools/train_demo_mtp.py`) drafts tokens the model mostly accepts, output unchanged.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::sync::atomic::Ordering;

use moela_engine::{
    generate, greedy_tokens, perplexity, DraftConfig, DraftMode, Engine, EngineConfig, Request,
    DEFAULT_DRAFT_TOKENS,
};
use moela_loader::Checkpoint;
use moela_model::Model;
use moela_text::{ChatMessage, RenderOptions, Role, Tokenizer};
use serde_json::Value;

mod common;
use common::ids;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/moela-demo")
}

fn golden() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("golden.json")).unwrap()).unwrap()
}

/// The reference's per-token NLL of `heldout.txt`.
fn heldout_nll(g: &Value) -> Vec<f64> {
    common::floats(&g["heldout_nll"])
}

/// An engine as the CLI runs it: one sequence, the model's whole context, no tokenizer.
fn engine(m: &Arc<Model>, draft: DraftMode) -> Engine {
    let config = EngineConfig {
        max_batch: 1,
        ctx: m.config.max_position_embeddings,
        draft: DraftConfig {
            mode: draft,
            tokens: DEFAULT_DRAFT_TOKENS,
        },
        ..EngineConfig::default()
    };
    Engine::new(m.clone(), None, config)
}

/// The greedy continuation through the engine, checked against the plain decode loop.
fn greedy(m: &Arc<Model>, prompt: &[u32], n: usize) -> Vec<u32> {
    let spec = greedy_tokens(m, prompt, n).unwrap();
    let out = generate(
        &mut engine(m, DraftMode::None),
        Request::new(prompt.to_vec(), n),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(out.token_ids, spec);
    spec
}

#[test]
fn builtin_model_matches_the_reference() {
    let g = golden();
    let model = Arc::new(Checkpoint::open(&dir()).unwrap().load_model(false).unwrap());
    let tok = Tokenizer::from_dir(&dir()).unwrap();

    // The chat prompt renders and tokenizes exactly as the reference did.
    let user = "Write a Python function that reverses a string.";
    let msgs = [ChatMessage::new(Role::User, user)];
    let opts = RenderOptions {
        add_generation_prompt: true,
        ..Default::default()
    };
    let p = tok.apply_chat_template(&msgs, &opts).unwrap();
    assert_eq!(p.text, g["prompt_text"].as_str().unwrap());
    assert_eq!(p.ids, ids(&g["prompt_ids"]));

    // Greedy continuations equal the reference's.
    let want = ids(&g["greedy_tokens"]);
    assert_eq!(greedy(&model, &p.ids, want.len()), want);
    for s in g["samples"].as_array().unwrap() {
        let want = ids(&s["greedy_tokens"]);
        assert_eq!(
            greedy(&model, &ids(&s["prompt_ids"]), want.len()),
            want,
            "{}",
            s["prompt_text"]
        );
    }

    // Held-out per-token NLL equals the reference's.
    let text = std::fs::read_to_string(dir().join("heldout.txt")).unwrap();
    let tokens = tok.encode(&text, true).unwrap();
    let nll = perplexity(&mut engine(&model, DraftMode::None), &tokens).unwrap();
    let want = heldout_nll(&g);
    assert_eq!(nll.len(), want.len());
    let err = nll
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(err < 1e-4, "max |ΔNLL| = {err}");
}

/// The 8-bit latent cache (`--kv-type q8_0`) moves the built-in model's held-out perplexity by
/// at most 0.5 % from the reference's (measured: +0.13 %).
#[test]
fn q8_cache_keeps_heldout_perplexity_within_half_a_percent() {
    let g = golden();
    let mut m = Checkpoint::open(&dir()).unwrap().load_model(false).unwrap();
    m.set_kv_type(moela_model::KvType::Q8_0);
    let model = Arc::new(m);
    let tok = Tokenizer::from_dir(&dir()).unwrap();
    let text = std::fs::read_to_string(dir().join("heldout.txt")).unwrap();
    let tokens = tok.encode(&text, true).unwrap();
    let nll = perplexity(&mut engine(&model, DraftMode::None), &tokens).unwrap();
    let ppl = (nll.iter().sum::<f64>() / nll.len() as f64).exp();
    let want = heldout_nll(&g);
    let want_ppl = (want.iter().sum::<f64>() / want.len() as f64).exp();
    let change = ppl / want_ppl - 1.0;
    println!(
        "q8_0 cache: perplexity {ppl:.4} vs {want_ppl:.4} ({:+.3} %)",
        100.0 * change
    );
    assert!(change.abs() <= 0.005, "{change}");
}

/// The checkpoint has its MTP layer; greedy decoding that drafts with it gives exactly the
/// reference's tokens (the goldens the test above holds `--draft none` to), and the model accepts
/// most drafts (3 per step): measured when the layer was trained, 208 of 227 (91.6 %, 3.70
/// tokens per step; "Que fait la commande ls ?" is one of its training instructions, the others
/// are not) against 1 in 8192 by chance. The floor is conservative.
#[test]
fn builtin_model_drafts_with_its_mtp_layer() {
    let g = golden();
    let model = Arc::new(Checkpoint::open(&dir()).unwrap().load_model(false).unwrap());
    assert!(model.has_mtp(), "models/moela-demo has no MTP layer");
    let mut cases = vec![(ids(&g["prompt_ids"]), ids(&g["greedy_tokens"]))];
    for s in g["samples"].as_array().unwrap() {
        cases.push((ids(&s["prompt_ids"]), ids(&s["greedy_tokens"])));
    }
    let mut e = engine(&model, DraftMode::Mtp);
    for (prompt, want) in &cases {
        let out = generate(
            &mut e,
            Request::new(prompt.clone(), want.len()),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(&out.token_ids, want);
    }
    let s = e.stats();
    let drafted = s.drafted_tokens.load(Ordering::SeqCst);
    let accepted = s.accepted_tokens.load(Ordering::SeqCst);
    let rows = s.decode_rows.load(Ordering::SeqCst);
    let rate = accepted as f64 / drafted.max(1) as f64;
    eprintln!(
        "MTP drafts: {accepted}/{drafted} accepted ({:.1} %), {:.2} tokens per step",
        100.0 * rate,
        (rows + accepted) as f64 / rows.max(1) as f64
    );
    assert!(drafted > 0, "no drafts");
    assert!(rate >= 0.30, "acceptance {rate}");
}
