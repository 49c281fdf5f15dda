//! [`RowData`]: the cached rows the attention kernels read (f32, f16 or `Q8_0`).

/// Rows of f32, f16 or 8-bit values, `cols` each, `stride` apart (e.g. one block of a KV cache,
/// or one head's columns of it): row `r` is `data[r·stride ..][..cols]`. Build with
/// [`RowData::f32`] / [`RowData::f16`] / [`RowData::q8`], narrow with [`RowData::columns`].
#[derive(Clone, Copy, Debug)]
pub enum RowData<'a> {
    F32 {
        data: &'a [f32],
        cols: usize,
        stride: usize,
    },
    F16 {
        data: &'a [u16],
        cols: usize,
        stride: usize,
    },
    /// `Q8_0` values split into their parts: element `i` of `data` is `data[i] · d`, `d` the f16
    /// scale `scales[(offset + i) / 32]` of its block of 32 (`offset`: where `data` starts in the
    /// region `scales` covers, moved by narrowing).
    Q8 {
        data: &'a [i8],
        scales: &'a [u16],
        offset: usize,
        cols: usize,
        stride: usize,
    },
}

impl<'a> RowData<'a> {
    /// Contiguous f32 rows of `cols` values.
    pub fn f32(data: &'a [f32], cols: usize) -> Self {
        RowData::F32 {
            data,
            cols,
            stride: cols,
        }
    }

    /// Contiguous f16 rows (bit patterns) of `cols` values.
    pub fn f16(data: &'a [u16], cols: usize) -> Self {
        RowData::F16 {
            data,
            cols,
            stride: cols,
        }
    }

    /// Contiguous `Q8_0` rows of `cols` values: the quants, and one f16 scale per 32 of them.
    pub fn q8(data: &'a [i8], scales: &'a [u16], cols: usize) -> Self {
        RowData::Q8 {
            data,
            scales,
            offset: 0,
            cols,
            stride: cols,
        }
    }

    /// Values per row.
    pub fn cols(&self) -> usize {
        match *self {
            RowData::F32 { cols, .. } | RowData::F16 { cols, .. } | RowData::Q8 { cols, .. } => {
                cols
            }
        }
    }

    /// Elements from one row's start to the next's.
    pub fn stride(&self) -> usize {
        match *self {
            RowData::F32 { stride, .. }
            | RowData::F16 { stride, .. }
            | RowData::Q8 { stride, .. } => stride,
        }
    }

    fn len(&self) -> usize {
        match *self {
            RowData::F32 { data, .. } => data.len(),
            RowData::F16 { data, .. } => data.len(),
            RowData::Q8 { data, .. } => data.len(),
        }
    }

    /// Number of rows: those whose `cols` values lie inside the data.
    pub fn rows(&self) -> usize {
        let (len, cols, stride) = (self.len(), self.cols(), self.stride());
        if cols == 0 || stride == 0 || len < cols {
            return 0;
        }
        (len - cols) / stride + 1
    }

    /// Value `(r, c)` as f32.
    #[inline]
    pub fn at(&self, r: usize, c: usize) -> f32 {
        match *self {
            RowData::F32 { data, stride, .. } => data[r * stride + c],
            RowData::F16 { data, stride, .. } => crate::fp::f16_to_f32(data[r * stride + c]),
            RowData::Q8 {
                data,
                scales,
                offset,
                stride,
                ..
            } => {
                let i = r * stride + c;
                data[i] as f32 * crate::fp::f16_to_f32(scales[(offset + i) / 32])
            }
        }
    }

    /// Whether every 8 consecutive values starting at a multiple of 8 (of a row's columns)
    /// share one scale: always for f32/f16; for `Q8_0` rows when the start and the stride are
    /// multiples of 8 (what the SIMD kernels' 8-wide loads need).
    pub fn aligned8(&self) -> bool {
        match *self {
            RowData::Q8 { offset, stride, .. } => offset % 8 == 0 && stride % 8 == 0,
            _ => true,
        }
    }

    /// The rows for a loop that reads each of them many times (once per head tile): f32 and
    /// f16 rows as they are (an f16 load widens in one instruction); `Q8_0` rows expanded once
    /// into `scratch` as contiguous f32 rows, each value `q · d` exactly as [`RowData::at`] and
    /// the SIMD loads compute it, so every product over them is unchanged (widening 8 quants
    /// inside the tile loops took five instructions per load, redone for every head tile).
    pub fn widened<'s>(self, scratch: &'s mut Vec<f32>) -> RowData<'s>
    where
        'a: 's,
    {
        let RowData::Q8 {
            data,
            scales,
            offset,
            cols,
            stride,
        } = self
        else {
            return self;
        };
        let n = self.rows() * cols;
        // Every value is written below: the scratch is only grown, never cleared (zeroing it
        // on every call, and a kernel call per block of 32, cost as much as the kernels).
        if scratch.len() < n {
            scratch.resize(n, 0.0);
        }
        let wide = &mut scratch[..n];
        let widen = super::best().widen_q8;
        for (r, out) in wide.chunks_exact_mut(cols.max(1)).enumerate() {
            widen(
                &data[r * stride..][..cols],
                scales,
                offset + r * stride,
                out,
            );
        }
        RowData::f32(wide, cols)
    }

    /// The first `n` rows (at most all of them).
    pub fn first_rows(self, n: usize) -> Self {
        let n = n.min(self.rows());
        let end = if n == 0 {
            0
        } else {
            (n - 1) * self.stride() + self.cols()
        };
        match self {
            RowData::F32 { data, cols, stride } => RowData::F32 {
                data: &data[..end],
                cols,
                stride,
            },
            RowData::F16 { data, cols, stride } => RowData::F16 {
                data: &data[..end],
                cols,
                stride,
            },
            RowData::Q8 {
                data,
                scales,
                offset,
                cols,
                stride,
            } => RowData::Q8 {
                data: &data[..end],
                scales,
                offset,
                cols,
                stride,
            },
        }
    }

    /// Columns `c0..c0 + w` of every row.
    ///
    /// # Panics
    /// If they are not inside the rows.
    pub fn columns(self, c0: usize, w: usize) -> Self {
        let (rows, cols) = (self.rows(), self.cols());
        assert!(c0 + w <= cols, "RowData::columns: {c0}+{w} past {cols}");
        let (start, end) = if rows == 0 {
            (0, 0)
        } else {
            (c0, (rows - 1) * self.stride() + c0 + w)
        };
        match self {
            RowData::F32 { data, stride, .. } => RowData::F32 {
                data: &data[start..end],
                cols: w,
                stride,
            },
            RowData::F16 { data, stride, .. } => RowData::F16 {
                data: &data[start..end],
                cols: w,
                stride,
            },
            RowData::Q8 {
                data,
                scales,
                offset,
                stride,
                ..
            } => RowData::Q8 {
                data: &data[start..end],
                scales,
                offset: offset + start,
                cols: w,
                stride,
            },
        }
    }
}
