//! The routed experts of a MoE layer behind one handle. The model asks for "these experts ×
//! these rows" ([`Experts::forward`]) and never indexes their matrices, so where the experts
//! live — packed copies in RAM, the file mapping (the loader's `Placement`), or the mapping
//! with the hottest experts resident ([`ResidentSet`]) — changes here, not in the routing or
//! the decoder loop.

use std::sync::{Arc, Mutex, MutexGuard};

use moela_kernels::Storage;

use crate::mlp::mlps_forward;
use crate::weights::Mlp;

/// One layer's routed experts (each a SwiGLU MLP of width `moe_intermediate_size`).
#[derive(Clone, Debug)]
pub struct Experts {
    /// Every expert's matrices as the loader placed them.
    mlps: Vec<Mlp>,
    /// With memory short: the model's resident set and this layer's index in it.
    residency: Option<(Arc<ResidentSet>, usize)>,
}

impl Experts {
    pub fn new(mlps: Vec<Mlp>) -> Experts {
        Experts {
            mlps,
            residency: None,
        }
    }

    /// Experts read from where the loader placed them (the file mapping) unless `set` holds a
    /// resident copy; `set` makes those copies of the experts used most, within its budget.
    pub fn with_residency(mlps: Vec<Mlp>, set: &Arc<ResidentSet>) -> Experts {
        let sizes = mlps.iter().map(Mlp::storage_bytes).collect();
        let id = set.register(sizes);
        Experts {
            mlps,
            residency: Some((Arc::clone(set), id)),
        }
    }

    /// [`Self::with_residency`] when there is a set and the experts are read from a file
    /// mapping (matrices a loader had to convert are in RAM already), else [`Self::new`].
    pub fn placed(mlps: Vec<Mlp>, set: Option<&Arc<ResidentSet>>) -> Experts {
        match set {
            Some(set) if mlps.iter().all(Mlp::in_mapping) => Experts::with_residency(mlps, set),
            _ => Experts::new(mlps),
        }
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
        let Some((set, id)) = &self.residency else {
            return self.forward_with(jobs, &[], with);
        };
        let uses: Vec<(usize, u64)> = jobs
            .iter()
            .map(|&(e, x)| (e, (x.len() / self.mlps[e].gate.cols.max(1)) as u64))
            .collect();
        let copies = set.lookup(*id, &uses);
        let out = self.forward_with(jobs, &copies, with);
        if copies.iter().any(Option::is_none) {
            drop(copies);
            set.promote(*id, &uses, &self.mlps);
        }
        out
    }

    /// [`Self::forward`] with `copies[i]` (where present) standing in for job `i`'s expert.
    fn forward_with(
        &self,
        jobs: &[(usize, &[f32])],
        copies: &[Option<Arc<Mlp>>],
        with: &[(&Mlp, &[f32])],
    ) -> Vec<Vec<f32>> {
        let all: Vec<(&Mlp, &[f32])> = jobs
            .iter()
            .enumerate()
            .map(|(i, &(e, x))| {
                let copy = copies.get(i).and_then(|c| c.as_deref());
                (copy.unwrap_or(&self.mlps[e]), x)
            })
            .chain(with.iter().copied())
            .collect();
        mlps_forward(&all)
    }

    /// Each expert's weights in order (for exporters: as the loader placed them).
    pub fn iter(&self) -> impl Iterator<Item = &Mlp> {
        self.mlps.iter()
    }
}

impl Mlp {
    /// Whether all three matrices are read in the file's layout from a mapping.
    fn in_mapping(&self) -> bool {
        [&self.gate, &self.up, &self.down]
            .iter()
            .all(|m| !m.is_packed() && matches!(m.storage(), Storage::Mapped { .. }))
    }

    /// Bytes of the three matrices' storage.
    fn storage_bytes(&self) -> u64 {
        [&self.gate, &self.up, &self.down]
            .iter()
            .map(|m| m.storage_bytes())
            .sum()
    }

    /// The three matrices copied into anonymous memory ([`moela_kernels::QMat::resident_copy`]).
    fn resident_copy(&self) -> Mlp {
        Mlp {
            gate: self.gate.resident_copy(),
            up: self.up.resident_copy(),
            down: self.down.resident_copy(),
            swiglu_limit: self.swiglu_limit,
        }
    }
}

