//! Every fast kernel against its scalar twin, and quantized products against f32 products.

use super::*;
use crate::qmat::QMat;

/// Deterministic values: roughly normal (sum of three uniforms), scaled, with rare outliers.
pub(crate) fn data(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut u = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    (0..n)
        .map(|i| {
            let v = (u() + u() + u()) * scale;
            if i % 211 == 17 {
                v * 6.0
            } else {
                v
            }
        })
        .collect()
}

fn fast_isas() -> Vec<Isa> {
    Isa::available()
        .into_iter()
        .filter(|i| *i != Isa::Scalar)
        .collect()
}

/// `Σ_k |w_rk|·|x_tk|` for every output: the scale that float summation-order errors are
/// relative to.
fn abs_products(w: &[f32], x: &[f32], rows: usize, cols: usize, n: usize) -> Vec<f64> {
    let mut b = vec![0.0f64; n * rows];
    for t in 0..n {
        for r in 0..rows {
            b[t * rows + r] = (0..cols)
                .map(|k| (w[r * cols + k] as f64 * x[t * cols + k] as f64).abs())
                .sum();
        }
    }
    b
}

fn naive(w: &[f32], x: &[f32], rows: usize, cols: usize, n: usize) -> Vec<f64> {
    let mut y = vec![0.0f64; n * rows];
    for t in 0..n {
        for r in 0..rows {
            y[t * rows + r] = (0..cols)
                .map(|k| w[r * cols + k] as f64 * x[t * cols + k] as f64)
                .sum();
        }
    }
    y
}

/// The one check every shape goes through: each available fast ISA against the scalar
/// kernels (same quantized activations, so only float summation order may differ).
fn check_fast_vs_scalar(dtype: DType, rows: usize, cols: usize, n: usize) {
    let wf = data(rows * cols, (rows * 31 + cols) as u64, 0.05);
    let x = data(n * cols, (n * 7 + cols * 3 + 1) as u64, 1.0);
    let q = QMat::from_f32(dtype, rows, cols, &wf).unwrap();
    let wd = q.to_f32().data;
    let bound = abs_products(&wd, &x, rows, cols, n);
    let mut want = vec![0.0; n * rows];
    q.matmul_with(Isa::Scalar, &x, n, &mut want);
    for isa in fast_isas() {
        let mut got = vec![f32::NAN; n * rows];
        q.matmul_with(isa, &x, n, &mut got);
        assert_within_order_error(&got, &want, &bound, || {
            format!("{dtype} {isa:?} rows {rows} cols {cols} n {n}")
        });
    }
}

/// Each `got[i]` within the float summation-order tolerance of `want[i]` (relative to
/// `bound[i]`, see [`abs_products`]).
fn assert_within_order_error(got: &[f32], want: &[f32], bound: &[f64], what: impl Fn() -> String) {
    for i in 0..want.len() {
        let tol = 2e-5 * bound[i] + 1e-6;
        assert!(
            (got[i] as f64 - want[i] as f64).abs() <= tol,
            "{}: out[{i}] = {} vs {} (tol {tol:e})",
            what(),
            got[i],
            want[i]
        );
    }
}

const ROWS: [usize; 8] = [1, 2, 3, 4, 7, 8, 16, 33];
const TOKENS: [usize; 8] = [1, 2, 3, 4, 7, 8, 16, 33];

fn check_all_shapes(dtype: DType, cols_list: &[usize]) {
    for (k, &cols) in cols_list.iter().enumerate() {
        for &rows in &ROWS {
            for &n in &TOKENS {
                // Full cross product for the first column count, a diagonal for the rest.
                if k == 0 || (rows + n) % 3 == 0 {
                    check_fast_vs_scalar(dtype, rows, cols, n);
                }
            }
        }
        for n in [1, 3, 8] {
            check_fast_vs_scalar(dtype, 512, cols, n);
        }
    }
}

#[test]
fn f32_fast_matches_scalar() {
    check_all_shapes(DType::F32, &[33, 1, 7, 130, 200]);
}

#[test]
fn f16_fast_matches_scalar() {
    check_all_shapes(DType::F16, &[33, 1, 7, 130, 200]);
}

#[test]
fn bf16_fast_matches_scalar() {
    check_all_shapes(DType::BF16, &[130, 1, 7, 33, 200]);
}

#[test]
fn fp8_fast_matches_scalar() {
    check_all_shapes(DType::F8E4M3Block128, &[200, 1, 7, 33, 130, 256]);
    // Several 128-row scale blocks, with row chunks that start inside a block.
    check_fast_vs_scalar(DType::F8E4M3Block128, 300, 260, 5);
}

#[test]
fn q8_0_fast_matches_scalar() {
    check_all_shapes(DType::Q8_0, &[64, 32, 96]);
}

#[test]
fn q4_0_fast_matches_scalar() {
    check_all_shapes(DType::Q4_0, &[96, 32, 64]);
}

#[test]
fn q4_k_fast_matches_scalar() {
    check_all_shapes(DType::Q4_K, &[256, 512]);
}

#[test]
fn q6_k_fast_matches_scalar() {
    check_all_shapes(DType::Q6_K, &[512, 256]);
}

