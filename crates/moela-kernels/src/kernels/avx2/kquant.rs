//! K-quants (`Q4_K`, `Q6_K`) × Q8_K activations.

use std::arch::x86_64::*;

use super::{hsum_tile, prefetch_ahead, splat_f16, Ctx};
use crate::quant::QK_K;

/// The 6-bit scales and mins of a `Q4_K` super-block (see `quant::q4_k_scale_min`).
#[inline]
fn q4_k_unpack(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 63;
        m[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 6) << 4);
        m[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, m)
}

/// # Safety
/// Rows `r..r+MR` and tokens `t..t+NR` of a validated `Q4_K` `c`; CPU has avx2/fma/f16c.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn micro_q4_k<const MR: usize, const NR: usize>(
    c: &Ctx,
    r: usize,
    t: usize,
) -> [[f32; NR]; MR] {
    // SAFETY: each row holds cols/256 super-blocks of 144 bytes; each token cols i8, cols/256
    // f32 and cols/16 i16 (validated); super-block indices stay below cols/256.
    unsafe {
        let nsb = c.cols / QK_K;
        let wp: [*const u8; MR] = c.weight_rows(r);
        let ap: [*const i8; NR] = std::array::from_fn(|j| c.qs.add((t + j) * c.cols));
        let dp: [*const f32; NR] = std::array::from_fn(|j| c.d.add((t + j) * nsb));
        let bp: [*const i16; NR] = std::array::from_fn(|j| c.bs.add((t + j) * nsb * 16));
        let m4 = _mm256_set1_epi8(0x0F);
        let mut acc = [[_mm256_setzero_ps(); NR]; MR];
        for sb in 0..nsb {
            for i in 0..MR {
                let blk = wp[i].add(sb * 144);
                prefetch_ahead::<NR>(blk, 144);
                let d = splat_f16(blk);
                let dmin = splat_f16(blk.add(2));
                let (sc, m) = q4_k_unpack(&*(blk.add(4) as *const [u8; 12]));
                let mut isum = [_mm256_setzero_si256(); NR];
                for cc in 0..4 {
                    let q = _mm256_loadu_si256(blk.add(16 + 32 * cc) as *const __m256i);
                    let lo = _mm256_and_si256(q, m4);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                    let s1 = _mm256_set1_epi16(sc[2 * cc] as i16);
                    let s2 = _mm256_set1_epi16(sc[2 * cc + 1] as i16);
                    for j in 0..NR {
                        let a = ap[j].add(sb * QK_K + 64 * cc);
                        let a0 = _mm256_loadu_si256(a as *const __m256i);
                        let a1 = _mm256_loadu_si256(a.add(32) as *const __m256i);
                        let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, a0), s1);
                        let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, a1), s2);
                        isum[j] = _mm256_add_epi32(isum[j], _mm256_add_epi32(p0, p1));
                    }
                }
                // Mins: Σ_j m_j · (bsum[2j] + bsum[2j+1]), via each m duplicated per pair.
                let mv = _mm_cvtepu8_epi16(_mm_loadl_epi64(m.as_ptr() as *const __m128i));
                let mins = _mm256_set_m128i(_mm_unpackhi_epi16(mv, mv), _mm_unpacklo_epi16(mv, mv));
                for j in 0..NR {
                    let bs = _mm256_loadu_si256(bp[j].add(sb * 16) as *const __m256i);
                    let msum = _mm256_madd_epi16(mins, bs);
                    let da = _mm256_broadcast_ss(&*dp[j].add(sb));
                    acc[i][j] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(isum[j]),
                        _mm256_mul_ps(d, da),
                        acc[i][j],
                    );
                    acc[i][j] = _mm256_fnmadd_ps(
                        _mm256_cvtepi32_ps(msum),
                        _mm256_mul_ps(dmin, da),
                        acc[i][j],
                    );
                }
            }
        }
        hsum_tile(&acc)
    }
}

