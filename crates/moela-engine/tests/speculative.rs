//! Speculative decoding inside continuous batching: drafted tokens verified in one step give
//! exactly the tokens of one-token steps (greedy), the same distribution (sampling), and leave
//! the cache as if they had never been drafted (rollback, cancellation, prefix reuse).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use moela_engine::{
    DraftConfig, DraftMode, Drafter, Engine, EngineConfig, EngineStats, Event, Request,
    SamplingParams,
};
use moela_loader::Checkpoint;
use moela_model::Model;
use moela_text::Tokenizer;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn load(rel: &str) -> (Arc<Model>, Tokenizer) {
    let dir = root().join(rel);
    let model = Checkpoint::open(&dir).unwrap().load_model(false).unwrap();
    (Arc::new(model), Tokenizer::from_dir(&dir).unwrap())
}

fn engine(model: &Arc<Model>, tok: Option<&Tokenizer>, mode: DraftMode, batch: usize) -> Engine {
    let config = EngineConfig {
        ctx: 512,
        max_batch: batch,
        max_queue: 4096,
        block_tokens: 8,
        draft: DraftConfig { mode, tokens: 3 },
        ..Default::default()
    };
    Engine::new(model.clone(), tok.cloned(), config)
}

/// Runs every request to its end on `engine`, all submitted at once: (ids, text) each.
fn run(engine: &mut Engine, reqs: Vec<Request>) -> Vec<(Vec<u32>, String)> {
    let mut rxs: Vec<_> = reqs
        .into_iter()
        .map(|r| engine.submit(r).unwrap())
        .collect();
    let mut out = vec![(Vec::new(), String::new()); rxs.len()];
    let mut done = vec![false; rxs.len()];
    while done.iter().any(|d| !d) {
        engine.step();
        for (i, rx) in rxs.iter_mut().enumerate() {
            while let Ok(ev) = rx.try_recv() {
                match ev {
                    Event::Token(t) => {
                        out[i].0.push(t.id);
                        out[i].1.push_str(&t.text);
                    }
                    Event::Done { tail, .. } => {
                        out[i].1.push_str(&tail);
                        done[i] = true;
                    }
                    Event::Error(e) => panic!("{e}"),
                    Event::PromptScores(_) => panic!("no scores were asked for"),
                }
            }
        }
    }
    out
}

/// Prompts whose tails recur (prompt lookup drafts from the first step) and one that never
/// repeats (no draft until its own output repeats).
fn prompts() -> Vec<Vec<u32>> {
    let cycle =
        |start: u32, n: usize| -> Vec<u32> { (0..n).map(|i| start + (i % 5) as u32).collect() };
    vec![
        cycle(10, 23),
        [vec![1, 2, 3], cycle(40, 12), vec![7, 8, 9], cycle(40, 6)].concat(),
        (0..19).map(|i| (i * 37 % 200 + 3) as u32).collect(),
    ]
}

fn greedy_reqs(n: usize) -> Vec<Request> {
    prompts().into_iter().map(|p| Request::new(p, n)).collect()
}

fn counts(s: &EngineStats) -> (u64, u64) {
    (
        s.drafted_tokens.load(Ordering::SeqCst),
        s.accepted_tokens.load(Ordering::SeqCst),
    )
}

/// Drafts the answer one-token steps gave (`spec`: per prompt), with every third proposed
/// token wrong: drafts get accepted, rejected mid-way and rejected at once.
struct Oracle {
    prompts: Vec<Vec<u32>>,
    spec: Vec<Vec<u32>>,
    vocab: u32,
}

impl Drafter for Oracle {
    fn draft(&self, context: &[u32], k: usize) -> Vec<u32> {
        let Some(i) = self.prompts.iter().position(|p| context.starts_with(p)) else {
            return Vec::new();
        };
        let at = context.len() - self.prompts[i].len();
        let right = self.spec[i].iter().skip(at).take(k);
        right
            .enumerate()
            .map(|(j, &t)| match (at + j) % 3 {
                2 => (t + 1) % self.vocab,
                _ => t,
            })
            .collect()
    }
}

