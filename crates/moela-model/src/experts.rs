//! The routed experts of a MoE layer behind one handle. The model asks for "these experts ×
//! these rows" ([`Experts::forward`]) and never indexes their matrices, so where the experts
//! live — packed copies in RAM or the file mapping today (the loader's `Placement`), a residency
//! cache for models larger than RAM or a GPU later — changes here, not in the routing or the
//! decoder loop.

use crate::mlp::mlps_forward;
use crate::weights::Mlp;

/// One layer's routed experts (each a SwiGLU MLP of width `moe_intermediate_size`).
#[derive(Clone, Debug)]
pub struct Experts {
    /// The CPU placement: every expert's matrices as the loader placed them.
    mlps: Vec<Mlp>,
}

impl Experts {
    pub fn new(mlps: Vec<Mlp>) -> Experts {
        Experts { mlps }
    }

    /// How many experts there are (the router's rows).
    pub fn len(&self) -> usize {
        self.mlps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mlps.is_empty()
    }

    /// The SwiGLU of each `(expert, rows)` in `jobs` (rows `[n_i, hidden]`; experts below
    /// [`Self::len`], as routing yields them) and of each `(mlp, rows)` in `with` (the shared
    /// experts), all in one batch of products; the outputs in that order.
    pub fn forward(&self, jobs: &[(usize, &[f32])], with: &[(&Mlp, &[f32])]) -> Vec<Vec<f32>> {
        let all: Vec<(&Mlp, &[f32])> = jobs
            .iter()
            .map(|&(e, x)| (&self.mlps[e], x))
            .chain(with.iter().copied())
            .collect();
        mlps_forward(&all)
    }

    /// Each expert's weights in order (for exporters; a CPU placement holds them all).
    pub fn iter(&self) -> impl Iterator<Item = &Mlp> {
        self.mlps.iter()
    }
}