/// Tokens a layer routes between two halvings of its experts' heat: the heat follows what the
/// model has been asked lately, not since load.
const DECAY_TOKENS: u64 = 1024;

/// Which routed experts of a model (all its MoE layers) have resident copies, within a byte
/// budget. The heat of an expert is the tokens routed to it (halved every
/// [`DECAY_TOKENS`] of its layer); an expert used while not resident is copied when the budget
/// has room, or in place of resident experts with less than half its heat (at most one such
/// exchange per layer step, so a change of topic moves the set gradually). Products are the
/// same whichever copy computes them, up to float summation order.
#[derive(Debug)]
pub struct ResidentSet {
    budget: u64,
    inner: Mutex<SetInner>,
}

#[derive(Debug, Default)]
struct SetInner {
    used: u64,
    layers: Vec<LayerSlots>,
    stats: ResidencyStats,
}

#[derive(Debug)]
struct LayerSlots {
    heat: Vec<u64>,
    sizes: Vec<u64>,
    slots: Vec<Slot>,
    /// Tokens routed since the last halving.
    tokens: u64,
}

#[derive(Clone, Debug)]
enum Slot {
    Mapped,
    /// Budget reserved, copy being made.
    Copying,
    Resident(Arc<Mlp>),
}

/// What a [`ResidentSet`] holds and how it served the experts' products so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResidencyStats {
    /// Bytes the resident copies may take.
    pub budget_bytes: u64,
    /// Bytes they take now.
    pub resident_bytes: u64,
    /// Expert products (one expert over one step's rows) computed from a resident copy.
    pub hits: u64,
    /// Expert products computed from the file mapping.
    pub misses: u64,
    /// Bytes of expert matrices the misses read from the mapping (each product reads its
    /// expert once, whatever its rows).
    pub mapped_bytes: u64,
    /// Experts copied in, and dropped to make room.
    pub promotions: u64,
    pub evictions: u64,
}

impl ResidencyStats {
    /// The counters since `before` (an earlier reading of the same set); budget and resident
    /// bytes as now.
    pub fn since(&self, before: &ResidencyStats) -> ResidencyStats {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        ResidencyStats {
            hits: d(self.hits, before.hits),
            misses: d(self.misses, before.misses),
            mapped_bytes: d(self.mapped_bytes, before.mapped_bytes),
            promotions: d(self.promotions, before.promotions),
            evictions: d(self.evictions, before.evictions),
            ..*self
        }
    }

    /// The counters of `self` and `other` added; budget and resident bytes as `self`'s.
    pub fn plus(&self, other: &ResidencyStats) -> ResidencyStats {
        ResidencyStats {
            hits: self.hits + other.hits,
            misses: self.misses + other.misses,
            mapped_bytes: self.mapped_bytes.saturating_add(other.mapped_bytes),
            promotions: self.promotions + other.promotions,
            evictions: self.evictions + other.evictions,
            ..*self
        }
    }

    /// Share of expert products served by resident copies (`None` before the first).
    pub fn hit_rate(&self) -> Option<f64> {
        let all = self.hits + self.misses;
        (all > 0).then(|| self.hits as f64 / all as f64)
    }
}

