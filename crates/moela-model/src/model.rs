//! The forward pass over a batch of sequences (many new tokens × many sequences).
//!
//! One pre-norm decoder loop serves every architecture family: embed, then per layer
//! `h += attn(norm(h))` and `h += ffn(norm(h))` (SwiGLU or MoE), then the final norm and head.
//! The families differ only in a layer's attention, which implements [`Attend`]: MLA over the
//! latent cache in `mla.rs` (DeepSeek), grouped-query attention over per-head K/V in `gqa.rs`
//! (Qwen2, Llama), DeepSeek-V4's in `v4/`. A new attention kind is a new file with an `Attend`
//! impl. DeepSeek-V4 also widens the residual into `hc_mult` streams: each sublayer reads their
//! collapse and mixes its output back (`v4/hyper.rs`), and a head collapses them before the norm.

use std::borrow::Cow;

use moela_kernels::{add_in_place, rms_norm, rms_norm_in_place, QMat};

use crate::mla::AttentionMode;
use std::sync::Arc;

use crate::cache::{BatchCache, KvPool, KvType, RingSpec, SeqCache, DEFAULT_BLOCK_TOKENS};
use crate::config::Config;
use crate::error::ModelError;
use crate::mlp::mlp_forward;
use crate::moe::moe_forward;
use crate::rope::{Rope, RopeTable};
use crate::weights::{Ffn, Layer, LayerAttention, WeightSource, Weights};

/// Which logits a sequence wants back from a forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// None (e.g. a prefill chunk that is not the last).
    None,
    /// Only the last new token's.
    Last,
    /// Every new token's (perplexity).
    All,
}

/// One sequence's part of a batch: its new tokens, appended after what its cache holds.
pub struct SeqInput<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut SeqCache,
    pub logits: Logits,
}

/// Options of one forward pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct ForwardOptions {
    pub attention: AttentionMode,
}

/// Named intermediate activations, recorded when a trace is passed to [`Model::forward_traced`].
pub type Trace = Vec<(String, Vec<f32>)>;

/// Where a forward pass records its named intermediates: a no-op (no allocation, no copy)
/// unless a trace was asked for.
pub(crate) struct Recorder {
    items: Option<std::cell::RefCell<Trace>>,
}

impl Recorder {
    fn new(on: bool) -> Recorder {
        Recorder {
            items: on.then(Default::default),
        }
    }

    /// A recorder that records nothing.
    pub(crate) fn off() -> Recorder {
        Recorder::new(false)
    }

    /// Records a copy of `v` under `name()` when tracing.
    pub(crate) fn record(&self, name: impl FnOnce() -> String, v: &[f32]) {
        if let Some(t) = &self.items {
            t.borrow_mut().push((name(), v.to_vec()));
        }
    }

    /// Whether a trace is being recorded.
    pub(crate) fn on(&self) -> bool {
        self.items.is_some()
    }

    fn into_trace(self) -> Trace {
        self.items.map(|t| t.into_inner()).unwrap_or_default()
    }
}

/// What a layer's attention sees of the step being computed.
pub(crate) struct Step<'a> {
    /// The layer index (which rows of the cache are this layer's).
    pub layer: usize,
    pub config: &'a Config,
    /// RoPE's rotation of every new token row.
    pub rope: &'a RopeTable,
    /// The position of every new token row (all sequences concatenated).
    pub positions: &'a [usize],
    pub opts: &'a ForwardOptions,
    /// Records the layer's intermediates as `layer.{layer}.attn.*`.
    pub rec: &'a Recorder,
}

impl Step<'_> {
    /// Whether the pass records a trace (intermediates only a trace needs are computed then).
    pub(crate) fn tracing(&self) -> bool {
        self.rec.on()
    }

    /// Records `v` as `layer.{layer}.attn.{name}`.
    pub(crate) fn record(&self, name: &str, v: &[f32]) {
        self.rec
            .record(|| format!("layer.{}.attn.{name}", self.layer), v);
    }
}