/// The greedy answers to [`greedy_reqs`] of `n` tokens from one-token steps, and an oracle
/// drafting them for the first two prompts.
fn spec_and_oracle(model: &Arc<Model>, n: usize) -> (Vec<Vec<u32>>, Arc<Oracle>) {
    let mut e = engine(model, None, DraftMode::None, 1);
    let spec: Vec<Vec<u32>> = run(&mut e, greedy_reqs(n))
        .into_iter()
        .map(|o| o.0)
        .collect();
    assert_eq!(counts(e.stats()), (0, 0));
    let oracle = Arc::new(Oracle {
        prompts: prompts()[..2].to_vec(),
        spec: spec.clone(),
        vocab: model.config.vocab_size as u32,
    });
    (spec, oracle)
}

/// Greedy output with drafts equals one-token steps on every model family, one sequence at a
/// time and batched (drafting and non-drafting sequences in the same step: the third prompt
/// gets no drafts), with drafts accepted and rejected along the way.
#[test]
fn greedy_output_is_identical_with_drafts_on_every_fixture() {
    for rel in [
        "tests/fixtures/models/v3",
        "tests/fixtures/models/v2_lite",
        "tests/fixtures/models/v32",
        "tests/fixtures/models/v4",
        "tests/fixtures/models/qwen2_swa",
        "models/moela-demo",
    ] {
        let (model, _) = load(rel);
        let (spec, oracle) = spec_and_oracle(&model, 24);
        for batch in [1, 3] {
            let mut e = engine(&model, None, DraftMode::None, batch);
            e.set_drafter(oracle.clone());
            let got: Vec<Vec<u32>> = run(&mut e, greedy_reqs(24))
                .into_iter()
                .map(|o| o.0)
                .collect();
            assert_eq!(got, spec, "{rel}, batch {batch}");
            let (drafted, accepted) = counts(e.stats());
            assert!(
                accepted > 0 && accepted < drafted,
                "{rel}: {accepted}/{drafted}"
            );
            assert_eq!(e.stats().kv_blocks_used.load(Ordering::SeqCst), 0, "{rel}");
        }
    }
}

/// Prompt lookup on the built-in model and the V3 fixture: the same tokens as one-token steps.
#[test]
fn prompt_lookup_gives_the_same_greedy_output() {
    for rel in ["models/moela-demo", "tests/fixtures/models/v3"] {
        let (model, _) = load(rel);
        let spec = run(
            &mut engine(&model, None, DraftMode::None, 1),
            greedy_reqs(32),
        );
        let mut e = engine(&model, None, DraftMode::Ngram, 3);
        assert_eq!(run(&mut e, greedy_reqs(32)), spec, "{rel}");
        assert!(counts(e.stats()).0 > 0, "{rel}: nothing drafted");
    }
}

/// The built-in model accepts drafts (its answers quote the prompt), and fewer steps than
/// tokens are taken.
#[test]
fn accepted_drafts_save_steps() {
    let (model, _) = load("models/moela-demo");
    let mut e = engine(&model, None, DraftMode::Ngram, 1);
    let out = run(&mut e, greedy_reqs(32));
    let tokens: usize = out.iter().map(|o| o.0.len()).sum();
    let s = e.stats();
    let (drafted, accepted) = counts(s);
    assert!(accepted > 0, "drafted {drafted}, accepted none");
    let rows = s.decode_rows.load(Ordering::SeqCst);
    // Every request's first token comes from its prefill; the rest from decode rows, each
    // giving one token plus its accepted drafts.
    assert_eq!(rows + accepted, (tokens - out.len()) as u64);
}

