//! AArch64 NEON kernels (NEON is part of the AArch64 baseline, so no detection is needed).
//!
//! Written against the stable `core::arch::aarch64` intrinsics only; not yet run on hardware
//! (no AArch64 machine in CI), so they are deliberately simple: one row·token dot at a time,
//! 4 independent accumulators. F16 and FP8 are widened with integer bit tricks (the f16/fp8
//! magnitude bits shifted into an f32 and multiplied by 2^112 / 2^120, which also handles
//! subnormals; inf/NaN codes, absent from weights, come out finite), because the f16 vector
//! types are not stable in Rust yet. The K-quants and `MXFP4` use the scalar dots.

// NEON intrinsics that only touch registers became safe functions in Rust 1.87; the `unsafe`
// blocks around them keep older compilers happy and are harmless on newer ones.
#![allow(unused_unsafe)]

use core::arch::aarch64::*;

use super::{scalar, Isa, KernelSet, Task};
use crate::dtype::FP8_BLOCK;
use crate::quant::QK;

pub(crate) static KERNELS: KernelSet = KernelSet {
    isa: Isa::Neon,
    gemm,
    dot_f32: dot_f32_slices,
    quant_q8: scalar::quant_q8,
    quant_q8k: scalar::quant_q8k,
    weighted_sum: scalar::weighted_sum,
    rows_dot: scalar::rows_dot,
    silu_mul: scalar::silu_mul,
    widen_q8: scalar::widen_q8,
    exp_sum: scalar::exp_sum,
};

/// The NEON dots (the K-quants and `MXFP4` use the scalar ones).
static DOTS: scalar::RowDots = scalar::RowDots {
    f32: dot_f32,
    f16: dot_f16,
    bf16: dot_bf16,
    fp8: dot_fp8,
    q8_0: dot_q8_0,
    q4_0: dot_q4_0,
    q4_k: scalar::dot_q4_k,
    q6_k: scalar::dot_q6_k,
    mxfp4: scalar::dot_mxfp4,
};

fn gemm(t: &mut Task<'_>) {
    scalar::gemm_rows(t, &DOTS)
}

/// Sum of four lanes-wise accumulators.
#[inline]
fn sum4(a: [float32x4_t; 4]) -> f32 {
    // SAFETY: NEON is always available on AArch64; these are register-only operations.
    unsafe { vaddvq_f32(vaddq_f32(vaddq_f32(a[0], a[1]), vaddq_f32(a[2], a[3]))) }
}

/// Four f16 bit patterns → f32 (finite values and subnormals exact).
#[inline]
fn f16x4_to_f32(h: uint16x4_t) -> float32x4_t {
    // SAFETY: NEON is always available on AArch64; register-only operations.
    unsafe {
        let h = vmovl_u16(h);
        let sign = vshlq_n_u32::<16>(vandq_u32(h, vdupq_n_u32(0x8000)));
        let mag = vshlq_n_u32::<13>(vandq_u32(h, vdupq_n_u32(0x7FFF)));
        // 2^112 re-biases the exponent from 15 to 127.
        let v = vmulq_f32(
            vreinterpretq_f32_u32(mag),
            vdupq_n_f32(f32::from_bits(0x7780_0000)),
        );
        vreinterpretq_f32_u32(vorrq_u32(vreinterpretq_u32_f32(v), sign))
    }
}

/// Four FP8 E4M3 bytes (zero-extended to u32 lanes) → f32 (finite values exact).
#[inline]
fn fp8x4_to_f32(b: uint32x4_t) -> float32x4_t {
    // SAFETY: NEON is always available on AArch64; register-only operations.
    unsafe {
        let sign = vshlq_n_u32::<24>(vandq_u32(b, vdupq_n_u32(0x80)));
        let mag = vshlq_n_u32::<20>(vandq_u32(b, vdupq_n_u32(0x7F)));
        // 2^120 re-biases the exponent from 7 to 127.
        let v = vmulq_f32(
            vreinterpretq_f32_u32(mag),
            vdupq_n_f32(f32::from_bits(0x7B80_0000)),
        );
        vreinterpretq_f32_u32(vorrq_u32(vreinterpretq_u32_f32(v), sign))
    }
}