#[test]
fn mxfp4_fast_matches_scalar() {
    check_all_shapes(DType::MXFP4, &[96, 32, 64, 160, 1024]);
}

/// `MXFP4` weights from release-layout bytes (every code, the −0 one included, over 26
/// exponents): the fast kernels against the scalar ones, and the scalar kernels against the
/// f64 product of the dequantized weights (the exact float path computes exactly that, up to
/// summation order).
#[test]
fn mxfp4_release_weights_match_scalar_and_dequantized_product() {
    for (rows, cols, n) in [(5, 64, 1), (16, 256, 3), (33, 96, 8), (9, 2048, 2)] {
        let codes: Vec<u8> = data(rows * cols / 2, cols as u64, 1.0)
            .iter()
            .map(|v| (v.to_bits() >> 7) as u8)
            .collect();
        let scales: Vec<u8> = (0..rows * cols / 32)
            .map(|i| 110 + (i * 7 % 26) as u8)
            .collect();
        let q = QMat::from_mxfp4_release(rows, cols, &codes, &scales).unwrap();
        let wd = q.to_f32().data;
        let x = data(n * cols, rows as u64, 1.0);
        let exact = naive(&wd, &x, rows, cols, n);
        let bound = abs_products(&wd, &x, rows, cols, n);
        let mut want = vec![0.0; n * rows];
        q.matmul_with(Isa::Scalar, &x, n, &mut want);
        for i in 0..n * rows {
            let tol = 1e-6 * bound[i] + 1e-30;
            assert!(
                (want[i] as f64 - exact[i]).abs() <= tol,
                "scalar [{rows}, {cols}] n {n} out[{i}] = {} vs {}",
                want[i],
                exact[i]
            );
        }
        for isa in fast_isas() {
            let mut got = vec![f32::NAN; n * rows];
            q.matmul_with(isa, &x, n, &mut got);
            assert_within_order_error(&got, &want, &bound, || {
                format!("release mxfp4 {isa:?} [{rows}, {cols}] n {n}")
            });
        }
    }
}

/// `Q8_0` weights where every fifth quant is −128.
fn q8_0_with_minus_128(rows: usize, cols: usize) -> QMat {
    let mut bytes = vec![0u8; rows * cols / 32 * 34];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = match i % 34 {
            0 => 0x00,
            1 => 0x2C, // f16 0.0625
            j if j % 5 == 0 => 0x80,
            j => (j * 37 % 256) as u8,
        };
    }
    QMat::from_storage(DType::Q8_0, rows, cols, Storage::Owned(bytes), None).unwrap()
}

#[test]
fn q8_0_weights_with_minus_128_match_scalar() {
    // ggml never writes −128, but a file may hold it; the |w| side of vpmaddubsw handles it.
    let (rows, cols, n) = (5, 64, 3);
    let q = q8_0_with_minus_128(rows, cols);
    let x = data(n * cols, 9, 1.0);
    let mut want = vec![0.0; n * rows];
    q.matmul_with(Isa::Scalar, &x, n, &mut want);
    for isa in fast_isas() {
        let mut got = vec![0.0; n * rows];
        q.matmul_with(isa, &x, n, &mut got);
        for i in 0..n * rows {
            assert!(
                (got[i] - want[i]).abs() <= 1e-4 * want[i].abs().max(1.0),
                "{isa:?} {i}"
            );
        }
    }
}

use crate::storage::Storage;

/// Packed (row-interleaved) weights on every ISA, scalar included, against the file layout's
/// scalar result.
fn check_packed(q: &QMat, n: usize, seed: u64) {
    let (rows, cols) = (q.rows, q.cols);
    let x = data(n * cols, seed, 1.0);
    let bound = abs_products(&q.to_f32().data, &x, rows, cols, n);
    let mut want = vec![0.0; n * rows];
    q.matmul_with(Isa::Scalar, &x, n, &mut want);
    let p = q.clone().into_packed();
    assert!(p.is_packed());
    assert_eq!(p.to_f32().data, q.to_f32().data, "packed dequantization");
    assert_eq!(p.file_bytes(), q.bytes(), "packed file bytes");
    for isa in Isa::available() {
        let mut got = vec![f32::NAN; n * rows];
        p.matmul_with(isa, &x, n, &mut got);
        assert_within_order_error(&got, &want, &bound, || {
            format!("packed {} {isa:?} rows {rows} cols {cols} n {n}", q.dtype)
        });
    }
}

