//! Drafting with the model's own MTP layer (`moela_model::mtp`).
//!
//! Each sequence keeps an MTP cache beside its main cache: row `p` holds the MTP layer's state
//! for main position `p`, which needs the main model's final residual `h_p` and the token
//! `t_{p+1}`. After every step the residuals of the positions the main cache kept wait in
//! `pending` until the token after them is known — at once for prompt positions, after sampling
//! for the last one — and [`catch_up`] runs them through the MTP layer for every sequence in one
//! pass. For a decoding sequence the last row's argmax is the first draft; further drafts chain
//! the layer on its own output (row `L + j` from the previous row's output and draft), and
//! those speculative rows are dropped again, so the MTP cache only ever holds verified positions.

use moela_model::{Logits, Model, MtpInput, SeqCache};

use crate::sampler::argmax;

/// One sequence's MTP drafting state.
pub(crate) struct MtpState {
    pub(crate) cache: SeqCache,
    /// Final residuals (`[n, hidden]`) of main positions `cache.len()..` not yet in the MTP
    /// cache.
    pub(crate) pending: Vec<f32>,
    /// Drafts for the next step.
    pub(crate) drafts: Vec<u32>,
}

impl MtpState {
    pub(crate) fn new(cache: SeqCache) -> MtpState {
        MtpState {
            cache,
            pending: Vec::new(),
            drafts: Vec::new(),
        }
    }
}

/// A sequence's part in [`catch_up`].
pub(crate) struct CatchUp<'a> {
    pub(crate) state: &'a mut MtpState,
    /// Everything the sequence has seen (prompt, then generated); covers the token after every
    /// pending position.
    pub(crate) known: Vec<u32>,
    /// Drafts wanted for the next step (0: the sequence is still prefilling).
    pub(crate) k: usize,
}

/// Runs every sequence's pending positions through the MTP layer (one batched pass), then
/// drafts up to `k` tokens for those that want them (one batched pass per chained draft).
/// An MTP failure only stops drafting: the error is returned for the engine to drop the states.
pub(crate) fn catch_up(
    model: &Model,
    seqs: &mut [CatchUp<'_>],
) -> Result<(), moela_model::ModelError> {
    let d = model.residual_width();
    let mut batch: Vec<MtpInput<'_>> = Vec::new();
    let mut who: Vec<usize> = Vec::new();
    let mut pending: Vec<Vec<f32>> = Vec::new();
    for s in seqs.iter_mut() {
        s.state.drafts.clear();
        pending.push(std::mem::take(&mut s.state.pending));
    }
    for (i, (s, hidden)) in seqs.iter_mut().zip(&pending).enumerate() {
        let n = hidden.len() / d.max(1);
        if n == 0 {
            continue;
        }
        let from = s.state.cache.len() + 1;
        let Some(tokens) = s.known.get(from..from + n) else {
            return Err(moela_model::ModelError::Input(format!(
                "MTP: {n} pending positions after {} known tokens",
                s.known.len()
            )));
        };
        who.push(i);
        batch.push(MtpInput {
            hidden,
            tokens,
            cache: &mut s.state.cache,
            logits: if s.k > 0 { Logits::Last } else { Logits::None },
        });
    }
    if batch.is_empty() {
        return Ok(());
    }
    let (logits, hidden) = model.mtp_forward(&mut batch)?;
    drop(batch);
    // Chained drafts: (sequence, its last MTP output row, the draft it gave).
    let mut chain: Vec<(usize, Vec<f32>, u32)> = Vec::new();
    for ((&i, row), h) in who.iter().zip(&logits).zip(&hidden) {
        if seqs[i].k == 0 || row.is_empty() {
            continue;
        }
        let t = argmax(row);
        seqs[i].state.drafts.push(t);
        chain.push((i, h[h.len() - d..].to_vec(), t));
    }
    let verified: Vec<usize> = seqs.iter().map(|s| s.state.cache.len()).collect();
    let mut result = Ok(());
    while !chain.is_empty() {
        chain.retain(|(i, _, _)| seqs[*i].state.drafts.len() < seqs[*i].k);
        if chain.is_empty() {
            break;
        }
        let tokens: Vec<[u32; 1]> = chain.iter().map(|c| [c.2]).collect();
        let mut caches: Vec<Option<&mut SeqCache>> =
            seqs.iter_mut().map(|s| Some(&mut s.state.cache)).collect();
        let mut batch: Vec<MtpInput<'_>> = chain
            .iter()
            .zip(&tokens)
            .filter_map(|((i, h, _), t)| {
                Some(MtpInput {
                    hidden: h,
                    tokens: t,
                    cache: caches[*i].take()?,
                    logits: Logits::Last,
                })
            })
            .collect();
        match model.mtp_forward(&mut batch) {
            Ok((logits, hidden)) => {
                drop(batch);
                drop(caches);
                for ((c, row), h) in chain.iter_mut().zip(&logits).zip(hidden) {
                    let t = argmax(row);
                    seqs[c.0].state.drafts.push(t);
                    *c = (c.0, h, t);
                }
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    // The chained rows were speculative: back to the verified positions.
    for (s, &len) in seqs.iter_mut().zip(&verified) {
        s.state.cache.truncate(len)?;
    }
    result
}
