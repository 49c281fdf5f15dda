//! [`QMat`]: a weight matrix in any [`DType`], owned or borrowed from a mapped file.

use crate::dtype::{DType, KernelError, FP8_BLOCK};
use crate::fp::{
    bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16, f32_to_fp8_e4m3, fp8_e4m3_to_f32,
};
use crate::kernels::{self, Isa, PreparedInput, WeightRef};
use crate::ops::Mat;
use crate::parallel::{parallel_chunks, SendPtr};
use crate::quant;
pub use crate::storage::Storage;

/// A row-major `[rows, cols]` weight matrix (a linear layer's `[out, in]`) in any [`DType`].
#[derive(Clone, Debug)]
pub struct QMat {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    data: Storage,
    /// FP8 only: `[ceil(rows/128), ceil(cols/128)]` block scales.
    scales: Option<Vec<f32>>,
    /// Rows interleaved by 8 (see `pack`) rather than the file layout.
    packed: bool,
}

/// Number of FP8 block scales a `[rows, cols]` matrix needs.
pub fn fp8_scale_count(rows: usize, cols: usize) -> usize {
    rows.div_ceil(FP8_BLOCK) * cols.div_ceil(FP8_BLOCK)
}

impl QMat {
    /// Quantizes (or converts) row-major f32 `data` of shape `[rows, cols]` into `dtype`.
    /// Quantization runs on the worker pool.
    pub fn from_f32(
        dtype: DType,
        rows: usize,
        cols: usize,
        data: &[f32],
    ) -> Result<QMat, KernelError> {
        let rb = dtype.row_bytes(cols)?;
        let total = dtype.matrix_bytes(rows, cols)?;
        let expected = rows
            .checked_mul(cols)
            .ok_or(KernelError::TooLarge { dtype, rows, cols })?;
        if data.len() != expected {
            return Err(KernelError::BadF32Len {
                rows,
                cols,
                expected,
                got: data.len(),
            });
        }
        let mut bytes = vec![0u8; total];
        let mut scales = None;
        if dtype == DType::F8E4M3Block128 {
            let s = fp8_scales_for(rows, cols, data);
            let scb = cols.div_ceil(FP8_BLOCK);
            parallel_chunks(&mut bytes, cols.max(1), rows * cols * 4, |r, out| {
                let srow = &s[r / FP8_BLOCK * scb..][..scb];
                for (c, o) in out.iter_mut().enumerate() {
                    *o = f32_to_fp8_e4m3(data[r * cols + c] / srow[c / FP8_BLOCK]);
                }
            });
            scales = Some(s);
        } else if rb > 0 {
            // Rough cost per value: the K-quant searches are ~100× a plain conversion, MXFP4's
            // nearest-of-16 search ~10×.
            let cost = match dtype {
                DType::Q4_K | DType::Q6_K => 400,
                DType::MXFP4 => 64,
                _ => 8,
            };
            parallel_chunks(&mut bytes, rb, rows * cols * cost, |r, out| {
                quantize_row(dtype, &data[r * cols..(r + 1) * cols], out);
            });
        }
        Ok(QMat {
            dtype,
            rows,
            cols,
            data: Storage::Owned(bytes),
            scales,
            packed: false,
        })
    }

    /// Quantizes a [`Mat`].
    pub fn from_mat(dtype: DType, m: &Mat) -> Result<QMat, KernelError> {
        QMat::from_f32(dtype, m.rows, m.cols, &m.data)
    }

    /// Wraps bytes already in `dtype`'s layout (e.g. a GGUF tensor or an FP8 safetensors
    /// weight plus its `weight_scale_inv`). Checks the byte length and, for FP8, the scales.
    pub fn from_storage(
        dtype: DType,
        rows: usize,
        cols: usize,
        data: Storage,
        scales: Option<Vec<f32>>,
    ) -> Result<QMat, KernelError> {
        let expected = dtype.matrix_bytes(rows, cols)?;
        let got = data.bytes().len();
        if got != expected {
            return Err(KernelError::BadLength {
                dtype,
                rows,
                cols,
                expected,
                got,
            });
        }
        match (dtype, &scales) {
            (DType::F8E4M3Block128, Some(s)) => {
                let expected = fp8_scale_count(rows, cols);
                if s.len() != expected {
                    return Err(KernelError::BadScales {
                        rows,
                        cols,
                        expected,
                        got: s.len(),
                    });
                }
            }
            (DType::F8E4M3Block128, None) => {
                let expected = fp8_scale_count(rows, cols);
                return Err(KernelError::BadScales {
                    rows,
                    cols,
                    expected,
                    got: 0,
                });
            }
            (_, Some(_)) => return Err(KernelError::UnexpectedScales(dtype)),
            (_, None) => {}
        }
        Ok(QMat {
            dtype,
            rows,
            cols,
            data,
            scales,
            packed: false,
        })
    }

