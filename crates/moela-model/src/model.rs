//! The forward pass over a batch of sequences (many new tokens × many sequences).
//!
//! One pre-norm decoder loop serves every architecture family: embed, then per layer
//! `h += attn(norm(h))` and `h += ffn(norm(h))` (SwiGLU or MoE), then the final norm and head.
//! The families differ only in a layer's attention, which implements [`Attend`]: MLA over the
//! latent cache here (DeepSeek), grouped-query attention over per-head K/V in `dense.rs`
//! (Qwen2, Llama).

use moela_kernels::{add_in_place, rms_norm, rms_norm_in_place, QMat};

use crate::attention::{mla, mla_absorbed_batch, AttentionMode, MlaDims};
use std::sync::Arc;

use crate::cache::{BatchCache, KvPool, KvType, SeqCache, DEFAULT_BLOCK_TOKENS};
use crate::config::Config;
use crate::error::ModelError;
use crate::moe::{mlp_forward, moe_forward};
use crate::rope::{Rope, RopeTable};
use crate::weights::{Ffn, LayerAttention, MlaAttention, QProj, WeightSource, Weights};

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
}

/// A layer's attention in one architecture family: normalized rows `x` (`[T, hidden]`, the new
/// tokens of every sequence in `batch`, concatenated) → `[T, hidden]`. Writes this layer's
/// cache rows for the new tokens (`Config::latent_dim` values each) before attending.
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
        }
    }
}