fn dot_f32(w: &[u8], x: &[f32]) -> f32 {
    let n = x.len();
    let n16 = n / 16 * 16;
    assert!(w.len() >= 4 * n);
    let mut s = 0.0f32;
    // SAFETY: indices k..k+16 < n16 ≤ n; `w` holds 4n bytes (checked) and `x` n floats.
    unsafe {
        let wp = w.as_ptr() as *const f32;
        let mut acc = [vdupq_n_f32(0.0); 4];
        let mut k = 0;
        while k < n16 {
            for u in 0..4 {
                let wv = vreinterpretq_f32_u8(vld1q_u8(wp.add(k + 4 * u) as *const u8));
                acc[u] = vfmaq_f32(acc[u], wv, vld1q_f32(x.as_ptr().add(k + 4 * u)));
            }
            k += 16;
        }
        s += sum4(acc);
    }
    for k in n16..n {
        s += f32::from_le_bytes([w[4 * k], w[4 * k + 1], w[4 * k + 2], w[4 * k + 3]]) * x[k];
    }
    s
}

fn dot_f32_slices(w: &[f32], x: &[f32]) -> f32 {
    dot_f32(crate::leaf::f32_bytes(w), x)
}

fn dot_f16(w: &[u8], x: &[f32]) -> f32 {
    let n = x.len();
    let n16 = n / 16 * 16;
    assert!(w.len() >= 2 * n);
    let mut s = 0.0f32;
    // SAFETY: indices k..k+16 < n16 ≤ n; `w` holds 2n bytes (checked) and `x` n floats.
    unsafe {
        let mut acc = [vdupq_n_f32(0.0); 4];
        let mut k = 0;
        while k < n16 {
            for u in 0..4 {
                let h = vreinterpret_u16_u8(vld1_u8(w.as_ptr().add(2 * (k + 4 * u))));
                acc[u] = vfmaq_f32(
                    acc[u],
                    f16x4_to_f32(h),
                    vld1q_f32(x.as_ptr().add(k + 4 * u)),
                );
            }
            k += 16;
        }
        s += sum4(acc);
    }
    for k in n16..n {
        s += crate::fp::f16_to_f32(u16::from_le_bytes([w[2 * k], w[2 * k + 1]])) * x[k];
    }
    s
}

fn dot_bf16(w: &[u8], x: &[f32]) -> f32 {
    let n = x.len();
    let n16 = n / 16 * 16;
    assert!(w.len() >= 2 * n);
    let mut s = 0.0f32;
    // SAFETY: indices k..k+16 < n16 ≤ n; `w` holds 2n bytes (checked) and `x` n floats.
    unsafe {
        let mut acc = [vdupq_n_f32(0.0); 4];
        let mut k = 0;
        while k < n16 {
            for u in 0..4 {
                let h = vreinterpret_u16_u8(vld1_u8(w.as_ptr().add(2 * (k + 4 * u))));
                let f = vreinterpretq_f32_u32(vshlq_n_u32::<16>(vmovl_u16(h)));
                acc[u] = vfmaq_f32(acc[u], f, vld1q_f32(x.as_ptr().add(k + 4 * u)));
            }
            k += 16;
        }
        s += sum4(acc);
    }
    for k in n16..n {
        s += crate::fp::bf16_to_f32(u16::from_le_bytes([w[2 * k], w[2 * k + 1]])) * x[k];
    }
    s
}

