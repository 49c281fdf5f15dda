//! Element conversions to f32.

use moela_kernels::fp::{bf16_to_f32, f16_to_f32};

/// Little-endian f32 bytes.
pub fn f32_from_le(bytes: &[u8], out: &mut Vec<f32>) {
    out.extend(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    );
}

/// Little-endian f16 bytes (the kernels' scalar conversion: one definition of f16 → f32).
pub fn f16_from_le(bytes: &[u8], out: &mut Vec<f32>) {
    out.extend(
        bytes
            .chunks_exact(2)
            .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))),
    );
}

/// Little-endian bf16 bytes (the kernels' scalar conversion).
pub fn bf16_from_le(bytes: &[u8], out: &mut Vec<f32>) {
    out.extend(
        bytes
            .chunks_exact(2)
            .map(|c| bf16_to_f32(u16::from_le_bytes([c[0], c[1]]))),
    );
}
