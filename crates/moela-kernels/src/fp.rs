//! Scalar conversions between f32 and the small float formats: IEEE half (F16), bfloat16 (BF16)
//! and FP8 E4M3 ("e4m3fn": 4 exponent bits with bias 7, 3 mantissa bits, no infinities,
//! `0x7F`/`0xFF` are NaN, largest finite value 448).
//!
//! These are the reference forms; the SIMD kernels convert in registers and are tested against
//! them.

/// f16 bits → f32 (exact).
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// f32 → f16 bits, round to nearest even (as ggml's `GGML_FP32_TO_FP16`).
#[inline]
pub fn f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// bf16 bits → f32 (exact: a bf16 is the top half of an f32).
#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// f32 → bf16 bits, round to nearest even; NaN stays NaN.
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// The power of two a ue8m0 (`F8_E8M0`) scale byte `e` stands for, 2^(e−127), exactly (2^−127
/// for `e = 0` is an f32 subnormal). `e = 255` is NaN in the OCP MX format; callers reject it
/// first (it comes out as +∞ here).
#[inline]
pub const fn e8m0_to_f32(e: u8) -> f32 {
    let bits = if e == 0 {
        0x0040_0000u32
    } else {
        (e as u32) << 23
    };
    f32::from_bits(bits)
}

/// Decodes one FP8 E4M3 byte. `const` so the lookup table is built at compile time.
pub const fn fp8_e4m3_decode(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = ((b >> 3) & 0x0F) as u32;
    let m = (b & 0x07) as u32;
    if e == 15 && m == 7 {
        return f32::NAN;
    }
    if e == 0 {
        // Subnormal: m/8 · 2^-6 = m · 2^-9.
        return sign * (m as f32) * (1.0 / 512.0);
    }
    // Normal: 2^(e-7) · (1 + m/8), built directly as f32 bits.
    sign * f32::from_bits(((e + 127 - 7) << 23) | (m << 20))
}

const fn build_fp8_lut() -> [f32; 256] {
    let mut t = [0.0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = fp8_e4m3_decode(i as u8);
        i += 1;
    }
    t
}

/// All 256 FP8 E4M3 values, indexed by their byte.
pub static FP8_E4M3_LUT: [f32; 256] = build_fp8_lut();

/// FP8 E4M3 byte → f32 (table lookup).
#[inline]
pub fn fp8_e4m3_to_f32(b: u8) -> f32 {
    FP8_E4M3_LUT[b as usize]
}

/// Largest finite FP8 E4M3 value.
pub const FP8_E4M3_MAX: f32 = 448.0;

/// f32 → FP8 E4M3, round to nearest even, saturating to ±448; NaN → `0x7F`.
pub fn f32_to_fp8_e4m3(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7F;
    }
    let sign: u8 = if x.is_sign_negative() { 0x80 } else { 0 };
    let a = x.abs();
    if a >= FP8_E4M3_MAX {
        return sign | 0x7E;
    }
    if a < 1.0 / 64.0 {
        // Subnormal range (below 2^-6): steps of 2^-9. A result of 8 is exactly the smallest
        // normal (exponent field 1, mantissa 0), whose code is also 8.
        let q = (a * 512.0).round_ties_even() as u8;
        return sign | q;
    }
    let bits = a.to_bits();
    let e = (bits >> 23) as i32 - 127 + 7; // 1..=15 here
    let mant = bits & 0x7F_FFFF;
    let keep = mant >> 20;
    let rest = mant & 0xF_FFFF;
    let half = 0x8_0000;
    let round_up = rest > half || (rest == half && keep & 1 == 1);
    // A mantissa carry rolls into the exponent, which is what we want.
    let code = ((e as u32) << 3 | keep) + round_up as u32;
    sign | code.min(0x7E) as u8
}

/// ggml's `nearest_int`: round half to even (the `+ 1.5·2^23` trick), for |x| < 2^22.
#[inline]
pub fn nearest_int(x: f32) -> i32 {
    x.round_ties_even() as i32
}