/// Stop strings and stop ids cut the output at the same place with and without drafts.
#[test]
fn stop_strings_apply_per_token_inside_accepted_drafts() {
    let (model, tok) = load("models/moela-demo");
    let p = prompts().remove(0);
    let mut plain = engine(&model, Some(&tok), DraftMode::None, 1);
    let full = run(&mut plain, vec![Request::new(p.clone(), 24)]).remove(0);
    // A stop string from the middle of the full answer.
    let chars: Vec<char> = full.1.chars().collect();
    assert!(chars.len() > 8, "answer too short: {:?}", full.1);
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let with_stop = |mode| {
        let mut req = Request::new(p.clone(), 24);
        req.stop = vec![stop.clone()];
        req.stop_token_ids = vec![full.0[full.0.len() * 3 / 4]];
        run(&mut engine(&model, Some(&tok), mode, 1), vec![req]).remove(0)
    };
    let a = with_stop(DraftMode::None);
    assert!(a.0.len() < full.0.len());
    assert_eq!(with_stop(DraftMode::Ngram), a);
}

/// A request cancelled while its drafts are in flight frees its blocks; the others finish with
/// the tokens they would have produced alone.
#[test]
fn cancellation_mid_draft_frees_the_sequence() {
    let (model, _) = load("tests/fixtures/models/v3");
    let (spec, oracle) = spec_and_oracle(&model, 20);
    let mut e = engine(&model, None, DraftMode::None, 3);
    e.set_drafter(oracle);
    let mut rxs: Vec<_> = greedy_reqs(20)
        .into_iter()
        .map(|r| Some(e.submit(r).unwrap()))
        .collect();
    let mut ids: Vec<Vec<u32>> = vec![Vec::new(); 3];
    let mut done = [false, false, false];
    while !(done[1] && done[2]) {
        e.step();
        for (i, slot) in rxs.iter_mut().enumerate() {
            let Some(rx) = slot else { continue };
            while let Ok(ev) = rx.try_recv() {
                match ev {
                    Event::Token(t) => ids[i].push(t.id),
                    Event::Done { .. } => done[i] = true,
                    _ => panic!("unexpected event"),
                }
            }
            // Request 0 (drafting from its first step) is dropped after a few tokens.
            if i == 0 && ids[0].len() >= 4 {
                *slot = None;
            }
        }
    }
    assert!(counts(e.stats()).0 > 0);
    assert_eq!(ids[0], spec[0][..ids[0].len()]);
    assert_eq!(ids[1], spec[1]);
    assert_eq!(ids[2], spec[2]);
    e.step();
    assert_eq!(e.stats().kv_blocks_used.load(Ordering::SeqCst), 0);
}

/// After drafts were rolled back, the blocks left in the prefix index serve a later request
/// whose prompt is the first one's prompt and answer, and that request answers as a cold one.
#[test]
fn prefix_reuse_after_rollback_gives_the_cold_answer() {
    let (model, _) = load("tests/fixtures/models/v3");
    let p = prompts().remove(1);
    let mut e = engine(&model, None, DraftMode::None, 1);
    e.set_drafter(spec_and_oracle(&model, 20).1);
    let first = run(&mut e, vec![Request::new(p.clone(), 20)]).remove(0);
    let (drafted, accepted) = counts(e.stats());
    assert!(drafted > accepted, "no rollback happened");
    let follow: Vec<u32> = [p, first.0, vec![11, 12]].concat();
    let warm = run(&mut e, vec![Request::new(follow.clone(), 12)]).remove(0);
    assert!(e.stats().cached_tokens.load(Ordering::SeqCst) >= 24);
    let cold_cfg = EngineConfig {
        prefix_caching: false,
        ..engine(&model, None, DraftMode::None, 1).config().clone()
    };
    let mut cold = Engine::new(model.clone(), None, cold_cfg);
    assert_eq!(
        run(&mut cold, vec![Request::new(follow, 12)]).remove(0),
        warm
    );
}

