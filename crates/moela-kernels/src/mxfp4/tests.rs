//! The MXFP4 block format against llama.cpp's `gguf` package (golden file), the release-layout
//! conversion against a direct decoding of that layout, round trips and size errors.

use super::*;
use crate::qmat::QMat;
use crate::storage::Storage;

/// e2m1 magnitudes of codes 0..8 (OCP MX v1.0), independent of [`KVALUES`].
const E2M1: [f64; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];

/// Element `k` of a `[rows, cols]` release-layout matrix, decoded directly: e2m1(code) ·
/// 2^(e − 127), rounded to f32 once (exact for every finite result).
fn release_value(codes: &[u8], scales: &[u8], cols: usize, r: usize, c: usize) -> f32 {
    let k = r * cols + c;
    let code = (codes[k / 2] >> (4 * (k % 2))) & 0x0F;
    let e = scales[r * (cols / 32) + c / 32];
    let mag = E2M1[(code & 7) as usize] * 2f64.powi(e as i32 - 127);
    (if code & 8 != 0 { -mag } else { mag }) as f32
}

/// Deterministic bytes (mantissa bits of the kernel tests' values).
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    crate::kernels::tests::data(n, seed, 1.0)
        .iter()
        .map(|v| (v.to_bits() >> 7) as u8)
        .collect()
}

fn golden() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/mxfp4/golden.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("golden.json")).expect("json")
}

fn hex(v: &serde_json::Value) -> Vec<u8> {
    let s = v.as_str().expect("hex string");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn u32s(v: &serde_json::Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).expect("u32 array")
}

fn f32_bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn type_and_tables_match_gguf_py() {
    let g = golden();
    assert_eq!(g["ggml_type"], DType::MXFP4.ggml_type().unwrap());
    assert_eq!(g["block_size"], DType::MXFP4.block_size());
    assert_eq!(g["type_size"], DType::MXFP4.type_size());
    assert_eq!((QK_MXFP4, MXFP4_BYTES), (32, 17));
    let kv: Vec<i8> = serde_json::from_value(g["kvalues"].clone()).unwrap();
    assert_eq!(kv, KVALUES);
    let half = u32s(&g["half_scale_bits"]);
    for e in 0..=255u8 {
        assert_eq!(e8m0_to_f32_half(e).to_bits(), half[e as usize], "e = {e}");
    }
}

#[test]
fn quantize_and_dequantize_match_gguf_py() {
    for case in golden()["quantize"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let x: Vec<f32> = u32s(&case["x_bits"])
            .into_iter()
            .map(f32::from_bits)
            .collect();
        let want = hex(&case["blocks_hex"]);
        let mut got = vec![0u8; want.len()];
        quantize_row_mxfp4(&x, &mut got);
        for (b, (g, w)) in got
            .chunks(MXFP4_BYTES)
            .zip(want.chunks(MXFP4_BYTES))
            .enumerate()
        {
            assert_eq!(g, w, "{name}: block {b}");
        }
        let q = QMat::from_f32(DType::MXFP4, 1, x.len(), &x).unwrap();
        assert_eq!(q.bytes(), &want[..], "{name}: QMat::from_f32");
        let mut y = vec![0.0; x.len()];
        dequantize_row_mxfp4(&want, &mut y);
        assert_eq!(
            f32_bits(&y),
            u32s(&case["dequant_bits"]),
            "{name}: dequantize"
        );
    }
}

#[test]
fn release_layout_matches_gguf_py() {
    let r = &golden()["release"];
    let (rows, cols) = (
        r["rows"].as_u64().unwrap() as usize,
        r["cols"].as_u64().unwrap() as usize,
    );
    let (codes, scales) = (hex(&r["codes_hex"]), hex(&r["scales_hex"]));
    let blocks = hex(&r["blocks_hex"]);
    assert_eq!(from_release(rows, cols, &codes, &scales).unwrap(), blocks);
    assert_eq!(
        to_release(rows, cols, &blocks).unwrap(),
        (codes.clone(), scales.clone())
    );
    let m = QMat::from_mxfp4_release(rows, cols, &codes, &scales).unwrap();
    assert_eq!(f32_bits(&m.to_f32().data), u32s(&r["value_bits"]));
}