/// Both walks of one-token products over file-layout rows ([`FileRowWalk`]: `Q8_0`, `Q4_0`,
/// `MXFP4`, F32/F16/BF16) match the scalar twin and each other bit for bit, with row counts that
/// leave a tail after the four-row tiles and float widths that end in partial vector steps; the
/// packed `Q8_0`/`Q4_0` copies (one 8-row group at a time, or four side by side) likewise.
/// (Other tests may run meanwhile under either walk: both give the same bits.)
#[test]
fn file_row_walks_agree() {
    let before = FileRowWalk::active();
    let float_shapes = [(37, 333), (5, 328), (9, 2048)];
    for dtype in [
        DType::Q8_0,
        DType::Q4_0,
        DType::MXFP4,
        DType::F32,
        DType::F16,
        DType::BF16,
    ] {
        let float = matches!(dtype, DType::F32 | DType::F16 | DType::BF16);
        let extra: &[(usize, usize)] = if float { &float_shapes } else { &[] };
        for &(rows, cols) in [(1, 32), (7, 96), (33, 64), (1408, 64)].iter().chain(extra) {
            let mut outs = Vec::new();
            for walk in [FileRowWalk::Single, FileRowWalk::Quad] {
                walk.set();
                check_fast_vs_scalar(dtype, rows, cols, 1);
                let w = data(rows * cols, 9, 0.05);
                let x = data(cols, 10, 1.0);
                let q = QMat::from_f32(dtype, rows, cols, &w).unwrap();
                let packed = matches!(dtype, DType::Q8_0 | DType::Q4_0) && rows % 8 == 0;
                let p = packed.then(|| q.clone().into_packed());
                for isa in fast_isas() {
                    let mut y = vec![f32::NAN; rows];
                    q.matmul_with(isa, &x, 1, &mut y);
                    if let Some(p) = &p {
                        let mut yp = vec![f32::NAN; rows];
                        p.matmul_with(isa, &x, 1, &mut yp);
                        y.extend(yp);
                    }
                    outs.push((isa, walk, y));
                }
            }
            for (isa, walk, y) in &outs {
                let (_, _, quad) = outs
                    .iter()
                    .find(|(i, w, _)| i == isa && *w == FileRowWalk::Quad)
                    .unwrap();
                assert_eq!(y, quad, "{dtype} {isa:?} {walk:?} rows {rows}");
            }
        }
    }
    before.set();
}

#[test]
fn packed_q8_0_and_q4_0_match_file_layout() {
    for dtype in [DType::Q8_0, DType::Q4_0] {
        for (k, &cols) in [96, 32, 64, 160].iter().enumerate() {
            for rows in [8, 16, 24, 40] {
                for n in [1, 2, 3, 4, 5, 7, 8, 16, 33] {
                    if k == 0 || (rows / 8 + n) % 3 == 0 {
                        let w = data(rows * cols, (rows * 31 + cols) as u64, 0.05);
                        let q = QMat::from_f32(dtype, rows, cols, &w).unwrap();
                        check_packed(&q, n, (n * 7 + cols) as u64);
                    }
                }
            }
        }
        let w = data(512 * 64, 5, 0.05);
        let q = QMat::from_f32(dtype, 512, 64, &w).unwrap();
        for n in [1, 3, 8, 70] {
            check_packed(&q, n, n as u64);
        }
        // Long rows (520 rows: the tasks get 40 rows or more, so a single token runs a
        // 4-group tile and a tail; rows longer than the prefetch distance).
        let cols = 7296;
        let w = data(520 * cols, 6, 0.05);
        let q = QMat::from_f32(dtype, 520, cols, &w).unwrap();
        for n in [1, 2] {
            check_packed(&q, n, n as u64);
        }
    }
}

#[test]
fn packed_q8_0_with_minus_128_matches() {
    let (rows, cols) = (16, 64);
    let q = q8_0_with_minus_128(rows, cols);
    for n in [1, 4, 6] {
        check_packed(&q, n, 11);
    }
}

#[test]
fn activation_quantizers_are_bit_identical() {
    for isa in fast_isas() {
        let ks = kernel_set(isa).unwrap();
        for seed in 0..20u64 {
            let cols = 512;
            let mut x = data(cols, seed, if seed % 3 == 0 { 1e-3 } else { 2.0 });
            if seed == 1 {
                x[..256].fill(0.0); // an all-zero block
            }
            if seed == 2 {
                // Ties in magnitude with opposite signs: the first one sets the sign of d.
                x[10] = 9.0;
                x[3] = -9.0;
                x[300] = 9.0;
                x[299] = -9.0;
            }
            let (mut q1, mut d1) = (vec![0i8; cols], vec![0f32; cols / 32]);
            let (mut q2, mut d2) = (vec![1i8; cols], vec![1f32; cols / 32]);
            (SCALAR.quant_q8)(&x, &mut q1, &mut d1);
            (ks.quant_q8)(&x, &mut q2, &mut d2);
            assert_eq!(q1, q2, "{isa:?} q8 seed {seed}");
            assert_eq!(d1, d2, "{isa:?} q8 d seed {seed}");
            let (mut q1, mut d1, mut b1) = (vec![0i8; cols], vec![0f32; 2], vec![0i16; 32]);
            let (mut q2, mut d2, mut b2) = (vec![1i8; cols], vec![1f32; 2], vec![1i16; 32]);
            (SCALAR.quant_q8k)(&x, &mut q1, &mut d1, &mut b1);
            (ks.quant_q8k)(&x, &mut q2, &mut d2, &mut b2);
            assert_eq!(q1, q2, "{isa:?} q8k seed {seed}");
            assert_eq!(d1.map_bits(), d2.map_bits(), "{isa:?} q8k d seed {seed}");
            assert_eq!(b1, b2, "{isa:?} q8k bsums seed {seed}");
        }
    }
}

