//! Reference f32 operations.

use crate::dtype::DType;
use crate::kernels::{self, RowData, WeightRef};
use crate::leaf::f32_bytes;

/// A dense row-major matrix `[rows, cols]`; a linear layer's weight is `[out, in]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Mat {
    /// Wraps `data`; returns `None` when its length is not `rows * cols`.
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Option<Mat> {
        (data.len() == rows * cols).then_some(Mat { rows, cols, data })
    }

    /// Row `i` as a slice.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// `y = x · selfᵀ` for `x` of shape `[n, cols]`; returns `[n, rows]`.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let n = x.len() / self.cols;
        let mut y = vec![0.0; n * self.rows];
        matmul(x, n, self, &mut y);
        y
    }
}

/// Dot product over the common length of `a` and `b`, computed by the same kernel as one
/// output of [`matmul`]/[`Mat::forward`]: `dot(w.row(r), x_t)` equals that product's `y[t, r]`
/// bit for bit (and `dot(a, b) == dot(b, a)`), so code may mix the two forms (e.g. the
/// absorbed and the decompressed attention) without results drifting apart.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    (kernels::best().dot_f32)(&a[..n], &b[..n])
}

/// `y[n, w.rows] = x[n, w.cols] · wᵀ` on the worker pool, with the best f32 kernel this CPU
/// supports (register-tiled over rows × tokens).
pub fn matmul(x: &[f32], n: usize, w: &Mat, y: &mut [f32]) {
    assert_eq!(x.len(), n * w.cols, "matmul: x is not [n, in]");
    assert_eq!(y.len(), n * w.rows, "matmul: y is not [n, out]");
    assert_eq!(
        w.data.len(),
        w.rows * w.cols,
        "matmul: weight is not [rows, cols]"
    );
    let wr = WeightRef {
        dtype: DType::F32,
        bytes: f32_bytes(&w.data),
        rows: w.rows,
        cols: w.cols,
        row_bytes: w.cols * 4,
        scales: &[],
        packed: false,
    };
    kernels::gemm(kernels::best(), &wr, x, n, y);
}

/// `y[n, rows] = x[n, cols] · rowsᵀ` for f32 or f16 rows (e.g. attention scores of `n`
/// query heads against a block of cached keys), with the best kernel this CPU supports. Runs
/// on the calling thread.
pub fn rows_matmul(x: &[f32], n: usize, rows: RowData<'_>, y: &mut [f32]) {
    assert_eq!(x.len(), n * rows.cols(), "rows_matmul: x is not [n, cols]");
    assert_eq!(y.len(), n * rows.rows(), "rows_matmul: y is not [n, rows]");
    (kernels::best().rows_dot)(x, n, rows, y)
}

/// `out[n, w] += p[n, rows] · rows[:, ..w]` for f32 or f16 rows, over their first
/// `w = out.len() / n` columns (e.g. attention's weighted sum of cached latents for `n` query
/// heads), with the best kernel this CPU supports. Runs on the calling thread.
pub fn rows_weighted_sum(p: &[f32], n: usize, rows: RowData<'_>, out: &mut [f32]) {
    assert_eq!(
        p.len(),
        n * rows.rows(),
        "rows_weighted_sum: p is not [n, rows]"
    );
    assert!(
        n > 0 && out.len().is_multiple_of(n) && out.len() / n <= rows.cols(),
        "rows_weighted_sum: out is not [n, w ≤ cols]"
    );
    (kernels::best().weighted_sum)(p, n, rows, out)
}

/// RMSNorm of each `dim`-row of `x` into `out`: `x · rsqrt(mean(x²) + eps) · w`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "rms_norm: lengths");
    out.copy_from_slice(x);
    rms_norm_in_place(out, w, eps);
}

/// Rows per pool task in [`rms_norm_in_place`].
const NORM_ROWS_PER_TASK: usize = 16;

/// `1 / sqrt(mean(x²) + eps)`, the mean taken in f64.
fn rms_inverse(x: &[f32], eps: f32) -> f32 {
    let ms = x.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / x.len() as f64;
    (1.0 / (ms + eps as f64).sqrt()) as f32
}

/// In-place RMSNorm of each `w.len()`-row of `x`.
pub fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let dim = w.len();
    let work = 4 * x.len();
    crate::parallel_chunks(x, dim * NORM_ROWS_PER_TASK, work, |_, xc| {
        for xr in xc.chunks_exact_mut(dim) {
            let inv = rms_inverse(xr, eps);
            for i in 0..dim {
                xr[i] = xr[i] * inv * w[i];
            }
        }
    });
}

/// `g[i] = silu(g[i]) · u[i]` (SwiGLU: the gate projection times the up projection) on the
/// worker pool, with the best kernel this CPU supports.
pub fn silu_mul(g: &mut [f32], u: &[f32]) {
    assert_eq!(g.len(), u.len(), "silu_mul: lengths");
    const CHUNK: usize = 4096;
    let f = kernels::best().silu_mul;
    // ~20 multiply-adds' worth of work per element.
    crate::parallel_chunks(g, CHUNK, 20 * u.len(), |i, c| {
        f(c, &u[i * CHUNK..][..c.len()])
    });
}

/// `x[i] = e^(x[i] − shift)`, returning their sum, with the best kernel this CPU supports
/// (runs on the calling thread).
pub fn exp_sum(x: &mut [f32], shift: f32) -> f32 {
    (kernels::best().exp_sum)(x, shift)
}

/// Numerically stable softmax over the whole slice (its exponentials by the best kernel this
/// CPU supports; runs on the calling thread).
pub fn softmax_in_place(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum = exp_sum(x, max);
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `a += b` elementwise.
pub fn add_in_place(a: &mut [f32], b: &[f32]) {
    const CHUNK: usize = 16384;
    let n = a.len().min(b.len());
    // Long rows (a prefill's residual stream) go to the pool.
    crate::parallel_chunks(&mut a[..n], CHUNK, n, |i, c| {
        for (x, y) in c.iter_mut().zip(&b[i * CHUNK..]) {
            *x += *y;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_matches_naive_at_many_shapes() {
        for &(n, rows, cols) in &[(1, 1, 1), (3, 17, 9), (7, 33, 64), (16, 40, 130)] {
            let x: Vec<f32> = (0..n * cols)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.1)
                .collect();
            let wd: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.2)
                .collect();
            let w = Mat::new(rows, cols, wd).unwrap();
            let y = w.forward(&x);
            for t in 0..n {
                for r in 0..rows {
                    let want: f64 = (0..cols)
                        .map(|k| x[t * cols + k] as f64 * w.data[r * cols + k] as f64)
                        .sum();
                    assert!(
                        (y[t * rows + r] as f64 - want).abs() < 1e-4,
                        "{n}x{rows}x{cols}"
                    );
                }
            }
        }
    }

    #[test]
    fn rms_norm_unit_weight_gives_unit_rms() {
        let x = [3.0f32, 4.0, 0.0, 0.0];
        let mut out = [0.0; 4];
        rms_norm(&x, &[1.0; 4], 0.0, &mut out);
        let ms: f32 = out.iter().map(|v| v * v).sum::<f32>() / 4.0;
        assert!((ms - 1.0).abs() < 1e-6);
        assert!((out[0] / out[1] - 0.75).abs() < 1e-6);
    }

    #[test]
    fn softmax_sums_to_one_and_orders() {
        let mut x = [1.0f32, 2.0, 3.0, 12.0];
        softmax_in_place(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[3] > 0.999 && x[0] < x[1] && x[1] < x[2]);
    }
}
