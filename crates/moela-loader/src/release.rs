//! DeepSeek's own release storage (V4): FP8 weights with ue8m0 block scales named
//! `<stem>.scale`, and routed experts in FP4 (e2m1 codes two per byte, one ue8m0 scale per 32
//! inputs). Both are read as stored: FP8 stays FP8 (its power-of-two scales become the f32
//! block scales the FP8 kernels take), FP4 is repacked bit for bit into GGUF's `MXFP4` blocks.

use moela_kernels::fp::e8m0_to_f32;
use moela_kernels::mxfp4::QK_MXFP4;
use moela_model::ModelError;

/// DeepSeek's name for the scales of weight `name` (`layers.0.attn.wq_a.weight` →
/// `layers.0.attn.wq_a.scale`); `None` for a name that does not end in `.weight`.
pub(crate) fn scale_name(name: &str) -> Option<String> {
    name.strip_suffix(".weight")
        .map(|stem| format!("{stem}.scale"))
}

/// The values of ue8m0 scale bytes (`F8_E8M0`), 2^(e−127) each; the byte 0xFF (NaN in the OCP
/// MX format) is an error naming the tensor and the position.
pub(crate) fn e8m0_values(name: &str, bytes: &[u8]) -> Result<Vec<f32>, ModelError> {
    if let Some(i) = bytes.iter().position(|&e| e == 0xFF) {
        return Err(ModelError::Tensor {
            name: name.into(),
            msg: format!("scale {i} is 0xFF (NaN in F8_E8M0)"),
        });
    }
    Ok(bytes.iter().map(|&e| e8m0_to_f32(e)).collect())
}

/// True when a tensor of dtype `dtype` and shape `shape` holds the FP4 codes of a
/// `[rows, cols]` matrix: safetensors' `F4` with the logical shape, or bytes (`I8`/`U8`, as
/// `float4_e2m1fn_x2` is written by tools without an FP4 type) with two codes per byte.
pub(crate) fn fp4_codes(dtype: &str, shape: &[usize], rows: usize, cols: usize) -> bool {
    if !cols.is_multiple_of(QK_MXFP4) {
        return false;
    }
    match dtype {
        "F4" => shape == [rows, cols],
        "I8" | "U8" => shape == [rows, cols / 2],
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_names() {
        assert_eq!(
            scale_name("layers.3.ffn.experts.7.w1.weight").as_deref(),
            Some("layers.3.ffn.experts.7.w1.scale")
        );
        assert_eq!(scale_name("layers.3.attn.attn_sink"), None);
    }

    #[test]
    fn e8m0_bytes() {
        assert_eq!(
            e8m0_values("s", &[127, 128, 120, 0]).unwrap(),
            [1.0, 2.0, 1.0 / 128.0, 2f32.powi(-127)]
        );
        let e = e8m0_values("layers.0.attn.wq_a.scale", &[127, 255]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "tensor `layers.0.attn.wq_a.scale`: scale 1 is 0xFF (NaN in F8_E8M0)"
        );
    }

    #[test]
    fn fp4_layouts() {
        assert!(fp4_codes("I8", &[4, 32], 4, 64));
        assert!(fp4_codes("U8", &[4, 32], 4, 64));
        assert!(fp4_codes("F4", &[4, 64], 4, 64));
        assert!(!fp4_codes("I8", &[4, 64], 4, 64));
        assert!(!fp4_codes("BF16", &[4, 32], 4, 64));
        assert!(!fp4_codes("I8", &[4, 24], 4, 48), "48 is not whole blocks");
    }
}
