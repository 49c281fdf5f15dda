//! DeepSeek's release storage read from safetensors: FP8 weights with ue8m0 `<stem>.scale`
//! block scales and FP4 experts (two e2m1 codes per byte + one ue8m0 scale per 32 inputs),
//! each checked element by element against the formats' definitions, and the malformed cases.

use std::collections::HashMap;
use std::path::Path;

use moela_kernels::fp::{e8m0_to_f32, fp8_e4m3_to_f32};
use moela_kernels::DType;
use moela_loader::Checkpoint;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// e2m1 code → value (sign bit 3, then exponent 2 bits and mantissa 1 bit).
const E2M1: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// Deterministic bytes (xorshift).
fn bytes(n: usize, seed: u64, f: impl Fn(u8) -> u8) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            f((x >> 24) as u8)
        })
        .collect()
}

/// A checkpoint directory: a valid config (the V3 FP8 fixture's) and `tensors` in one file.
fn checkpoint(dir: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Checkpoint {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/v3_fp8");
    std::fs::copy(fixture.join("config.json"), dir.join("config.json")).unwrap();
    let views: HashMap<String, TensorView<'_>> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(&views, None, &dir.join("model.safetensors")).unwrap();
    Checkpoint::open(dir).unwrap()
}

/// A finite FP8 E4M3 byte (0x7F / 0xFF are NaN).
fn finite_fp8(b: u8) -> u8 {
    if b & 0x7F == 0x7F {
        b & 0xFE
    } else {
        b
    }
}

#[test]
fn fp8_with_ue8m0_scales_is_the_fp8_value_times_the_power_of_two() {
    let (rows, cols) = (200, 300); // partial blocks in both directions: a 2 × 3 grid
    let w = bytes(rows * cols, 7, finite_fp8);
    let s = bytes(6, 9, |b| 115 + b % 20);
    let inv: Vec<u8> = s
        .iter()
        .flat_map(|&e| e8m0_to_f32(e).to_le_bytes())
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let ck = checkpoint(
        tmp.path(),
        &[
            ("a.weight", Dtype::F8_E4M3, vec![rows, cols], w.clone()),
            ("a.scale", Dtype::F8_E8M0, vec![2, 3], s.clone()),
            ("b.weight", Dtype::F8_E4M3, vec![rows, cols], w.clone()),
            ("b.weight_scale_inv", Dtype::F32, vec![2, 3], inv),
        ],
    );
    let a = ck.matrix("a.weight", rows, cols).unwrap();
    assert_eq!(a.dtype, DType::F8E4M3Block128, "kept in FP8, not expanded");
    let got = a.to_f32().data;
    for r in 0..rows {
        for c in 0..cols {
            let want = fp8_e4m3_to_f32(w[r * cols + c]) * e8m0_to_f32(s[(r / 128) * 3 + c / 128]);
            assert_eq!(got[r * cols + c].to_bits(), want.to_bits(), "({r}, {c})");
        }
    }
    // Hugging Face's f32 `weight_scale_inv` spelling of the same scales: the same matrix.
    let b = ck.matrix("b.weight", rows, cols).unwrap();
    assert_eq!(b.to_f32().data, got);
}

#[test]
fn fp4_experts_are_repacked_exactly_from_bytes_or_f4() {
    let (rows, cols) = (64, 96);
    let codes = bytes(rows * cols / 2, 11, |b| b);
    let s = bytes(rows * cols / 32, 13, |b| 118 + b % 16);
    let tmp = tempfile::tempdir().unwrap();
    let ck = checkpoint(
        tmp.path(),
        &[
            ("e.weight", Dtype::I8, vec![rows, cols / 2], codes.clone()),
            ("e.scale", Dtype::F8_E8M0, vec![rows, cols / 32], s.clone()),
            ("f.weight", Dtype::F4, vec![rows, cols], codes.clone()),
            ("f.scale", Dtype::F8_E8M0, vec![rows, cols / 32], s.clone()),
        ],
    );
    let e = ck.matrix("e.weight", rows, cols).unwrap();
    assert_eq!(e.dtype, DType::MXFP4);
    let got = e.to_f32().data;
    for r in 0..rows {
        for c in 0..cols {
            let i = r * cols + c;
            let code = (codes[i / 2] >> (4 * (i % 2))) & 0x0F;
            let want = E2M1[code as usize] * e8m0_to_f32(s[i / 32]);
            assert_eq!(got[i], want, "({r}, {c})");
        }
    }
    assert_eq!(
        ck.matrix("f.weight", rows, cols).unwrap().to_f32().data,
        got
    );
}

#[test]
fn malformed_release_tensors_name_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = checkpoint(
        tmp.path(),
        &[
            (
                "grid.weight",
                Dtype::F8_E4M3,
                vec![200, 300],
                vec![0; 60_000],
            ),
            ("grid.scale", Dtype::F8_E8M0, vec![3, 2], vec![127; 6]),
            (
                "nan.weight",
                Dtype::F8_E4M3,
                vec![128, 128],
                vec![0; 16_384],
            ),
            ("nan.scale", Dtype::F8_E8M0, vec![1, 1], vec![255]),
            (
                "bare.weight",
                Dtype::F8_E4M3,
                vec![128, 128],
                vec![0; 16_384],
            ),
            ("noscale.weight", Dtype::I8, vec![4, 16], vec![0; 64]),
            ("fscale.weight", Dtype::I8, vec![4, 16], vec![0; 64]),
            ("fscale.scale", Dtype::BF16, vec![4, 1], vec![0; 8]),
        ],
    );
    let err = |name: &str, rows, cols| ck.matrix(name, rows, cols).unwrap_err().to_string();
    assert_eq!(
        err("grid.weight", 200, 300),
        "tensor `grid.scale`: expected shape [2, 3], found [3, 2]"
    );
    assert_eq!(
        err("nan.weight", 128, 128),
        "tensor `nan.scale`: scale 0 is 0xFF (NaN in F8_E8M0)"
    );
    assert_eq!(
        err("bare.weight", 128, 128),
        "tensor `bare.weight`: FP8 weight without its block scales \
         `bare.weight_scale_inv` or `bare.scale`"
    );
    assert_eq!(
        err("noscale.weight", 4, 32),
        "tensor `noscale.weight`: FP4 codes without their `.scale` tensor"
    );
    assert_eq!(
        err("fscale.weight", 4, 32),
        "tensor `fscale.scale`: FP4 scales stored as BF16 (expected F8_E8M0)"
    );
}
