//! Where a weight matrix's bytes live and in what layout: the one decision point between the
//! bytes a loader hands over and what the kernels read. The model never makes it; it asks for
//! products of whatever [`QMat`] the loader placed.
//!
//! CPU placements are the only ones today. `Fastest` gives way to `InPlace` when its copies
//! would not fit in memory ([`Placement::within_memory`]). A residency policy (hot experts
//! packed, cold ones paged in from the mapping) would sit between the two; a GPU placement would be one more variant whose `QMat` storage is device
//! memory, with the kernels' driver choosing the device products.

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
}

impl Placement {
    /// Whether a `rows`-row matrix stored as `dtype` gets a copy in anonymous memory when
    /// placed `self` (the layout-changing copies of `Fastest`).
    pub fn copies(self, dtype: DType, rows: usize) -> bool {
        self == Placement::Fastest
            && crate::kernels::packed_kernels_pay()
            && crate::pack::packable(dtype, rows)
    }

    /// `self`, unless it is `Fastest` and its copies (`copy_bytes` in all) would not fit in
    /// `available` memory ([`crate::memory::fits`]): then `InPlace`, so a model larger than
    /// memory is read from its file mapping instead of being killed while copying.
    pub fn within_memory(self, copy_bytes: u64, available: Option<u64>) -> Placement {
        match self {
            Placement::Fastest if !crate::memory::fits(copy_bytes, available) => Placement::InPlace,
            p => p,
        }
    }
}

impl QMat {
    /// This matrix placed as `p` asks (see [`Placement`]); the products are equal whatever the
    /// placement, up to float summation order.
    pub fn place(self, p: Placement) -> QMat {
        match p {
            Placement::Fastest => self.packed_for_matmul(),
            Placement::InPlace => self,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fastest_gives_way_when_copies_do_not_fit() {
        let gib = 1u64 << 30;
        let f = Placement::Fastest;
        assert_eq!(f.within_memory(9 * gib, Some(7 * gib)), Placement::InPlace);
        assert_eq!(f.within_memory(5 * gib, Some(7 * gib)), Placement::Fastest);
        assert_eq!(f.within_memory(9 * gib, None), Placement::Fastest);
        let p = Placement::InPlace;
        assert_eq!(p.within_memory(0, Some(7 * gib)), Placement::InPlace);
        assert!(!p.copies(DType::Q4_0, 64));
        assert!(!f.copies(DType::BF16, 64));
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
            let fastest = q.place(Placement::Fastest);
            let (mut a, mut b) = (vec![0.0; n * rows], vec![0.0; n * rows]);
            in_place.matmul(&x, n, &mut a);
            fastest.matmul(&x, n, &mut b);
            for (u, v) in a.iter().zip(&b) {
                assert!(
                    (u - v).abs() <= 1e-4 * (1.0 + u.abs()),
                    "{dtype}: {u} vs {v}"
                );
            }
        }
    }
}
