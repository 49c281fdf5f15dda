//! `moela inspect --check`: every stored float value of a checkpoint, decoded from its stored
//! type, scanned for NaN and ±∞ (a model with them loads and then generates garbage or token 0
//! forever). Works on the files, whatever the model, so it covers tensors no forward reads.

use moela_kernels::fp::{bf16_to_f32, f16_to_f32, fp8_e4m3_to_f32};
use moela_kernels::qmat::dequantize_row;
use moela_kernels::DType;

use crate::error::LoadError;
use crate::model_files::ModelFiles;

/// The first non-finite value of a tensor and how many it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct NonFinite {
    pub tensor: String,
    /// Flat index (row-major) of the first one.
    pub index: usize,
    pub value: f32,
    pub count: usize,
}

/// What a scan covered and found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScanReport {
    pub tensors: usize,
    pub values: u64,
    /// Tensors of types that hold no floats to check (integer tables, scale exponents).
    pub skipped: Vec<String>,
    pub bad: Vec<NonFinite>,
}

/// Counts the non-finite values of `vals` (flat offset `base`) into `found`.
fn scan(tensor: &str, base: usize, vals: &[f32], found: &mut Option<NonFinite>) {
    for (i, &v) in vals.iter().enumerate() {
        if !v.is_finite() {
            match found {
                Some(f) => f.count += 1,
                None => {
                    *found = Some(NonFinite {
                        tensor: tensor.to_string(),
                        index: base + i,
                        value: v,
                        count: 1,
                    })
                }
            }
        }
    }
}

/// Decodes `bytes` of stored type `dtype` (a safetensors dtype name or a GGUF type) in rows of
/// `cols` values and scans them; `None` for types that hold no floats.
fn scan_bytes(
    tensor: &str,
    dtype: &str,
    ggml: Option<DType>,
    cols: usize,
    bytes: &[u8],
) -> Option<(u64, Option<NonFinite>)> {
    let mut found = None;
    let mut n = 0u64;
    let mut each = |vals: &[f32], base: usize| {
        scan(tensor, base, vals, &mut found);
        n += vals.len() as u64;
    };
    match (dtype, ggml) {
        (_, Some(d)) => {
            let row = d.row_bytes(cols).ok()?;
            // A tensor with a zero dimension holds no row, and its `cols` (from the file) can
            // be anything: allocate a row only when the bytes hold one.
            if row == 0 || bytes.len() < row {
                return Some((0, None));
            }
            let mut buf = vec![0.0f32; cols];
            for (r, b) in bytes.chunks_exact(row.max(1)).enumerate() {
                dequantize_row(d, b, &mut buf);
                each(&buf, r * cols);
            }
        }
        ("F32", None) => {
            let v: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            each(&v, 0);
        }
        ("F16" | "BF16", None) => {
            let half = dtype == "F16";
            let v: Vec<f32> = bytes
                .chunks_exact(2)
                .map(|c| {
                    let h = u16::from_le_bytes([c[0], c[1]]);
                    if half {
                        f16_to_f32(h)
                    } else {
                        bf16_to_f32(h)
                    }
                })
                .collect();
            each(&v, 0);
        }
        // FP8 E4M3 has no infinities; its NaN codes are 0x7F / 0xFF whatever the scale.
        ("F8_E4M3", None) => {
            let v: Vec<f32> = bytes.iter().map(|&b| fp8_e4m3_to_f32(b)).collect();
            each(&v, 0);
        }
        _ => return None,
    }
    Some((n, found))
}

impl ModelFiles {
    /// Scans every stored tensor for NaN and ±∞.
    pub fn scan_non_finite(&self) -> Result<ScanReport, LoadError> {
        let mut report = ScanReport::default();
        let mut add = |name: &str, res: Option<(u64, Option<NonFinite>)>| match res {
            Some((n, bad)) => {
                report.tensors += 1;
                report.values += n;
                report.bad.extend(bad);
            }
            None => report.skipped.push(name.to_string()),
        };
        match self {
            ModelFiles::Hf(c) => {
                for t in c.tensor_infos() {
                    let cols = t.shape.last().copied().unwrap_or(1);
                    add(
                        &t.name,
                        scan_bytes(&t.name, &t.dtype, None, cols, c.tensor_bytes(t)),
                    );
                }
            }
            ModelFiles::Gguf(g) => {
                for t in g.file.tensors() {
                    let (_, bytes) = g.file.tensor_data(&t.name)?;
                    let cols = t.dims.first().map_or(1, |&c| c as usize);
                    let d = DType::from_ggml_type(t.ggml_type.0);
                    let name = format!("{} (ggml type {})", t.name, t.ggml_type.0);
                    add(
                        &t.name,
                        d.and_then(|d| scan_bytes(&name, "", Some(d), cols, bytes)),
                    );
                }
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_tensor_with_a_huge_row_allocates_nothing() {
        // Fuzzing finding (gguf target): dims {2^61, 0} of F32 asked for a 2^61-float row.
        assert_eq!(
            scan_bytes("w", "", Some(DType::F32), 1 << 61, &[]),
            Some((0, None))
        );
    }

    #[test]
    fn finds_nan_and_infinity_in_each_float_type() {
        let f32s: Vec<u8> = [1.0f32, f32::NAN, 2.0, f32::INFINITY]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let (n, bad) = scan_bytes("w", "F32", None, 2, &f32s).unwrap();
        let bad = bad.unwrap();
        assert_eq!((n, bad.index, bad.count), (4, 1, 2));
        // BF16 -inf (0xFF80) at index 2; F16 NaN (0x7E00) at index 0.
        let bf: Vec<u8> = [0x3F80u16, 0x3F80, 0xFF80]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            scan_bytes("w", "BF16", None, 3, &bf)
                .unwrap()
                .1
                .unwrap()
                .index,
            2
        );
        let f16: Vec<u8> = [0x7E00u16, 0x3C00]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            scan_bytes("w", "F16", None, 2, &f16)
                .unwrap()
                .1
                .unwrap()
                .index,
            0
        );
        let fp8 = [0x38u8, 0x7F, 0xFF];
        assert_eq!(
            scan_bytes("w", "F8_E4M3", None, 3, &fp8)
                .unwrap()
                .1
                .unwrap()
                .count,
            2
        );
        assert!(scan_bytes("w", "F32", None, 1, &1.0f32.to_le_bytes())
            .unwrap()
            .1
            .is_none());
        assert!(scan_bytes("t", "I64", None, 1, &[0; 8]).is_none());
    }
}
