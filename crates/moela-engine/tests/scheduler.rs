//! The continuous-batching engine on a reference fixture: batched outputs equal solo runs,
//! cancellation frees the sequence, the queue is bounded, logprobs are a distribution.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use moela_engine::{
    generate, greedy_tokens, perplexity, run_bench, token_nll, BenchConfig, Engine, EngineConfig,
    EngineHandle, Event, Request, SubmitError, PREFILL_CHUNK,
};
use moela_loader::Checkpoint;
use moela_model::Model;
use moela_model::{ForwardOptions, Logits, SeqInput};
use moela_text::Tokenizer;

fn fixture() -> (Arc<Model>, Tokenizer) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/v3");
    let model = Checkpoint::open(&dir).unwrap().load_model(false).unwrap();
    (Arc::new(model), Tokenizer::from_dir(&dir).unwrap())
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> Request {
    Request::new(prompt, max_tokens)
}

/// Collects a request's events: (token ids, text, finish reason).
fn collect(rx: tokio::sync::mpsc::UnboundedReceiver<Event>) -> (Vec<u32>, String, String) {
    let (ids, text, reason, _) = collect_all(rx);
    (ids, text, reason)
}

/// Collects a request's events: (token ids, text, finish reason, usage).
fn collect_all(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>,
) -> (Vec<u32>, String, String, moela_engine::Usage) {
    let (mut ids, mut text) = (Vec::new(), String::new());
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            Event::Token(t) => {
                ids.push(t.id);
                text.push_str(&t.text);
            }
            Event::Done {
                tail,
                finish_reason,
                usage,
                ..
            } => {
                text.push_str(&tail);
                return (ids, text, finish_reason.as_str().to_string(), usage);
            }
            Event::Error(e) => panic!("{e}"),
            Event::PromptScores(_) => panic!("scores that were not asked for"),
        }
    }
    panic!("channel closed without Done");
}

#[test]
fn batched_requests_equal_solo_generation() {
    let (model, tok) = fixture();
    let prompts: Vec<Vec<u32>> = vec![
        vec![0, 5, 9, 200],
        vec![0, 42],
        (0..40).map(|i| (i * 11 % 500) as u32).collect(),
    ];
    // Solo: one sequence at a time through the same engine, as the CLI runs it; its tokens are
    // the spec's (`greedy_tokens`: one token per plain forward pass).
    let mut cli = Engine::new(
        model.clone(),
        Some(tok.clone()),
        EngineConfig {
            ctx: 256,
            max_batch: 1,
            ..Default::default()
        },
    );
    let solo: Vec<(Vec<u32>, String)> = prompts
        .iter()
        .map(|p| {
            let out = generate(&mut cli, request(p.clone(), 12), &mut |_| {}).unwrap();
            assert_eq!(out.token_ids, greedy_tokens(&model, p, 12).unwrap());
            (out.token_ids, out.text)
        })
        .collect();
    let engine = EngineHandle::start(
        model,
        tok,
        EngineConfig {
            ctx: 256,
            prefill_tokens_per_step: 16,
            ..Default::default()
        },
    );
    let rxs: Vec<_> = prompts
        .iter()
        .map(|p| engine.submit(request(p.clone(), 12)).unwrap())
        .collect();
    for (rx, (ids, text)) in rxs.into_iter().zip(solo) {
        let (got_ids, got_text, reason) = collect(rx);
        assert_eq!(got_ids, ids);
        assert_eq!(got_text, text);
        assert_eq!(reason, "length");
    }
    engine.shutdown();
}