trait Bits {
    fn map_bits(&self) -> Vec<u32>;
}
impl Bits for Vec<f32> {
    fn map_bits(&self) -> Vec<u32> {
        self.iter().map(|v| v.to_bits()).collect()
    }
}

/// Worst-case effect of quantizing `x` to 8 bits in blocks of `blk`: each value moves by at
/// most half a step, `amax_block / 254`.
fn act_quant_bound(
    w: &[f32],
    x: &[f32],
    rows: usize,
    cols: usize,
    n: usize,
    blk: usize,
) -> Vec<f64> {
    let mut b = vec![0.0f64; n * rows];
    for t in 0..n {
        let xs = &x[t * cols..(t + 1) * cols];
        let half_step: Vec<f64> = xs
            .chunks(blk)
            .map(|c| c.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64 / 254.0)
            .collect();
        for r in 0..rows {
            b[t * rows + r] = (0..cols)
                .map(|k| (w[r * cols + k] as f64).abs() * half_step[k / blk])
                .sum();
        }
    }
    b
}

#[test]
fn quantized_matmul_close_to_f32_of_dequantized_weights() {
    let (rows, cols, n) = (40, 512, 5);
    let wf = data(rows * cols, 3, 0.05);
    let x = data(n * cols, 4, 1.0);
    for dtype in DType::ALL {
        let q = QMat::from_f32(dtype, rows, cols, &wf).unwrap();
        let wd = q.to_f32().data;
        let exact = naive(&wd, &x, rows, cols, n);
        let bound = abs_products(&wd, &x, rows, cols, n);
        let aq = match dtype {
            DType::Q8_0 | DType::Q4_0 => act_quant_bound(&wd, &x, rows, cols, n, 32),
            DType::Q4_K | DType::Q6_K => act_quant_bound(&wd, &x, rows, cols, n, 256),
            _ => vec![0.0; n * rows],
        };
        for isa in Isa::available() {
            let mut y = vec![0.0; n * rows];
            q.matmul_with(isa, &x, n, &mut y);
            for i in 0..n * rows {
                let tol = aq[i] * 1.001 + 2e-5 * bound[i] + 1e-6;
                assert!(
                    (y[i] as f64 - exact[i]).abs() <= tol,
                    "{dtype} {isa:?} out[{i}] = {} vs {} (tol {tol:e})",
                    y[i],
                    exact[i]
                );
            }
        }
    }
}

#[test]
fn quantized_matmul_close_to_f32_of_original_weights() {
    let (rows, cols, n) = (64, 1024, 4);
    let wf = data(rows * cols, 5, 0.05);
    let x = data(n * cols, 6, 1.0);
    let exact = naive(&wf, &x, rows, cols, n);
    let norm = (exact.iter().map(|v| v * v).sum::<f64>() / exact.len() as f64).sqrt();
    for (dtype, rel) in [
        (DType::F32, 1e-6),
        (DType::F16, 1e-3),
        (DType::BF16, 8e-3),
        (DType::F8E4M3Block128, 0.05),
        (DType::Q8_0, 0.01),
        (DType::Q6_K, 0.03),
        (DType::Q4_K, 0.08),
        (DType::Q4_0, 0.12),
        // Power-of-two block scales: about 12% on this data.
        (DType::MXFP4, 0.15),
    ] {
        let q = QMat::from_f32(dtype, rows, cols, &wf).unwrap();
        let y = q.forward(&x);
        let err = (y
            .iter()
            .zip(&exact)
            .map(|(a, b)| (*a as f64 - b).powi(2))
            .sum::<f64>()
            / exact.len() as f64)
            .sqrt();
        assert!(
            err <= rel * norm,
            "{dtype}: relative RMS error {:.4}",
            err / norm
        );
    }
}

#[test]
fn q4_0_known_matmul() {
    // One block, d = 0.5, nibble j → element j (low) and 15 − j → element 16 + j (high);
    // x = element index / 31 is quantized exactly enough that the result is Σ w·x to 1e-3.
    let mut b = vec![0u8; 18];
    b[0..2].copy_from_slice(&crate::fp::f32_to_f16(0.5).to_le_bytes());
    for j in 0..16u8 {
        b[2 + j as usize] = j | ((15 - j) << 4);
    }
    let q = QMat::from_storage(DType::Q4_0, 1, 32, Storage::Owned(b), None).unwrap();
    let x: Vec<f32> = (0..32).map(|k| k as f32 / 31.0).collect();
    let want: f32 = (0..32)
        .map(|k| {
            let nib = if k < 16 { k } else { 15 - (k - 16) };
            (nib as f32 - 8.0) * 0.5 * x[k]
        })
        .sum();
    for isa in Isa::available() {
        let mut y = [0.0f32];
        q.matmul_with(isa, &x, 1, &mut y);
        assert!((y[0] - want).abs() < 1e-2, "{isa:?}: {} vs {want}", y[0]);
    }
}