#[test]
fn release_conversion_equals_direct_decoding() {
    // Every code and exponent byte (255 included: 2^128 · e2m1 overflows to ±inf in both).
    for (k, &(rows, cols)) in [(1, 32), (3, 64), (5, 96), (2, 1024), (7, 160)]
        .iter()
        .enumerate()
    {
        let codes = bytes(rows * cols / 2, 2 * k as u64 + 1);
        let scales = bytes(rows * cols / 32, 2 * k as u64 + 2);
        let m = QMat::from_mxfp4_release(rows, cols, &codes, &scales).unwrap();
        assert_eq!(m.dtype, DType::MXFP4);
        let f = m.to_f32();
        for r in 0..rows {
            for c in 0..cols {
                let want = release_value(&codes, &scales, cols, r, c);
                // `==`: the −0 code decodes to +0 in ggml's table.
                assert!(f.data[r * cols + c] == want, "[{rows}, {cols}] ({r}, {c})");
            }
        }
        assert_eq!(
            to_release(rows, cols, m.bytes()).unwrap(),
            (codes, scales),
            "round trip [{rows}, {cols}]"
        );
    }
    // Large enough to run on the pool (several block groups, a partial last one).
    let (rows, cols) = (37, 4096);
    let codes = bytes(rows * cols / 2, 99);
    let scales: Vec<u8> = bytes(rows * cols / 32, 98)
        .iter()
        .map(|b| 100 + b % 40)
        .collect();
    let blocks = from_release(rows, cols, &codes, &scales).unwrap();
    let mut row = vec![0.0; cols];
    for r in [0, 18, 36] {
        dequantize_row_mxfp4(&blocks[r * cols / 32 * 17..][..cols / 32 * 17], &mut row);
        for (c, v) in row.iter().enumerate() {
            assert!(
                *v == release_value(&codes, &scales, cols, r, c),
                "({r}, {c})"
            );
        }
    }
}

#[test]
fn known_block_decodes_every_code() {
    // e = 127 (scale 1): element j holds code j % 16.
    let mut codes = [0u8; 16];
    for (i, c) in codes.iter_mut().enumerate() {
        *c = ((2 * i) % 16) as u8 | ((((2 * i + 1) % 16) as u8) << 4);
    }
    let blocks = from_release(1, 32, &codes, &[127]).unwrap();
    assert_eq!(blocks[0], 127);
    // ggml's order: qs[j] holds elements j (low) and j + 16 (high), both code j here.
    for j in 0..16 {
        assert_eq!(blocks[1 + j], (j as u8) | ((j as u8) << 4), "qs[{j}]");
    }
    let mut y = [0.0f32; 32];
    dequantize_row_mxfp4(&blocks, &mut y);
    let want = [
        0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
    ];
    for (k, v) in y.iter().enumerate() {
        assert_eq!(*v, want[k % 16], "element {k}");
    }
}

#[test]
fn quantizer_rules() {
    // amax 1 → e = 125, half scale 0.125: ties go to the smaller magnitude, values past
    // 12 units clip, −0 and values rounding to zero get code 0.
    let mut x = [0.0f32; 32];
    x[0] = 1.0;
    x[1] = 0.0625; // 0.5 units: 0 or 1 → 0
    x[2] = -0.3125; // −2.5 units: −2 or −3 → −2 (code 10)
    x[3] = 0.625; // 5 units: 4 or 6 → 4 (code 4)
    x[4] = -0.0;
    x[5] = -0.01;
    x[16] = 0.95; // 7.6 units → 8 (code 6)
    let mut b = [0u8; 17];
    quantize_row_mxfp4(&x, &mut b);
    assert_eq!(b[0], 125);
    assert_eq!(b[1], 6 | (6 << 4), "x[0] = 1 → 8 units; x[16] → 8 units");
    assert_eq!([b[2], b[3], b[4], b[5], b[6]], [0, 10, 4, 0, 0]);
    let mut y = [0.0f32; 32];
    dequantize_row_mxfp4(&b, &mut y);
    assert_eq!([y[0], y[2], y[3], y[16]], [1.0, -0.25, 0.5, 1.0]);
    // A block maximum of 1.9 (15.2 units) clips to 12 units = 1.5.
    x[0] = -1.9;
    quantize_row_mxfp4(&x, &mut b);
    assert_eq!((b[0], b[1] & 0x0F), (125, 15));
    // All zero: e = 0, every code 0.
    quantize_row_mxfp4(&[0.0; 32], &mut b);
    assert_eq!(b, [0u8; 17]);
}

