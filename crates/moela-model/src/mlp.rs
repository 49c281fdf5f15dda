//! The dense SwiGLU MLP (`down(silu(gate·x) ⊙ up·x)`, DeepSeek-V4's with its inputs clamped):
//! a dense layer's FFN, every routed and shared expert of a MoE layer.

use moela_kernels::{silu_mul, PreparedInput, QMat};

use crate::weights::Mlp;

/// SwiGLU over `[n, hidden]` rows: returns `[n, hidden]`.
pub fn mlp_forward(m: &Mlp, x: &[f32]) -> Vec<f32> {
    mlps_forward(&[(m, x)]).remove(0)
}

/// Several SwiGLU MLPs, each on its own rows (`[n_i, hidden]`), in two pool dispatches: every
/// gate and up projection, then every down projection.
pub fn mlps_forward(jobs: &[(&Mlp, &[f32])]) -> Vec<Vec<f32>> {
    let n_of = |m: &Mlp, x: &[f32]| x.len() / m.gate.cols;
    // One quantization of each input serves gate and up (unless their types differ in kind).
    let gate_in: Vec<PreparedInput<'_>> = jobs
        .iter()
        .map(|&(m, x)| m.gate.prepare(x, n_of(m, x)))
        .collect();
    let up_in: Vec<Option<PreparedInput<'_>>> = jobs
        .iter()
        .zip(&gate_in)
        .map(|(&(m, x), g)| (!g.fits(m.up.dtype)).then(|| m.up.prepare(x, n_of(m, x))))
        .collect();
    let items: Vec<(&QMat, &PreparedInput<'_>)> = jobs
        .iter()
        .zip(&gate_in)
        .zip(&up_in)
        .flat_map(|((&(m, _), gi), ui)| [(&m.gate, gi), (&m.up, ui.as_ref().unwrap_or(gi))])
        .collect();
    let mut gate_up = QMat::forward_batch(&items).into_iter();
    let mut gate: Vec<Vec<f32>> = Vec::with_capacity(jobs.len());
    for &(m, _) in jobs {
        let (Some(mut g), Some(mut u)) = (gate_up.next(), gate_up.next()) else {
            break;
        };
        if let Some(l) = m.swiglu_limit {
            // DeepSeek-V4: gate ≤ L, −L ≤ up ≤ L before the SwiGLU.
            g.iter_mut().for_each(|v| *v = v.min(l));
            u.iter_mut().for_each(|v| *v = v.clamp(-l, l));
        }
        silu_mul(&mut g, &u);
        gate.push(g);
    }
    let down_in: Vec<PreparedInput<'_>> = jobs
        .iter()
        .zip(&gate)
        .map(|(&(m, x), h)| m.down.prepare(h, n_of(m, x)))
        .collect();
    let items: Vec<(&QMat, &PreparedInput<'_>)> = jobs
        .iter()
        .zip(&down_in)
        .map(|(&(m, _), di)| (&m.down, di))
        .collect();
    QMat::forward_batch(&items)
}