/// With sampling, drafting leaves the output distribution unchanged: over many seeds, the
/// first four sampled tokens (top-k 2, so 16 possible answers) are distributed the same with
/// and without drafts (two-sample χ² test; it fails when drafts are kept with probability
/// √p instead of p).
#[test]
fn sampled_output_keeps_its_distribution() {
    let (model, _) = load("tests/fixtures/models/v3");
    let p = prompts().remove(0);
    let runs = 1500;
    // Drafts: the greedy answer (often sampled at this temperature, often not).
    let oracle = spec_and_oracle(&model, 4).1;
    let answers = |drafts: bool| {
        let mut e = engine(&model, None, DraftMode::None, 8);
        if drafts {
            e.set_drafter(oracle.clone());
        }
        let reqs = (0..runs)
            .map(|seed| Request {
                sampling: SamplingParams {
                    temperature: 1.5,
                    top_k: 2,
                    // Independent samples: different seeds for the two arms.
                    seed: Some(seed as u64 * 7919 + u64::from(drafts) * 1_000_003),
                    ..Default::default()
                },
                ..Request::new(p.clone(), 4)
            })
            .collect();
        let mut hist: HashMap<Vec<u32>, usize> = HashMap::new();
        for (ids, _) in run(&mut e, reqs) {
            *hist.entry(ids).or_default() += 1;
        }
        (hist, counts(e.stats()))
    };
    let (a, (drafted_a, _)) = answers(false);
    let (b, (drafted_b, accepted_b)) = answers(true);
    assert_eq!(drafted_a, 0);
    assert!(drafted_b > 0 && accepted_b > 0 && accepted_b < drafted_b);
    // Two-sample χ² over answers seen ≥ 5 times in total, the rest pooled.
    let mut keys: Vec<&Vec<u32>> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let (mut chi2, mut bins, mut rest) = (0.0f64, 0usize, (0usize, 0usize));
    for k in keys {
        let (x, y) = (
            a.get(k).copied().unwrap_or(0),
            b.get(k).copied().unwrap_or(0),
        );
        if x + y < 5 {
            rest = (rest.0 + x, rest.1 + y);
            continue;
        }
        chi2 += (x as f64 - y as f64).powi(2) / (x + y) as f64;
        bins += 1;
    }
    if rest.0 + rest.1 > 0 {
        chi2 += (rest.0 as f64 - rest.1 as f64).powi(2) / (rest.0 + rest.1) as f64;
        bins += 1;
    }
    // The 0.999 quantile of χ² with bins − 1 degrees of freedom (Wilson–Hilferty).
    let df = bins.saturating_sub(1) as f64;
    let c = 2.0 / (9.0 * df);
    let bound = df * (1.0 - c + 3.09 * c.sqrt()).powi(3);
    eprintln!("χ² {chi2:.1} over {bins} bins (bound {bound:.1}); drafted {drafted_b}, accepted {accepted_b}");
    assert!(bins >= 4, "too few distinct answers: {bins}");
    assert!(
        chi2 < bound,
        "χ² {chi2:.1} over {bins} bins (bound {bound:.1})"
    );
}

/// Drafting with the model's MTP layer (the V3 fixture plus a random MTP layer): greedy output
/// identical to one-token steps, solo and batched, with drafts made from the first decode step
/// on; a repeated prompt reuses the cached prefix in both caches and answers the same; blocks
/// are all returned.
#[test]
fn mtp_drafts_give_the_same_greedy_output() {
    mtp_drafts_case("tests/fixtures/models/v3_mtp", 16..=u64::MAX);
}

/// The same with DeepSeek-V4's MTP layer (the V4 fixture plus a random one): the chained drafts
/// and rejected rows are rolled back in the window state of both caches. Its prompts are
/// shorter than the 128 tokens a V4 prefix is reused in, so the repeat reuses nothing.
#[test]
fn v4_mtp_drafts_give_the_same_greedy_output() {
    mtp_drafts_case("tests/fixtures/models/v4_mtp", 0..=0);
}

