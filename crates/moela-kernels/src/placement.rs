//! Where a weight matrix's bytes live and in what layout: the one decision point between the
//! bytes a loader hands over and what the kernels read. The model never makes it; it asks for
//! products of whatever [`QMat`] the loader placed.
//!
//! CPU placements are the only ones today. `Fastest` gives way when the weights would not fit
//! in memory ([`Placement::within_memory`]): to `Resident` for a MoE model whose other weights
//! fit (the routed experts stay in the file mapping and the hottest get resident copies under
//! a budget), to `InPlace` otherwise. A GPU placement would be one more variant whose `QMat`
//! storage is device memory, with the kernels' driver choosing the device products.

use crate::qmat::QMat;
use crate::DType;

/// How a loader places each weight matrix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Placement {
    /// The layout this CPU's kernels run fastest on: with x86 SIMD kernels, `Q4_0`/`Q8_0`
    /// matrices with a multiple of 8 rows are copied with their rows interleaved by 8 into
    /// anonymous memory (the mapped file's pages are then released); every other matrix stays
    /// where the source put it.
    #[default]
    Fastest,
    /// Where the source put it, in the file's layout: a mapped file's bytes are read by the
    /// kernels directly, paged in on demand and evictable, so the resident set can be smaller
    /// than the model.
    InPlace,
    /// `Fastest` for every matrix but the routed experts', which are placed `InPlace`; the
    /// experts used most get resident copies ([`QMat::resident_copy`]) of at most
    /// `expert_budget` bytes in all, chosen while the model runs (moela-model's `ResidentSet`).
    Resident { expert_budget: u64 },
}

/// The bytes of a model's weights by kind: what [`Placement::within_memory`] weighs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Every weight tensor as stored.
    pub weights: u64,
    /// Of those, the routed experts'.
    pub experts: u64,
    /// What `Fastest` would copy into anonymous memory (its repacked layouts).
    pub copies: u64,
}

impl Placement {
    /// Whether a `rows`-row matrix stored as `dtype` gets a copy in anonymous memory when
    /// placed `self` (the layout-changing copies of `Fastest`).
    pub fn copies(self, dtype: DType, rows: usize) -> bool {
        matches!(self, Placement::Fastest | Placement::Resident { .. })
            && crate::kernels::packed_kernels_pay()
            && crate::pack::packable(dtype, rows)
    }

    /// How a routed expert's matrices are placed: `InPlace` under `Resident` (its residency
    /// copies are made later), as everything else otherwise.
    pub fn for_experts(self) -> Placement {
        match self {
            Placement::Resident { .. } => Placement::InPlace,
            p => p,
        }
    }

    /// The bytes routed experts' resident copies may take, under `Resident`.
    pub fn expert_budget(self) -> Option<u64> {
        match self {
            Placement::Resident { expert_budget } => Some(expert_budget),
            _ => None,
        }
    }

    /// `self` for a model of footprint `f` given `budget` bytes of memory for its weights
    /// (`None`: unknown, everything counts as fitting). `InPlace` stays; otherwise `Fastest`
    /// when all the weights fit; `Resident` when they do not but everything except the routed
    /// experts does (the experts get what is left); `Fastest` when at least its copies fit (a
    /// model without experts: only the rest is paged); `InPlace` otherwise (also where
    /// `Fastest` would copy nothing: the same thing, said plainly), so a model larger than
    /// memory is read from its file mapping instead of being killed.
    pub fn within_memory(self, f: &Footprint, budget: Option<u64>) -> Placement {
        let Some(budget) = budget else { return self };
        let others = f.weights.saturating_sub(f.experts);
        match self {
            Placement::InPlace => Placement::InPlace,
            _ if f.weights <= budget => Placement::Fastest,
            _ if f.experts > 0 && others < budget => Placement::Resident {
                expert_budget: budget - others,
            },
            _ if f.copies > 0 && f.copies <= budget => Placement::Fastest,
            _ => Placement::InPlace,
        }
    }
}

impl QMat {
    /// This matrix placed as `p` asks (see [`Placement`]); the products are equal whatever the
    /// placement, up to float summation order.
    pub fn place(self, p: Placement) -> QMat {
        match p {
            Placement::Fastest | Placement::Resident { .. } => self.packed_for_matmul(),
            Placement::InPlace => self,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fastest_gives_way_when_the_weights_do_not_fit() {
        let gib = 1u64 << 30;
        let f = Placement::Fastest;
        // A 9 GiB MoE model, 8 GiB of it routed experts, all of it repacked by `Fastest`.
        let moe = Footprint {
            weights: 9 * gib,
            experts: 8 * gib,
            copies: 9 * gib,
        };
        assert_eq!(f.within_memory(&moe, Some(10 * gib)), Placement::Fastest);
        let resident = f.within_memory(&moe, Some(6 * gib));
        assert_eq!(resident.expert_budget(), Some(5 * gib));
        assert_eq!(resident.for_experts(), Placement::InPlace);
        assert_eq!(f.within_memory(&moe, Some(gib / 2)), Placement::InPlace);
        assert_eq!(f.within_memory(&moe, None), Placement::Fastest);
        // Without experts, only whether the copies fit counts.
        let dense = Footprint {
            experts: 0,
            copies: 5 * gib,
            ..moe
        };
        assert_eq!(f.within_memory(&dense, Some(6 * gib)), Placement::Fastest);
        assert_eq!(f.within_memory(&dense, Some(4 * gib)), Placement::InPlace);
        let stored_types = Footprint { copies: 0, ..dense };
        assert_eq!(
            f.within_memory(&stored_types, Some(6 * gib)),
            Placement::InPlace
        );
        assert_eq!(
            f.within_memory(&stored_types, Some(9 * gib)),
            Placement::Fastest
        );
        let p = Placement::InPlace;
        assert_eq!(p.within_memory(&moe, Some(6 * gib)), Placement::InPlace);
        assert_eq!(p.expert_budget(), None);
        assert!(!p.copies(DType::Q4_0, 64));
        assert!(!f.copies(DType::BF16, 64));
        assert_eq!(
            resident.copies(DType::Q4_0, 64),
            f.copies(DType::Q4_0, 64),
            "everything but the experts is placed as Fastest"
        );
        assert!(
            !f.copies(DType::Q4_0, 7),
            "7 rows cannot be interleaved by 8"
        );
    }

    #[test]
    fn placements_give_the_same_products() {
        let (rows, cols, n) = (16, 64, 3);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7 % 23) as f32 - 11.0) / 17.0)
            .collect();
        let x: Vec<f32> = (0..n * cols)
            .map(|i| ((i * 5 % 13) as f32 - 6.0) / 7.0)
            .collect();
        for dtype in [DType::Q4_0, DType::Q8_0, DType::BF16] {
            let q = QMat::from_f32(dtype, rows, cols, &w).unwrap();
            let in_place = q.clone().place(Placement::InPlace);
            assert!(!in_place.is_packed());
            let resident = in_place.resident_copy();
            assert_eq!(resident.storage_bytes(), in_place.storage_bytes());
            let fastest = q.place(Placement::Fastest);
            assert_eq!(resident.is_packed(), fastest.is_packed());
            let mut a = vec![0.0; n * rows];
            in_place.matmul(&x, n, &mut a);
            for other in [&fastest, &resident] {
                let mut b = vec![0.0; n * rows];
                other.matmul(&x, n, &mut b);
                for (u, v) in a.iter().zip(&b) {
                    assert!(
                        (u - v).abs() <= 1e-4 * (1.0 + u.abs()),
                        "{dtype}: {u} vs {v}"
                    );
                }
            }
        }
    }
}
