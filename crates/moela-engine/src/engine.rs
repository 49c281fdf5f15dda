//! The engine: continuous batching over one model, driven one step at a time. Every running
//! sequence goes through one forward pass per [`Engine::step`] — prompt chunks for those still
//! prefilling, the last sampled token for the others — and new requests join at every step.
//! The server's worker thread drives it ([`crate::EngineHandle`]); the CLI's `generate`,
//! `chat`, `perplexity` and `bench` drive it directly. Only the engine owns mutable KV state.
//!
//! [`Engine::submit`] returns a channel of [`Event`]s; dropping the receiver cancels the
//! request, and its cache is freed at the next step.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use moela_model::{ForwardOptions, KvPool, Logits, Model, SeqInput};
use moela_text::Tokenizer;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::draft::{DraftConfig, DraftMode, Drafter, PromptLookup};
use crate::mtp::{catch_up, CatchUp, MtpState};
use crate::sampler::{Sampler, SamplingParams};
use crate::sequence::{token_nll, Outcome, Seq};
use crate::stop::StopMatcher;

/// Prompt tokens fed per step by default (bounds activation memory; `Logits::All` rows of a
/// scored prompt too).
pub const PREFILL_CHUNK: usize = 512;

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` or the context filled up.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Restricts which tokens may come next (e.g. JSON-schema constrained decoding).
pub trait Constraint: Send {
    /// Sets the logits of forbidden tokens to −∞.
    fn mask(&mut self, logits: &mut [f32]);
    /// Advances past `token`; returns false when the token was not allowed.
    fn accept(&mut self, token: u32) -> bool;
    /// Whether the constrained output is complete (generation stops).
    fn is_complete(&self) -> bool;
}

/// One request to the engine.
pub struct Request {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    /// Report the chosen token's log-probability and this many alternatives (`Some(0)`: only the chosen).
    pub logprobs: Option<usize>,
    pub constraint: Option<Box<dyn Constraint>>,
    /// Score the prompt: report `-log p(prompt[i+1] | prompt[..=i])` for every prompt token
    /// after the first ([`Event::PromptScores`]). Such a request reuses no cached prefix (every
    /// position needs its logits), and with `max_tokens: 0` its prompt may fill the context.
    pub score_prompt: bool,
}

impl Request {
    /// A request for `max_tokens` tokens after `prompt` with default sampling (greedy), no stop
    /// strings or ids, no log-probabilities, constraint or scoring.
    pub fn new(prompt: Vec<u32>, max_tokens: usize) -> Request {
        Request {
            prompt,
            max_tokens,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            logprobs: None,
            constraint: None,
            score_prompt: false,
        }
    }
}

/// Log-probability of one token.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
}

/// A generated token and the text it completed.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenEvent {
    pub id: u32,
    /// Text released by this token (may be empty while a character or stop string is pending).
    pub text: String,
    pub logprob: Option<TokenLogprob>,
    pub top_logprobs: Vec<TokenLogprob>,
}

/// Usage counts of a finished request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
}

/// What the engine reports for a request, in order: tokens, then exactly one `Done` or `Error`.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Token(TokenEvent),
    /// Text held back until the end (e.g. an incomplete stop-string prefix), then the finish.
    Done {
        tail: String,
        finish_reason: FinishReason,
        usage: Usage,
        /// The stop string that ended the output, when one did.
        stop_sequence: Option<String>,
    },
    Error(Failure),
    /// For a request with `score_prompt`: the negative log-likelihoods (f64) of the prompt
    /// tokens scored in one step, in prompt order; several events for a long prompt, all before
    /// the first token.
    PromptScores(Vec<f64>),
}

/// Why the engine gave up on a request, so that callers can tell the client's fault from
/// theirs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The request can never be served as it is (it needs more KV blocks than the pool has, a
    /// token id outside the vocabulary): the client's to fix.
    #[error("{0}")]
    Rejected(String),
    /// Capacity, for now (no free KV-cache block): the same request may succeed later.
    #[error("{0}")]
    Busy(String),
    /// Something failed inside the engine.
    #[error("{0}")]
    Fault(String),
}

impl From<&moela_model::ModelError> for Failure {
    fn from(e: &moela_model::ModelError) -> Failure {
        use moela_model::ModelError;
        match e {
            ModelError::Input(_) => Failure::Rejected(e.to_string()),
            ModelError::CacheFull { .. } => Failure::Busy(e.to_string()),
            _ => Failure::Fault(e.to_string()),
        }
    }
}

/// Engine limits.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Sequences decoded together in one step.
    pub max_batch: usize,
    /// Requests waiting for a batch slot; beyond this `submit` refuses.
    pub max_queue: usize,
    /// Context length (prompt + generated).
    pub ctx: usize,
    /// Prompt tokens prefilled per step across the batch.
    pub prefill_tokens_per_step: usize,
    /// Tokens per KV-cache block.
    pub block_tokens: usize,
    /// KV-cache blocks in the pool; 0 = enough for `max_batch` full contexts. Blocks are
    /// allocated as sequences grow, not reserved up front.
    pub kv_blocks: usize,
    /// Share the cache of identical prompt prefixes across requests.
    pub prefix_caching: bool,
    /// Speculative decoding (`draft.rs`).
    pub draft: DraftConfig,
}

impl EngineConfig {
    /// The pool size in blocks: by default room for `max_batch` sequences of a full context
    /// each (whole blocks per sequence, as admission counts them).
    pub fn pool_blocks(&self) -> usize {
        match self.kv_blocks {
            0 => self.max_batch.max(1) * self.ctx.div_ceil(self.block_tokens.max(1)),
            n => n,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_batch: 16,
            max_queue: 64,
            ctx: 4096,
            prefill_tokens_per_step: PREFILL_CHUNK,
            block_tokens: moela_model::DEFAULT_BLOCK_TOKENS,
            kv_blocks: 0,
            prefix_caching: true,
            draft: DraftConfig::default(),
        }
    }
}

/// Why a request was refused before it started.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SubmitError {
    #[error("the server is busy: {queued} requests are already waiting")]
    QueueFull { queued: usize },
    #[error("the prompt is {prompt} tokens, but the context holds {ctx} (it needs room for at least one generated token)")]
    PromptTooLong { prompt: usize, ctx: usize },
    #[error("{0}")]
    Invalid(String),
    #[error("the engine is shutting down")]
    ShuttingDown,
}

/// Live counters, read by metrics.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub queued: AtomicUsize,
    pub running: AtomicUsize,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub cached_tokens: AtomicU64,
    pub kv_tokens: AtomicUsize,
    pub kv_blocks_used: AtomicUsize,
    pub kv_blocks_cached: AtomicUsize,
    pub kv_blocks_free: AtomicUsize,
    pub steps: AtomicU64,
    /// Tokens proposed by the drafter and sent for verification.
    pub drafted_tokens: AtomicU64,
    /// Drafted tokens the model accepted (each one a token gained without a step of its own).
    pub accepted_tokens: AtomicU64,
    /// Decoding rows verified: one per decoding sequence per step (tokens per decode step =
    /// (decode_rows + accepted_tokens) / decode_rows).
    pub decode_rows: AtomicU64,
}

/// A queued request and where its events go.
pub(crate) struct Job {
    pub(crate) req: Request,
    pub(crate) tx: UnboundedSender<Event>,
}

/// The checks every request passes before it is queued (by [`Engine::submit`] or the
/// server's handle): valid sampling, a prompt that leaves room in the context, stop strings
/// only where text is decoded, room in the queue.
pub(crate) fn check_request(
    config: &EngineConfig,
    stats: &EngineStats,
    decodes_text: bool,
    req: &Request,
) -> Result<(), SubmitError> {
    req.sampling.validate().map_err(SubmitError::Invalid)?;
    if req.prompt.is_empty() {
        return Err(SubmitError::Invalid("the prompt is empty".into()));
    }
    // A scoring request that generates nothing may fill the context; every other one needs room
    // for a generated token.
    let room = usize::from(!(req.score_prompt && req.max_tokens == 0));
    if req.prompt.len() + room > config.ctx {
        return Err(SubmitError::PromptTooLong {
            prompt: req.prompt.len(),
            ctx: config.ctx,
        });
    }
    if !decodes_text && !req.stop.is_empty() {
        return Err(SubmitError::Invalid(
            "stop strings need a tokenizer to decode text".into(),
        ));
    }
    let queued = stats.queued.load(Ordering::SeqCst);
    if queued >= config.max_queue {
        return Err(SubmitError::QueueFull { queued });
    }
    Ok(())
}

/// What one sequence feeds into a step.
struct Input {
    /// Index into the running batch.
    seq: usize,
    tokens: Vec<u32>,
    /// Whether this input ends the prompt (or is a decode token): the step samples after it.
    samples: bool,
    logits: Logits,
    /// Drafted tokens fed after the last sampled one (`tokens[1..]`), verified by the step.
    drafts: usize,
}

/// Continuous batching over one model; see the module documentation.
pub struct Engine {
    model: Arc<Model>,
    pool: Arc<KvPool>,
    tokenizer: Option<Tokenizer>,
    config: EngineConfig,
    stats: Arc<EngineStats>,
    waiting: VecDeque<Job>,
    running: Vec<Seq>,
    /// Where drafts come from (`config.draft.mode`, or [`Engine::set_drafter`]).
    drafter: Option<Arc<dyn Drafter>>,
    /// The MTP layer's caches (`--draft mtp` on a model that has one; `mtp.rs`).
    mtp_pool: Option<Arc<KvPool>>,
}

impl Engine {
    /// An idle engine with its KV pool. Without a tokenizer, events carry token ids only (no
    /// text) and stop strings are refused (benchmarks, scoring, reference checks).
    pub fn new(model: Arc<Model>, tokenizer: Option<Tokenizer>, config: EngineConfig) -> Engine {
        let pool = model.new_pool(
            config.block_tokens,
            Some(config.pool_blocks()),
            config.prefix_caching,
        );
        let stats = Arc::new(EngineStats::default());
        stats
            .kv_blocks_free
            .store(config.pool_blocks(), Ordering::Relaxed);
        let mtp_pool = match config.draft.mode {
            DraftMode::Mtp => model.new_mtp_pool(
                config.block_tokens,
                Some(config.pool_blocks()),
                config.prefix_caching,
            ),
            _ => None,
        };
        Engine {
            model,
            pool,
            tokenizer,
            drafter: match config.draft.mode {
                DraftMode::None | DraftMode::Mtp => None,
                DraftMode::Ngram => Some(Arc::new(PromptLookup)),
            },
            mtp_pool,
            config,
            stats,
            waiting: VecDeque::new(),
            running: Vec::new(),
        }
    }

    /// Drafts from `drafter` from now on (up to `config.draft.tokens` per step), whatever the
    /// configured mode.
    pub fn set_drafter(&mut self, drafter: Arc<dyn Drafter>) {
        self.drafter = Some(drafter);
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The live counters (shared: the server's metrics read them from other threads).
    pub fn stats(&self) -> &Arc<EngineStats> {
        &self.stats
    }

    /// Checks and queues a request; its events arrive on the returned channel as steps run.
    pub fn submit(&mut self, req: Request) -> Result<UnboundedReceiver<Event>, SubmitError> {
        check_request(&self.config, &self.stats, self.tokenizer.is_some(), &req)?;
        let (tx, rx) = unbounded_channel();
        self.stats.queued.fetch_add(1, Ordering::SeqCst);
        self.enqueue(Job { req, tx });
        Ok(rx)
    }

    /// Queues a request that passed [`check_request`] and is counted in `stats.queued`.
    pub(crate) fn enqueue(&mut self, job: Job) {
        self.waiting.push_back(job);
    }

    /// Ends every waiting and running request with `Event::Error(failure)` and frees their
    /// cache (a drain out of time; what they generated so far was already sent as tokens).
    pub fn abort_all(&mut self, failure: Failure) {
        // Counters and cache first, then the events: whoever reads a request's error sees the
        // engine already empty.
        let mut ended: Vec<UnboundedSender<Event>> = Vec::new();
        for job in self.waiting.drain(..) {
            self.stats.queued.fetch_sub(1, Ordering::SeqCst);
            ended.push(job.tx);
        }
        ended.extend(self.running.drain(..).map(|seq| seq.job.tx));
        self.stats.running.store(0, Ordering::SeqCst);
        self.publish_kv();
        for tx in ended {
            let _ = tx.send(Event::Error(failure.clone()));
        }
    }

    /// Whether nothing is queued or running (a step would do nothing).
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Admits waiting requests while a batch slot and their worst-case KV blocks are free,
    /// then runs one forward pass over every running sequence and reports what it produced.
    pub fn step(&mut self) {
        self.admit_waiting();
        self.stats
            .running
            .store(self.running.len(), Ordering::Relaxed);
        if !self.running.is_empty() {
            self.forward_step();
            // Finished and cancelled sequences left the batch; the gauge must read 0 when the
            // engine falls idle, not the last batch size.
            self.stats
                .running
                .store(self.running.len(), Ordering::Relaxed);
        }
        self.publish_kv();
    }

    fn admit_waiting(&mut self) {
        let capacity = self.config.pool_blocks();
        let mut reserved: usize = self
            .running
            .iter()
            .map(|s| self.blocks_needed(&s.job.req))
            .sum();
        while self.running.len() < self.config.max_batch {
            let Some(job) = self.waiting.front() else {
                break;
            };
            let need = self.blocks_needed(&job.req);
            if !job.tx.is_closed() && reserved + need > capacity {
                if need > capacity {
                    let msg =
                        format!("the request needs {need} KV blocks, the pool has {capacity}");
                    let _ = job.tx.send(Event::Error(Failure::Rejected(msg)));
                } else {
                    break;
                }
            }
            let Some(job) = self.waiting.pop_front() else {
                break;
            };
            self.stats.queued.fetch_sub(1, Ordering::SeqCst);
            if job.tx.is_closed() || need > capacity {
                continue;
            }
            reserved += need;
            let seq = self.admit(job);
            self.running.push(seq);
        }
    }

    fn publish_kv(&self) {
        let st = self.pool.stats();
        self.stats.kv_tokens.store(
            self.running.iter().map(|s| s.cache.len()).sum(),
            Ordering::Relaxed,
        );
        self.stats.kv_blocks_used.store(st.used, Ordering::Relaxed);
        self.stats
            .kv_blocks_cached
            .store(st.cached, Ordering::Relaxed);
        self.stats.kv_blocks_free.store(st.free, Ordering::Relaxed);
    }

    /// Worst-case blocks a request can occupy (prompt plus its whole generation budget).
    fn blocks_needed(&self, req: &Request) -> usize {
        let tokens = (req.prompt.len() + req.max_tokens).min(self.config.ctx);
        tokens.div_ceil(self.config.block_tokens.max(1))
    }

    fn admit(&self, job: Job) -> Seq {
        self.stats
            .prompt_tokens
            .fetch_add(job.req.prompt.len() as u64, Ordering::Relaxed);
        let mut cache = if job.req.score_prompt {
            self.pool.new_seq()
        } else {
            self.pool.seq_with_prefix(&job.req.prompt)
        };
        // The MTP cache's row p depends on the token after p: its prefix is looked up by the
        // prompt shifted by one. Both caches keep the shorter reuse (the main model recomputes
        // what the MTP layer needs residuals for).
        let mtp = match (&self.mtp_pool, job.req.score_prompt) {
            (Some(pool), false) => {
                let mut m = pool.seq_with_prefix(job.req.prompt.get(1..).unwrap_or(&[]));
                let reuse = m.len().min(cache.len());
                let fits = m.truncate(reuse).and_then(|_| cache.truncate(reuse));
                fits.ok().map(|_| MtpState::new(m))
            }
            _ => None,
        };
        let cached = cache.len();
        self.stats
            .cached_tokens
            .fetch_add(cached as u64, Ordering::Relaxed);
        Seq {
            cache,
            fed: cached,
            cached,
            generated: Vec::new(),
            sampler: Sampler::new(job.req.sampling.clone()),
            decoder: self.tokenizer.as_ref().map(|t| t.stream_decoder(true)),
            stops: StopMatcher::new(&job.req.stop),
            mtp,
            job,
        }
    }

    /// What each running sequence feeds this step: a prompt chunk (within the step's prefill
    /// budget) or its last sampled token.
    fn inputs(&self) -> Vec<Input> {
        let mut prefill_budget = self.config.prefill_tokens_per_step.max(1);
        let mut inputs = Vec::new();
        for (i, s) in self.running.iter().enumerate() {
            let req = &s.job.req;
            if s.fed < req.prompt.len() {
                if prefill_budget == 0 {
                    continue;
                }
                let n = (req.prompt.len() - s.fed).min(prefill_budget);
                prefill_budget -= n;
                let samples = s.fed + n == req.prompt.len();
                let logits = match (req.score_prompt, samples) {
                    (true, _) => Logits::All,
                    (false, true) => Logits::Last,
                    (false, false) => Logits::None,
                };
                inputs.push(Input {
                    seq: i,
                    tokens: req.prompt[s.fed..s.fed + n].to_vec(),
                    samples,
                    logits,
                    drafts: 0,
                });
            } else if let Some(&last) = s.generated.last() {
                let mut tokens = vec![last];
                tokens.extend(self.draft_for(s));
                let drafts = tokens.len() - 1;
                inputs.push(Input {
                    seq: i,
                    tokens,
                    samples: true,
                    logits: if drafts > 0 {
                        Logits::All
                    } else {
                        Logits::Last
                    },
                    drafts,
                });
            }
        }
        inputs
    }

    /// The tokens drafted for a decoding sequence this step: at most the configured number, and
    /// never more than its remaining budget can emit after the last token (so its cache stays
    /// within the blocks admission reserved for it).
    fn draft_for(&self, s: &Seq) -> Vec<u32> {
        let k = self.draft_room(s);
        if k == 0 {
            return Vec::new();
        }
        if let Some(m) = &s.mtp {
            return m.drafts.iter().take(k).copied().collect();
        }
        let Some(drafter) = &self.drafter else {
            return Vec::new();
        };
        let req = &s.job.req;
        let mut context = req.prompt.clone();
        context.extend_from_slice(&s.generated);
        let mut draft = drafter.draft(&context, k);
        // A token outside the vocabulary would fail the whole batch's forward pass.
        let vocab = self.model.config.vocab_size;
        let valid = draft.iter().take_while(|&&t| (t as usize) < vocab).count();
        draft.truncate(valid.min(k));
        draft
    }

    /// How many tokens a decoding sequence may draft now: the configured number, capped so that
    /// what it can emit stays within its budget (and, where the cache keeps window state, what
    /// it can roll back).
    fn draft_room(&self, s: &Seq) -> usize {
        let req = &s.job.req;
        let budget = req
            .max_tokens
            .min(self.config.ctx.saturating_sub(req.prompt.len()));
        let room = budget.saturating_sub(s.generated.len() + 1);
        let rollback = match self.pool.ring() {
            Some(_) => moela_model::MAX_ROLLBACK,
            None => usize::MAX,
        };
        self.config.draft.tokens.min(room).min(rollback)
    }

    /// Runs the positions every sequence's main cache gained through the MTP layer and drafts
    /// for the next step (`mtp.rs`); a failure there only stops those sequences' drafting.
    fn mtp_catch_up(&mut self) {
        let rooms: Vec<usize> = self
            .running
            .iter()
            .map(
                |s| match s.fed >= s.job.req.prompt.len() && !s.generated.is_empty() {
                    true => self.draft_room(s),
                    false => 0,
                },
            )
            .collect();
        let mut parts: Vec<CatchUp<'_>> = Vec::new();
        let mut who = Vec::new();
        for (i, (s, k)) in self.running.iter_mut().zip(rooms).enumerate() {
            if let Some(state) = s.mtp.as_mut() {
                let mut known = s.job.req.prompt.clone();
                known.extend_from_slice(&s.generated);
                parts.push(CatchUp { state, known, k });
                who.push(i);
            }
        }
        if parts.is_empty() {
            return;
        }
        if catch_up(&self.model, &mut parts).is_err() {
            drop(parts);
            for i in who {
                self.running[i].mtp = None;
            }
        }
    }

    fn forward_step(&mut self) {
        // Drop cancelled requests first: their caches are freed at once.
        self.running.retain(|s| !s.job.tx.is_closed());
        let inputs = self.inputs();
        if inputs.is_empty() {
            return;
        }
        let before: Vec<usize> = inputs
            .iter()
            .map(|inp| self.running[inp.seq].cache.len())
            .collect();
        // Borrow the chosen sequences' caches (inputs are in index order).
        let mut batch: Vec<SeqInput> = Vec::with_capacity(inputs.len());
        let mut next = inputs.iter().peekable();
        for (i, s) in self.running.iter_mut().enumerate() {
            if let Some(inp) = next.next_if(|inp| inp.seq == i) {
                batch.push(SeqInput {
                    tokens: &inp.tokens,
                    cache: &mut s.cache,
                    logits: inp.logits,
                });
            }
        }
        let opts = ForwardOptions::default();
        let result = match self.mtp_pool.is_some() {
            true => self.model.forward_hidden(&mut batch, &opts),
            false => self
                .model
                .forward(&mut batch, &opts)
                .map(|l| (l, Vec::new())),
        };
        drop(batch);
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        let mut finished = vec![false; self.running.len()];
        match result {
            Ok((logits, hidden)) => {
                let vocab = self.model.config.vocab_size;
                let d = self.model.residual_width();
                for (j, (inp, mut rows)) in inputs.iter().zip(logits).enumerate() {
                    let s = &mut self.running[inp.seq];
                    if let (Some(m), Some(h)) = (s.mtp.as_mut(), hidden.get(j)) {
                        // Residuals of the positions this step adds; trimmed to what the cache
                        // keeps once drafts are verified (below).
                        m.pending.extend_from_slice(h);
                    }
                    let first = s.fed;
                    if s.fed < s.job.req.prompt.len() {
                        s.fed += inp.tokens.len();
                        if s.fed >= s.job.req.prompt.len() {
                            // The prompt is in: where the cache keeps window state, a later
                            // request with the same start reuses it from here.
                            s.cache.snapshot_prefix();
                        }
                    }
                    if s.job.req.score_prompt && first < s.job.req.prompt.len() {
                        let prompt = &s.job.req.prompt;
                        let nll: Vec<f64> = rows
                            .chunks_exact(vocab)
                            .enumerate()
                            .filter_map(|(j, row)| {
                                prompt.get(first + j + 1).map(|&t| token_nll(row, t))
                            })
                            .collect();
                        if !nll.is_empty() && s.job.tx.send(Event::PromptScores(nll)).is_err() {
                            finished[inp.seq] = true;
                            continue;
                        }
                    }
                    if !inp.samples {
                        continue;
                    }
                    let outcome = if inp.drafts > 0 {
                        s.verify(self.config.ctx, &self.stats, &inp.tokens, &mut rows)
                    } else {
                        let last = rows.len().saturating_sub(vocab);
                        s.advance(self.config.ctx, &self.stats, &mut rows[last..], None)
                    };
                    if first >= s.job.req.prompt.len() {
                        self.stats.decode_rows.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(m) = s.mtp.as_mut() {
                        let kept = s.cache.len() - before[j];
                        let drop_rows = inp.tokens.len() - kept;
                        m.pending.truncate(m.pending.len() - drop_rows * d);
                    }
                    match outcome {
                        Outcome::Continue => {}
                        Outcome::Finished(reason) => {
                            s.finish(reason);
                            finished[inp.seq] = true;
                        }
                        Outcome::Cancelled => finished[inp.seq] = true,
                    }
                }
            }
            Err(e) => {
                for inp in &inputs {
                    let s = &self.running[inp.seq];
                    let _ = s.job.tx.send(Event::Error(Failure::from(&e)));
                    finished[inp.seq] = true;
                }
            }
        }
        let mut idx = 0;
        self.running.retain(|_| {
            let keep = !finished[idx];
            idx += 1;
            keep
        });
        if self.mtp_pool.is_some() {
            self.mtp_catch_up();
        }
    }
}
