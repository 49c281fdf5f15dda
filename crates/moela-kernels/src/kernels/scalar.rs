//! Portable kernels: the oracle every SIMD kernel is tested against.
//!
//! Each output is one row·token dot product. Integer formats compute exactly the integer block
//! sums the SIMD kernels compute and scale them per block; floats are summed in f64.

use super::{Acts, RowData, Task};
use crate::dtype::{DType, FP8_BLOCK};
use crate::fp::{bf16_to_f32, f16_to_f32, fp8_e4m3_to_f32};
use crate::mxfp4::{e8m0_to_f32_half, KVALUES, MXFP4_BYTES};
use crate::pack::{unpack_row, PACK_ROWS};
use crate::quant::{
    q4_k_scales_mins, q6_k_value, quantize_block_q8_act, quantize_block_q8_k, Q4_0_BYTES,
    Q4_K_BYTES, Q6_K_BYTES, Q8_0_BYTES, QK, QK_K,
};

#[inline]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// One row·token dot product per weight type: what a row-at-a-time kernel set provides to
/// [`gemm_rows`] (this module's scalar dots, the NEON dots).
pub(crate) struct RowDots {
    pub f32: fn(&[u8], &[f32]) -> f32,
    pub f16: fn(&[u8], &[f32]) -> f32,
    pub bf16: fn(&[u8], &[f32]) -> f32,
    /// `(w, srow, x)`: `srow[b]` scales columns `128b..128b+128`.
    pub fp8: fn(&[u8], &[f32], &[f32]) -> f32,
    pub q8_0: fn(&[u8], &[i8], &[f32]) -> f32,
    pub q4_0: fn(&[u8], &[i8], &[f32]) -> f32,
    pub q4_k: KQuantDot,
    pub q6_k: KQuantDot,
    /// `MXFP4` weights × f32 activations.
    pub mxfp4: fn(&[u8], &[f32]) -> f32,
}

/// `(w, qs, d, bsums)` → one K-quant row·token dot.
pub(crate) type KQuantDot = fn(&[u8], &[i8], &[f32], &[i16]) -> f32;

/// The scalar dots (the oracle).
static DOTS: RowDots = RowDots {
    f32: dot_f32,
    f16: dot_f16,
    bf16: dot_bf16,
    fp8: dot_fp8,
    q8_0: dot_q8_0,
    q4_0: dot_q4_0,
    q4_k: dot_q4_k,
    q6_k: dot_q6_k,
    mxfp4: dot_mxfp4,
};

pub(crate) fn gemm(t: &mut Task<'_>) {
    gemm_rows(t, &DOTS)
}

/// A task one row·token dot at a time with `dots`.
pub(crate) fn gemm_rows(t: &mut Task<'_>, dots: &RowDots) {
    t.validate();
    let (nr, nt, cols, rb) = (t.nr, t.nt, t.cols, t.row_bytes);
    // Packed rows are unpacked one at a time: the dots work on the file layout.
    let mut row = vec![0u8; if t.packed { rb } else { 0 }];
    for tok in 0..nt {
        for r in 0..nr {
            let w = if t.packed {
                let group = &t.w[r / PACK_ROWS * PACK_ROWS * rb..][..PACK_ROWS * rb];
                unpack_row(t.dtype, group, r % PACK_ROWS, &mut row);
                &row[..]
            } else {
                &t.w[r * rb..(r + 1) * rb]
            };
            let v = match t.acts {
                Acts::F32(x) => {
                    let x = &x[tok * cols..(tok + 1) * cols];
                    match t.dtype {
                        DType::F32 => (dots.f32)(w, x),
                        DType::F16 => (dots.f16)(w, x),
                        DType::BF16 => (dots.bf16)(w, x),
                        DType::F8E4M3Block128 => {
                            let scb = cols.div_ceil(FP8_BLOCK);
                            let srow = &t.scales[(t.r0 + r) / FP8_BLOCK * scb..][..scb];
                            (dots.fp8)(w, srow, x)
                        }
                        DType::MXFP4 => (dots.mxfp4)(w, x),
                        _ => unreachable!("validated"),
                    }
                }
                Acts::Q8 { qs, d, .. } => {
                    let nb = cols / QK;
                    let (qs, d) = (&qs[tok * cols..][..cols], &d[tok * nb..][..nb]);
                    match t.dtype {
                        DType::Q8_0 => (dots.q8_0)(w, qs, d),
                        DType::Q4_0 => (dots.q4_0)(w, qs, d),
                        _ => unreachable!("validated"),
                    }
                }
                Acts::Q8K { qs, d, bsums } => {
                    let nb = cols / QK_K;
                    let qs = &qs[tok * cols..][..cols];
                    let d = &d[tok * nb..][..nb];
                    let bs = &bsums[tok * nb * 16..][..nb * 16];
                    match t.dtype {
                        DType::Q4_K => (dots.q4_k)(w, qs, d, bs),
                        DType::Q6_K => (dots.q6_k)(w, qs, d, bs),
                        _ => unreachable!("validated"),
                    }
                }
            };
            t.out.set(tok, r, v);
        }
    }
}

