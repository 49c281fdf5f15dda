//! DeepSeek's Multi-Token Prediction layer (`num_nextn_predict_layers`; DeepSeek-V3 §2.2), used
//! to draft tokens for speculative decoding.
//!
//! At main-model position `p`, with `h_p` the main model's final residual (before its norm) and
//! `t_{p+1}` the token that follows: `x = eh_proj([enorm(embed(t_{p+1})) ; hnorm(h_p)])` (the
//! embedding zeroed at position 0), one decoder block at position `p` over the MTP layer's own
//! cache (one row per main position), then `shared_head.norm` and the model's head: logits for
//! `t_{p+2}`. The block's output residual is the `h` of the next draft when drafts are chained.
//! The drafts are verified by the main model, so this layer decides speed, never output.
//!
//! DeepSeek-V4's (`mtp.0.*` in its release; DeepSeek's `MTPBlock`) is the same with
//! hyper-connections: `h_p` is the main model's `hc_mult` streams before its `hc_head`, each
//! stream becomes `e_proj(enorm(embed(t_{p+1}))) + h_proj(hnorm(stream))` (no zeroed position),
//! the block is a V4 decoder layer (its kind the config's entry after the decoder layers), and
//! the logits are `head(norm(hc_head'(streams)))` with the layer's own `hc_head` and `norm`.

use std::sync::Arc;

use moela_kernels::{rms_norm, QMat};

use crate::cache::{BatchCache, KvPool, SeqCache};
use crate::error::ModelError;
use crate::model::{split_rows, ForwardOptions, Logits, Model, Recorder, SeqInput, Step};
use crate::weights::Layer;

/// How the MTP layer joins the embedding and the hidden state.
#[derive(Clone, Debug)]
pub enum MtpProj {
    /// DeepSeek-V3: `eh_proj` `[hidden, 2·hidden]` over `[e ; h]`.
    Fused(QMat),
    /// DeepSeek-V4: `e_proj(e) + h_proj(h)`, each `[hidden, hidden]`, `h` per stream.
    Split { e: QMat, h: QMat },
}

/// The MTP layer's weights (`model.layers.{num_hidden_layers}.*`).
#[derive(Clone, Debug)]
pub struct MtpLayer {
    pub enorm: Vec<f32>, // [hidden]
    pub hnorm: Vec<f32>, // [hidden]
    pub proj: MtpProj,
    pub block: Layer,
    pub norm: Vec<f32>, // shared_head.norm [hidden]
    /// DeepSeek-V4: the layer's own collapse of the streams before `norm`.
    pub hc_head: Option<crate::v4::HyperHead>,
}

/// One sequence's part of an MTP pass: main-model positions `cache.len()..` with their final
/// residuals `hidden` (`[n, hidden]`) and the tokens that follow them (`tokens[i]` = the token
/// at position `cache.len() + i + 1`).
pub struct MtpInput<'a> {
    pub hidden: &'a [f32],
    pub tokens: &'a [u32],
    /// This sequence's MTP cache (from [`Model::new_mtp_pool`]).
    pub cache: &'a mut SeqCache,
    pub logits: Logits,
}

impl Model {
    /// Whether the checkpoint has an MTP layer this model runs.
    pub fn has_mtp(&self) -> bool {
        self.weights.mtp.is_some()
    }

    /// A pool for the MTP layer's caches (one layer of the model's row width), sized like the
    /// main pool; `None` without an MTP layer.
    pub fn new_mtp_pool(
        &self,
        block_tokens: usize,
        max_blocks: Option<usize>,
        prefix_caching: bool,
    ) -> Option<Arc<KvPool>> {
        self.weights.mtp.as_ref()?;
        // DeepSeek-V4: the MTP layer's own kind (its entries, its window state).
        let (width, ring) = match self.config.v4() {
            Some(v) => v.mtp_cache().ok().map(|(w, r)| (w, Some(r)))?,
            None => (*self.widths().first()?, None),
        };
        Some(KvPool::with_ring(
            vec![width],
            ring,
            self.kv_type(),
            block_tokens,
            max_blocks,
            prefix_caching,
        ))
    }

