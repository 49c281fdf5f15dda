//! `MXFP4` weights × f32 activations, exactly: each 32-value block's 16 code bytes are split
//! into nibbles, looked up in ggml's doubled e2m1 table as i8 (`vpshufb`), widened to f32 and
//! multiplied by the block's half scale 2^(e−128) (exact: a small integer times a power of
//! two), then multiplied with the activations by FMA. That is the f32 product of the
//! dequantized weights, as the scalar oracle computes it, up to summation order.
//!
//! Each decoded block serves the `NR` tokens of a micro-tile; two accumulators per output
//! (alternate 8-value steps) keep two FMA chains in flight even in a 1 × 1 tile, and every
//! tile shape does the same arithmetic per output (results do not depend on the tiling).

use std::arch::x86_64::*;

use super::{hsum, prefetch_ahead, Ctx};
use crate::mxfp4::{e8m0_to_f32_half, KVALUES, MXFP4_BYTES, QK_MXFP4};

/// Blocks per prefetch of a single token's weight stream (4 · 17 = 68 bytes, about a line).
const PREFETCH_BLOCKS: usize = 4;

/// Eight i8 lanes (the low 8 bytes of `v`) as f32, times `d`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn widen8(v: __m128i, d: __m256) -> __m256 {
    _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)), d)
}

/// The 32 weights of the block at `blk` as f32: elements 0..8, 8..16, 16..24 and 24..32.
/// `table` holds [`KVALUES`] as 16 bytes.
///
/// # Safety
/// `blk..blk + 17` readable.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_block(blk: *const u8, table: __m128i) -> [__m256; 4] {
    // SAFETY: the caller guarantees the block's 17 bytes: the exponent byte and 16 code bytes.
    let (e, q) = unsafe { (*blk, _mm_loadu_si128(blk.add(1) as *const __m128i)) };
    let m4 = _mm_set1_epi8(0x0F);
    // Low nibbles are elements 0..16, high nibbles 16..32.
    let lo = _mm_shuffle_epi8(table, _mm_and_si128(q, m4));
    let hi = _mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16(q, 4), m4));
    let d = _mm256_set1_ps(e8m0_to_f32_half(e));
    [
        widen8(lo, d),
        widen8(_mm_unpackhi_epi64(lo, lo), d),
        widen8(hi, d),
        widen8(_mm_unpackhi_epi64(hi, hi), d),
    ]
}

/// # Safety
/// Rows `r..r+MR` and tokens `t..t+NR` of a validated `MXFP4` `c`; CPU has avx2/fma/f16c.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn micro_mxfp4<const MR: usize, const NR: usize>(
    c: &Ctx,
    r: usize,
    t: usize,
) -> [[f32; NR]; MR] {
    // SAFETY: each row holds cols/32 blocks of 17 bytes and each token cols f32 (validated);
    // block indices stay below cols/32, so every read lies inside its row or token.
    unsafe {
        let cols = c.cols;
        let nb = cols / QK_MXFP4;
        let wp: [*const u8; MR] = std::array::from_fn(|i| c.w.add((r + i) * c.rb));
        let xp: [*const f32; NR] = std::array::from_fn(|j| c.x.add((t + j) * cols));
        let table = _mm_loadu_si128(KVALUES.as_ptr() as *const __m128i);
        let mut acc0 = [[_mm256_setzero_ps(); NR]; MR];
        let mut acc1 = [[_mm256_setzero_ps(); NR]; MR];
        for b in 0..nb {
            for i in 0..MR {
                let blk = wp[i].add(b * MXFP4_BYTES);
                if b % PREFETCH_BLOCKS == 0 {
                    prefetch_ahead::<NR>(blk, PREFETCH_BLOCKS * MXFP4_BYTES);
                }
                let w = decode_block(blk, table);
                for j in 0..NR {
                    let x = xp[j].add(b * QK_MXFP4);
                    acc0[i][j] = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(x), acc0[i][j]);
                    acc1[i][j] = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(x.add(8)), acc1[i][j]);
                    acc0[i][j] = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(x.add(16)), acc0[i][j]);
                    acc1[i][j] = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(x.add(24)), acc1[i][j]);
                }
            }
        }
        std::array::from_fn(|i| {
            std::array::from_fn(|j| hsum(_mm256_add_ps(acc0[i][j], acc1[i][j])))
        })
    }
}
