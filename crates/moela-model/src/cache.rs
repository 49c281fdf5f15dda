//! The latent KV cache of one sequence: per layer and token, the normalized latent `c_n`
//! (`kv_lora_rank` values) followed by the post-RoPE rope key (`qk_rope_head_dim` values).
//! Never full per-head keys or values.

/// Latent cache of one sequence. Owned by the engine; the model appends to it.
#[derive(Clone, Debug, Default)]
pub struct SeqCache {
    /// `[layers][len, latent_dim]`
    layers: Vec<Vec<f32>>,
    latent_dim: usize,
    len: usize,
}

impl SeqCache {
    pub fn new(n_layers: usize, latent_dim: usize) -> SeqCache {
        SeqCache {
            layers: vec![Vec::new(); n_layers],
            latent_dim,
            len: 0,
        }
    }

    /// Tokens held (every layer holds the same count between forward passes).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Values per token per layer.
    pub fn latent_dim(&self) -> usize {
        self.latent_dim
    }

    /// Bytes held by the cached values.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.len() * std::mem::size_of::<f32>())
            .sum()
    }

    /// Drops every token from position `len` on (e.g. to reuse a shared prefix).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            for l in &mut self.layers {
                l.truncate(len * self.latent_dim);
            }
            self.len = len;
        }
    }

    pub(crate) fn layer(&self, l: usize) -> &[f32] {
        &self.layers[l]
    }

    pub(crate) fn push_rows(&mut self, l: usize, rows: &[f32]) {
        self.layers[l].extend_from_slice(rows);
    }

    /// Called once all layers took the new tokens.
    pub(crate) fn commit(&mut self, n: usize) {
        self.len += n;
        debug_assert!(self
            .layers
            .iter()
            .all(|l| l.len() == self.len * self.latent_dim));
    }
}
