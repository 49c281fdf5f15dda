//! Elementwise: exp and SwiGLU's gate.

use std::arch::x86_64::*;

use super::{hsum, supported};
use crate::kernels::scalar;

/// `e^x` in 8 lanes: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2` (ln 2 split in two parts for an
/// exact reduction), `e^r` by its degree-7 Taylor polynomial (truncation below 2⁻²⁷ relative),
/// `2ⁿ` built in the exponent bits. `x` is clamped to `[-87, 88]`, where `2ⁿ` stays a normal
/// float; below −87 the result is 0 (the true value is under 2⁻¹²⁵, and `e^−∞` must be 0).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn exp8(x: __m256) -> __m256 {
    let keep = _mm256_cmp_ps::<_CMP_GE_OQ>(x, _mm256_set1_ps(-87.0));
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.0)),
        _mm256_set1_ps(88.0),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
    // Horner from 1/7! down to 1.
    let mut p = _mm256_set1_ps(1.0 / 5040.0);
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(bits)), keep)
}

pub(super) fn silu_mul(g: &mut [f32], u: &[f32]) {
    assert_eq!(g.len(), u.len(), "silu_mul: lengths");
    assert!(supported(), "avx2 kernels on a CPU without avx2/fma/f16c");
    // SAFETY: features checked; lengths equal.
    unsafe { silu_mul_impl(g, u) }
}

/// # Safety
/// `g.len() == u.len()`; CPU has avx2 and fma.
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_impl(g: &mut [f32], u: &[f32]) {
    let n8 = g.len() / 8 * 8;
    let one = _mm256_set1_ps(1.0);
    for i in (0..n8).step_by(8) {
        // SAFETY: i + 8 ≤ n8 ≤ both lengths.
        unsafe {
            let x = _mm256_loadu_ps(g.as_ptr().add(i));
            let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
            let y = _mm256_div_ps(
                _mm256_mul_ps(x, _mm256_loadu_ps(u.as_ptr().add(i))),
                _mm256_add_ps(one, e),
            );
            _mm256_storeu_ps(g.as_mut_ptr().add(i), y);
        }
    }
    scalar::silu_mul(&mut g[n8..], &u[n8..]);
}

pub(super) fn widen_q8(q: &[i8], scales: &[u16], offset: usize, out: &mut [f32]) {
    assert!(supported(), "avx2 kernels on a CPU without avx2/fma/f16c");
    let n = q.len().min(out.len());
    if n == 0 {
        return;
    }
    assert!(
        (offset + n - 1) / 32 < scales.len(),
        "widen_q8: too few scales"
    );
    // SAFETY: features checked; both slices hold at least `n` values, and the scales of
    // blocks up to (offset + n − 1) / 32 are inside `scales` (asserted).
    unsafe { widen_q8_impl(&q[..n], scales, offset, &mut out[..n]) }
}

/// One block of 32 (or the part of one the values cover) at a time: its scale widened once,
/// 8 values per step sign-extended to i32, converted exactly, times the scale (one rounding,
/// as [`scalar::widen_q8`]), the block's last few values one by one.
///
/// # Safety
/// `q.len() == out.len()`; `scales` covers blocks up to `(offset + len − 1) / 32`; CPU has
/// avx2 and f16c.
#[target_feature(enable = "avx2,f16c")]
unsafe fn widen_q8_impl(q: &[i8], scales: &[u16], offset: usize, out: &mut [f32]) {
    let n = q.len();
    let mut i = 0;
    while i < n {
        let end = n.min(i + 32 - (offset + i) % 32);
        // SAFETY: the block of value i is inside the scales (the contract).
        let d = crate::fp::f16_to_f32(unsafe { *scales.get_unchecked((offset + i) / 32) });
        let dv = _mm256_set1_ps(d);
        while i + 8 <= end {
            // SAFETY: i + 8 ≤ end ≤ both lengths: 8 bytes read, 8 floats written.
            unsafe {
                let b = _mm_loadl_epi64(q.as_ptr().add(i) as *const __m128i);
                let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
                _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(v, dv));
            }
            i += 8;
        }
        for j in i..end {
            out[j] = q[j] as f32 * d;
        }
        i = end;
    }
}

pub(super) fn exp_sum(x: &mut [f32], shift: f32) -> f32 {
    assert!(supported(), "avx2 kernels on a CPU without avx2/fma/f16c");
    // SAFETY: features checked.
    unsafe { exp_sum_impl(x, shift) }
}

/// # Safety
/// CPU has avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn exp_sum_impl(x: &mut [f32], shift: f32) -> f32 {
    let n8 = x.len() / 8 * 8;
    let s = _mm256_set1_ps(shift);
    let mut acc = _mm256_setzero_ps();
    for i in (0..n8).step_by(8) {
        // SAFETY: i + 8 ≤ n8 ≤ x.len().
        unsafe {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(i)), s));
            _mm256_storeu_ps(x.as_mut_ptr().add(i), e);
            acc = _mm256_add_ps(acc, e);
        }
    }
    hsum(acc) + scalar::exp_sum(&mut x[n8..], shift)
}