    /// An `MXFP4` matrix from DeepSeek-V4's release layout of its FP4 experts: `codes`
    /// `[rows, cols/2]` (two e2m1 codes per byte, low nibble first) and `scales`
    /// `[rows, cols/32]` (ue8m0 bytes), repacked exactly into GGUF's blocks (see
    /// [`crate::mxfp4::from_release`], which names each size error).
    pub fn from_mxfp4_release(
        rows: usize,
        cols: usize,
        codes: &[u8],
        scales: &[u8],
    ) -> Result<QMat, KernelError> {
        let bytes = crate::mxfp4::from_release(rows, cols, codes, scales)?;
        QMat::from_storage(DType::MXFP4, rows, cols, Storage::Owned(bytes), None)
    }

    /// This matrix in the layout the matmul kernels of this CPU run fastest on: `Q4_0` and
    /// `Q8_0` with a multiple of 8 rows get their rows interleaved by 8 (see `pack`; the
    /// size is unchanged) when the active kernels are x86 SIMD ones; everything else is
    /// returned as is. Results equal the file layout's up to float summation order.
    ///
    /// A mapped source's pages are handed back to the kernel after the copy, so a packed
    /// model's resident size stays the file's.
    pub(crate) fn packed_for_matmul(self) -> QMat {
        if kernels::packed_kernels_pay() {
            self.into_packed()
        } else {
            self
        }
    }

    /// [`QMat::packed_for_matmul`] whatever the CPU (packable matrices only).
    pub(crate) fn into_packed(self) -> QMat {
        if self.packed || !crate::pack::packable(self.dtype, self.rows) {
            return self;
        }
        let bytes = crate::pack::pack(self.dtype, self.rows, self.row_bytes(), self.bytes());
        if let Storage::Mapped { map, offset, len } = &self.data {
            crate::mmap::release(map, *offset, *len);
        }
        QMat {
            data: bytes,
            packed: true,
            ..self
        }
    }

    /// A copy of this matrix in anonymous memory, in the layout [`QMat::packed_for_matmul`]
    /// gives it (a plain copy of the bytes where that layout is the stored one): what a
    /// residency policy keeps of a hot matrix that otherwise lives in the file mapping. The
    /// mapping's pages of it are handed back to the kernel, as when packing at load.
    pub fn resident_copy(&self) -> QMat {
        if !self.packed
            && kernels::packed_kernels_pay()
            && crate::pack::packable(self.dtype, self.rows)
        {
            return self.clone().into_packed();
        }
        let data = Storage::Owned(self.bytes().to_vec());
        if let Storage::Mapped { map, offset, len } = &self.data {
            crate::mmap::release(map, *offset, *len);
        }
        QMat {
            dtype: self.dtype,
            rows: self.rows,
            cols: self.cols,
            data,
            scales: self.scales.clone(),
            packed: self.packed,
        }
    }

    /// Bytes of this matrix's storage, block scales included (what a copy of it takes).
    pub fn storage_bytes(&self) -> u64 {
        let scales = self
            .scales
            .as_ref()
            .map_or(0, |s| std::mem::size_of_val(&s[..]));
        (self.bytes().len() + scales) as u64
    }

    /// Whether the rows are interleaved (see [`QMat::packed_for_matmul`]).
    pub fn is_packed(&self) -> bool {
        self.packed
    }