pub(crate) fn dot_f32(w: &[u8], x: &[f32]) -> f32 {
    let mut s = 0.0f64;
    for (c, &xv) in w.chunks_exact(4).zip(x) {
        s += f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64 * xv as f64;
    }
    s as f32
}

/// [`dot_f32`] on f32 slices (same order, same f64 sum).
pub(crate) fn dot_f32_slices(w: &[f32], x: &[f32]) -> f32 {
    let mut s = 0.0f64;
    for (&wv, &xv) in w.iter().zip(x) {
        s += wv as f64 * xv as f64;
    }
    s as f32
}

pub(crate) fn dot_f16(w: &[u8], x: &[f32]) -> f32 {
    let mut s = 0.0f64;
    for (c, &xv) in w.chunks_exact(2).zip(x) {
        s += f16_to_f32(u16::from_le_bytes([c[0], c[1]])) as f64 * xv as f64;
    }
    s as f32
}

pub(crate) fn dot_bf16(w: &[u8], x: &[f32]) -> f32 {
    let mut s = 0.0f64;
    for (c, &xv) in w.chunks_exact(2).zip(x) {
        s += bf16_to_f32(u16::from_le_bytes([c[0], c[1]])) as f64 * xv as f64;
    }
    s as f32
}

/// One FP8 row: `srow[b]` scales columns `128b..128b+128`.
pub(crate) fn dot_fp8(w: &[u8], srow: &[f32], x: &[f32]) -> f32 {
    let mut s = 0.0f64;
    for (b, (wc, xc)) in w.chunks(FP8_BLOCK).zip(x.chunks(FP8_BLOCK)).enumerate() {
        let mut p = 0.0f64;
        for (&q, &xv) in wc.iter().zip(xc) {
            p += fp8_e4m3_to_f32(q) as f64 * xv as f64;
        }
        s += p * srow[b] as f64;
    }
    s as f32
}

/// One `MXFP4` row: each weight decoded exactly (`KVALUES[code] · 2^(e−128)`, see
/// [`crate::mxfp4`]) and multiplied with the f32 activation, summed in f64: the product of
/// the dequantized weights.
pub(crate) fn dot_mxfp4(w: &[u8], x: &[f32]) -> f32 {
    let mut s = 0.0f64;
    for (blk, xb) in w.chunks_exact(MXFP4_BYTES).zip(x.chunks_exact(QK)) {
        let d = e8m0_to_f32_half(blk[0]);
        for j in 0..QK / 2 {
            let q = blk[1 + j];
            let lo = KVALUES[(q & 0x0F) as usize] as f32 * d;
            let hi = KVALUES[(q >> 4) as usize] as f32 * d;
            s += lo as f64 * xb[j] as f64 + hi as f64 * xb[j + QK / 2] as f64;
        }
    }
    s as f32
}

pub(crate) fn dot_q8_0(w: &[u8], qs: &[i8], d: &[f32]) -> f32 {
    let mut s = 0.0f64;
    for (b, blk) in w.chunks_exact(Q8_0_BYTES).enumerate() {
        let a = &qs[b * QK..(b + 1) * QK];
        let isum: i32 = (0..QK)
            .map(|j| (blk[2 + j] as i8) as i32 * a[j] as i32)
            .sum();
        s += (f16_at(blk, 0) * d[b]) as f64 * isum as f64;
    }
    s as f32
}

pub(crate) fn dot_q4_0(w: &[u8], qs: &[i8], d: &[f32]) -> f32 {
    let mut s = 0.0f64;
    for (b, blk) in w.chunks_exact(Q4_0_BYTES).enumerate() {
        let a = &qs[b * QK..(b + 1) * QK];
        let mut isum = 0i32;
        for j in 0..16 {
            let q = blk[2 + j];
            isum += ((q & 0x0F) as i32 - 8) * a[j] as i32;
            isum += ((q >> 4) as i32 - 8) * a[j + 16] as i32;
        }
        s += (f16_at(blk, 0) * d[b]) as f64 * isum as f64;
    }
    s as f32
}

