//! Activation quantizers (bit-identical to the scalar ones).

use std::arch::x86_64::*;

use super::supported;
use crate::quant::{QK, QK_K};

/// Rounds `v·s` to nearest-even i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn round_mul(v: __m256, s: __m256) -> __m256i {
    _mm256_cvtps_epi32(_mm256_round_ps(
        _mm256_mul_ps(v, s),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    ))
}

/// Packs four vectors of i32 (each within i8 range) into 32 bytes in element order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pack_i8(q0: __m256i, q1: __m256i, q2: __m256i, q3: __m256i) -> __m256i {
    let p = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
    _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn abs_ps(v: __m256) -> __m256 {
    _mm256_andnot_ps(_mm256_set1_ps(-0.0), v)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hmax(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_movehdup_ps(m));
    _mm_cvtss_f32(m)
}

pub(super) fn quant_q8(x: &[f32], qs: &mut [i8], d: &mut [f32]) {
    assert!(supported());
    let nb = x.len() / QK;
    assert!(x.len().is_multiple_of(QK) && qs.len() >= nb * QK && d.len() >= nb);
    // SAFETY: features checked; lengths checked above.
    unsafe { quant_q8_impl(x, qs, d) }
}

/// # Safety
/// avx2/fma/f16c available; `x.len()` a multiple of 32, `qs`/`d` at least as long as needed.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quant_q8_impl(x: &[f32], qs: &mut [i8], d: &mut [f32]) {
    for b in 0..x.len() / QK {
        // SAFETY: block b reads x[32b..32b+32] and writes qs[32b..32b+32], all in bounds.
        unsafe {
            let p = x.as_ptr().add(b * QK);
            let v: [__m256; 4] = std::array::from_fn(|k| _mm256_loadu_ps(p.add(8 * k)));
            let m = _mm256_max_ps(
                _mm256_max_ps(abs_ps(v[0]), abs_ps(v[1])),
                _mm256_max_ps(abs_ps(v[2]), abs_ps(v[3])),
            );
            let amax = hmax(m);
            let db = amax / 127.0;
            let id = _mm256_set1_ps(if db != 0.0 { 1.0 / db } else { 0.0 });
            let q = pack_i8(
                round_mul(v[0], id),
                round_mul(v[1], id),
                round_mul(v[2], id),
                round_mul(v[3], id),
            );
            _mm256_storeu_si256(qs.as_mut_ptr().add(b * QK) as *mut __m256i, q);
            d[b] = db;
        }
    }
}

pub(super) fn quant_q8k(x: &[f32], qs: &mut [i8], d: &mut [f32], bsums: &mut [i16]) {
    assert!(supported());
    let nb = x.len() / QK_K;
    assert!(x.len().is_multiple_of(QK_K) && qs.len() >= nb * QK_K && d.len() >= nb);
    assert!(bsums.len() >= nb * 16);
    // SAFETY: features checked; lengths checked above.
    unsafe { quant_q8k_impl(x, qs, d, bsums) }
}

/// # Safety
/// avx2/fma/f16c available; `x.len()` a multiple of 256, outputs long enough.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quant_q8k_impl(x: &[f32], qs: &mut [i8], d: &mut [f32], bsums: &mut [i16]) {
    for b in 0..x.len() / QK_K {
        // SAFETY: super-block b reads x[256b..][..256], writes qs[256b..][..256] and
        // bsums[16b..][..16], all in bounds.
        unsafe {
            let p = x.as_ptr().add(b * QK_K);
            let mut m = _mm256_setzero_ps();
            for k in 0..32 {
                m = _mm256_max_ps(m, abs_ps(_mm256_loadu_ps(p.add(8 * k))));
            }
            let amax = hmax(m);
            let q = qs.as_mut_ptr().add(b * QK_K);
            if amax == 0.0 {
                std::ptr::write_bytes(q, 0, QK_K);
                bsums[16 * b..16 * b + 16].fill(0);
                d[b] = 0.0;
                continue;
            }
            // The signed value of largest magnitude, first on ties (as the scalar rule).
            let target = _mm256_set1_ps(amax);
            let mut max = 0.0f32;
            for k in 0..32 {
                let eq = _mm256_cmp_ps(abs_ps(_mm256_loadu_ps(p.add(8 * k))), target, _CMP_EQ_OQ);
                let mask = _mm256_movemask_ps(eq);
                if mask != 0 {
                    max = *p.add(8 * k + mask.trailing_zeros() as usize);
                    break;
                }
            }
            let iscale = -127.0 / max;
            let is = _mm256_set1_ps(iscale);
            let ones8 = _mm256_set1_epi8(1);
            let ones16 = _mm256_set1_epi16(1);
            let lim = _mm256_set1_epi32(127);
            for g in 0..8 {
                let v: [__m256i; 4] = std::array::from_fn(|k| {
                    _mm256_min_epi32(round_mul(_mm256_loadu_ps(p.add(32 * g + 8 * k)), is), lim)
                });
                let packed = pack_i8(v[0], v[1], v[2], v[3]);
                _mm256_storeu_si256(q.add(32 * g) as *mut __m256i, packed);
                // Sums of 16: pairs → quads → two halves.
                let s4 = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, packed), ones16);
                let h = _mm_hadd_epi32(_mm256_castsi256_si128(s4), _mm256_extracti128_si256(s4, 1));
                let h = _mm_hadd_epi32(h, h);
                bsums[16 * b + 2 * g] = _mm_cvtsi128_si32(h) as i16;
                bsums[16 * b + 2 * g + 1] = _mm_extract_epi32(h, 1) as i16;
            }
            d[b] = 1.0 / iscale;
        }
    }
}
