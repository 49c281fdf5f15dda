//! The row-interleaved ("rows8") layout of `Q4_0` and `Q8_0` matrices, built once at load time
//! for the SIMD kernels.
//!
//! In the file layout every row is a run of 32-value blocks (`f16` scale, then 16 or 32 bytes
//! of quants). A matvec over it needs a horizontal sum and a scale multiply per block *per row*.
//! Interleaving 8 rows block by block lets one 256-bit register hold one 32-bit lane per row:
//! per 8 rows and block, the 8 scales convert in one instruction, each `vpdpbusd` (or
//! `vpmaddubsw`+`vpmaddwd`) advances all 8 rows by 4 values against 4 broadcast activation
//! bytes, and the accumulator ends as the 8 outputs (no horizontal sums).
//!
//! Layout: groups of 8 rows (`8 · row_bytes` each, in row order); inside a group, block by
//! block (`8 · type_size` bytes each): the 8 rows' `f16` scales (16 bytes), then chunk by chunk
//! (`quant_bytes / 4` chunks of 32 bytes): rows 0..8's quant bytes `4c..4c+4`. The total size
//! equals the file layout's, and the quant bytes keep their meaning (`Q4_0` byte `k` holds
//! values `k` and `k + 16`).

use std::sync::Arc;

use crate::dtype::DType;
use crate::parallel::parallel_chunks;
use crate::storage::Storage;

/// Rows per interleaved group.
pub const PACK_ROWS: usize = 8;

/// Whether a `[rows, ·]` matrix of `dtype` has a packed form.
pub(crate) fn packable(dtype: DType, rows: usize) -> bool {
    matches!(dtype, DType::Q4_0 | DType::Q8_0) && rows > 0 && rows.is_multiple_of(PACK_ROWS)
}

/// Where quant byte `k` of row `i` sits inside a packed block (`k` below `quant_bytes`).
#[inline]
pub(crate) fn quant_offset(i: usize, k: usize) -> usize {
    2 * PACK_ROWS + (k / 4) * 4 * PACK_ROWS + 4 * i + k % 4
}

/// The packed form of row-major `src` (`rows` rows of `row_bytes`, `dtype` blocks), in
/// huge-page-backed memory when available.
pub(crate) fn pack(dtype: DType, rows: usize, row_bytes: usize, src: &[u8]) -> Storage {
    let huge = crate::mmap::anon_huge(src.len()).and_then(|mut m| {
        pack_into(dtype, rows, row_bytes, src, &mut m);
        m.make_read_only().ok()
    });
    match huge {
        Some(m) => Storage::Mapped {
            map: Arc::new(m),
            offset: 0,
            len: src.len(),
        },
        None => {
            let mut out = vec![0u8; src.len()];
            pack_into(dtype, rows, row_bytes, src, &mut out);
            Storage::Owned(out)
        }
    }
}

/// Writes the packed form of `src` into `out` (same length).
fn pack_into(dtype: DType, rows: usize, row_bytes: usize, src: &[u8], out: &mut [u8]) {
    assert!(packable(dtype, rows), "pack: {dtype} with {rows} rows");
    assert_eq!(src.len(), rows * row_bytes, "pack: source length");
    assert_eq!(out.len(), src.len(), "pack: output length");
    let ts = dtype.type_size();
    let nb = row_bytes / ts;
    let group = PACK_ROWS * row_bytes;
    parallel_chunks(out, group, src.len(), |g, dst| {
        let rows_src = &src[g * group..(g + 1) * group];
        for b in 0..nb {
            let pb = &mut dst[b * PACK_ROWS * ts..(b + 1) * PACK_ROWS * ts];
            for i in 0..PACK_ROWS {
                let blk = &rows_src[i * row_bytes + b * ts..][..ts];
                pb[2 * i..2 * i + 2].copy_from_slice(&blk[..2]);
                for (c, q) in blk[2..].chunks_exact(4).enumerate() {
                    let at = quant_offset(i, 4 * c);
                    pb[at..at + 4].copy_from_slice(q);
                }
            }
        }
    });
}

/// Row `i` (0..8) of one packed group, in the file layout, into `out` (`row_bytes` long).
pub(crate) fn unpack_row(dtype: DType, group: &[u8], i: usize, out: &mut [u8]) {
    let ts = dtype.type_size();
    for (b, blk) in out.chunks_exact_mut(ts).enumerate() {
        let pb = &group[b * PACK_ROWS * ts..(b + 1) * PACK_ROWS * ts];
        blk[..2].copy_from_slice(&pb[2 * i..2 * i + 2]);
        for (k, q) in blk[2..].iter_mut().enumerate() {
            *q = pb[quant_offset(i, k)];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_then_unpack_is_identity() {
        for dtype in [DType::Q4_0, DType::Q8_0] {
            let (rows, cols) = (16, 96);
            let rb = dtype.row_bytes(cols).unwrap();
            let src: Vec<u8> = (0..rows * rb).map(|i| (i * 7 + i / 13) as u8).collect();
            let p = pack(dtype, rows, rb, &src);
            let p = p.bytes();
            assert_ne!(p, &src[..]);
            let mut row = vec![0u8; rb];
            for r in 0..rows {
                unpack_row(dtype, &p[r / 8 * 8 * rb..][..8 * rb], r % 8, &mut row);
                assert_eq!(row, src[r * rb..(r + 1) * rb], "{dtype} row {r}");
            }
        }
    }
}