/// f16 bits → f32 for a whole slice (`src` and `dst` of equal length; SIMD where available).
pub fn f16_slice_to_f32(src: &[u16], dst: &mut [f32]) {
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    let h: &[half::f16] = src.reinterpret_cast();
    h.convert_to_f32_slice(dst);
}

/// f32 → f16 bits for a whole slice, round to nearest even (SIMD where available).
pub fn f32_slice_to_f16(src: &[f32], dst: &mut [u16]) {
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    let h: &mut [half::f16] = dst.reinterpret_cast_mut();
    h.convert_from_f32_slice(src);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_known_values() {
        assert_eq!(fp8_e4m3_to_f32(0x00), 0.0);
        assert_eq!(fp8_e4m3_to_f32(0x38), 1.0); // e=7, m=0
        assert_eq!(fp8_e4m3_to_f32(0x3C), 1.5); // e=7, m=4
        assert_eq!(fp8_e4m3_to_f32(0xB8), -1.0);
        assert_eq!(fp8_e4m3_to_f32(0x7E), 448.0);
        assert_eq!(fp8_e4m3_to_f32(0x01), 1.0 / 512.0); // smallest subnormal
        assert_eq!(fp8_e4m3_to_f32(0x08), 1.0 / 64.0); // smallest normal
        assert!(fp8_e4m3_to_f32(0x7F).is_nan());
        assert!(fp8_e4m3_to_f32(0xFF).is_nan());
    }

    #[test]
    fn fp8_round_trips_every_finite_code() {
        for b in 0..=255u8 {
            let v = fp8_e4m3_to_f32(b);
            if v.is_nan() {
                continue;
            }
            let back = f32_to_fp8_e4m3(v);
            // -0 and +0 both decode to zero; compare values.
            assert_eq!(fp8_e4m3_to_f32(back), v, "code {b:#04x}");
        }
    }

    #[test]
    fn fp8_rounds_to_nearest_and_saturates() {
        // Between 1.0 (0x38) and 1.125 (0x39): the midpoint goes to even (0x38).
        assert_eq!(f32_to_fp8_e4m3(1.0625), 0x38);
        assert_eq!(f32_to_fp8_e4m3(1.07), 0x39);
        assert_eq!(f32_to_fp8_e4m3(1000.0), 0x7E);
        assert_eq!(f32_to_fp8_e4m3(-1000.0), 0xFE);
        assert_eq!(f32_to_fp8_e4m3(f32::NAN), 0x7F);
        // Every f32 maps to one of its two nearest codes.
        let mut x = -460.0f32;
        while x < 460.0 {
            let v = fp8_e4m3_to_f32(f32_to_fp8_e4m3(x));
            let best = (0..=255u8)
                .map(fp8_e4m3_to_f32)
                .filter(|v| !v.is_nan())
                .map(|v| (v - x.clamp(-448.0, 448.0)).abs())
                .fold(f32::INFINITY, f32::min);
            assert!((v - x.clamp(-448.0, 448.0)).abs() <= best + 1e-6, "{x}");
            x += 0.37;
        }
    }

    #[test]
    fn e8m0_is_the_power_of_two() {
        for e in 0..255u8 {
            assert_eq!(e8m0_to_f32(e) as f64, 2f64.powi(e as i32 - 127), "e = {e}");
            // Twice ggml's half scale, bit for bit.
            assert_eq!(
                e8m0_to_f32(e),
                2.0 * crate::mxfp4::e8m0_to_f32_half(e),
                "e = {e}"
            );
        }
        assert_eq!(e8m0_to_f32(127), 1.0);
    }

    #[test]
    fn half_conversions() {
        assert_eq!(f16_to_f32(0x3C00), 1.0);
        assert_eq!(f32_to_f16(-2.0), 0xC000);
        assert_eq!(bf16_to_f32(0x3F80), 1.0);
        assert_eq!(f32_to_bf16(1.0), 0x3F80);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(3.5), 4);
        assert_eq!(nearest_int(-2.5), -2);
    }
}