#[test]
fn cancelled_request_is_dropped_and_others_finish() {
    let (model, tok) = fixture();
    let engine = EngineHandle::start(
        model,
        tok,
        EngineConfig {
            ctx: 256,
            ..Default::default()
        },
    );
    let rx = engine.submit(request(vec![0, 1, 2], 200)).unwrap();
    drop(rx);
    let (ids, _, _) = collect(engine.submit(request(vec![0, 3], 5)).unwrap());
    assert_eq!(ids.len(), 5);
    // Give the worker a moment to notice; then nothing runs and no cache is held.
    for _ in 0..100 {
        if engine.stats().running.load(Ordering::SeqCst) == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(engine.stats().kv_tokens.load(Ordering::SeqCst), 0);
    engine.shutdown();
}

/// A drain out of time: every running and queued request ends with a `Busy` error (no `Done`),
/// the cache is freed, and new requests are refused.
#[test]
fn abort_all_ends_running_and_queued_requests_with_an_error() {
    let (model, tok) = fixture();
    let engine = EngineHandle::start(
        model,
        tok,
        EngineConfig {
            ctx: 2048,
            max_batch: 1,
            ..Default::default()
        },
    );
    let mut running = engine.submit(request(vec![0, 1, 2], 2000)).unwrap();
    let queued = engine.submit(request(vec![0, 3], 2000)).unwrap();
    // The first request is generating.
    assert!(matches!(running.blocking_recv(), Some(Event::Token(_))));
    engine.abort_all();
    for mut rx in [running, queued] {
        let last = std::iter::from_fn(|| rx.blocking_recv()).last();
        match last {
            Some(Event::Error(moela_engine::Failure::Busy(m))) => {
                assert!(m.contains("shutting down"), "{m}")
            }
            other => panic!("expected a Busy error last, got {other:?}"),
        }
    }
    assert_eq!(engine.stats().queued.load(Ordering::SeqCst), 0);
    assert_eq!(engine.stats().running.load(Ordering::SeqCst), 0);
    assert_eq!(engine.stats().kv_tokens.load(Ordering::SeqCst), 0);
    assert_eq!(
        engine.submit(request(vec![0], 1)).unwrap_err(),
        SubmitError::ShuttingDown
    );
    engine.shutdown();
}

#[test]
fn full_queue_and_long_prompts_are_refused() {
    let (model, tok) = fixture();
    let engine = EngineHandle::start(
        model,
        tok,
        EngineConfig {
            ctx: 16,
            max_queue: 0,
            ..Default::default()
        },
    );
    assert_eq!(
        engine.submit(request(vec![1; 16], 1)).unwrap_err(),
        SubmitError::PromptTooLong {
            prompt: 16,
            ctx: 16
        }
    );
    assert!(matches!(
        engine.submit(request(vec![1; 3], 1)),
        Err(SubmitError::QueueFull { .. })
    ));
    engine.shutdown();
    assert_eq!(
        engine.submit(request(vec![1], 1)).unwrap_err(),
        SubmitError::ShuttingDown
    );
}

#[test]
fn logprobs_are_normalized_and_ordered() {
    let (model, tok) = fixture();
    let engine = EngineHandle::start(
        model,
        tok,
        EngineConfig {
            ctx: 64,
            ..Default::default()
        },
    );
    let mut req = request(vec![0, 7, 8], 3);
    req.logprobs = Some(5);
    let mut rx = engine.submit(req).unwrap();
    let mut seen = 0;
    while let Some(ev) = rx.blocking_recv() {
        if let Event::Token(t) = ev {
            let lp = t.logprob.unwrap();
            assert_eq!(lp.id, t.id);
            assert_eq!(t.top_logprobs.len(), 5);
            // Greedy: the chosen token is the most likely one.
            assert_eq!(t.top_logprobs[0].id, t.id);
            assert!(t
                .top_logprobs
                .windows(2)
                .all(|w| w[0].logprob >= w[1].logprob));
            let mass: f32 = t.top_logprobs.iter().map(|x| x.logprob.exp()).sum();
            assert!(mass <= 1.0 + 1e-5 && lp.logprob <= 0.0);
            seen += 1;
        }
    }
    assert_eq!(seen, 3);
    engine.shutdown();
}

/// Runs one request to the end and returns (ids, text, usage).
fn run_one(
    engine: &EngineHandle,
    prompt: Vec<u32>,
    max_tokens: usize,
) -> (Vec<u32>, String, moela_engine::Usage) {
    let (ids, text, _, usage) = collect_all(engine.submit(request(prompt, max_tokens)).unwrap());
    (ids, text, usage)
}

#[test]
fn shared_prefix_is_reused_and_gives_the_same_output() {
    let (model, tok) = fixture();
    let cfg = EngineConfig {
        ctx: 256,
        block_tokens: 8,
        ..Default::default()
    };
    let engine = EngineHandle::start(model.clone(), tok.clone(), cfg.clone());
    let system: Vec<u32> = (0..37).map(|i| (i * 13 % 500) as u32).collect();
    let mut a = system.clone();
    a.extend([3, 4, 5]);
    let mut b = system.clone();
    b.extend([9, 9]);
    let (ids_a, _, ua) = run_one(&engine, a.clone(), 6);
    assert_eq!(ua.cached_tokens, 0);
    let (ids_b, _, ub) = run_one(&engine, b.clone(), 6);
    // 37 shared tokens = 4 full blocks of 8.
    assert_eq!(ub.cached_tokens, 32);
    // The same request again reuses all but its last block's worth and answers the same.
    let (ids_a2, _, ua2) = run_one(&engine, a.clone(), 6);
    assert_eq!(ids_a2, ids_a);
    assert!(ua2.cached_tokens >= 32);
    // Against an engine without prefix caching: identical outputs.
    let cold = EngineHandle::start(
        model,
        tok,
        EngineConfig {
            prefix_caching: false,
            ..cfg
        },
    );
    assert_eq!(run_one(&cold, b, 6).0, ids_b);
    assert_eq!(cold.stats().cached_tokens.load(Ordering::SeqCst), 0);
    // Nothing is held by a sequence once all requests are done.
    for _ in 0..100 {
        if engine.stats().kv_blocks_used.load(Ordering::SeqCst) == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(engine.stats().kv_blocks_used.load(Ordering::SeqCst), 0);
    engine.shutdown();
    cold.shutdown();
}

/// Multi-turn with the R1 template: the second turn's prompt drops the first answer's reasoning,
/// yet everything up to the first answer (system + first user turn) is served from the cache.
#[test]
fn r1_second_turn_reuses_the_first_turns_prefix() {
    use moela_text::{
        split_reasoning, ChatMessage, ChatTemplate, RenderOptions, Role, SpecialTokens,
    };
    let (model, tok) = fixture();
    let src_path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/text/templates/deepseek-r1.jinja");
    let special = SpecialTokens {
        bos_token: Some("<｜begin▁of▁sentence｜>".into()),
        eos_token: Some("<｜end▁of▁sentence｜>".into()),
        ..Default::default()
    };
    let r1 = ChatTemplate::new(std::fs::read_to_string(src_path).unwrap(), special).unwrap();
    let opts = RenderOptions {
        add_generation_prompt: true,
        ..Default::default()
    };
    let system = ChatMessage::new(Role::System, "You are a careful assistant who answers questions about the Python standard library in detail.");
    let user1 = ChatMessage::new(Role::User, "What does the colorsys module do?");
    let encode =
        |msgs: &[ChatMessage]| tok.encode(&r1.render(msgs, &opts).unwrap(), false).unwrap();
    let p1 = encode(&[system.clone(), user1.clone()]);
    let engine = EngineHandle::start(
        model,
        tok.clone(),
        EngineConfig {
            ctx: 512,
            block_tokens: 4,
            ..Default::default()
        },
    );
    let (_, text1, u1) = run_one(&engine, p1.clone(), 24);
    assert_eq!(u1.cached_tokens, 0);
    // The R1 prompt ends inside <think>: the answer is what follows </think> (or nothing).
    let (_, answer) = split_reasoning(&text1, true);
    let p2 = encode(&[
        system,
        user1,
        ChatMessage::new(Role::Assistant, answer),
        ChatMessage::new(Role::User, "And colorsys.rgb_to_hls?"),
    ]);
    let shared = p1.iter().zip(&p2).take_while(|(a, b)| a == b).count();
    assert!(shared >= 20, "the turns share {shared} tokens");
    let (_, _, u2) = run_one(&engine, p2, 4);
    assert!(
        u2.cached_tokens > 0 && u2.cached_tokens <= shared,
        "cached {} of {shared}",
        u2.cached_tokens
    );
    assert!(
        shared - u2.cached_tokens < 4 + 4,
        "cached {} of {shared}",
        u2.cached_tokens
    );
    engine.shutdown();
}

#[test]
fn model_errors_become_typed_failures() {
    use moela_engine::Failure;
    use moela_model::ModelError;
    assert_eq!(
        Failure::from(&ModelError::Input(
            "token id 999 is outside the vocabulary".into()
        )),
        Failure::Rejected("token id 999 is outside the vocabulary".into())
    );
    let full = ModelError::CacheFull {
        blocks: 2,
        block_tokens: 16,
    };
    assert_eq!(
        Failure::from(&full),
        Failure::Busy("the KV cache is full (2 blocks of 16 tokens in use)".into())
    );
    assert!(matches!(
        Failure::from(&ModelError::MissingTensor("lm_head.weight".into())),
        Failure::Fault(m) if m.contains("lm_head.weight")
    ));
}

/// The spec of prompt scoring: fresh caches, one plain forward pass per chunk with logits at
/// every position, windows of `ctx` tokens overlapping by one.
fn nll_spec(model: &Model, tokens: &[u32], ctx: usize) -> Vec<f64> {
    let mut nll = Vec::new();
    let mut start = 0;
    while start + 1 < tokens.len() {
        let end = (start + ctx).min(tokens.len());
        let window = &tokens[start..end];
        let mut cache = model.new_cache();
        for (ci, chunk) in window.chunks(PREFILL_CHUNK).enumerate() {
            let mut s = [SeqInput {
                tokens: chunk,
                cache: &mut cache,
                logits: Logits::All,
            }];
            let logits = model.forward(&mut s, &ForwardOptions::default()).unwrap();
            let v = model.config.vocab_size;
            for (j, row) in logits[0].chunks_exact(v).enumerate() {
                let pos = ci * PREFILL_CHUNK + j;
                if pos + 1 < window.len() {
                    nll.push(token_nll(row, window[pos + 1]));
                }
            }
        }
        start = end - 1;
    }
    nll
}

#[test]
fn perplexity_through_the_engine_equals_the_spec() {
    let (model, tok) = fixture();
    let tokens: Vec<u32> = (0..700).map(|i| (i * 37 % 500) as u32).collect();
    for ctx in [700, 300, 5] {
        let mut engine = Engine::new(
            model.clone(),
            Some(tok.clone()),
            EngineConfig {
                ctx,
                max_batch: 1,
                ..Default::default()
            },
        );
        let got = perplexity(&mut engine, &tokens).unwrap();
        assert_eq!(got.len(), tokens.len() - 1, "ctx {ctx}");
        assert_eq!(got, nll_spec(&model, &tokens, ctx), "ctx {ctx}");
    }
}

#[test]
fn scoring_requests_reuse_no_prefix_and_run_beside_generation() {
    let (model, tok) = fixture();
    let mut engine = Engine::new(
        model.clone(),
        Some(tok),
        EngineConfig {
            ctx: 64,
            ..Default::default()
        },
    );
    let prompt: Vec<u32> = (0..40).map(|i| (i * 13 % 500) as u32).collect();
    let want = nll_spec(&model, &prompt, 64);
    // A generation of the same prompt first, so its blocks sit in the prefix cache.
    let first = generate(&mut engine, request(prompt.clone(), 4), &mut |_| {}).unwrap();
    assert_eq!(first.token_ids, greedy_tokens(&model, &prompt, 4).unwrap());
    // Then a scoring request and a generation of that prompt in the same steps.
    let mut score_req = request(prompt.clone(), 2);
    score_req.score_prompt = true;
    let mut scored = engine.submit(score_req).unwrap();
    let gen = engine.submit(request(prompt.clone(), 4)).unwrap();
    let mut scores = Vec::new();
    let mut usage = None;
    while !engine.is_idle() {
        engine.step();
        while let Ok(ev) = scored.try_recv() {
            match ev {
                Event::PromptScores(s) => scores.extend(s),
                Event::Done { usage: u, .. } => usage = Some(u),
                Event::Token(_) => assert_eq!(scores.len(), prompt.len() - 1),
                Event::Error(e) => panic!("{e}"),
            }
        }
    }
    assert_eq!(scores, want);
    let usage = usage.unwrap();
    assert_eq!((usage.cached_tokens, usage.completion_tokens), (0, 2));
    let (ids, _, _, gen_usage) = collect_all(gen);
    assert!(gen_usage.cached_tokens > 0, "{gen_usage:?}");
    assert_eq!(ids, first.token_ids);
}

#[test]
fn bench_runs_through_the_engine() {
    let (model, _) = fixture();
    let cfg = BenchConfig {
        prompt_tokens: 20,
        gen_tokens: 6,
        context: 0,
        seed: 1,
        repetitions: 2,
        warmup: true,
        batch: 3,
        draft: Default::default(),
        verify_tokens: 0,
    };
    let r = run_bench(&model, &cfg).unwrap();
    assert_eq!(r.prefill_samples.len(), 2);
    assert_eq!(r.decode_samples.len(), 2);
    assert!(r.prefill_tok_s > 0.0 && r.decode_tok_s > 0.0 && r.ttft_ms > 0.0);
    // Three contexts of 20 go in with one 512-token step: every sequence has its first and
    // warm-up tokens when timing starts, so the cache holds 20 + 1 tokens.
    assert_eq!(r.decode_context, 21);
    assert!(cfg.context_needed() >= 20 + 1 + 6);
}

/// Regression: the default pool held `ceil(max_batch · ctx / block)` blocks while admission
/// reserves `ceil(ctx / block)` per sequence, so with a context that is not a whole number of
/// blocks the last of `max_batch` full-context requests waited for another to finish.
#[test]
fn max_batch_full_context_requests_run_together() {
    let (model, _) = fixture();
    let config = EngineConfig {
        ctx: 166,
        max_batch: 16,
        block_tokens: 16,
        ..Default::default()
    };
    let mut engine = Engine::new(model, None, config);
    let rxs: Vec<_> = (0..16)
        .map(|i| engine.submit(request(vec![0, i + 2], 164)).unwrap())
        .collect();
    engine.step();
    assert_eq!(engine.stats().running.load(Ordering::SeqCst), 16);
    drop(rxs);
}

/// The CLI's chat keeps one engine per conversation: a turn's prompt, which extends the last
/// turn's, is served from the cache as far as the last turn's full blocks reach.
#[test]
fn a_conversation_on_one_engine_reuses_the_last_turns_prefix() {
    let (model, tok) = fixture();
    let mut engine = Engine::new(
        model,
        Some(tok),
        EngineConfig {
            ctx: 256,
            max_batch: 1,
            max_queue: 1,
            ..Default::default()
        },
    );
    let turn1: Vec<u32> = (0..40).map(|i| (i * 7 % 500) as u32).collect();
    let out1 = generate(&mut engine, request(turn1.clone(), 8), &mut |_| {}).unwrap();
    assert_eq!(out1.cached_tokens, 0);
    let mut turn2 = turn1;
    turn2.extend(&out1.token_ids);
    turn2.extend([3, 4, 5]);
    let out2 = generate(&mut engine, request(turn2, 4), &mut |_| {}).unwrap();
    // The first turn cached its 40 prompt tokens and 7 of its 8 generated ones (the last is
    // sampled, never fed): two full 16-token blocks.
    assert_eq!(out2.cached_tokens, (40 + 8 - 1) / 16 * 16);
}
