//! DeepSeekMoE: router (every `topk_method`), token bucketing by expert, shared experts.

use moela_kernels::softmax_in_place;

use crate::config::{MoeConfig, RouteWeighting, ScoringFunc, TopkMethod};
use crate::weights::{Mlp, Moe};

/// The experts chosen for one token and their weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub experts: Vec<usize>,
    pub weights: Vec<f32>,
}

/// Indices of the `k` largest values (ties: lower index first), largest first.
fn top_k(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Routes one token from its router logits (computed in f32).
pub fn route(cfg: &MoeConfig, logits: &[f32], bias: Option<&[f32]>) -> Route {
    let e = logits.len();
    let k = cfg.num_experts_per_tok;
    let mut scores = logits.to_vec();
    match cfg.scoring_func {
        ScoringFunc::Softmax => softmax_in_place(&mut scores),
        ScoringFunc::Sigmoid => scores
            .iter_mut()
            .for_each(|s| *s = 1.0 / (1.0 + (-*s).exp())),
    }
    // Selection scores: the correction bias enters selection only, never the weights (V3).
    let mut choice: Vec<f32> = match (cfg.topk_method, bias) {
        (TopkMethod::NoauxTc, Some(b)) => scores.iter().zip(b).map(|(s, b)| s + b).collect(),
        _ => scores.clone(),
    };
    if cfg.topk_method != TopkMethod::Greedy && cfg.n_group > 1 {
        let per = e / cfg.n_group;
        let group_score: Vec<f32> = choice
            .chunks(per)
            .map(|g| match cfg.topk_method {
                // V3: a group is ranked by the sum of its two best biased scores.
                TopkMethod::NoauxTc => top_k(g, 2).iter().map(|&i| g[i]).sum(),
                // V2: by its best score.
                _ => g.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            })
            .collect();
        let keep = top_k(&group_score, cfg.topk_group);
        for (gi, g) in choice.chunks_mut(per).enumerate() {
            if !keep.contains(&gi) {
                // −inf, not 0: biased scores can be negative.
                g.fill(f32::NEG_INFINITY);
            }
        }
    }
    let experts = top_k(&choice, k);
    let mut weights: Vec<f32> = experts.iter().map(|&i| scores[i]).collect();
    let sum = || weights.iter().sum::<f32>() + 1e-20;
    match cfg.weighting {
        // DeepSeek-V3: normalize (when asked), then always scale.
        RouteWeighting::NormalizeThenScale => {
            if cfg.norm_topk_prob {
                let s = sum();
                weights.iter_mut().for_each(|w| *w /= s);
            }
            weights
                .iter_mut()
                .for_each(|w| *w *= cfg.routed_scaling_factor);
        }
        // DeepSeek-V2: normalize when asked and k > 1, otherwise scale.
        RouteWeighting::NormalizeOrScale => {
            if cfg.norm_topk_prob && k > 1 {
                let s = sum();
                weights.iter_mut().for_each(|w| *w /= s);
            } else {
                weights
                    .iter_mut()
                    .for_each(|w| *w *= cfg.routed_scaling_factor);
            }
        }
    }
    Route { experts, weights }
}

/// MoE over `[n, hidden]` rows: routes every token, runs each expert once on the tokens sent
/// to it, and adds the weighted results plus the shared experts.
/// `record(name, values)` receives the named intermediates (`router_logits`: `[n, experts]`).
pub fn moe_forward(moe: &Moe, x: &[f32], record: &dyn Fn(&str, &[f32])) -> Vec<f32> {
    let d = moe.router.cols; // hidden
    let n = x.len() / d;
    let logits = moe.router.forward(x); // [n, experts]
    record("router_logits", &logits);
    let e = moe.router.rows;
    let mut buckets: Vec<Vec<(usize, f32)>> = vec![Vec::new(); e];
    for t in 0..n {
        let r = route(
            &moe.config,
            &logits[t * e..(t + 1) * e],
            moe.bias.as_deref(),
        );
        for (&ex, &w) in r.experts.iter().zip(&r.weights) {
            buckets[ex].push((t, w));
        }
    }
    // The shared experts and every routed expert with tokens, in one batch.
    let gathered: Vec<(usize, Vec<f32>)> = buckets
        .iter()
        .enumerate()
        .filter(|(_, b)| !b.is_empty())
        .map(|(ex, b)| {
            let mut g = Vec::with_capacity(b.len() * d);
            for &(t, _) in b {
                g.extend_from_slice(&x[t * d..(t + 1) * d]);
            }
            (ex, g)
        })
        .collect();
    let jobs: Vec<(usize, &[f32])> = gathered.iter().map(|(ex, g)| (*ex, &g[..])).collect();
    let shared: Vec<(&Mlp, &[f32])> = moe.shared.iter().map(|s| (s, x)).collect();
    let mut ys = moe.experts.forward(&jobs, &shared);
    let mut out = match moe.shared {
        Some(_) => ys.pop().unwrap_or_default(),
        None => vec![0.0; n * d],
    };
    for ((ex, _), y) in gathered.iter().zip(&ys) {
        for (j, &(t, w)) in buckets[*ex].iter().enumerate() {
            for (o, v) in out[t * d..(t + 1) * d]
                .iter_mut()
                .zip(&y[j * d..(j + 1) * d])
            {
                *o += w * v;
            }
        }
    }
    out
}
