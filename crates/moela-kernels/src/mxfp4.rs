//! MXFP4 (OCP microscaling FP4) as ggml/GGUF stores it (`block_mxfp4`, GGUF type 39), and
//! DeepSeek-V4's release layout of the same numbers.
//!
//! **Block** (32 values, 17 bytes): byte 0 is `e`, an e8m0 exponent; bytes 1..17 are `qs`: the
//! low nibble of `qs[j]` is element `j`, the high nibble element `j + 16` (`Q4_0`'s order).
//! Each nibble is an FP4 e2m1 code (bit 3 sign, bits 2–1 exponent, bit 0 mantissa). ggml keeps
//! the e2m1 values doubled, as integers ([`KVALUES`]: 0, 1, 2, 3, 4, 6, 8, 12, then the same
//! negated), and multiplies them by *half* the block scale ([`e8m0_to_f32_half`] = 2^(e−128),
//! ggml's `GGML_E8M0_TO_FP32_HALF`), so element = e2m1(code) · 2^(e−127). For `e < 2` the half
//! scale is a subnormal f32 (2^−128, 2^−127), for `e = 255` (NaN in the OCP spec) it is 2^127,
//! as in ggml. Every decoded value is exact in f32 (a small integer times a power of two).
//!
//! **DeepSeek-V4 release layout** (FP4 routed experts): codes `[out, in/2]`, two per byte, low
//! nibble first (element `2i` in the low nibble of byte `i`, `2i + 1` in the high one), and
//! scales `[out, in/32]`, one ue8m0 byte per 32 inputs, value = e2m1(code) · 2^(e−127). The
//! codes and the exponent byte mean the same in both layouts; only the nibble order inside a
//! 32-value block differs, so [`from_release`] is a bit shuffle (exact).
//!
//! The quantizer is ggml's `quantize_row_mxfp4_ref` (see [`quantize_row_mxfp4`]). The golden
//! values of `tests/fixtures/mxfp4/golden.json` come from llama.cpp's `gguf` Python package
//! (`tools/make_mxfp4_fixtures.py`).

use crate::dtype::{DType, KernelError};
use crate::parallel::parallel_chunks;

/// Values per MXFP4 block.
pub const QK_MXFP4: usize = 32;
/// Bytes per MXFP4 block: the e8m0 exponent and 16 bytes of codes.
pub const MXFP4_BYTES: usize = 17;

/// The e2m1 values, doubled (ggml's `kvalues_mxfp4`), indexed by the 4-bit code.
pub const KVALUES: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Half the scale of exponent byte `e`, 2^(e−128), bit for bit as ggml's
/// `GGML_E8M0_TO_FP32_HALF` (subnormal for `e < 2`; `e = 255` gives 2^127).
#[inline]
pub const fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        (e as u32 - 1) << 23
    };
    f32::from_bits(bits)
}

/// The code whose value `KVALUES[code] · d` is nearest to `x`, the first (lowest code) on ties
/// (ggml's `best_index_mxfp4`: a tie keeps the smaller magnitude, and a value rounding to
/// zero gets code 0, never the −0 code 8).
#[inline]
fn best_index(x: f32, d: f32) -> u8 {
    let mut best = 0u8;
    let mut best_err = (KVALUES[0] as f32 * d - x).abs();
    for (i, &k) in KVALUES.iter().enumerate().skip(1) {
        let err = (k as f32 * d - x).abs();
        if err < best_err {
            best = i as u8;
            best_err = err;
        }
    }
    best
}

/// The exponent byte ggml picks for a block whose largest magnitude is `amax`:
/// `floor(log2f(amax)) − 2 + 127` (so the largest value lands in e2m1's top octave, 4..6,
/// or above it, clipped to 6), 0 for an all-zero block. The float is converted as C converts
/// it on x86 (through a 32-bit integer, keeping the low byte), which only matters for
/// `amax < 2^−125`.
#[inline]
fn block_exponent(amax: f32) -> u8 {
    if amax > 0.0 {
        (amax.log2().floor() - 2.0 + 127.0) as i32 as u8
    } else {
        0
    }
}

/// Quantizes `x` (a multiple of 32 values) into MXFP4 blocks as ggml's
/// `quantize_row_mxfp4_ref` does: `e` from the block's largest magnitude (see above), then
/// each value to the nearest of `KVALUES · 2^(e−128)` (ties to the smaller magnitude).
///
/// # Panics
/// If `x` is not whole blocks or `out` is not 17 bytes per block.
pub fn quantize_row_mxfp4(x: &[f32], out: &mut [u8]) {
    let nb = blocks_of(x.len(), out.len(), "quantize_row_mxfp4");
    for (xb, ob) in x
        .chunks_exact(QK_MXFP4)
        .zip(out.chunks_exact_mut(MXFP4_BYTES))
        .take(nb)
    {
        let mut amax = 0.0f32;
        for &v in xb {
            if amax < v.abs() {
                amax = v.abs();
            }
        }
        let e = block_exponent(amax);
        let d = e8m0_to_f32_half(e);
        ob[0] = e;
        for j in 0..QK_MXFP4 / 2 {
            ob[1 + j] = best_index(xb[j], d) | (best_index(xb[j + QK_MXFP4 / 2], d) << 4);
        }
    }
}