#[test]
fn requantizing_dequantized_values_is_the_identity() {
    let x: Vec<f32> = bytes(64 * 64, 5)
        .chunks(2)
        .map(|p| (p[0] as f32 - 127.5) * (1.0 + p[1] as f32 / 16.0) * 1e-3)
        .collect();
    let mut b = vec![0u8; 64 * 17];
    quantize_row_mxfp4(&x, &mut b);
    let mut y = vec![0.0; x.len()];
    dequantize_row_mxfp4(&b, &mut y);
    let mut b2 = vec![0u8; b.len()];
    quantize_row_mxfp4(&y, &mut b2);
    assert_eq!(b, b2);
    // Error: at most a quarter of the block's largest magnitude (see the module docs).
    for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (u, v) in xb.iter().zip(yb) {
            assert!((u - v).abs() <= amax / 4.0, "{u} → {v} (amax {amax})");
        }
    }
}

#[test]
fn bad_sizes_are_errors_naming_the_problem() {
    let e = from_release(2, 48, &[0; 48], &[0; 3]).unwrap_err();
    assert_eq!(
        e,
        KernelError::BadCols {
            dtype: DType::MXFP4,
            cols: 48,
            block: 32
        }
    );
    assert!(
        e.to_string()
            .contains("not a multiple of the block size 32"),
        "{e}"
    );
    let e = from_release(2, 64, &[0; 63], &[0; 4]).unwrap_err();
    assert_eq!(
        e,
        KernelError::BadCodes {
            rows: 2,
            cols: 64,
            expected: 64,
            got: 63
        }
    );
    assert!(e.to_string().contains("[2, 32]"), "{e}");
    let e = QMat::from_mxfp4_release(2, 64, &[0; 64], &[0; 2]).unwrap_err();
    assert_eq!(
        e,
        KernelError::BadScaleGrid {
            dtype: DType::MXFP4,
            rows: 2,
            cols: 64,
            block: 32,
            expected: 4,
            got: 2
        }
    );
    assert!(e.to_string().contains("[2, 2] grid"), "{e}");
    assert!(matches!(
        from_release(usize::MAX / 8, 64, &[], &[]),
        Err(KernelError::TooLarge { .. })
    ));
    assert!(matches!(
        to_release(2, 64, &[0; 67]),
        Err(KernelError::BadLength {
            expected: 68,
            got: 67,
            ..
        })
    ));
    assert!(matches!(
        QMat::from_storage(DType::MXFP4, 2, 64, Storage::Owned(vec![0; 69]), None),
        Err(KernelError::BadLength {
            expected: 68,
            got: 69,
            ..
        })
    ));
    assert!(matches!(
        QMat::from_storage(DType::MXFP4, 2, 40, Storage::Owned(vec![0; 68]), None),
        Err(KernelError::BadCols { cols: 40, .. })
    ));
    assert_eq!(
        QMat::from_storage(
            DType::MXFP4,
            2,
            64,
            Storage::Owned(vec![0; 68]),
            Some(vec![1.0])
        )
        .unwrap_err(),
        KernelError::UnexpectedScales(DType::MXFP4)
    );
    assert!(matches!(
        QMat::from_f32(DType::MXFP4, 1, 33, &[0.0; 33]),
        Err(KernelError::BadCols { cols: 33, .. })
    ));
}