impl ResidentSet {
    /// An empty set whose copies may take `budget` bytes.
    pub fn new(budget: u64) -> Arc<ResidentSet> {
        Arc::new(ResidentSet {
            budget,
            inner: Mutex::new(SetInner::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, SetInner> {
        // The state stays consistent at every unlock, so a panic elsewhere leaves it usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a layer whose experts take `sizes` bytes each; its index for the other calls.
    fn register(&self, sizes: Vec<u64>) -> usize {
        let mut g = self.lock();
        g.layers.push(LayerSlots {
            heat: vec![0; sizes.len()],
            slots: vec![Slot::Mapped; sizes.len()],
            sizes,
            tokens: 0,
        });
        g.layers.len() - 1
    }

    /// The counts so far.
    pub fn stats(&self) -> ResidencyStats {
        let g = self.lock();
        ResidencyStats {
            budget_bytes: self.budget,
            resident_bytes: g.used,
            ..g.stats
        }
    }

    /// Records that layer `id` computes `(expert, tokens)` of `uses` now and returns the
    /// resident copy of each, where there is one.
    fn lookup(&self, id: usize, uses: &[(usize, u64)]) -> Vec<Option<Arc<Mlp>>> {
        let mut g = self.lock();
        let SetInner { layers, stats, .. } = &mut *g;
        let layer = &mut layers[id];
        let mut copies = Vec::with_capacity(uses.len());
        for &(e, tokens) in uses {
            layer.heat[e] = layer.heat[e].saturating_add(tokens);
            layer.tokens = layer.tokens.saturating_add(tokens);
            let copy = match &layer.slots[e] {
                Slot::Resident(m) => Some(Arc::clone(m)),
                Slot::Mapped | Slot::Copying => None,
            };
            match copy {
                Some(_) => stats.hits += 1,
                None => {
                    stats.misses += 1;
                    stats.mapped_bytes = stats.mapped_bytes.saturating_add(layer.sizes[e]);
                }
            }
            copies.push(copy);
        }
        if layer.tokens >= DECAY_TOKENS {
            layer.tokens = 0;
            layer.heat.iter_mut().for_each(|h| *h /= 2);
        }
        copies
    }

    /// Copies in the experts of `uses` that are not resident, hottest first: each while the
    /// budget has room, and one more in place of colder experts (see [`ResidentSet`]).
    fn promote(&self, id: usize, uses: &[(usize, u64)], mlps: &[Mlp]) {
        let chosen = self.choose(id, uses);
        for e in chosen {
            let copy = Arc::new(mlps[e].resident_copy());
            let mut g = self.lock();
            g.layers[id].slots[e] = Slot::Resident(copy);
            g.stats.promotions += 1;
        }
    }

    /// Reserves the budget for the experts [`Self::promote`] copies in (evicting for the
    /// exchange), marking them `Copying`.
    fn choose(&self, id: usize, uses: &[(usize, u64)]) -> Vec<usize> {
        let mut g = self.lock();
        let mut wanted: Vec<(u64, usize)> = uses
            .iter()
            .filter(|&&(e, _)| matches!(g.layers[id].slots[e], Slot::Mapped))
            .map(|&(e, _)| (g.layers[id].heat[e], e))
            .collect();
        wanted.sort_unstable_by(|a, b| b.cmp(a));
        wanted.dedup_by_key(|w| w.1);
        let mut chosen = Vec::new();
        let mut exchanged = false;
        for (heat, e) in wanted {
            let size = g.layers[id].sizes[e];
            if size > self.budget {
                continue;
            }
            let free = self.budget - g.used;
            if size > free {
                if exchanged {
                    break;
                }
                exchanged = true;
                let Some(victims) = g.victims(size - free, heat) else {
                    break;
                };
                for (l, v) in victims {
                    g.layers[l].slots[v] = Slot::Mapped;
                    g.used -= g.layers[l].sizes[v];
                    g.stats.evictions += 1;
                }
            }
            g.used += size;
            g.layers[id].slots[e] = Slot::Copying;
            chosen.push(e);
        }
        chosen
    }
}

impl SetInner {
    /// The coldest resident experts, all with less than half of `heat`, that free at least
    /// `need` bytes; `None` if no such set exists.
    fn victims(&self, need: u64, heat: u64) -> Option<Vec<(usize, usize)>> {
        let mut resident: Vec<(u64, usize, usize)> = self
            .layers
            .iter()
            .enumerate()
            .flat_map(|(l, layer)| {
                layer.slots.iter().enumerate().filter_map(move |(e, s)| {
                    matches!(s, Slot::Resident(_)).then_some((layer.heat[e], l, e))
                })
            })
            .filter(|&(h, _, _)| h.saturating_mul(2) < heat)
            .collect();
        resident.sort_unstable();
        let mut freed = 0u64;
        let mut out = Vec::new();
        for (_, l, e) in resident {
            if freed >= need {
                break;
            }
            freed += self.layers[l].sizes[e];
            out.push((l, e));
        }
        (freed >= need).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moela_kernels::{DType, QMat};

    fn mlp(seed: usize, hidden: usize, width: usize) -> Mlp {
        let mat = |rows: usize, cols: usize, s: usize| {
            let w: Vec<f32> = (0..rows * cols)
                .map(|i| (((i * 7 + s * 13) % 29) as f32 - 14.0) / 200.0)
                .collect();
            QMat::from_f32(DType::Q8_0, rows, cols, &w).unwrap()
        };
        Mlp {
            gate: mat(width, hidden, seed),
            up: mat(width, hidden, seed + 1),
            down: mat(hidden, width, seed + 2),
            swiglu_limit: None,
        }
    }

    /// Four experts of 3 × 32 × 64 Q8_0 values, a budget for two and a half.
    #[test]
    fn the_hottest_experts_become_resident_within_the_budget() {
        let (hidden, width) = (64, 32);
        let mlps: Vec<Mlp> = (0..4).map(|e| mlp(3 * e, hidden, width)).collect();
        let size = mlps[0].storage_bytes();
        let set = ResidentSet::new(2 * size + size / 2);
        let resident = Experts::with_residency(mlps.clone(), &set);
        let plain = Experts::new(mlps);
        let x: Vec<f32> = (0..2 * hidden)
            .map(|i| (i % 11) as f32 / 10.0 - 0.5)
            .collect();
        let step = |jobs: &[(usize, &[f32])]| {
            let (a, b) = (resident.forward(jobs, &[]), plain.forward(jobs, &[]));
            for (ya, yb) in a.iter().zip(&b) {
                for (u, v) in ya.iter().zip(yb) {
                    assert!((u - v).abs() <= 1e-5 * (1.0 + u.abs()), "{u} vs {v}");
                }
            }
        };
        // Experts 0 and 1 fill the budget on their first use.
        step(&[(0, &x[..hidden]), (1, &x[..])]);
        let s = set.stats();
        assert_eq!((s.hits, s.misses, s.promotions), (0, 2, 2));
        assert_eq!(s.resident_bytes, 2 * size);
        assert_eq!(s.mapped_bytes, 2 * size);
        // Expert 2 once: its heat (1 token) is not twice expert 0's (1), nothing moves.
        step(&[(2, &x[..hidden]), (0, &x[..hidden])]);
        let s = set.stats();
        assert_eq!((s.hits, s.misses, s.evictions), (1, 3, 0));
        // Expert 3 on two tokens a step, 1 on one: in the third round expert 3's heat (6) is
        // more than twice the coldest resident's (0: 2), which makes room for it.
        for round in 0..3 {
            step(&[(3, &x[..]), (1, &x[..hidden])]);
            assert_eq!(
                set.stats().evictions,
                u64::from(round == 2),
                "round {round}"
            );
        }
        let s = set.stats();
        assert_eq!(s.resident_bytes, 2 * size, "never over budget");
        let g = set.lock();
        let held: Vec<usize> = (0..4)
            .filter(|&e| matches!(g.layers[0].slots[e], Slot::Resident(_)))
            .collect();
        assert_eq!(held, [1, 3]);
        drop(g);
        // The three rounds found 1 resident and 3 not.
        assert_eq!((s.hits, s.misses), (1 + 3, 3 + 3));
        assert_eq!(s.hit_rate(), Some(0.4));
        step(&[(3, &x[..])]);
        assert_eq!(set.stats().hits, 5);
    }

    #[test]
    fn heat_halves_every_decay_period() {
        let set = ResidentSet::new(0);
        let id = set.register(vec![1, 1]);
        set.lookup(id, &[(0, 600), (1, 20)]);
        assert_eq!(set.lock().layers[id].heat, [600, 20]);
        set.lookup(id, &[(0, 500)]);
        assert_eq!(
            set.lock().layers[id].heat,
            [550, 10],
            "halved at 1 120 tokens"
        );
        assert_eq!(set.stats().hits, 0, "a zero budget keeps nothing");
        let mlps = [mlp(0, 32, 32), mlp(1, 32, 32)];
        set.promote(id, &[(0, 1)], &mlps);
        assert_eq!(set.stats().promotions, 0);
    }
}