fn mtp_drafts_case(dir: &str, cached: std::ops::RangeInclusive<u64>) {
    let (model, _) = load(dir);
    assert!(model.has_mtp());
    let (spec, _) = spec_and_oracle(&model, 24);
    for batch in [1, 3] {
        let mut e = engine(&model, None, DraftMode::Mtp, batch);
        let got: Vec<Vec<u32>> = run(&mut e, greedy_reqs(24))
            .into_iter()
            .map(|o| o.0)
            .collect();
        assert_eq!(got, spec, "batch {batch}");
        let s = e.stats();
        let (drafted, _) = counts(s);
        // Every decode row after the first of each request carries k = 3 drafts but the last
        // ones, capped by the budget.
        assert!(drafted >= 3 * 20, "drafted {drafted}");
        // Again: the prompts' blocks come from the prefix cache (main and MTP alike).
        let again: Vec<Vec<u32>> = run(&mut e, greedy_reqs(24))
            .into_iter()
            .map(|o| o.0)
            .collect();
        assert_eq!(again, spec, "batch {batch}, cached prefix");
        let reused = e.stats().cached_tokens.load(Ordering::SeqCst);
        assert!(cached.contains(&reused), "reused {reused}");
        e.step();
        assert_eq!(e.stats().kv_blocks_used.load(Ordering::SeqCst), 0);
    }
}

/// `--draft mtp` on a model without MTP weights decodes without drafts.
#[test]
fn mtp_mode_without_an_mtp_layer_drafts_nothing() {
    let (model, _) = load("tests/fixtures/models/v3");
    assert!(!model.has_mtp());
    let (spec, _) = spec_and_oracle(&model, 12);
    let mut e = engine(&model, None, DraftMode::Mtp, 2);
    let got: Vec<Vec<u32>> = run(&mut e, greedy_reqs(12))
        .into_iter()
        .map(|o| o.0)
        .collect();
    assert_eq!(got, spec);
    assert_eq!(counts(e.stats()), (0, 0));
}

/// Allows only even token ids and completes after `n` tokens.
struct EvenOnly {
    left: usize,
}

impl moela_engine::Constraint for EvenOnly {
    fn mask(&mut self, logits: &mut [f32]) {
        logits
            .iter_mut()
            .skip(1)
            .step_by(2)
            .for_each(|l| *l = f32::NEG_INFINITY);
    }
    fn accept(&mut self, token: u32) -> bool {
        self.left = self.left.saturating_sub(1);
        token.is_multiple_of(2)
    }
    fn is_complete(&self) -> bool {
        self.left == 0
    }
}

/// Constrained decoding applies per token inside accepted drafts: drafting the constrained
/// answer with every third token wrong (an odd one is masked out, an even one is not the
/// argmax), the output equals the one without drafts and ends where the constraint completes.
#[test]
fn constraints_apply_per_token_with_drafts() {
    let (model, _) = load("tests/fixtures/models/v3");
    let req = || {
        let mut r = Request::new(prompts().remove(0), 24);
        r.constraint = Some(Box::new(EvenOnly { left: 15 }));
        r
    };
    let plain = run(&mut engine(&model, None, DraftMode::None, 1), vec![req()]).remove(0);
    assert_eq!(plain.0.len(), 15);
    assert!(plain.0.iter().all(|t| t.is_multiple_of(2)));
    // Drafts: the constrained answer, every third token made wrong (odd or even).
    let oracle = Oracle {
        prompts: vec![prompts().remove(0)],
        spec: vec![plain.0.clone()],
        vocab: model.config.vocab_size as u32,
    };
    let mut e = engine(&model, None, DraftMode::None, 1);
    e.set_drafter(Arc::new(oracle));
    assert_eq!(run(&mut e, vec![req()]).remove(0), plain);
    let (drafted, accepted) = counts(e.stats());
    assert!(accepted > 0 && accepted < drafted, "{accepted}/{drafted}");
}