fn dot_fp8(w: &[u8], srow: &[f32], x: &[f32]) -> f32 {
    let n = x.len();
    assert!(w.len() >= n && srow.len() >= n.div_ceil(FP8_BLOCK));
    let mut s = 0.0f32;
    for (b, k0) in (0..n).step_by(FP8_BLOCK).enumerate() {
        let k1 = (k0 + FP8_BLOCK).min(n);
        let kv = k0 + (k1 - k0) / 16 * 16;
        let mut p = 0.0f32;
        // SAFETY: indices k..k+16 ≤ kv ≤ n; `w` holds n bytes (checked) and `x` n floats.
        unsafe {
            let mut acc = [vdupq_n_f32(0.0); 4];
            let mut k = k0;
            while k < kv {
                let b16 = vld1q_u8(w.as_ptr().add(k));
                let lo = vmovl_u8(vget_low_u8(b16));
                let hi = vmovl_u8(vget_high_u8(b16));
                let parts = [
                    vmovl_u16(vget_low_u16(lo)),
                    vmovl_u16(vget_high_u16(lo)),
                    vmovl_u16(vget_low_u16(hi)),
                    vmovl_u16(vget_high_u16(hi)),
                ];
                for u in 0..4 {
                    let xv = vld1q_f32(x.as_ptr().add(k + 4 * u));
                    acc[u] = vfmaq_f32(acc[u], fp8x4_to_f32(parts[u]), xv);
                }
                k += 16;
            }
            p += sum4(acc);
        }
        for k in kv..k1 {
            p += crate::fp::fp8_e4m3_to_f32(w[k]) * x[k];
        }
        s += p * srow[b];
    }
    s
}

/// Σ a·b over 16 i8 lanes, widening through i16 (|a·b| ≤ 128·127 fits) into i32 lanes.
#[inline]
fn dot16(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: NEON is always available on AArch64; register-only operations.
    unsafe {
        let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
        let hi = vmull_high_s8(a, b);
        vpadalq_s16(vpadalq_s16(acc, lo), hi)
    }
}

fn dot_q8_0(w: &[u8], qs: &[i8], d: &[f32]) -> f32 {
    let nb = qs.len() / QK;
    assert!(w.len() >= nb * 34 && d.len() >= nb);
    let mut s = 0.0f32;
    for b in 0..nb {
        let blk = &w[b * 34..b * 34 + 34];
        let dw = crate::fp::f16_to_f32(u16::from_le_bytes([blk[0], blk[1]]));
        // SAFETY: `blk[2..34]` and `qs[32b..32b+32]` are in bounds (checked above).
        let isum = unsafe {
            let w0 = vld1q_s8(blk.as_ptr().add(2) as *const i8);
            let w1 = vld1q_s8(blk.as_ptr().add(18) as *const i8);
            let a0 = vld1q_s8(qs.as_ptr().add(b * QK));
            let a1 = vld1q_s8(qs.as_ptr().add(b * QK + 16));
            vaddvq_s32(dot16(dot16(vdupq_n_s32(0), w0, a0), w1, a1))
        };
        s += dw * d[b] * isum as f32;
    }
    s
}

fn dot_q4_0(w: &[u8], qs: &[i8], d: &[f32]) -> f32 {
    let nb = qs.len() / QK;
    assert!(w.len() >= nb * 18 && d.len() >= nb);
    let mut s = 0.0f32;
    for b in 0..nb {
        let blk = &w[b * 18..b * 18 + 18];
        let dw = crate::fp::f16_to_f32(u16::from_le_bytes([blk[0], blk[1]]));
        // SAFETY: `blk[2..18]` and `qs[32b..32b+32]` are in bounds (checked above).
        let isum = unsafe {
            let q = vld1q_u8(blk.as_ptr().add(2));
            let eight = vdupq_n_s8(8);
            // Low nibbles are elements 0..16, high nibbles 16..32.
            let lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0F))), eight);
            let hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(q)), eight);
            let a0 = vld1q_s8(qs.as_ptr().add(b * QK));
            let a1 = vld1q_s8(qs.as_ptr().add(b * QK + 16));
            vaddvq_s32(dot16(dot16(vdupq_n_s32(0), lo, a0), hi, a1))
        };
        s += dw * d[b] * isum as f32;
    }
    s
}