/// A layer's attention in one architecture family: normalized rows `x` (`[T, hidden]`, the new
/// tokens of every sequence in `batch`, concatenated) → `[T, hidden]`. Writes this layer's
/// cache rows for the new tokens (`Config::cache_widths` values each) before attending.
pub(crate) trait Attend {
    fn attend(
        &self,
        step: &Step<'_>,
        x: &[f32],
        batch: &[SeqInput<'_>],
        cache: &mut BatchCache<'_>,
    ) -> Vec<f32>;
}

impl Attend for LayerAttention {
    fn attend(
        &self,
        step: &Step<'_>,
        x: &[f32],
        batch: &[SeqInput<'_>],
        cache: &mut BatchCache<'_>,
    ) -> Vec<f32> {
        match self {
            LayerAttention::Mla(a) => a.attend(step, x, batch, cache),
            LayerAttention::Gqa(a) => a.attend(step, x, batch, cache),
            LayerAttention::V4(a) => a.attend(step, x, batch, cache),
        }
    }
}

/// A loaded model: DeepSeek MLA + MoE, or a dense GQA decoder (Qwen2, Llama).
pub struct Model {
    pub config: Config,
    pub weights: Weights,
    rope: Rope,
    /// Cache values per token of each layer ([`Config::cache_widths`]).
    widths: Vec<usize>,
    /// What each sequence keeps outside the blocks ([`Config::ring_spec`]).
    ring: Option<RingSpec>,
    /// Unbounded pool behind [`Model::new_cache`] (no prefix caching).
    pool: Arc<KvPool>,
    kv_type: KvType,
}

impl Model {
    /// Builds the model from weights requested from `src`.
    pub fn load(
        config: Config,
        src: &mut dyn WeightSource,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Model, ModelError> {
        config.validate()?;
        let widths = config.cache_widths()?;
        let ring = config.ring_spec()?;
        let weights = Weights::load(&config, src, progress)?;
        let rope = Rope::new(&config);
        let pool = KvPool::with_ring(
            widths.clone(),
            ring.clone(),
            KvType::F32,
            DEFAULT_BLOCK_TOKENS,
            None,
            false,
        );
        Ok(Model {
            config,
            weights,
            rope,
            widths,
            ring,
            pool,
            kv_type: KvType::F32,
        })
    }

    /// How the routed experts' resident copies served so far, when memory is short enough
    /// that they live in the file mapping (placement `Resident`).
    pub fn residency(&self) -> Option<crate::ResidencyStats> {
        self.weights.resident.as_ref().map(|s| s.stats())
    }

    /// Cache values per token of each layer.
    pub(crate) fn widths(&self) -> &[usize] {
        &self.widths
    }

    /// Values of one token's residual: `hidden_size`, DeepSeek-V4's `hc_mult` streams of it (what
    /// [`Model::forward_hidden`] returns and the MTP layer reads).
    pub fn residual_width(&self) -> usize {
        let streams = self.weights.hc_head.as_ref().map_or(1, |hh| hh.streams);
        self.config.hidden_size * streams
    }

    /// The model's RoPE.
    pub(crate) fn rope(&self) -> &Rope {
        &self.rope
    }

    /// The element type of the caches this model makes (default F32, exact).
    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// Sets the element type of the caches made from now on (its own pool is replaced).
    pub fn set_kv_type(&mut self, kv_type: KvType) {
        self.kv_type = kv_type;
        self.pool = self.new_pool(DEFAULT_BLOCK_TOKENS, None, false);
    }

    /// An empty latent cache on the model's own unbounded pool.
    pub fn new_cache(&self) -> SeqCache {
        self.pool.new_seq()
    }

    /// A pool for many sequences: `max_blocks` blocks of `block_tokens` tokens, with or
    /// without prefix sharing.
    pub fn new_pool(
        &self,
        block_tokens: usize,
        max_blocks: Option<usize>,
        prefix_caching: bool,
    ) -> Arc<KvPool> {
        KvPool::with_ring(
            self.widths.clone(),
            self.ring.clone(),
            self.kv_type,
            block_tokens,
            max_blocks,
            prefix_caching,
        )
    }

    /// Runs the new tokens of every sequence through the model, appends them to the caches and
    /// returns each sequence's requested logits (`[rows, vocab]` flattened).
    pub fn forward(
        &self,
        batch: &mut [SeqInput<'_>],
        opts: &ForwardOptions,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        self.forward_traced(batch, opts, None)
    }

    /// [`Model::forward`] that also records named activations, rows of all sequences
    /// concatenated: `embed`; per layer `l`: `layer.{l}.attn_norm` (the attention's input),
    /// the attention's intermediates `layer.{l}.attn.*` (MLA: `q` after RoPE, `kv_latent` = the
    /// cached rows, `heads` = per-head outputs before `o_proj`; with DeepSeek-V3.2's indexer
    /// also `index_k` `[T, index_head_dim]` = its cached keys, `index_scores` = each token's
    /// scores of every key of its sequence (−∞ after it) and `index_topk` `[T, index_topk]` =
    /// the keys each token attends to, ascending, −1 padded; GQA: `q`, `kv`, `heads`; V4: `q`,
    /// `kv` = the window keys, `heads` = outputs after the inverse RoPE and, in CSA layers,
    /// `index_topk` = the compressed entries each token attends to), `layer.{l}.attn` (its
    /// output), `layer.{l}.ffn_norm`, `layer.{l}.moe.router_logits` (MoE layers),
    /// `layer.{l}.ffn` (the FFN's output) and `layer.{l}` (the residual stream `[T, hidden]`
    /// after the layer; V4: its `hc_mult` streams, `[T, hc_mult·hidden]`).
    pub fn forward_traced(
        &self,
        batch: &mut [SeqInput<'_>],
        opts: &ForwardOptions,
        trace: Option<&mut Trace>,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        self.run(batch, opts, trace, false)
            .map(|(logits, _)| logits)
    }

    /// [`Model::forward`] that also returns, per sequence, the final residual stream of every
    /// new token (`[tokens, hidden]`, before the final norm): what DeepSeek's MTP layer reads.
    #[allow(clippy::type_complexity)]
    pub fn forward_hidden(
        &self,
        batch: &mut [SeqInput<'_>],
        opts: &ForwardOptions,
    ) -> Result<(Vec<Vec<f32>>, Vec<Vec<f32>>), ModelError> {
        self.run(batch, opts, None, true)
    }

    #[allow(clippy::type_complexity)]
    fn run(
        &self,
        batch: &mut [SeqInput<'_>],
        opts: &ForwardOptions,
        trace: Option<&mut Trace>,
        want_hidden: bool,
    ) -> Result<(Vec<Vec<f32>>, Vec<Vec<f32>>), ModelError> {
        let c = &self.config;
        let d = c.hidden_size;
        // Validate everything before touching any cache, so a bad request leaves no trace.
        for s in batch.iter() {
            if let Some(&bad) = s.tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
                return Err(ModelError::Input(format!(
                    "token id {bad} is outside the vocabulary (size {})",
                    c.vocab_size
                )));
            }
            if s.cache.pool().widths() != self.widths || s.cache.pool().ring() != self.ring.as_ref()
            {
                return Err(ModelError::Input("cache was made for another model".into()));
            }
        }
        let Some(pool) = batch.first().map(|s| s.cache.pool().clone()) else {
            return Ok((Vec::new(), Vec::new()));
        };
        if batch.iter().any(|s| !Arc::ptr_eq(s.cache.pool(), &pool)) {
            return Err(ModelError::Input(
                "all sequences of a batch must share one KV pool".into(),
            ));
        }
        let mut reserve: Vec<(&mut SeqCache, usize)> = batch
            .iter_mut()
            .map(|s| (&mut *s.cache, s.tokens.len()))
            .collect();
        let mut kv = BatchCache::prepare(&pool, &mut reserve)?;
        drop(reserve);
        // Token rows of all sequences, concatenated.
        let tokens: Vec<u32> = batch
            .iter()
            .flat_map(|s| s.tokens.iter().copied())
            .collect();
        let n_tok = tokens.len();
        // The residual: one stream, or DeepSeek-V4's hc_mult streams, each the embedding.
        let width = d * self.weights.hc_head.as_ref().map_or(1, |hh| hh.streams);
        let mut h = vec![0.0f32; n_tok * width]; // [T, streams·hidden]
        for (row, &t) in h.chunks_exact_mut(width).zip(&tokens) {
            self.weights.embed.dequantize_row(t as usize, &mut row[..d]);
            for s in 1..width / d {
                row.copy_within(..d, s * d);
            }
        }
        let rec = Recorder::new(trace.is_some());
        rec.record(|| "embed".into(), &h);
        let positions: Vec<usize> = batch
            .iter()
            .flat_map(|s| s.cache.len()..s.cache.len() + s.tokens.len())
            .collect();
        let rope = self.rope.table(&positions);
        let mut x = vec![0.0f32; n_tok * d];
        for (l, layer) in self.weights.layers.iter().enumerate() {
            let step = Step {
                layer: l,
                config: c,
                rope: &rope,
                positions: &positions,
                opts,
                rec: &rec,
            };
            layer.run(&step, &mut h, &mut x, &tokens, batch, &mut kv);
        }
        for s in batch.iter_mut() {
            kv.commit(s.cache, s.tokens);
        }
        drop(kv);
        let wants: Vec<(usize, Logits)> =
            batch.iter().map(|s| (s.tokens.len(), s.logits)).collect();
        let hidden = match want_hidden {
            true => split_rows(&h, width, wants.iter().map(|w| w.0)),
            false => Vec::new(),
        };
        let head = self.weights.hc_head.as_ref();
        let out = self.logits(&h, width, &wants, &self.weights.norm, head);
        if let Some(t) = trace {
            t.extend(rec.into_trace());
        }
        Ok((out, hidden))
    }

    /// The logits of the rows each sequence asks for (`wants`: its row count and [`Logits`]) of
    /// the residual `h` (`[T, width]`): DeepSeek-V4's streams collapsed (by `hc_head`), `norm`, then the head,
    /// every sequence's rows in one product (a decode step of many sequences reads the head
    /// once, not once per sequence).
    pub(crate) fn logits(
        &self,
        h: &[f32],
        width: usize,
        wants: &[(usize, Logits)],
        norm: &[f32],
        hc_head: Option<&crate::v4::HyperHead>,
    ) -> Vec<Vec<f32>> {
        let lm_head: &QMat = self.weights.lm_head.as_ref().unwrap_or(&self.weights.embed);
        let mut hn = Vec::new();
        let mut counts = Vec::with_capacity(wants.len());
        let mut row0 = 0;
        for &(n, want) in wants {
            let rows = match want {
                Logits::None => 0..0,
                Logits::Last => n.saturating_sub(1)..n,
                Logits::All => 0..n,
            };
            hn.extend_from_slice(&h[(row0 + rows.start) * width..(row0 + rows.end) * width]);
            counts.push(rows.len());
            row0 += n;
        }
        if let Some(head) = hc_head {
            hn = head.collapse(&hn);
        }
        rms_norm_in_place(&mut hn, norm, self.config.rms_norm_eps);
        let mut logits = match hn.is_empty() {
            true => Vec::new(),
            false => lm_head.forward(&hn),
        };
        // Split from the end, so a single sequence keeps the product's buffer as it is.
        let v = lm_head.rows;
        let mut out = Vec::with_capacity(wants.len());
        let mut end = logits.len() / v.max(1);
        for &n in counts.iter().rev() {
            end -= n;
            out.push(logits.split_off(end * v));
        }
        out.reverse();
        out
    }
}

/// `rows` (`[T, width]`) split into consecutive runs of `counts` rows, copied.
pub(crate) fn split_rows(
    rows: &[f32],
    width: usize,
    counts: impl Iterator<Item = usize>,
) -> Vec<Vec<f32>> {
    let mut at = 0;
    counts
        .map(|n| {
            let part = rows[at * width..(at + n) * width].to_vec();
            at += n;
            part
        })
        .collect()
}

impl Layer {
    /// One decoder layer over the residual `h` (`[T, streams·hidden]`, in place): attention
    /// (writing its rows of the cache) and the FFN, each pre-normed into `x` (`[T, hidden]`).
    pub(crate) fn run(
        &self,
        step: &Step<'_>,
        h: &mut [f32],
        x: &mut [f32],
        tokens: &[u32],
        batch: &[SeqInput<'_>],
        kv: &mut BatchCache<'_>,
    ) {
        let (l, rec, eps) = (step.layer, step.rec, step.config.rms_norm_eps);
        let hyper = self.hyper.as_deref();
        let (input, mix) = sublayer_input(hyper.map(|hy| &hy.attn), h);
        rms_norm(&input, &self.attn_norm, eps, x);
        rec.record(|| format!("layer.{l}.attn_norm"), x);
        let o = self.attn.attend(step, x, batch, kv);
        rec.record(|| format!("layer.{l}.attn"), &o);
        sublayer_output(mix, h, &o);
        let (input, mix) = sublayer_input(hyper.map(|hy| &hy.ffn), h);
        rms_norm(&input, &self.ffn_norm, eps, x);
        rec.record(|| format!("layer.{l}.ffn_norm"), x);
        let f = match &self.ffn {
            Ffn::Dense(m) => mlp_forward(m, x),
            Ffn::Moe(m) => moe_forward(m, x, tokens, &|name, v| {
                rec.record(|| format!("layer.{l}.moe.{name}"), v)
            }),
        };
        rec.record(|| format!("layer.{l}.ffn"), &f);
        sublayer_output(mix, h, &f);
        rec.record(|| format!("layer.{l}"), h);
    }
}

/// A sublayer's input: the residual `h` itself, or its streams collapsed by DeepSeek-V4's
/// hyper-connection `hc` (with the mixing its output needs).
fn sublayer_input<'h>(
    hc: Option<&crate::v4::HyperConnection>,
    h: &'h [f32],
) -> (Cow<'h, [f32]>, Option<crate::v4::Mix>) {
    match hc {
        None => (Cow::Borrowed(h), None),
        Some(hc) => {
            let (collapsed, mix) = hc.enter(h);
            (Cow::Owned(collapsed), Some(mix))
        }
    }
}

/// Adds a sublayer's output `o` to the residual: `h += o`, or mixed into the streams.
fn sublayer_output(mix: Option<crate::v4::Mix>, h: &mut [f32], o: &[f32]) {
    match mix {
        None => add_in_place(h, o),
        Some(m) => m.leave(h, o),
    }
}