    /// The bytes in the file layout (row-major blocks), unpacking if needed.
    pub fn file_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        if !self.packed {
            return std::borrow::Cow::Borrowed(self.bytes());
        }
        let rb = self.row_bytes();
        let mut out = vec![0u8; self.rows * rb];
        for (r, row) in out.chunks_exact_mut(rb).enumerate() {
            self.file_row(r, row);
        }
        std::borrow::Cow::Owned(out)
    }

    /// Row `i` of a packed matrix in the file layout.
    fn file_row(&self, i: usize, out: &mut [u8]) {
        let group = crate::pack::PACK_ROWS * self.row_bytes();
        let g = &self.bytes()[i / crate::pack::PACK_ROWS * group..][..group];
        crate::pack::unpack_row(self.dtype, g, i % crate::pack::PACK_ROWS, out);
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.dtype
            .row_bytes(self.cols)
            .expect("checked at construction")
    }

    /// The stored bytes (`rows · row_bytes`).
    pub fn bytes(&self) -> &[u8] {
        self.data.bytes()
    }

    /// The storage (owned or mapped).
    pub fn storage(&self) -> &Storage {
        &self.data
    }

    /// FP8 block scales, `[ceil(rows/128), ceil(cols/128)]`.
    pub fn scales(&self) -> Option<&[f32]> {
        self.scales.as_deref()
    }

    /// Bytes of weights plus scales: what one full pass over the matrix reads.
    pub fn nbytes(&self) -> usize {
        self.bytes().len() + self.scales.as_ref().map_or(0, |s| s.len() * 4)
    }

    fn weight_ref(&self) -> WeightRef<'_> {
        WeightRef {
            dtype: self.dtype,
            bytes: self.bytes(),
            rows: self.rows,
            cols: self.cols,
            row_bytes: self.row_bytes(),
            scales: self.scales.as_deref().unwrap_or(&[]),
            packed: self.packed,
        }
    }

    /// [`QMat::matmul`] with rows `r0..r0 + nr` only: `y[n, nr]` (e.g. one head's block of a
    /// per-head stacked matrix). A packed matrix needs `r0` and `nr` in whole groups of 8, an FP8
    /// one `r0` on a 128-row scale block.
    pub fn matmul_rows(&self, r0: usize, nr: usize, x: &[f32], n: usize, y: &mut [f32]) {
        assert!(
            r0 + nr <= self.rows,
            "matmul_rows: rows {r0}+{nr} of {}",
            self.rows
        );
        assert!(
            !self.packed
                || (r0.is_multiple_of(crate::pack::PACK_ROWS)
                    && nr.is_multiple_of(crate::pack::PACK_ROWS)),
            "matmul_rows: packed rows {r0}+{nr} are not whole groups"
        );
        let fp8 = self.dtype == DType::F8E4M3Block128;
        assert!(
            !fp8 || r0.is_multiple_of(FP8_BLOCK),
            "matmul_rows: fp8 rows must start on a 128-row scale block, not at {r0}"
        );
        let rb = self.row_bytes();
        let mut w = WeightRef {
            bytes: &self.bytes()[r0 * rb..(r0 + nr) * rb],
            rows: nr,
            ..self.weight_ref()
        };
        if fp8 {
            // The rows' scale blocks: from block row r0/128 on.
            w.scales = &w.scales[(r0 / FP8_BLOCK) * self.cols.div_ceil(FP8_BLOCK)..];
        }
        kernels::gemm(kernels::best(), &w, x, n, y)
    }

    /// `y[n, rows] = x[n, cols] · selfᵀ`. Quantized types first quantize `x` once (to `Q8`
    /// blocks for `Q8_0`/`Q4_0`, `Q8_K` for `Q4_K`/`Q6_K`; `MXFP4` and the float types use
    /// `x` as is). Runs on the worker pool with the best kernels this CPU supports.
    pub fn matmul(&self, x: &[f32], n: usize, y: &mut [f32]) {
        kernels::gemm(kernels::best(), &self.weight_ref(), x, n, y)
    }

    /// [`QMat::matmul`] with the kernels of a given [`Isa`] (for tests and benchmarks).
    /// Panics if this CPU cannot run them.
    pub fn matmul_with(&self, isa: Isa, x: &[f32], n: usize, y: &mut [f32]) {
        let ks = kernels::kernel_set(isa).unwrap_or_else(|| panic!("{isa:?} kernels unavailable"));
        kernels::gemm(ks, &self.weight_ref(), x, n, y)
    }

    /// Quantizes `x[n, cols]` once for this matrix's type, to feed [`QMat::matmul_prepared`]
    /// of this and other matrices of a compatible type (same activation format: `Q8_0`/`Q4_0`,
    /// `Q4_K`/`Q6_K`, or f32 for the float types and `MXFP4`) and the same column count.
    pub fn prepare<'a>(&self, x: &'a [f32], n: usize) -> PreparedInput<'a> {
        PreparedInput::new(self.dtype, x, n, self.cols)
    }

    /// [`QMat::matmul`] on an input from [`QMat::prepare`] (or [`PreparedInput::new`]).
    pub fn matmul_prepared(&self, input: &PreparedInput<'_>, y: &mut [f32]) {
        kernels::gemm_prepared(kernels::best(), &self.weight_ref(), input, y)
    }

    /// The products `y = x · wᵀ` of every `(w, x, y)` in one pool dispatch (inputs from
    /// [`QMat::prepare`]; each `y` is `[x.n(), w.rows]`). For many small products, e.g. the
    /// experts of one MoE step.
    pub fn matmul_batch(items: &mut [(&QMat, &PreparedInput<'_>, &mut [f32])]) {
        let mut batch: Vec<(WeightRef<'_>, &PreparedInput<'_>, &mut [f32])> = items
            .iter_mut()
            .map(|(w, x, y)| (w.weight_ref(), *x, &mut **y))
            .collect();
        kernels::gemm_batch(kernels::best(), &mut batch)
    }

    /// [`QMat::matmul_batch`] into new vectors: each product `x · wᵀ`, `[x.n(), w.rows]`. The
    /// outputs are not zero-filled first (the kernels write every element).
    pub fn forward_batch(items: &[(&QMat, &PreparedInput<'_>)]) -> Vec<Vec<f32>> {
        let mut outs: Vec<Vec<f32>> = Vec::with_capacity(items.len());
        let mut batch: Vec<kernels::BatchItem<'_>> = Vec::with_capacity(items.len());
        for &(w, x) in items {
            let len = x.n() * w.rows;
            let mut v: Vec<f32> = Vec::with_capacity(len);
            if cfg!(debug_assertions) {
                // A missed element shows as NaN in tests.
                v.resize(len, f32::NAN);
            }
            batch.push(kernels::BatchItem {
                w: w.weight_ref(),
                x,
                y: SendPtr(v.as_mut_ptr()),
            });
            outs.push(v);
        }
        // SAFETY: each output has capacity for its `[n, rows]` product and is written only
        // here; the vectors' buffers do not move while `batch` points into them.
        unsafe { kernels::gemm_batch_into(kernels::best(), &batch) };
        for (v, &(w, x)) in outs.iter_mut().zip(items) {
            // SAFETY: `gemm_batch_into` wrote all `n · rows` elements of each output.
            unsafe { v.set_len(x.n() * w.rows) };
        }
        outs
    }

    /// `x · wᵀ` for several matrices of one input width in one pool dispatch, quantizing `x`
    /// once per activation format among them (e.g. attention's q, k and v projections).
    /// Returns each product, `[n, w.rows]`.
    pub fn forward_many<const N: usize>(ws: [&QMat; N], x: &[f32]) -> [Vec<f32>; N] {
        let Some(cols) = ws.first().map(|w| w.cols) else {
            return ws.map(|_| Vec::new());
        };
        assert!(
            ws.iter().all(|w| w.cols == cols),
            "forward_many: input widths differ"
        );
        let n = x.len().checked_div(cols).unwrap_or(0);
        let mut inputs: Vec<PreparedInput<'_>> = Vec::new();
        let which: Vec<usize> = ws
            .iter()
            .map(|w| match inputs.iter().position(|p| p.fits(w.dtype)) {
                Some(i) => i,
                None => {
                    inputs.push(w.prepare(x, n));
                    inputs.len() - 1
                }
            })
            .collect();
        let items: Vec<(&QMat, &PreparedInput<'_>)> = ws
            .iter()
            .zip(&which)
            .map(|(w, &i)| (*w, &inputs[i]))
            .collect();
        let mut ys = Self::forward_batch(&items).into_iter();
        ws.map(|_| ys.next().unwrap_or_default())
    }

    /// `x · selfᵀ` for `x` of shape `[n, cols]`; returns `[n, rows]`.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let [y] = Self::forward_many([self], x);
        y
    }

    /// Row `i` as f32 (an embedding lookup).
    pub fn dequantize_row(&self, i: usize, out: &mut [f32]) {
        assert!(i < self.rows, "row {i} of {}", self.rows);
        assert_eq!(out.len(), self.cols, "dequantize_row: output length");
        let rb = self.row_bytes();
        let unpacked;
        let b = if self.packed {
            let mut row = vec![0u8; rb];
            self.file_row(i, &mut row);
            unpacked = row;
            &unpacked[..]
        } else {
            &self.bytes()[i * rb..(i + 1) * rb]
        };
        match self.dtype {
            DType::F8E4M3Block128 => {
                let scb = self.cols.div_ceil(FP8_BLOCK);
                let s =
                    &self.scales.as_ref().expect("fp8 has scales")[i / FP8_BLOCK * scb..][..scb];
                for (c, (o, &q)) in out.iter_mut().zip(b).enumerate() {
                    *o = fp8_e4m3_to_f32(q) * s[c / FP8_BLOCK];
                }
            }
            d => dequantize_row(d, b, out),
        }
    }

    /// The whole matrix as f32.
    pub fn to_f32(&self) -> Mat {
        let mut data = vec![0.0f32; self.rows * self.cols];
        if self.cols > 0 {
            parallel_chunks(&mut data, self.cols, self.rows * self.cols * 4, |r, out| {
                self.dequantize_row(r, out)
            });
        }
        Mat {
            rows: self.rows,
            cols: self.cols,
            data,
        }
    }
}

/// DeepSeek-style scales: each 128×128 block's max |value| maps to the FP8 maximum (448).
fn fp8_scales_for(rows: usize, cols: usize, data: &[f32]) -> Vec<f32> {
    let scb = cols.div_ceil(FP8_BLOCK);
    let mut amax = vec![0.0f32; fp8_scale_count(rows, cols)];
    for r in 0..rows {
        for c in 0..cols {
            let a = &mut amax[r / FP8_BLOCK * scb + c / FP8_BLOCK];
            *a = a.max(data[r * cols + c].abs());
        }
    }
    amax.iter()
        .map(|&a| {
            if a > 0.0 {
                a / crate::fp::FP8_E4M3_MAX
            } else {
                1.0
            }
        })
        .collect()
}

/// Quantizes one row of `x` into `dtype` bytes (`dtype` must not be FP8, whose scales span
/// 128 rows; use [`QMat::from_f32`]).
pub fn quantize_row(dtype: DType, x: &[f32], out: &mut [u8]) {
    match dtype {
        DType::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(x) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        DType::F16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&f32_to_f16(*v).to_le_bytes());
            }
        }
        DType::BF16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&f32_to_bf16(*v).to_le_bytes());
            }
        }
        DType::Q8_0 => quant::quantize_row_q8_0(x, out),
        DType::Q4_0 => quant::quantize_row_q4_0(x, out),
        DType::Q4_K => quant::quantize_row_q4_k(x, out),
        DType::Q6_K => quant::quantize_row_q6_k(x, out),
        DType::MXFP4 => crate::mxfp4::quantize_row_mxfp4(x, out),
        DType::F8E4M3Block128 => {
            panic!("quantize_row: fp8 needs 128-row blocks; use QMat::from_f32")
        }
    }
}

