//! Continuous batching: one worker thread owns the model's latent caches and runs every active
//! sequence in one forward pass per step; new requests join the running batch at every step.
//!
//! Callers talk to it through an [`EngineHandle`]: `submit` returns a channel of [`Event`]s.
//! Dropping the receiver cancels the request, and its cache is freed at the next step.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use moela_model::{ForwardOptions, KvPool, Logits, Model, SeqCache, SeqInput};
use moela_text::{StreamDecoder, Tokenizer};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::generate::FinishReason;
use crate::sampler::{Sampler, SamplingParams};
use crate::stop::StopMatcher;

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
    },
    Error(Failure),
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
}

impl EngineConfig {
    /// The pool size in blocks.
    pub fn pool_blocks(&self) -> usize {
        match self.kv_blocks {
            0 => (self.max_batch.max(1) * self.ctx).div_ceil(self.block_tokens.max(1)),
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
            prefill_tokens_per_step: 512,
            block_tokens: moela_model::DEFAULT_BLOCK_TOKENS,
            kv_blocks: 0,
            prefix_caching: true,
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
}

struct Job {
    req: Request,
    tx: UnboundedSender<Event>,
}

/// A cloneable handle to the engine worker.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Job>,
    stats: Arc<EngineStats>,
    config: Arc<EngineConfig>,
    closing: Arc<AtomicBool>,
    worker: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl EngineHandle {
    /// Starts the worker thread.
    pub fn start(model: Arc<Model>, tokenizer: Tokenizer, config: EngineConfig) -> EngineHandle {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(EngineStats::default());
        let closing = Arc::new(AtomicBool::new(false));
        let pool = model.new_pool(
            config.block_tokens,
            Some(config.pool_blocks()),
            config.prefix_caching,
        );
        stats
            .kv_blocks_free
            .store(config.pool_blocks(), Ordering::Relaxed);
        let w = Worker {
            model,
            pool,
            tokenizer,
            config: config.clone(),
            stats: stats.clone(),
            closing: closing.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("moela-engine".into())
            .spawn(move || w.run(rx))
            .ok();
        EngineHandle {
            tx,
            stats,
            config: Arc::new(config),
            closing,
            worker: Arc::new(std::sync::Mutex::new(handle)),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Queues a request; its events arrive on the returned channel.
    pub fn submit(&self, req: Request) -> Result<UnboundedReceiver<Event>, SubmitError> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        req.sampling.validate().map_err(SubmitError::Invalid)?;
        if req.prompt.is_empty() {
            return Err(SubmitError::Invalid("the prompt is empty".into()));
        }
        if req.prompt.len() >= self.config.ctx {
            return Err(SubmitError::PromptTooLong {
                prompt: req.prompt.len(),
                ctx: self.config.ctx,
            });
        }
        let queued = self.stats.queued.load(Ordering::SeqCst);
        if queued >= self.config.max_queue {
            return Err(SubmitError::QueueFull { queued });
        }
        let (tx, rx) = unbounded_channel();
        self.stats.queued.fetch_add(1, Ordering::SeqCst);
        if self.tx.send(Job { req, tx }).is_err() {
            self.stats.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::ShuttingDown);
        }
        Ok(rx)
    }

    /// Stops accepting requests, lets running and queued ones finish, then joins the worker.
    pub fn shutdown(&self) {
        self.closing.store(true, Ordering::SeqCst);
        // Wake the worker if it is idle: an empty job list is not possible, so close by
        // dropping our sender clone is not enough (other clones exist); the worker polls `closing`.
        let handle = self.worker.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// One sequence in the running batch.
struct Seq {
    job: Job,
    cache: SeqCache,
    /// Prompt tokens fed so far (starting after the reused prefix).
    fed: usize,
    /// Prompt tokens served from the prefix cache.
    cached: usize,
    generated: Vec<u32>,
    sampler: Sampler,
    decoder: StreamDecoder,
    stops: StopMatcher,
}

enum Outcome {
    Continue,
    Finished(FinishReason),
    Cancelled,
}

struct Worker {
    model: Arc<Model>,
    pool: Arc<KvPool>,
    tokenizer: Tokenizer,
    config: EngineConfig,
    stats: Arc<EngineStats>,
    closing: Arc<AtomicBool>,
}

impl Worker {
    fn run(self, rx: mpsc::Receiver<Job>) {
        let mut waiting: VecDeque<Job> = VecDeque::new();
        let mut running: Vec<Seq> = Vec::new();
        loop {
            // Intake: block while idle, otherwise take whatever arrived.
            if running.is_empty() && waiting.is_empty() {
                match rx.recv_timeout(std::time::Duration::from_millis(50)) {
                    Ok(job) => waiting.push_back(job),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if self.closing.load(Ordering::SeqCst) {
                            return;
                        }
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
            while let Ok(job) = rx.try_recv() {
                waiting.push_back(job);
            }
            // Admit while a batch slot and the worst-case KV blocks are free.
            let capacity = self.config.pool_blocks();
            let mut reserved: usize = running.iter().map(|s| self.blocks_needed(&s.job.req)).sum();
            while running.len() < self.config.max_batch {
                let Some(job) = waiting.front() else { break };
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
                let Some(job) = waiting.pop_front() else {
                    break;
                };
                self.stats.queued.fetch_sub(1, Ordering::SeqCst);
                if job.tx.is_closed() || need > capacity {
                    continue;
                }
                reserved += need;
                running.push(self.admit(job));
            }
            self.stats.running.store(running.len(), Ordering::Relaxed);
            if running.is_empty() {
                self.publish_kv(&running);
                continue;
            }
            self.step(&mut running);
            // Finished and cancelled sequences left the batch; the worker may now sleep with
            // nothing to run, and the gauge must read 0 then, not the last batch size.
            self.stats.running.store(running.len(), Ordering::Relaxed);
            self.publish_kv(&running);
        }
    }

    fn publish_kv(&self, running: &[Seq]) {
        let st = self.pool.stats();
        self.stats.kv_tokens.store(
            running.iter().map(|s| s.cache.len()).sum(),
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
        let cache = self.pool.seq_with_prefix(&job.req.prompt);
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
            decoder: self.tokenizer.stream_decoder(true),
            stops: StopMatcher::new(&job.req.stop),
            job,
        }
    }

    /// One forward pass over every running sequence: prompt chunks for those still prefilling,
    /// the last sampled token for the others.
    fn step(&self, running: &mut Vec<Seq>) {
        // Drop cancelled requests first: their caches are freed at once.
        running.retain(|s| !s.job.tx.is_closed());
        let mut prefill_budget = self.config.prefill_tokens_per_step.max(1);
        let mut inputs: Vec<(usize, Vec<u32>, bool)> = Vec::new(); // (seq index, tokens, wants logits)
        for (i, s) in running.iter().enumerate() {
            let prompt = &s.job.req.prompt;
            if s.fed < prompt.len() {
                if prefill_budget == 0 {
                    continue;
                }
                let n = (prompt.len() - s.fed).min(prefill_budget);
                prefill_budget -= n;
                inputs.push((
                    i,
                    prompt[s.fed..s.fed + n].to_vec(),
                    s.fed + n == prompt.len(),
                ));
            } else if let Some(&last) = s.generated.last() {
                inputs.push((i, vec![last], true));
            }
        }
        if inputs.is_empty() {
            return;
        }
        // Borrow the chosen sequences' caches (inputs are in index order).
        let mut batch: Vec<SeqInput> = Vec::with_capacity(inputs.len());
        let mut next = inputs.iter().peekable();
        for (i, s) in running.iter_mut().enumerate() {
            if let Some((_, toks, wants)) = next.next_if(|(j, _, _)| *j == i) {
                let logits = if *wants { Logits::Last } else { Logits::None };
                batch.push(SeqInput {
                    tokens: toks,
                    cache: &mut s.cache,
                    logits,
                });
            }
        }
        let result = self.model.forward(&mut batch, &ForwardOptions::default());
        drop(batch);
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                for (i, _, _) in &inputs {
                    let _ = running[*i].job.tx.send(Event::Error(Failure::from(&e)));
                }
                let failed: Vec<usize> = inputs.iter().map(|(i, _, _)| *i).collect();
                let mut idx = 0;
                running.retain(|_| {
                    let keep = !failed.contains(&idx);
                    idx += 1;
                    keep
                });
                return;
            }
        };
        let mut finished = vec![false; running.len()];
        for ((i, toks, wants), mut row) in inputs.iter().zip(logits) {
            let s = &mut running[*i];
            if s.fed < s.job.req.prompt.len() {
                s.fed += toks.len();
            }
            if !*wants {
                continue;
            }
            match self.advance(s, &mut row) {
                Outcome::Continue => {}
                Outcome::Finished(reason) => {
                    self.finish(s, reason);
                    finished[*i] = true;
                }
                Outcome::Cancelled => finished[*i] = true,
            }
        }
        let mut idx = 0;
        running.retain(|_| {
            let keep = !finished[idx];
            idx += 1;
            keep
        });
    }

    /// Samples the next token of `s` from `logits` and reports it.
    fn advance(&self, s: &mut Seq, logits: &mut [f32]) -> Outcome {
        let req = &mut s.job.req;
        let budget = req.max_tokens.min(self.config.ctx - req.prompt.len());
        if budget == 0 {
            return Outcome::Finished(FinishReason::Length);
        }
        // Log-probabilities come from the model's raw distribution (before penalties and masks).
        let raw = req.logprobs.map(|n| (LogSoftmax::new(logits), n));
        if let Some(c) = req.constraint.as_mut() {
            c.mask(logits);
        }
        let t = s.sampler.sample(logits, &s.generated);
        if let Some(c) = req.constraint.as_mut() {
            c.accept(t);
        }
        if req.stop_token_ids.contains(&t) {
            return Outcome::Finished(FinishReason::Stop);
        }
        s.generated.push(t);
        self.stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
        let piece = match s.decoder.push(t) {
            Ok(p) => p,
            Err(e) => {
                let _ = s.job.tx.send(Event::Error(Failure::Fault(e.to_string())));
                return Outcome::Cancelled;
            }
        };
        let text = s.stops.push(&piece);
        let (logprob, top_logprobs) = match &raw {
            Some((ls, n)) => (Some(ls.of(t)), ls.top(*n)),
            None => (None, Vec::new()),
        };
        let ev = Event::Token(TokenEvent {
            id: t,
            text,
            logprob,
            top_logprobs,
        });
        if s.job.tx.send(ev).is_err() {
            return Outcome::Cancelled;
        }
        if s.stops.stopped() || req.constraint.as_ref().is_some_and(|c| c.is_complete()) {
            return Outcome::Finished(FinishReason::Stop);
        }
        if s.generated.len() >= budget {
            return Outcome::Finished(FinishReason::Length);
        }
        Outcome::Continue
    }

    fn finish(&self, s: &mut Seq, reason: FinishReason) {
        let mut tail = String::new();
        if !s.stops.stopped() {
            if let Ok(rest) = s.decoder.finish() {
                tail = s.stops.push(&rest);
            }
            if !s.stops.stopped() {
                tail.push_str(&s.stops.finish());
            }
        }
        let reason = if s.stops.stopped() {
            FinishReason::Stop
        } else {
            reason
        };
        let usage = Usage {
            prompt_tokens: s.job.req.prompt.len(),
            completion_tokens: s.generated.len(),
            cached_tokens: s.cached,
        };
        let _ = s.job.tx.send(Event::Done {
            tail,
            finish_reason: reason,
            usage,
        });
    }
}

/// A snapshot of log-softmax over a logits row.
struct LogSoftmax {
    logits: Vec<f32>,
    lse: f64,
}

impl LogSoftmax {
    fn new(logits: &[f32]) -> LogSoftmax {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = logits
            .iter()
            .map(|&l| (l as f64 - max).exp())
            .sum::<f64>()
            .ln()
            + max;
        LogSoftmax {
            logits: logits.to_vec(),
            lse,
        }
    }

    fn of(&self, id: u32) -> TokenLogprob {
        let l = self
            .logits
            .get(id as usize)
            .copied()
            .unwrap_or(f32::NEG_INFINITY);
        TokenLogprob {
            id,
            logprob: (l as f64 - self.lse) as f32,
        }
    }

    /// The `n` most likely tokens, most likely first.
    fn top(&self, n: usize) -> Vec<TokenLogprob> {
        let mut idx: Vec<u32> = (0..self.logits.len() as u32).collect();
        let n = n.min(idx.len());
        if n == 0 {
            return Vec::new();
        }
        let key = |i: &u32| self.logits[*i as usize];
        idx.select_nth_unstable_by(n - 1, |a, b| key(b).total_cmp(&key(a)).then(a.cmp(b)));
        idx.truncate(n);
        idx.sort_by(|a, b| key(b).total_cmp(&key(a)).then(a.cmp(b)));
        idx.into_iter().map(|i| self.of(i)).collect()
    }
}
