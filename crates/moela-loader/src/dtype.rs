//! Element conversions to f32.

use half::{bf16, f16};

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