/// Expands MXFP4 blocks into `out` (the reference dequantization: `KVALUES[code] · 2^(e−128)`).
///
/// # Panics
/// If `out` is not whole blocks or `b` is not 17 bytes per block.
pub fn dequantize_row_mxfp4(b: &[u8], out: &mut [f32]) {
    blocks_of(out.len(), b.len(), "dequantize_row_mxfp4");
    for (blk, ob) in b
        .chunks_exact(MXFP4_BYTES)
        .zip(out.chunks_exact_mut(QK_MXFP4))
    {
        let d = e8m0_to_f32_half(blk[0]);
        for j in 0..QK_MXFP4 / 2 {
            let q = blk[1 + j];
            ob[j] = KVALUES[(q & 0x0F) as usize] as f32 * d;
            ob[j + QK_MXFP4 / 2] = KVALUES[(q >> 4) as usize] as f32 * d;
        }
    }
}

/// Number of blocks of `values` values stored in `bytes` bytes (asserted consistent).
fn blocks_of(values: usize, bytes: usize, what: &str) -> usize {
    assert!(
        values.is_multiple_of(QK_MXFP4),
        "{what}: {values} values is not a multiple of {QK_MXFP4}"
    );
    let nb = values / QK_MXFP4;
    assert_eq!(
        Some(bytes),
        nb.checked_mul(MXFP4_BYTES),
        "{what}: wrong byte length"
    );
    nb
}

/// Checks the release layout's sizes for a `[rows, cols]` matrix; returns the number of
/// blocks.
fn check_release(
    rows: usize,
    cols: usize,
    codes: usize,
    scales: usize,
) -> Result<usize, KernelError> {
    let dtype = DType::MXFP4;
    dtype.matrix_bytes(rows, cols)?;
    let nb = rows * (cols / QK_MXFP4); // ≤ the byte size just checked
    let want_codes = nb * (QK_MXFP4 / 2);
    if codes != want_codes {
        return Err(KernelError::BadCodes {
            rows,
            cols,
            expected: want_codes,
            got: codes,
        });
    }
    if scales != nb {
        return Err(KernelError::BadScaleGrid {
            dtype,
            rows,
            cols,
            block: QK_MXFP4,
            expected: nb,
            got: scales,
        });
    }
    Ok(nb)
}

/// MXFP4 blocks (row-major, `cols/32` per row) from DeepSeek-V4's release layout of a
/// `[rows, cols]` matrix: `codes` `[rows, cols/2]` (two e2m1 codes per byte, low nibble
/// first) and `scales` `[rows, cols/32]` (ue8m0 bytes). Exact: each block keeps its exponent
/// byte, and codes only move between nibbles. Runs on the worker pool.
///
/// # Errors
/// `BadCols` if `cols` is not a multiple of 32, `BadCodes` / `BadScaleGrid` if the codes or
/// scales are not `[rows, cols/2]` / `[rows, cols/32]`, `TooLarge` if the size overflows.
pub fn from_release(
    rows: usize,
    cols: usize,
    codes: &[u8],
    scales: &[u8],
) -> Result<Vec<u8>, KernelError> {
    let nb = check_release(rows, cols, codes.len(), scales.len())?;
    let mut out = vec![0u8; nb * MXFP4_BYTES];
    // One task per group of blocks (rows can be short, so group by blocks, not rows).
    const GROUP: usize = 256;
    parallel_chunks(&mut out, GROUP * MXFP4_BYTES, nb * 8, |g, dst| {
        let src = &codes[g * GROUP * (QK_MXFP4 / 2)..];
        for (k, (ob, c)) in dst
            .chunks_exact_mut(MXFP4_BYTES)
            .zip(src.chunks_exact(QK_MXFP4 / 2))
            .enumerate()
        {
            ob[0] = scales[g * GROUP + k];
            for j in 0..QK_MXFP4 / 2 {
                // Element j (low nibble of qs[j]) and j + 16 (high nibble) in the release
                // layout: nibble j % 2 of byte j / 2 and of byte 8 + j / 2.
                let sh = 4 * (j % 2);
                let lo = (c[j / 2] >> sh) & 0x0F;
                let hi = (c[8 + j / 2] >> sh) & 0x0F;
                ob[1 + j] = lo | (hi << 4);
            }
        }
    });
    Ok(out)
}

/// The inverse of [`from_release`]: MXFP4 blocks of a `[rows, cols]` matrix back to
/// DeepSeek-V4's `(codes [rows, cols/2], scales [rows, cols/32])`.
///
/// # Errors
/// `BadCols` for a row length that is not whole blocks, `BadLength` if `blocks` is not
/// `rows · cols/32` blocks.
pub fn to_release(
    rows: usize,
    cols: usize,
    blocks: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), KernelError> {
    let expected = DType::MXFP4.matrix_bytes(rows, cols)?;
    if blocks.len() != expected {
        return Err(KernelError::BadLength {
            dtype: DType::MXFP4,
            rows,
            cols,
            expected,
            got: blocks.len(),
        });
    }
    let nb = expected / MXFP4_BYTES;
    let mut codes = vec![0u8; nb * (QK_MXFP4 / 2)];
    let mut scales = vec![0u8; nb];
    for ((blk, c), s) in blocks
        .chunks_exact(MXFP4_BYTES)
        .zip(codes.chunks_exact_mut(QK_MXFP4 / 2))
        .zip(&mut scales)
    {
        *s = blk[0];
        let nibble = |k: usize| {
            let q = blk[1 + k % 16];
            if k < 16 {
                q & 0x0F
            } else {
                q >> 4
            }
        };
        for (i, byte) in c.iter_mut().enumerate() {
            *byte = nibble(2 * i) | (nibble(2 * i + 1) << 4);
        }
    }
    Ok((codes, scales))
}

#[cfg(test)]
mod tests;
