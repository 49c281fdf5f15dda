//! Element conversions to f32.

use half::{bf16, f16};

/// The f32 value of an FP8 E4M3FN byte (1 sign, 4 exponent bits with bias 7, 3 mantissa bits;
/// no infinities; `S.1111.111` is NaN; max 448).
pub fn fp8_e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = ((b >> 3) & 0x0f) as i32;
    let man = (b & 0x07) as f32;
    if exp == 0x0f && (b & 0x07) == 0x07 {
        return f32::NAN;
    }
    let mag = if exp == 0 {
        man / 8.0 * 2f32.powi(-6)
    } else {
        (1.0 + man / 8.0) * 2f32.powi(exp - 7)
    };
    sign * mag
}

/// Little-endian f32 bytes.
pub fn f32_from_le(bytes: &[u8], out: &mut Vec<f32>) {
    out.extend(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    );
}

/// Little-endian f16 bytes.
pub fn f16_from_le(bytes: &[u8], out: &mut Vec<f32>) {
    out.extend(
        bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
    );
}

/// Little-endian bf16 bytes.
pub fn bf16_from_le(bytes: &[u8], out: &mut Vec<f32>) {
    out.extend(
        bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
    );
}

/// FP8 E4M3 `[rows, cols]` times its `[ceil(rows/br), ceil(cols/bc)]` block scales
/// (`weight_scale_inv` multiplies, despite its name; edge blocks use their block's scale).
pub fn fp8_block_dequant(
    q: &[u8],
    rows: usize,
    cols: usize,
    scale: &[f32],
    block: [usize; 2],
) -> Vec<f32> {
    let sc = cols.div_ceil(block[1]);
    let mut lut = [0f32; 256];
    for (i, v) in lut.iter_mut().enumerate() {
        *v = fp8_e4m3_to_f32(i as u8);
    }
    let mut out = Vec::with_capacity(rows * cols);
    for i in 0..rows {
        let srow = &scale[(i / block[0]) * sc..][..sc];
        for j in 0..cols {
            out.push(lut[q[i * cols + j] as usize] * srow[j / block[1]]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_e4m3_known_values() {
        assert_eq!(fp8_e4m3_to_f32(0x00), 0.0);
        assert_eq!(fp8_e4m3_to_f32(0x38), 1.0); // exp 7, man 0
        assert_eq!(fp8_e4m3_to_f32(0xb8), -1.0);
        assert_eq!(fp8_e4m3_to_f32(0x7e), 448.0); // largest finite
        assert_eq!(fp8_e4m3_to_f32(0x01), 2f32.powi(-9)); // smallest subnormal
        assert!(fp8_e4m3_to_f32(0x7f).is_nan());
    }

    #[test]
    fn fp8_dequant_uses_edge_block_scales() {
        // 3×3 ones with 2×2 blocks: scales [[1,2],[3,4]].
        let q = vec![0x38u8; 9];
        let w = fp8_block_dequant(&q, 3, 3, &[1.0, 2.0, 3.0, 4.0], [2, 2]);
        assert_eq!(w, vec![1.0, 1.0, 2.0, 1.0, 1.0, 2.0, 3.0, 3.0, 4.0]);
    }
}