    /// Runs the MTP layer over every sequence's new positions, appends them to its MTP cache and
    /// returns each sequence's requested logits and the block's output residual of every row
    /// (`[n, hidden]`).
    #[allow(clippy::type_complexity)]
    pub fn mtp_forward(
        &self,
        batch: &mut [MtpInput<'_>],
    ) -> Result<(Vec<Vec<f32>>, Vec<Vec<f32>>), ModelError> {
        let Some(mtp) = &self.weights.mtp else {
            return Err(ModelError::Input("this model has no MTP layer".into()));
        };
        let c = &self.config;
        let d = c.hidden_size;
        // DeepSeek-V4's residual is its hc_mult streams.
        let width = self.residual_width();
        for s in batch.iter() {
            if s.hidden.len() != s.tokens.len() * width {
                return Err(ModelError::Input(format!(
                    "MTP input: {} hidden values for {} tokens of width {width}",
                    s.hidden.len(),
                    s.tokens.len()
                )));
            }
            if let Some(&bad) = s.tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
                return Err(ModelError::Input(format!(
                    "token id {bad} is outside the vocabulary (size {})",
                    c.vocab_size
                )));
            }
        }
        let Some(pool) = batch.first().map(|s| s.cache.pool().clone()) else {
            return Ok((Vec::new(), Vec::new()));
        };
        if batch.iter().any(|s| !Arc::ptr_eq(s.cache.pool(), &pool)) || pool.widths().len() != 1 {
            return Err(ModelError::Input(
                "MTP caches must share one MTP pool".into(),
            ));
        }
        let positions: Vec<usize> = batch
            .iter()
            .flat_map(|s| s.cache.len()..s.cache.len() + s.tokens.len())
            .collect();
        let tokens: Vec<u32> = batch
            .iter()
            .flat_map(|s| s.tokens.iter().copied())
            .collect();
        let n_tok = tokens.len();
        let hidden: Vec<f32> = batch
            .iter()
            .flat_map(|s| s.hidden.iter().copied())
            .collect();
        let mut h = self.mtp_input(mtp, &tokens, &positions, &hidden);
        // The block over the MTP caches, as one more decoder layer (layer 0 of its pool).
        let inputs: Vec<(usize, Logits)> =
            batch.iter().map(|s| (s.tokens.len(), s.logits)).collect();
        let mut seqs: Vec<SeqInput<'_>> = batch
            .iter_mut()
            .map(|s| SeqInput {
                tokens: s.tokens,
                cache: &mut *s.cache,
                logits: s.logits,
            })
            .collect();
        let mut reserve: Vec<(&mut SeqCache, usize)> = seqs
            .iter_mut()
            .map(|s| (&mut *s.cache, s.tokens.len()))
            .collect();
        let mut kv = BatchCache::prepare(&pool, &mut reserve)?;
        drop(reserve);
        let rope = self.rope().table(&positions);
        let rec = Recorder::off();
        let opts = ForwardOptions::default();
        let step = Step {
            layer: 0,
            config: c,
            rope: &rope,
            positions: &positions,
            opts: &opts,
            rec: &rec,
        };
        let mut x = vec![0.0f32; n_tok * d];
        mtp.block
            .run(&step, &mut h, &mut x, &tokens, &seqs, &mut kv);
        for s in seqs.iter_mut() {
            kv.commit(s.cache, s.tokens);
        }
        drop(kv);
        let logits = self.logits(&h, width, &inputs, &mtp.norm, mtp.hc_head.as_ref());
        Ok((logits, split_rows(&h, width, inputs.iter().map(|i| i.0))))
    }

    /// The block's input for every row (`[T, width]`): V3's `eh_proj([enorm(embed(t)) ;
    /// hnorm(h)])` (the embedding zeroed at position 0), V4's `e_proj(enorm(embed(t))) +
    /// h_proj(hnorm(stream))` for each of its streams.
    fn mtp_input(
        &self,
        mtp: &MtpLayer,
        tokens: &[u32],
        positions: &[usize],
        hidden: &[f32],
    ) -> Vec<f32> {
        let c = &self.config;
        let (d, eps) = (c.hidden_size, c.rms_norm_eps);
        let mut e = vec![0.0f32; d];
        let mut embeds = vec![0.0f32; tokens.len() * d];
        for (&t, out) in tokens.iter().zip(embeds.chunks_exact_mut(d)) {
            self.weights.embed.dequantize_row(t as usize, &mut e);
            rms_norm(&e, &mtp.enorm, eps, out);
        }
        let mut hn = vec![0.0f32; hidden.len()];
        for (h, out) in hidden.chunks_exact(d).zip(hn.chunks_exact_mut(d)) {
            rms_norm(h, &mtp.hnorm, eps, out);
        }
        match &mtp.proj {
            MtpProj::Fused(eh) => {
                let mut cat = vec![0.0f32; tokens.len() * 2 * d];
                for (t, row) in cat.chunks_exact_mut(2 * d).enumerate() {
                    let (emb, hid) = row.split_at_mut(d);
                    if positions[t] > 0 {
                        emb.copy_from_slice(&embeds[t * d..(t + 1) * d]);
                    }
                    hid.copy_from_slice(&hn[t * d..(t + 1) * d]);
                }
                eh.forward(&cat)
            }
            MtpProj::Split { e, h } => {
                let pe = e.forward(&embeds); // [T, d]
                let mut x = h.forward(&hn); // [T·streams, d]
                let streams = hn.len() / embeds.len().max(1);
                for (t, row) in x.chunks_exact_mut(streams * d).enumerate() {
                    for s in row.chunks_exact_mut(d) {
                        s.iter_mut()
                            .zip(&pe[t * d..(t + 1) * d])
                            .for_each(|(a, b)| *a += b);
                    }
                }
                x
            }
        }
    }
}