#[test]
fn mat_matmul_uses_fast_kernels_and_matches_naive() {
    for &(n, rows, cols) in &[
        (1, 1, 1),
        (3, 17, 9),
        (7, 33, 64),
        (16, 40, 130),
        (70, 9, 40),
    ] {
        let w = crate::ops::Mat::new(rows, cols, data(rows * cols, 11, 0.1)).unwrap();
        let x = data(n * cols, 12, 1.0);
        let y = w.forward(&x);
        let exact = naive(&w.data, &x, rows, cols, n);
        let bound = abs_products(&w.data, &x, rows, cols, n);
        for i in 0..n * rows {
            assert!(
                (y[i] as f64 - exact[i]).abs() <= 1e-5 * bound[i] + 1e-6,
                "{n}x{rows}x{cols}"
            );
        }
    }
}

#[test]
fn many_tokens_span_several_token_blocks() {
    // n > TOKEN_BLOCK exercises the token-chunk split of the driver.
    for dtype in [DType::Q4_0, DType::Q6_K, DType::F16, DType::MXFP4] {
        let cols = dtype.block_size().max(64);
        check_fast_vs_scalar(dtype, 12, cols, 2 * TOKEN_BLOCK + 5);
        let wf = data(12 * cols, 1, 0.05);
        let x = data(133 * cols, 2, 1.0);
        let q = QMat::from_f32(dtype, 12, cols, &wf).unwrap();
        let wd = q.to_f32().data;
        let y = q.forward(&x);
        let exact = naive(&wd, &x, 12, cols, 133);
        let aq = if dtype.is_quantized() {
            act_quant_bound(&wd, &x, 12, cols, 133, dtype.block_size())
        } else {
            vec![0.0; y.len()]
        };
        let bound = abs_products(&wd, &x, 12, cols, 133);
        for i in 0..y.len() {
            let tol = aq[i] * 1.001 + 2e-5 * bound[i] + 1e-6;
            assert!((y[i] as f64 - exact[i]).abs() <= tol, "{dtype} {i}");
        }
    }
}

#[test]
fn zero_sized_products() {
    let q = QMat::from_f32(DType::Q8_0, 3, 32, &[0.5; 96]).unwrap();
    let mut y: Vec<f32> = vec![];
    q.matmul(&[], 0, &mut y);
    let q = QMat::from_f32(DType::F32, 0, 8, &[]).unwrap();
    q.matmul(&[1.0; 16], 2, &mut y);
    let q = QMat::from_f32(DType::F16, 2, 0, &[]).unwrap();
    let mut y = vec![7.0; 6];
    q.matmul(&[], 3, &mut y);
    assert!(y.iter().all(|v| *v == 0.0));
}

#[test]
fn prepared_input_serves_several_matrices() {
    let (cols, n) = (256, 3);
    let x = data(n * cols, 21, 1.0);
    let gate = QMat::from_f32(DType::Q4_K, 10, cols, &data(10 * cols, 22, 0.05)).unwrap();
    let up = QMat::from_f32(DType::Q6_K, 7, cols, &data(7 * cols, 23, 0.05)).unwrap();
    let p = gate.prepare(&x, n);
    assert!(p.fits(DType::Q6_K) && !p.fits(DType::Q8_0) && p.n() == n);
    for m in [&gate, &up] {
        let mut a = vec![0.0; n * m.rows];
        let mut b = vec![0.0; n * m.rows];
        m.matmul_prepared(&p, &mut a);
        m.matmul(&x, n, &mut b);
        assert_eq!(a, b);
    }
    let f = QMat::from_f32(DType::BF16, 5, cols, &data(5 * cols, 24, 0.05)).unwrap();
    let pf = f.prepare(&x, n);
    let (mut a, mut b) = (vec![0.0; n * 5], vec![0.0; n * 5]);
    f.matmul_prepared(&pf, &mut a);
    f.matmul(&x, n, &mut b);
    assert_eq!(a, b);
}

#[test]
#[should_panic(expected = "prepared for other weights")]
fn prepared_input_rejects_other_formats() {
    let x = data(64, 1, 1.0);
    let a = QMat::from_f32(DType::Q8_0, 2, 64, &data(128, 2, 0.1)).unwrap();
    let b = QMat::from_f32(DType::F16, 2, 64, &data(128, 3, 0.1)).unwrap();
    let p = a.prepare(&x, 1);
    let mut y = vec![0.0; 2];
    b.matmul_prepared(&p, &mut y);
}

#[test]
fn results_do_not_depend_on_batch_size_or_isa_tiling() {
    // A token's output must be bit-identical however many tokens share the call (perplexity
    // windows and batched decoding rely on it).
    // Float types also at widths whose 8-column steps are odd (328: the last 8 columns go to
    // the low half of a 512-bit accumulator) or that end in a scalar tail (333).
    let cases = DType::ALL.iter().flat_map(|&d| {
        let widths: &[usize] = match d {
            DType::F32 | DType::F16 | DType::BF16 => &[512, 328, 333],
            _ => &[512],
        };
        widths.iter().map(move |&w| (d, w))
    });
    for (dtype, cols) in cases {
        let rows = 37;
        let q = QMat::from_f32(dtype, rows, cols, &data(rows * cols, 31, 0.05)).unwrap();
        let x = data(70 * cols, 32, 1.0);
        let mut first: Option<Vec<f32>> = None;
        for n in [1usize, 2, 3, 5, 8, 13, 70] {
            let mut y = vec![0.0; n * rows];
            q.matmul(&x[..n * cols], n, &mut y);
            match &first {
                None => first = Some(y[..rows].to_vec()),
                Some(f) => assert_eq!(
                    f.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    y[..rows].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{dtype} × {cols}: token 0 changed with n = {n}"
                ),
            }
        }
    }
}

