//! DeepSeekMoE: router (every `topk_method`; DeepSeek-V4's √softplus scores and hash-routed
//! layers), token bucketing by expert, shared experts.

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

/// The router's scores of one token from its logits.
fn scores(cfg: &MoeConfig, logits: &[f32]) -> Vec<f32> {
    let mut scores = logits.to_vec();
    match cfg.scoring_func {
        ScoringFunc::Softmax => softmax_in_place(&mut scores),
        ScoringFunc::Sigmoid => scores
            .iter_mut()
            .for_each(|s| *s = 1.0 / (1.0 + (-*s).exp())),
        // torch's softplus returns x itself above 20.
        ScoringFunc::Sqrtsoftplus => scores
            .iter_mut()
            .for_each(|s| *s = if *s > 20.0 { *s } else { s.exp().ln_1p() }.sqrt()),
    }
    scores
}

/// A hash-routed token (DeepSeek-V4): its experts come from the `tid2eid` table, its weights
/// from the router's scores as [`route`] forms them.
pub fn route_hashed(cfg: &MoeConfig, logits: &[f32], experts: &[u32]) -> Route {
    let scores = scores(cfg, logits);
    let experts: Vec<usize> = experts.iter().map(|&e| e as usize).collect();
    let weights = experts.iter().map(|&i| scores[i]).collect();
    Route {
        weights: weigh(cfg, weights),
        experts,
    }
}

/// Routes one token from its router logits (computed in f32).
pub fn route(cfg: &MoeConfig, logits: &[f32], bias: Option<&[f32]>) -> Route {
    let e = logits.len();
    let k = cfg.num_experts_per_tok;
    let scores = scores(cfg, logits);
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
    let weights: Vec<f32> = experts.iter().map(|&i| scores[i]).collect();
    Route {
        weights: weigh(cfg, weights),
        experts,
    }
}

/// The chosen experts' weights from their scores, by the model's rule.
fn weigh(cfg: &MoeConfig, mut weights: Vec<f32>) -> Vec<f32> {
    let k = weights.len();
    let sum = |w: &[f32]| w.iter().sum::<f32>() + 1e-20;
    match cfg.weighting {
        // DeepSeek-V3: normalize (when asked), then always scale.
        RouteWeighting::NormalizeThenScale => {
            if cfg.norm_topk_prob {
                let s = sum(&weights);
                weights.iter_mut().for_each(|w| *w /= s);
            }
            weights
                .iter_mut()
                .for_each(|w| *w *= cfg.routed_scaling_factor);
        }
        // DeepSeek-V2: normalize when asked and k > 1, otherwise scale.
        RouteWeighting::NormalizeOrScale => {
            if cfg.norm_topk_prob && k > 1 {
                let s = sum(&weights);
                weights.iter_mut().for_each(|w| *w /= s);
            } else {
                weights
                    .iter_mut()
                    .for_each(|w| *w *= cfg.routed_scaling_factor);
            }
        }
    }
    weights
}

/// MoE over `[n, hidden]` rows (of the tokens `tokens`, which hash-routed layers look up):
/// routes every token, runs each expert once on the tokens sent to it, and adds the weighted
/// results plus the shared experts.
/// `record(name, values)` receives the named intermediates (`router_logits`: `[n, experts]`).
pub fn moe_forward(
    moe: &Moe,
    x: &[f32],
    tokens: &[u32],
    record: &dyn Fn(&str, &[f32]),
) -> Vec<f32> {
    let d = moe.router.cols; // hidden
    let n = x.len() / d;
    let logits = moe.router.forward(x); // [n, experts]
    record("router_logits", &logits);
    let e = moe.router.rows;
    let mut buckets: Vec<Vec<(usize, f32)>> = vec![Vec::new(); e];
    let k = moe.config.num_experts_per_tok;
    for t in 0..n {
        let lt = &logits[t * e..(t + 1) * e];
        let r = match (&moe.hash, tokens.get(t)) {
            (Some(table), Some(&tok)) => {
                let at = tok as usize * k;
                route_hashed(&moe.config, lt, &table[at..at + k])
            }
            _ => route(&moe.config, lt, moe.bias.as_deref()),
        };
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