/// A loaded model: DeepSeek MLA + MoE, or a dense GQA decoder (Qwen2, Llama).
pub struct Model {
    pub config: Config,
    pub weights: Weights,
    rope: Rope,
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
        let weights = Weights::load(&config, src, progress)?;
        let rope = Rope::new(&config);
        let pool = KvPool::new(
            config.num_hidden_layers,
            config.latent_dim(),
            KvType::F32,
            DEFAULT_BLOCK_TOKENS,
            None,
            false,
        );
        Ok(Model {
            config,
            weights,
            rope,
            pool,
            kv_type: KvType::F32,
        })
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
        KvPool::new(
            self.config.num_hidden_layers,
            self.config.latent_dim(),
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

    /// [`Model::forward`] that also records named activations (`embed`, `layer.{l}`: the
    /// residual stream `[T, hidden]` after each layer, rows of all sequences concatenated).
    pub fn forward_traced(
        &self,
        batch: &mut [SeqInput<'_>],
        opts: &ForwardOptions,
        mut trace: Option<&mut Trace>,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
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
            if s.cache.latent_dim() != c.latent_dim() {
                return Err(ModelError::Input("cache was made for another model".into()));
            }
        }
        let Some(pool) = batch.first().map(|s| s.cache.pool().clone()) else {
            return Ok(Vec::new());
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
        let n_tok: usize = batch.iter().map(|s| s.tokens.len()).sum();
        let mut h = vec![0.0f32; n_tok * d]; // [T, hidden]
        for (row, &t) in h
            .chunks_exact_mut(d)
            .zip(batch.iter().flat_map(|s| s.tokens))
        {
            self.weights.embed.dequantize_row(t as usize, row);
        }
        let mut record = |name: String, v: &[f32]| {
            if let Some(tr) = trace.as_deref_mut() {
                tr.push((name, v.to_vec()));
            }
        };
        record("embed".into(), &h);
        let positions: Vec<usize> = batch
            .iter()
            .flat_map(|s| s.cache.len()..s.cache.len() + s.tokens.len())
            .collect();
        let rope = self.rope.table(&positions);
        let mut x = vec![0.0f32; n_tok * d];
        for (l, layer) in self.weights.layers.iter().enumerate() {
            rms_norm(&h, &layer.attn_norm, c.rms_norm_eps, &mut x);
            let step = Step {
                layer: l,
                config: c,
                rope: &rope,
                positions: &positions,
                opts,
            };
            let o = layer.attn.attend(&step, &x, batch, &mut kv);
            add_in_place(&mut h, &o);
            rms_norm(&h, &layer.ffn_norm, c.rms_norm_eps, &mut x);
            let f = match &layer.ffn {
                Ffn::Dense(m) => mlp_forward(m, &x),
                Ffn::Moe(m) => moe_forward(c, m, &x),
            };
            add_in_place(&mut h, &f);
            record(format!("layer.{l}"), &h);
        }
        for s in batch.iter_mut() {
            kv.commit(s.cache, s.tokens);
        }
        drop(kv);
        // Logits for the rows each sequence asked for: every sequence's rows in one product
        // (a decode step of many sequences reads the head once, not once per sequence).
        let lm_head: &QMat = self.weights.lm_head.as_ref().unwrap_or(&self.weights.embed);
        let mut hn = Vec::new();
        let mut counts = Vec::with_capacity(batch.len());
        let mut row0 = 0;
        for s in batch.iter() {
            let n = s.tokens.len();
            let rows = match s.logits {
                Logits::None => 0..0,
                Logits::Last => n.saturating_sub(1)..n,
                Logits::All => 0..n,
            };
            hn.extend_from_slice(&h[(row0 + rows.start) * d..(row0 + rows.end) * d]);
            counts.push(rows.len());
            row0 += n;
        }
        rms_norm_in_place(&mut hn, &self.weights.norm, c.rms_norm_eps);
        let mut logits = match hn.is_empty() {
            true => Vec::new(),
            false => lm_head.forward(&hn),
        };
        // Split from the end, so a single sequence keeps the product's buffer as it is.
        let v = lm_head.rows;
        let mut out = Vec::with_capacity(batch.len());
        let mut end = logits.len() / v.max(1);
        for &n in counts.iter().rev() {
            end -= n;
            out.push(logits.split_off(end * v));
        }
        out.reverse();
        Ok(out)
    }
}

impl Attend for MlaAttention {
    /// MLA for all token rows `x`; caches the normalized latent and the rotated rope key.
    fn attend(
        &self,
        step: &Step<'_>,
        x: &[f32],
        batch: &[SeqInput<'_>],
        cache: &mut BatchCache<'_>,
    ) -> Vec<f32> {
        let c = step.config;
        let a = self;
        let positions = step.positions;
        let dims = MlaDims {
            heads: c.num_attention_heads,
            nope: c.qk_nope_head_dim,
            rope: c.qk_rope_head_dim,
            v: c.v_head_dim,
            rank: c.kv_lora_rank,
            scale: c.softmax_scale(),
        };
        let (h, qk, r, dr) = (
            c.num_attention_heads,
            c.qk_head_dim(),
            c.kv_lora_rank,
            c.qk_rope_head_dim,
        );
        // The query's first product and kv_a share the input: one dispatch.
        let first = match &a.q {
            QProj::Direct(w) => w,
            QProj::LowRank { a, .. } => a,
        };
        let [q0, mut rows] = QMat::forward_many([first, &a.kv_a], x);
        // q: [T, heads, nope + rope]
        let mut q = match &a.q {
            QProj::Direct(_) => q0,
            QProj::LowRank { norm, b, .. } => {
                let mut ql = q0;
                rms_norm_in_place(&mut ql, norm, c.rms_norm_eps);
                b.forward(&ql)
            }
        };
        // kv: [T, rank + rope] → normalized latent and rotated rope key, the cached row.
        let lat = r + dr;
        for t in 0..positions.len() {
            let row = &mut rows[t * lat..(t + 1) * lat];
            rms_norm_in_place(&mut row[..r], &a.kv_a_norm, c.rms_norm_eps);
            step.rope.apply(t, &mut row[r..]);
            for hh in 0..h {
                let qh = &mut q[(t * h + hh) * qk..(t * h + hh + 1) * qk];
                step.rope.apply(t, &mut qh[c.qk_nope_head_dim..]);
            }
        }
        // A decode step of several sequences (one new token each, all in the absorbed form):
        // one batched attention instead of three small dispatches per sequence.
        let absorbed = |s: &SeqInput<'_>| {
            step.opts.attention.resolve(&dims, 1, s.cache.len() + 1) == AttentionMode::Absorbed
        };
        if batch.len() > 1 && batch.iter().all(|s| s.tokens.len() == 1 && absorbed(s)) {
            for (t, s) in batch.iter().enumerate() {
                cache.write(s.cache, step.layer, &rows[t * lat..(t + 1) * lat]);
            }
            let views: Vec<_> = batch
                .iter()
                .map(|s| cache.view(s.cache, step.layer, s.cache.len() + 1))
                .collect();
            let o = mla_absorbed_batch(&q, &views, &a.uk_t, &a.uv, &dims);
            return a.o.forward(&o);
        }
        let mut o = Vec::with_capacity(positions.len() * h * c.v_head_dim);
        let mut t0 = 0;
        for s in batch.iter() {
            let n = s.tokens.len();
            cache.write(s.cache, step.layer, &rows[t0 * lat..(t0 + n) * lat]);
            let qs = &q[t0 * h * qk..(t0 + n) * h * qk];
            let view = cache.view(s.cache, step.layer, s.cache.len() + n);
            o.extend(mla(
                qs,
                &view,
                &a.kv_b,
                &a.uk_t,
                &a.uv,
                &dims,
                step.opts.attention,
            ));
            t0 += n;
        }
        a.o.forward(&o)
    }
}