#[test]
fn dot_is_bit_identical_to_f32_matmul_on_every_isa() {
    for cols in [1usize, 7, 8, 16, 33, 130, 576] {
        let (rows, n) = (9, 5);
        let wf = data(rows * cols, cols as u64, 0.1);
        let x = data(n * cols, 77, 1.0);
        let q = QMat::from_f32(DType::F32, rows, cols, &wf).unwrap();
        for isa in Isa::available() {
            let ks = kernel_set(isa).unwrap();
            let mut y = vec![0.0; n * rows];
            q.matmul_with(isa, &x, n, &mut y);
            for t in 0..n {
                for r in 0..rows {
                    let (wr, xt) = (&wf[r * cols..][..cols], &x[t * cols..][..cols]);
                    let d = (ks.dot_f32)(wr, xt);
                    assert_eq!(
                        d.to_bits(),
                        y[t * rows + r].to_bits(),
                        "{isa:?} cols {cols}"
                    );
                    assert_eq!(
                        (ks.dot_f32)(xt, wr).to_bits(),
                        d.to_bits(),
                        "{isa:?} symmetric"
                    );
                }
            }
        }
        // The public form uses the active kernels, as `Mat::forward` does.
        let m = crate::ops::Mat::new(rows, cols, wf.clone()).unwrap();
        let y = m.forward(&x);
        assert_eq!(
            crate::ops::dot(m.row(3), &x[2 * cols..3 * cols]).to_bits(),
            y[2 * rows + 3].to_bits()
        );
    }
}

/// `vals` as `Q8_0` parts (zero-padded to a multiple of 32 values).
fn q8_parts(vals: &[f32]) -> (Vec<i8>, Vec<u16>) {
    let mut padded = vals.to_vec();
    padded.resize(vals.len().div_ceil(32) * 32, 0.0);
    let (mut q, mut d) = (vec![0i8; padded.len()], vec![0u16; padded.len() / 32]);
    crate::quant::quantize_q8_0_split(&padded, &mut q, &mut d);
    q.truncate(vals.len());
    (q, d)
}

/// The same rows as f32, f16 and `Q8_0`, whole and from column `c0` on (a window: stride >
/// cols; a `c0` that is not a multiple of 8 takes the Q8 rows' unaligned path).
fn row_views<'a>(
    vals: &'a [f32],
    halfs: &'a [u16],
    q8: &'a (Vec<i8>, Vec<u16>),
    cols: usize,
    c0: usize,
) -> [RowData<'a>; 6] {
    let q = RowData::q8(&q8.0, &q8.1, cols);
    [
        RowData::f32(vals, cols),
        RowData::f16(halfs, cols),
        q,
        RowData::f32(vals, cols).columns(c0, cols - c0),
        RowData::f16(halfs, cols).columns(c0, cols - c0),
        q.columns(c0, cols - c0),
    ]
}

/// The SIMD widening of 8-bit values equals its scalar spec bit for bit, tails included.
#[test]
fn widen_q8_matches_scalar() {
    let q: Vec<i8> = (0..77).map(|i| (i * 37 % 255) as i8).collect();
    let scales: Vec<u16> = (0..4)
        .map(|b| crate::fp::f32_to_f16(0.013_7 + b as f32 * 0.021))
        .collect();
    // Runs that start inside a block of 32, span several and end inside one.
    for (n, offset) in [
        (0, 0),
        (5, 0),
        (8, 3),
        (31, 0),
        (32, 0),
        (77, 0),
        (70, 19),
        (40, 24),
    ] {
        let mut want = vec![f32::NAN; n];
        super::scalar::widen_q8(&q[..n], &scales, offset, &mut want);
        for (i, w) in want.iter().enumerate() {
            let d = crate::fp::f16_to_f32(scales[(offset + i) / 32]);
            assert_eq!(w.to_bits(), (q[i] as f32 * d).to_bits());
        }
        for isa in fast_isas() {
            let mut got = vec![f32::NAN; n];
            (kernel_set(isa).unwrap().widen_q8)(&q[..n], &scales, offset, &mut got);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{isa:?} n {n} offset {offset}");
        }
    }
}

