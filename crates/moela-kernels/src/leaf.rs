//! Leaf helpers the kernels and the public ops both use; this module imports nothing of the
//! crate, so no kernel needs to call back into [`crate::ops`].

/// The bytes of an f32 slice (little-endian targets only; see lib.rs).
pub(crate) fn f32_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding or invalid bit patterns as bytes, u8 has alignment 1, and the
    // byte slice borrows `v` for the same lifetime and covers exactly its memory.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

/// `x / (1 + e^-x)`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}