/// # Safety
/// Rows `r..r+MR` and tokens `t..t+NR` of a validated `Q6_K` `c`; CPU has avx2/fma/f16c.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn micro_q6_k<const MR: usize, const NR: usize>(
    c: &Ctx,
    r: usize,
    t: usize,
) -> [[f32; NR]; MR] {
    // SAFETY: each row holds cols/256 super-blocks of 210 bytes; each token cols i8, cols/256
    // f32 and cols/16 i16 (validated); super-block indices stay below cols/256.
    unsafe {
        let nsb = c.cols / QK_K;
        let wp: [*const u8; MR] = c.weight_rows(r);
        let ap: [*const i8; NR] = std::array::from_fn(|j| c.qs.add((t + j) * c.cols));
        let dp: [*const f32; NR] = std::array::from_fn(|j| c.d.add((t + j) * nsb));
        let bp: [*const i16; NR] = std::array::from_fn(|j| c.bs.add((t + j) * nsb * 16));
        let m4 = _mm256_set1_epi8(0x0F);
        let m30 = _mm256_set1_epi8(0x30);
        let mut acc = [[_mm256_setzero_ps(); NR]; MR];
        for sb in 0..nsb {
            for i in 0..MR {
                let blk = wp[i].add(sb * 210);
                prefetch_ahead::<NR>(blk, 210);
                let d = splat_f16(blk.add(208));
                let scb = blk.add(192) as *const i8;
                let mut isum = [_mm256_setzero_si256(); NR];
                for h in 0..2 {
                    let ql0 = _mm256_loadu_si256(blk.add(64 * h) as *const __m256i);
                    let ql1 = _mm256_loadu_si256(blk.add(64 * h + 32) as *const __m256i);
                    let qh = _mm256_loadu_si256(blk.add(128 + 32 * h) as *const __m256i);
                    for k in 0..4 {
                        // Element l+32k of this half: nibble of ql[l] (k even) or ql[l+32]
                        // (k odd), low (k < 2) or high; 2 high bits from qh[l] at 2k.
                        let ql = if k & 1 == 0 { ql0 } else { ql1 };
                        let low = if k < 2 {
                            _mm256_and_si256(ql, m4)
                        } else {
                            _mm256_and_si256(_mm256_srli_epi16(ql, 4), m4)
                        };
                        let high = match k {
                            0 => _mm256_slli_epi16(qh, 4),
                            1 => _mm256_slli_epi16(qh, 2),
                            2 => qh,
                            _ => _mm256_srli_epi16(qh, 2),
                        };
                        let q = _mm256_or_si256(low, _mm256_and_si256(high, m30));
                        // Values 0..16 of this group use scale 8h+2k, values 16..32 the next.
                        let g = 8 * h + 2 * k;
                        let sv = _mm256_set_m128i(
                            _mm_set1_epi16(*scb.add(g + 1) as i16),
                            _mm_set1_epi16(*scb.add(g) as i16),
                        );
                        for j in 0..NR {
                            let a = _mm256_loadu_si256(
                                ap[j].add(sb * QK_K + 128 * h + 32 * k) as *const __m256i
                            );
                            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), sv);
                            isum[j] = _mm256_add_epi32(isum[j], p);
                        }
                    }
                }
                // The −32 offset: Σ_g sc_g · 32 · bsum_g.
                let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(scb as *const __m128i));
                for j in 0..NR {
                    let bs = _mm256_loadu_si256(bp[j].add(sb * 16) as *const __m256i);
                    let corr = _mm256_slli_epi32(_mm256_madd_epi16(sc16, bs), 5);
                    let tot = _mm256_sub_epi32(isum[j], corr);
                    let da = _mm256_broadcast_ss(&*dp[j].add(sb));
                    acc[i][j] =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(tot), _mm256_mul_ps(d, da), acc[i][j]);
                }
            }
        }
        hsum_tile(&acc)
    }
}