/// `widened` keeps f32/f16 rows and expands `Q8_0` rows to the very values `at` reads (whole
/// rows and windows whose blocks of 32 straddle the window's start); products over the
/// expanded rows equal those over the quants bit for bit where the SIMD kernels read the quants.
#[test]
fn widened_rows_hold_the_values_at_reads() {
    for (nr, cols) in [(16, 576), (3, 40), (5, 72)] {
        let vals = data(nr * cols, cols as u64, 1.0);
        let halfs: Vec<u16> = vals.iter().map(|&v| crate::fp::f32_to_f16(v)).collect();
        let q8 = q8_parts(&vals);
        for c0 in [0, 8, 12] {
            for rows in row_views(&vals, &halfs, &q8, cols, c0) {
                let mut scratch = Vec::new();
                let wide = rows.widened(&mut scratch);
                assert_eq!(
                    matches!(wide, RowData::F16 { .. }),
                    matches!(rows, RowData::F16 { .. })
                );
                assert!(!matches!(wide, RowData::Q8 { .. }));
                assert_eq!((wide.rows(), wide.cols()), (rows.rows(), rows.cols()));
                for r in 0..rows.rows() {
                    for c in 0..rows.cols() {
                        assert_eq!(wide.at(r, c).to_bits(), rows.at(r, c).to_bits());
                    }
                }
                if !matches!(rows, RowData::Q8 { .. }) || !rows.aligned8() {
                    continue;
                }
                let n = 4;
                let p = data(n * nr, 5, 0.3);
                let x = data(n * rows.cols(), 6, 1.0);
                for (isa, w) in fast_isas()
                    .into_iter()
                    .flat_map(|i| ROW_WIDTHS.map(|w| (i, w)))
                {
                    let ks = kernel_set(isa).unwrap();
                    with_row_vectors(w, || {
                        let (mut a, mut b) =
                            (vec![0.0; n * rows.cols()], vec![0.0; n * rows.cols()]);
                        (ks.weighted_sum)(&p, n, rows, &mut a);
                        (ks.weighted_sum)(&p, n, wide, &mut b);
                        assert_eq!(a, b, "{isa:?} {w:?} weighted_sum");
                        let (mut a, mut b) = (vec![0.0; n * nr], vec![0.0; n * nr]);
                        (ks.rows_dot)(&x, n, rows, &mut a);
                        (ks.rows_dot)(&x, n, wide, &mut b);
                        assert_eq!(a, b, "{isa:?} {w:?} rows_dot");
                    });
                }
            }
        }
    }
}

/// Both widths of the row kernels' vectors ([`RowVectors`]; only the AVX512-VNNI level reads it).
const ROW_WIDTHS: [RowVectors; 2] = [RowVectors::W256, RowVectors::W512];