/// `Σ_sub sc·Σ q·a` and `Σ_sub m·Σ a` per super-block, scaled by `d·da` and `dmin·da`.
pub(crate) fn dot_q4_k(w: &[u8], qs: &[i8], d: &[f32], bsums: &[i16]) -> f32 {
    let mut s = 0.0f64;
    for (b, blk) in w.chunks_exact(Q4_K_BYTES).enumerate() {
        let a = &qs[b * QK_K..(b + 1) * QK_K];
        let bs = &bsums[b * 16..(b + 1) * 16];
        let (sc, m) = q4_k_scales_mins(&blk[4..16]);
        let q = &blk[16..144];
        let (mut isum, mut msum) = (0i32, 0i32);
        for c in 0..4 {
            let (mut lo, mut hi) = (0i32, 0i32);
            for i in 0..32 {
                lo += (q[32 * c + i] & 0x0F) as i32 * a[64 * c + i] as i32;
                hi += (q[32 * c + i] >> 4) as i32 * a[64 * c + 32 + i] as i32;
            }
            isum += sc[2 * c] as i32 * lo + sc[2 * c + 1] as i32 * hi;
        }
        for j in 0..8 {
            msum += m[j] as i32 * (bs[2 * j] as i32 + bs[2 * j + 1] as i32);
        }
        let (dd, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
        s += (dd * d[b]) as f64 * isum as f64 - (dmin * d[b]) as f64 * msum as f64;
    }
    s as f32
}

/// `Σ_group sc·(Σ q·a − 32·Σ a)` per super-block, scaled by `d·da`.
pub(crate) fn dot_q6_k(w: &[u8], qs: &[i8], d: &[f32], bsums: &[i16]) -> f32 {
    let mut s = 0.0f64;
    for (b, blk) in w.chunks_exact(Q6_K_BYTES).enumerate() {
        let a = &qs[b * QK_K..(b + 1) * QK_K];
        let bs = &bsums[b * 16..(b + 1) * 16];
        let mut isum = 0i32;
        for g in 0..16 {
            let sc = blk[192 + g] as i8 as i32;
            let mut p = 0i32;
            for e in 16 * g..16 * g + 16 {
                p += q6_k_value(blk, e) as i32 * a[e] as i32;
            }
            isum += sc * (p - 32 * bs[g] as i32);
        }
        s += (f16_at(blk, 208) * d[b]) as f64 * isum as f64;
    }
    s as f32
}

pub(crate) fn quant_q8(x: &[f32], qs: &mut [i8], d: &mut [f32]) {
    for (b, (xb, qb)) in x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).enumerate() {
        d[b] = quantize_block_q8_act(xb, qb);
    }
}

pub(crate) fn quant_q8k(x: &[f32], qs: &mut [i8], d: &mut [f32], bsums: &mut [i16]) {
    for (b, (xb, qb)) in x
        .chunks_exact(QK_K)
        .zip(qs.chunks_exact_mut(QK_K))
        .enumerate()
    {
        d[b] = quantize_block_q8_k(xb, qb, &mut bsums[16 * b..16 * b + 16]);
    }
}

/// `out[n, cols] += p[n, rows] · rows`, in row order.
pub(crate) fn weighted_sum(p: &[f32], n: usize, rows: RowData<'_>, out: &mut [f32]) {
    // Only the first `cols` columns (the output's width) are summed.
    let (nr, cols) = (rows.rows(), out.len().checked_div(n).unwrap_or(0));
    assert!(
        p.len() >= n * nr && cols <= rows.cols(),
        "weighted_sum: lengths"
    );
    for h in 0..n {
        let o = &mut out[h * cols..(h + 1) * cols];
        for u in 0..nr {
            let w = p[h * nr + u];
            for (c, v) in o.iter_mut().enumerate() {
                *v += w * rows.at(u, c);
            }
        }
    }
}

/// `y[n, rows] = x[n, cols] · rowsᵀ`, each dot summed in f64.
pub(crate) fn rows_dot(x: &[f32], n: usize, rows: RowData<'_>, y: &mut [f32]) {
    let (nr, cols) = (rows.rows(), rows.cols());
    assert!(
        x.len() >= n * cols && y.len() >= n * nr,
        "rows_dot: lengths"
    );
    for h in 0..n {
        for u in 0..nr {
            y[h * nr + u] = (0..cols)
                .map(|c| x[h * cols + c] as f64 * rows.at(u, c) as f64)
                .sum::<f64>() as f32;
        }
    }
}

/// `out[i] = q[i] · d`, `d` the f16 scale `scales[(offset + i) / 32]` (8-bit values widened to
/// f32: exact conversion, one rounding).
pub(crate) fn widen_q8(q: &[i8], scales: &[u16], offset: usize, out: &mut [f32]) {
    for (i, (o, &v)) in out.iter_mut().zip(q).enumerate() {
        *o = v as f32 * crate::fp::f16_to_f32(scales[(offset + i) / 32]);
    }
}

/// `g[i] = silu(g[i]) · u[i]`.
pub(crate) fn silu_mul(g: &mut [f32], u: &[f32]) {
    assert_eq!(g.len(), u.len(), "silu_mul: lengths");
    for (a, &b) in g.iter_mut().zip(u) {
        *a = crate::leaf::silu(*a) * b;
    }
}

/// `x[i] = e^(x[i] − shift)`; returns their sum (accumulated in f64).
pub(crate) fn exp_sum(x: &mut [f32], shift: f32) -> f32 {
    let mut sum = 0.0f64;
    for v in x.iter_mut() {
        *v = (*v - shift).exp();
        sum += *v as f64;
    }
    sum as f32
}