/// Expands one row of `dtype` bytes into `out` (`dtype` must not be FP8, whose scales live
/// apart; use [`QMat::dequantize_row`]).
pub fn dequantize_row(dtype: DType, b: &[u8], out: &mut [f32]) {
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F16 => {
            for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                *o = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                *o = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        DType::Q8_0 => quant::dequantize_row_q8_0(b, out),
        DType::Q4_0 => quant::dequantize_row_q4_0(b, out),
        DType::Q4_K => quant::dequantize_row_q4_k(b, out),
        DType::Q6_K => quant::dequantize_row_q6_k(b, out),
        DType::MXFP4 => crate::mxfp4::dequantize_row_mxfp4(b, out),
        DType::F8E4M3Block128 => panic!("dequantize_row: fp8 needs its block scales; use QMat"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.1)
            .collect()
    }

    #[test]
    fn forward_many_equals_one_product_each() {
        // Mixed activation formats: Q8 (Q4_0, packed Q8_0), Q8_K (Q4_K) and plain f32.
        let (cols, n) = (256, 5);
        let ws = [
            QMat::from_f32(DType::Q4_0, 16, cols, &data(16 * cols)).unwrap(),
            QMat::from_f32(DType::Q8_0, 8, cols, &data(8 * cols))
                .unwrap()
                .packed_for_matmul(),
            QMat::from_f32(DType::Q4_K, 3, cols, &data(3 * cols)).unwrap(),
            QMat::from_f32(DType::F32, 7, cols, &data(7 * cols)).unwrap(),
        ];
        let x: Vec<f32> = data(n * cols + 3)[3..].to_vec();
        let got = QMat::forward_many([&ws[0], &ws[1], &ws[2], &ws[3]], &x);
        for (w, y) in ws.iter().zip(&got) {
            assert_eq!(y, &w.forward(&x), "{}", w.dtype.name());
        }
    }

    /// Rows of an FP8 matrix from a 128-row block on use their own blocks' scales: the same
    /// outputs as those rows of the whole product (each block scaled differently).
    #[test]
    fn fp8_matmul_rows_from_a_scale_block() {
        let (rows, cols, n) = (300, 200, 3);
        let w: Vec<f32> = data(rows * cols)
            .iter()
            .enumerate()
            .map(|(i, v)| v * (1 << ((i / cols) / 128 * 3 + (i % cols) / 128)) as f32)
            .collect();
        let q = QMat::from_f32(DType::F8E4M3Block128, rows, cols, &w).unwrap();
        let x = data(n * cols);
        let mut full = vec![0.0; n * rows];
        q.matmul(&x, n, &mut full);
        for (r0, nr) in [(0, 300), (128, 100), (128, 172), (256, 44)] {
            let mut y = vec![0.0; n * nr];
            q.matmul_rows(r0, nr, &x, n, &mut y);
            for t in 0..n {
                assert_eq!(
                    y[t * nr..(t + 1) * nr],
                    full[t * rows + r0..t * rows + r0 + nr],
                    "rows {r0}+{nr}, token {t}"
                );
            }
        }
    }

    #[test]
    fn forward_writes_every_output_element() {
        // `forward` skips zero-filling its output (debug builds fill it with NaN instead), so
        // an element the kernels missed would differ from the product into a zeroed slice.
        let cols = 256;
        for dtype in DType::ALL {
            for rows in [8, 24, 33, 130] {
                let q = QMat::from_f32(dtype, rows, cols, &data(rows * cols)).unwrap();
                for w in [q.clone(), q.packed_for_matmul()] {
                    for n in [0, 1, 3, 5, 17] {
                        let x = data(n * cols + 1)[1..].to_vec();
                        let mut y = vec![0.0; n * rows];
                        w.matmul(&x, n, &mut y);
                        let got = w.forward(&x);
                        assert_eq!(got, y, "{} rows {rows} n {n}", dtype.name());
                    }
                }
            }
        }
    }

    #[test]
    fn ggml_ids_and_sizes() {
        for d in DType::ALL {
            if let Some(id) = d.ggml_type() {
                assert_eq!(DType::from_ggml_type(id), Some(d));
            }
            assert_eq!(d.name().parse::<DType>(), Ok(d));
        }
        assert_eq!(DType::Q4_0.ggml_type(), Some(2));
        assert_eq!(DType::Q8_0.ggml_type(), Some(8));
        assert_eq!(DType::Q4_K.ggml_type(), Some(12));
        assert_eq!(DType::Q6_K.ggml_type(), Some(14));
        assert_eq!(DType::BF16.ggml_type(), Some(30));
        assert_eq!(DType::MXFP4.ggml_type(), Some(39));
        assert_eq!(DType::MXFP4.row_bytes(64), Ok(34));
        assert!(DType::MXFP4.is_quantized());
        assert_eq!(
            DType::MXFP4.row_bytes(48),
            Err(KernelError::BadCols {
                dtype: DType::MXFP4,
                cols: 48,
                block: 32
            })
        );
        assert!(matches!(
            DType::F32.matrix_bytes(usize::MAX / 2, 4),
            Err(KernelError::TooLarge { .. })
        ));
        assert_eq!(DType::F8E4M3Block128.ggml_type(), None);
        assert_eq!(DType::from_ggml_type(3), None); // Q4_1: not supported
        assert_eq!(DType::Q4_K.row_bytes(512), Ok(288));
        assert_eq!(DType::Q6_K.row_bytes(256), Ok(210));
        assert!(DType::Q4_0.row_bytes(48).is_err());
    }

    #[test]
    fn from_f32_and_from_storage_check_shapes() {
        assert!(matches!(
            QMat::from_f32(DType::Q4_K, 2, 128, &data(256)),
            Err(KernelError::BadCols { .. })
        ));
        assert!(matches!(
            QMat::from_f32(DType::Q8_0, 2, 32, &data(63)),
            Err(KernelError::BadF32Len { .. })
        ));
        let q = QMat::from_f32(DType::Q8_0, 3, 64, &data(192)).unwrap();
        assert_eq!(q.nbytes(), 3 * 2 * 34);
        let mut short = q.bytes().to_vec();
        short.pop();
        assert!(matches!(
            QMat::from_storage(DType::Q8_0, 3, 64, Storage::Owned(short), None),
            Err(KernelError::BadLength {
                expected: 204,
                got: 203,
                ..
            })
        ));
        assert_eq!(
            QMat::from_storage(
                DType::Q8_0,
                3,
                64,
                Storage::Owned(q.bytes().to_vec()),
                Some(vec![1.0])
            )
            .unwrap_err(),
            KernelError::UnexpectedScales(DType::Q8_0)
        );
        let f = QMat::from_f32(DType::F8E4M3Block128, 130, 200, &data(130 * 200)).unwrap();
        assert_eq!(f.scales().unwrap().len(), 4);
        assert_eq!(f.nbytes(), 130 * 200 + 16);
        let bytes = Storage::Owned(f.bytes().to_vec());
        assert!(matches!(
            QMat::from_storage(DType::F8E4M3Block128, 130, 200, bytes.clone(), None),
            Err(KernelError::BadScales {
                expected: 4,
                got: 0,
                ..
            })
        ));
        assert!(matches!(
            QMat::from_storage(
                DType::F8E4M3Block128,
                130,
                200,
                bytes.clone(),
                Some(vec![1.0; 3])
            ),
            Err(KernelError::BadScales {
                expected: 4,
                got: 3,
                ..
            })
        ));
        let g = QMat::from_storage(
            DType::F8E4M3Block128,
            130,
            200,
            bytes,
            Some(f.scales().unwrap().to_vec()),
        )
        .unwrap();
        assert_eq!(g.to_f32(), f.to_f32());
    }

    #[test]
    fn dequantize_row_matches_to_f32_and_round_trips() {
        let (rows, cols) = (5, 256);
        let x = data(rows * cols);
        for d in DType::ALL {
            let q = QMat::from_f32(d, rows, cols, &x).unwrap();
            let m = q.to_f32();
            let mut row = vec![0.0; cols];
            for r in 0..rows {
                q.dequantize_row(r, &mut row);
                assert_eq!(row, m.row(r), "{d}");
            }
            let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let err = x
                .iter()
                .zip(&m.data)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            let bound = match d {
                DType::F32 => 0.0,
                DType::F16 | DType::BF16 => amax / 128.0,
                DType::Q8_0 | DType::Q6_K => amax / 40.0,
                DType::F8E4M3Block128 => amax / 14.0,
                DType::Q4_0 | DType::Q4_K => amax / 6.0,
                // Half the widest gap (4 → 6 in the top octave), or a block maximum clipped
                // from below 8 to 6 units: a quarter of the block's maximum at worst.
                DType::MXFP4 => amax / 4.0,
            };
            assert!(err <= bound, "{d}: max error {err} > {bound}");
        }
    }

    #[test]
    fn mapped_storage_is_used_in_place() {
        let (rows, cols) = (4, 64);
        let q = QMat::from_f32(DType::Q4_0, rows, cols, &data(rows * cols)).unwrap();
        let path =
            std::env::temp_dir().join(format!("moela-kernels-map-{}.bin", std::process::id()));
        let mut file_bytes = vec![0xEEu8; 7]; // the tensor starts at an odd offset
        file_bytes.extend_from_slice(q.bytes());
        std::fs::write(&path, &file_bytes).unwrap();
        let map = std::sync::Arc::new(
            crate::mmap::map_readonly(&std::fs::File::open(&path).unwrap()).unwrap(),
        );
        assert!(matches!(
            Storage::mapped(map.clone(), 7, q.bytes().len() + 1),
            Err(KernelError::BadMapRange { .. })
        ));
        let s = Storage::mapped(map, 7, q.bytes().len()).unwrap();
        let m = QMat::from_storage(DType::Q4_0, rows, cols, s, None).unwrap();
        let x = data(2 * cols);
        assert_eq!(m.forward(&x), q.forward(&x));
        assert_eq!(m.to_f32(), q.to_f32());
        drop(m);
        let _ = std::fs::remove_file(&path);
    }
}