#[test]
fn weighted_sum_matches_scalar() {
    for (n, nr, cols) in [
        (16, 16, 576),
        (4, 3, 32),
        (5, 7, 40),
        (1, 1, 8),
        (8, 33, 512),
    ] {
        let p = data(n * nr, (n + nr) as u64, 0.3);
        let vals = data(nr * cols, cols as u64, 1.0);
        let halfs: Vec<u16> = vals.iter().map(|&v| crate::fp::f32_to_f16(v)).collect();
        let q8 = q8_parts(&vals);
        // Whole rows and a window of their columns (stride > cols), each summed over all
        // their columns and over a prefix (the first `w` columns only).
        for rows in row_views(&vals, &halfs, &q8, cols, cols / 8) {
            let vc = rows.cols();
            for w in [vc, vc - vc / 4] {
                let init = data(n * w, 3, 1.0);
                let mut want = init.clone();
                scalar::weighted_sum(&p, n, rows, &mut want);
                for (isa, rv) in fast_isas()
                    .into_iter()
                    .flat_map(|i| ROW_WIDTHS.map(|w| (i, w)))
                {
                    let mut got = init.clone();
                    with_row_vectors(rv, || {
                        (kernel_set(isa).unwrap().weighted_sum)(&p, n, rows, &mut got)
                    });
                    for i in 0..n * w {
                        let bound: f32 = (0..nr)
                            .map(|u| (p[(i / w) * nr + u] * rows.at(u, i % w)).abs())
                            .sum::<f32>()
                            + init[i].abs();
                        assert!(
                            (got[i] - want[i]).abs() <= 1e-5 * bound + 1e-6,
                            "{isa:?} {rv:?} n {n} rows {nr} cols {vc} w {w}: [{i}] {} vs {}",
                            got[i],
                            want[i]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn rows_dot_matches_scalar() {
    for (n, nr, cols) in [
        (16, 16, 576),
        (4, 4, 8),
        (5, 7, 40),
        (1, 1, 3),
        (8, 33, 193),
    ] {
        let vals = data(nr * cols, nr as u64, 1.0);
        let halfs: Vec<u16> = vals.iter().map(|&v| crate::fp::f32_to_f16(v)).collect();
        let q8 = q8_parts(&vals);
        // Whole rows and a window of their columns (stride > cols).
        for rows in row_views(&vals, &halfs, &q8, cols, cols / 3) {
            let vc = rows.cols();
            let x = data(n * vc, (n + vc) as u64, 1.0);
            let mut want = vec![0.0; n * nr];
            scalar::rows_dot(&x, n, rows, &mut want);
            for (isa, rv) in fast_isas()
                .into_iter()
                .flat_map(|i| ROW_WIDTHS.map(|w| (i, w)))
            {
                let mut got = vec![f32::NAN; n * nr];
                with_row_vectors(rv, || {
                    (kernel_set(isa).unwrap().rows_dot)(&x, n, rows, &mut got)
                });
                for i in 0..n * nr {
                    let (h, u) = (i / nr, i % nr);
                    let bound: f32 = (0..vc).map(|c| (x[h * vc + c] * rows.at(u, c)).abs()).sum();
                    assert!(
                        (got[i] - want[i]).abs() <= 1e-5 * bound + 1e-6,
                        "{isa:?} {rv:?} n {n} rows {nr} cols {vc}: [{i}] {} vs {}",
                        got[i],
                        want[i]
                    );
                }
            }
        }
    }
}

#[test]
fn silu_mul_matches_scalar() {
    // Ordinary gates at several lengths (tails past a multiple of 8), then the extremes:
    // exp's clamps, zero, signed zeros.
    let mut cases: Vec<(Vec<f32>, Vec<f32>)> = [1, 7, 8, 9, 33, 1000]
        .into_iter()
        .map(|n| (data(n, n as u64, 12.0), data(n, n as u64 + 1, 3.0)))
        .collect();
    let edge = vec![
        -200.0, -88.5, -87.5, -86.0, -20.0, -1e-20, -0.0, 0.0, 1e-20, 0.5, 20.0, 86.0, 87.5, 88.5,
        200.0, -3.0,
    ];
    cases.push((edge.clone(), vec![1.5; edge.len()]));
    for (g, u) in cases {
        let mut want = g.clone();
        scalar::silu_mul(&mut want, &u);
        for isa in fast_isas() {
            let mut got = g.clone();
            (kernel_set(isa).unwrap().silu_mul)(&mut got, &u);
            for i in 0..g.len() {
                assert!(
                    // Past exp's clamp a gate far below −88 gives ~1e-35 instead of 0.
                    (got[i] - want[i]).abs() <= 4.0 * f32::EPSILON * want[i].abs() + 1e-30,
                    "{isa:?} silu({}) · {}: {} vs {}",
                    g[i],
                    u[i],
                    got[i],
                    want[i]
                );
            }
        }
    }
}

#[test]
fn row_views_keep_rows_and_values() {
    let v: Vec<f32> = (0..50).map(|i| i as f32).collect(); // 5 rows of 10
    let all = RowData::f32(&v, 10);
    assert_eq!((all.rows(), all.cols(), all.stride()), (5, 10, 10));
    let win = all.columns(3, 4);
    assert_eq!((win.rows(), win.cols(), win.stride()), (5, 4, 10));
    assert_eq!(win.at(4, 3), 46.0);
    let top = win.first_rows(2);
    assert_eq!((top.rows(), top.at(1, 0)), (2, 13.0));
    assert_eq!(all.first_rows(9).rows(), 5);
    assert_eq!(all.first_rows(0).columns(2, 3).rows(), 0);
}

#[test]
fn exp_sum_matches_scalar() {
    let mut edge = vec![
        f32::NEG_INFINITY,
        -200.0,
        -87.5,
        -86.9,
        -1e-20,
        0.0,
        1e-20,
        3.0,
    ];
    edge.extend(data(37, 5, 20.0));
    for shift in [0.0, 2.5, -10.0] {
        let mut want = edge.clone();
        let want_sum = scalar::exp_sum(&mut want, shift);
        for isa in fast_isas() {
            let mut got = edge.clone();
            let sum = (kernel_set(isa).unwrap().exp_sum)(&mut got, shift);
            for i in 0..edge.len() {
                // Below e^−87 the kernels flush to 0.
                assert!(
                    (got[i] - want[i]).abs() <= 4.0 * f32::EPSILON * want[i] + 2e-38,
                    "{isa:?} exp({} − {shift}): {} vs {}",
                    edge[i],
                    got[i],
                    want[i]
                );
            }
            assert!((sum - want_sum).abs() <= 1e-6 * want_sum, "{isa:?} sum");
            assert_eq!(got[0], 0.0, "{isa:?} e^−∞");
        }
    }
    assert_eq!(scalar::exp_sum(&mut [f32::NEG_INFINITY], 0.0), 0.0);
}

/// The AMX tiles: whole 16-row tiles plus a tail of 8 rows, odd and even block counts, token
/// counts around the 16-token tile, the `MIN_TOKENS` switch and tails below and above
/// `MIN_TAIL` (on the VNNI kernels / on a padded tile).
#[test]
fn packed_tiles_match_at_tile_edges() {
    #[cfg(target_os = "linux")]
    if std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|s| s.contains(" amx_int8")) {
        assert!(
            Isa::Amx.is_available(),
            "CPU lists amx_int8 but AMX kernels are off"
        );
    }
    for dtype in [DType::Q8_0, DType::Q4_0] {
        for (rows, cols) in [(48, 96), (40, 160), (16, 32)] {
            let w = data(rows * cols, (rows + 3 * cols) as u64, 0.05);
            let q = QMat::from_f32(dtype, rows, cols, &w).unwrap();
            for n in [3, 4, 5, 12, 13, 15, 16, 17, 23, 24, 29, 33, 40, 128] {
                check_packed(&q, n, (n + rows) as u64);
            }
        }
    }
    let q = q8_0_with_minus_128(32, 64);
    for n in [16, 21] {
        check_packed(&q, n, 12);
    }
}
