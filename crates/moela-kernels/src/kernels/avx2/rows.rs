//! Weighted sums of rows (attention's probability-weighted values) and rows' dot products
//! (attention scores). `VL`: run the copy compiled with AVX512-VL (see `int_kernels!`).

use std::arch::x86_64::*;

use super::{load8_f16, load8_f32, plain, splat_f16, supported, vnni, vnni_supported, RowData};

/// How the tile kernels read 8 or 16 values of one kind of row storage as f32: one type per
/// [`RowData`] kind, so the kind is matched once per call ([`with_loader!`]), not once per load
/// inside the loops (a match per load stopped being inlined when `Q8` joined: decode at 4096
/// context on V2-Lite fell from 10.7 to 6.1 tok/s).
pub(super) trait RowLoad: Copy {
    /// Eight values from element `at` (`row · stride + column`).
    ///
    /// # Safety
    /// `at + 8 ≤` the rows' data length; for `Q8_0` rows the 8 values share one scale
    /// ([`RowData::aligned8`] and `at` a multiple of 8) and that scale is inside the scales; the
    /// CPU has avx2, fma and f16c.
    unsafe fn load8(self, at: usize) -> __m256;

    /// Sixteen values from element `at`, for the 512-bit tiles.
    ///
    /// # Safety
    /// As [`RowLoad::load8`] for both halves (`at + 16 ≤` the length), and a CPU with avx512f.
    unsafe fn load16(self, at: usize) -> __m512;
}

#[derive(Clone, Copy)]
pub(super) struct F32Rows(*const f32);
#[derive(Clone, Copy)]
pub(super) struct F16Rows(*const u16);
/// Quants, the f16 scales, and where the quants start in the region the scales cover.
#[derive(Clone, Copy)]
pub(super) struct Q8Rows(*const i8, *const u16, usize);

impl RowLoad for F32Rows {
    #[inline(always)]
    unsafe fn load8(self, at: usize) -> __m256 {
        // SAFETY: 8 f32 at `at` are inside the data (the caller's contract).
        unsafe { load8_f32(self.0.add(at) as *const u8) }
    }

    #[inline(always)]
    unsafe fn load16(self, at: usize) -> __m512 {
        // SAFETY: 16 f32 at `at` are inside the data (the caller's contract).
        unsafe { _mm512_loadu_ps(self.0.add(at)) }
    }
}

impl RowLoad for F16Rows {
    #[inline(always)]
    unsafe fn load8(self, at: usize) -> __m256 {
        // SAFETY: 8 f16 at `at` are inside the data (the caller's contract).
        unsafe { load8_f16(self.0.add(at) as *const u8) }
    }

    #[inline(always)]
    unsafe fn load16(self, at: usize) -> __m512 {
        // SAFETY: 16 f16 at `at` are inside the data (the caller's contract).
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(self.0.add(at) as *const __m256i)) }
    }
}

impl Q8Rows {
    /// The f16 scale of the block holding element `at`, as raw bits.
    ///
    /// # Safety
    /// That scale is inside the scales (the loads' contract).
    #[inline(always)]
    unsafe fn scale(self, at: usize) -> i16 {
        // SAFETY: the caller's contract.
        unsafe { (self.1.add((self.2 + at) / 32) as *const i16).read_unaligned() }
    }
}

impl RowLoad for Q8Rows {
    #[inline(always)]
    unsafe fn load8(self, at: usize) -> __m256 {
        // SAFETY: 8 quants at `at` and their one scale are inside the data (the caller's
        // contract); the features are the caller's.
        unsafe {
            let q = _mm_loadl_epi64(self.0.add(at) as *const __m128i);
            let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
            let d = splat_f16(self.1.add((self.2 + at) / 32) as *const u8);
            _mm256_mul_ps(v, d)
        }
    }

    #[inline(always)]
    unsafe fn load16(self, at: usize) -> __m512 {
        // SAFETY: 16 quants at `at` and the scales of both their halves are inside the data
        // (the caller's contract).
        unsafe {
            let q = _mm_loadu_si128(self.0.add(at) as *const __m128i);
            let v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q));
            let h = _mm256_set_m128i(
                _mm_set1_epi16(self.scale(at + 8)),
                _mm_set1_epi16(self.scale(at)),
            );
            _mm512_mul_ps(v, _mm512_cvtph_ps(h))
        }
    }
}

/// `$body` with `$l` bound to the [`RowLoad`] of `$rows`' kind.
macro_rules! with_loader {
    ($rows:expr, $l:ident => $body:expr) => {
        match $rows {
            RowData::F32 { data, .. } => {
                let $l = F32Rows(data.as_ptr());
                $body
            }
            RowData::F16 { data, .. } => {
                let $l = F16Rows(data.as_ptr());
                $body
            }
            RowData::Q8 {
                data,
                scales,
                offset,
                ..
            } => {
                let $l = Q8Rows(data.as_ptr(), scales.as_ptr(), offset);
                $body
            }
        }
    };
}

/// Whether the 512-bit tiles run ([`crate::kernels::RowVectors`]).
fn wide_rows() -> bool {
    crate::kernels::RowVectors::here() == crate::kernels::RowVectors::W512
}

fn assert_features<const VL: bool>() {
    if VL {
        assert!(
            vnni_supported(),
            "vnni kernels on a CPU without avx512vnni/avx512vl"
        );
    } else {
        assert!(supported(), "avx2 kernels on a CPU without avx2/fma/f16c");
    }
}

pub(super) fn weighted_sum<const VL: bool>(
    p: &[f32],
    n: usize,
    rows: RowData<'_>,
    out: &mut [f32],
) {
    // Only the first `cols` columns (the output's width) are summed.
    let cols = out.len().checked_div(n).unwrap_or(0);
    assert!(
        cols <= rows.cols(),
        "weighted_sum: output wider than the rows"
    );
    let rows = rows.columns(0, cols);
    let nr = rows.rows();
    assert!(p.len() >= n * nr, "weighted_sum: lengths");
    assert_features::<VL>();
    if !rows.aligned8() {
        return super::super::scalar::weighted_sum(p, n, rows, out);
    }
    let wide = VL && wide_rows();
    let (ht, cw) = WS_TILE;
    let lanes = if wide { 16 } else { 8 };
    let (nt, ct) = (n / ht * ht, cols / (lanes * cw) * (lanes * cw));
    // SAFETY: features checked; the tiles read rows 0..nr, columns below ct and heads below
    // nt, inside `rows`, `p` and `out` (lengths asserted).
    let (nr, stride) = (rows.rows(), rows.stride());
    with_loader!(rows, l => unsafe {
        if wide {
            weighted_sum_tiles16::<{ WS_TILE.0 }, { WS_TILE.1 }, _>(p, nt, l, nr, stride, ct, cols, out)
        } else if VL {
            vnni::weighted_sum_tiles::<{ WS_TILE.0 }, { WS_TILE.1 }, _>(p, nt, l, nr, stride, ct, cols, out)
        } else {
            plain::weighted_sum_tiles::<{ WS_TILE.0 }, { WS_TILE.1 }, _>(p, nt, l, nr, stride, ct, cols, out)
        }
    });
    // The rest (heads past a multiple of the tile, columns past a multiple of it), plainly.
    for h in 0..n {
        let c0 = if h < nt { ct } else { 0 };
        if c0 == cols {
            continue;
        }
        for u in 0..nr {
            let w = p[h * nr + u];
            for c in c0..cols {
                out[h * cols + c] += w * rows.at(u, c);
            }
        }
    }
}

/// The weighted-sum tiles' shape, (heads, 8-column vectors): 4 × 2, 8 accumulators, in both
/// builds (f16 rows on Zen 4, one core: 52 GMAC/s; 8 × 2 gave 44 with 32 registers and spilled
/// to 33 with 16; 4 × 4 48, 2 × 4 52 with f16 but 44 with f32).
const WS_TILE: (usize, usize) = (4, 2);

/// Stamps out a weighted-sum tile kernel for one vector width (256-bit per feature set in
/// `int_kernels!`, 512-bit below): tiles of `HT` heads ×
/// `LANES·CV` columns, each row chunk loaded (and widened) once for `HT` heads, `HT·CV`
/// independent accumulators.
macro_rules! weighted_sum_tiles {
    ($name:ident, $feat:literal, $lanes:literal, $load:ident, $v:ty, $zero:ident, $splat:ident,
     $fmadd:ident, $loadu:ident, $storeu:ident, $add:ident) => {
        /// The tiles at this width (see the macro).
        ///
        /// # Safety
        /// `p` holds `nt · rows` weights, `out` `nt · w`, `ct ≤ w ≤` the row length; `nt` and
        /// `ct` multiples of the tile; the CPU has the enabled features.
        #[inline]
        #[target_feature(enable = $feat)]
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn $name<const HT: usize, const CV: usize, L: RowLoad>(
            p: &[f32],
            nt: usize,
            rows: L,
            nr: usize,
            stride: usize,
            ct: usize,
            w: usize,
            out: &mut [f32],
        ) {
            // SAFETY: per the contract, every index below stays inside its slice.
            unsafe {
                for h0 in (0..nt).step_by(HT) {
                    for c0 in (0..ct).step_by($lanes * CV) {
                        let mut acc = [[$zero(); CV]; HT];
                        for u in 0..nr {
                            let r: [$v; CV] =
                                std::array::from_fn(|k| rows.$load(u * stride + c0 + $lanes * k));
                            for (hh, a) in acc.iter_mut().enumerate() {
                                let w = $splat(*p.get_unchecked((h0 + hh) * nr + u));
                                for k in 0..CV {
                                    a[k] = $fmadd(w, r[k], a[k]);
                                }
                            }
                        }
                        for (hh, a) in acc.iter().enumerate() {
                            for (k, v) in a.iter().enumerate() {
                                let o = out.as_mut_ptr().add((h0 + hh) * w + c0 + $lanes * k);
                                $storeu(o, $add($loadu(o), *v));
                            }
                        }
                    }
                }
            }
        }
    };
}

weighted_sum_tiles!(
    weighted_sum_tiles16,
    "avx2,fma,f16c,avx512f,avx512vl",
    16,
    load16,
    __m512,
    _mm512_setzero_ps,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_add_ps
);

pub(super) fn rows_dot<const VL: bool>(x: &[f32], n: usize, rows: RowData<'_>, y: &mut [f32]) {
    let (nr, cols) = (rows.rows(), rows.cols());
    assert!(
        x.len() >= n * cols && y.len() >= n * nr,
        "rows_dot: lengths"
    );
    assert_features::<VL>();
    if !rows.aligned8() {
        return super::super::scalar::rows_dot(x, n, rows, y);
    }
    let wide = VL && wide_rows();
    let (qt, rt) = if VL { RD_TILE_VL } else { RD_TILE };
    let lanes = if wide { 16 } else { 8 };
    let (nq, nrt, c8) = (n / qt * qt, nr / rt * rt, cols / lanes * lanes);
    // SAFETY: features checked; tiles read x rows below nq, cache rows below nrt and columns
    // below c8, all inside the asserted lengths, and write y inside `n · nr`.
    let stride = rows.stride();
    with_loader!(rows, l => unsafe {
        if wide {
            rows_dot_tiles16::<{ RD_TILE_VL.0 }, { RD_TILE_VL.1 }, _>(x, nq, l, nr, cols, stride, nrt, c8, y)
        } else if VL {
            vnni::rows_dot_tiles::<{ RD_TILE_VL.0 }, { RD_TILE_VL.1 }, _>(x, nq, l, nr, cols, stride, nrt, c8, y)
        } else {
            plain::rows_dot_tiles::<{ RD_TILE.0 }, { RD_TILE.1 }, _>(x, nq, l, nr, cols, stride, nrt, c8, y)
        }
    });
    if nq == n && nrt == nr && c8 == cols {
        return;
    }
    // Everything outside the tiles (and the columns past c8), the plain way.
    for h in 0..n {
        for u in 0..nr {
            let in_tile = h < nq && u < nrt;
            if in_tile && c8 == cols {
                continue;
            }
            let c0 = if in_tile { c8 } else { 0 };
            let mut s = if in_tile { y[h * nr + u] } else { 0.0 };
            for c in c0..cols {
                s += x[h * cols + c] * rows.at(u, c);
            }
            y[h * nr + u] = s;
        }
    }
}

/// The scores tiles' shape, (queries, rows): 4 × 4 (16 accumulators) with AVX512-VL's 32
/// vector registers, 4 × 2 in the 16 of plain AVX2 (f16 rows on Zen 4, one core: 55 and
/// 50 GMAC/s; 4 × 4 spilled to 32 with 16 registers).
const RD_TILE_VL: (usize, usize) = (4, 4);
const RD_TILE: (usize, usize) = (4, 2);

/// Stamps out a scores tile kernel for one vector width (256-bit per feature set in
/// `int_kernels!`, 512-bit below): tiles of `QT` queries × `RT` rows
/// over columns `0..cv` (`cv` a multiple of the lanes), each row vector loaded (and widened)
/// once for `QT` queries, each query vector once for `RT` rows, one horizontal sum per output.
macro_rules! rows_dot_tiles {
    ($name:ident, $feat:literal, $lanes:literal, $load:ident, $v:ty, $zero:ident, $loadu:ident,
     $fmadd:ident, $sum:ident) => {
        /// The tiles at this width (see the macro).
        ///
        /// # Safety
        /// `x` holds `nq · cols` values, `rows` at least `nrt` rows, `y` `nq · rows` outputs;
        /// `nq`, `nrt` multiples of `QT`, `RT`; `cv ≤ cols` a multiple of the lanes; the CPU
        /// has the enabled features.
        #[inline]
        #[target_feature(enable = $feat)]
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn $name<const QT: usize, const RT: usize, L: RowLoad>(
            x: &[f32],
            nq: usize,
            rows: L,
            nr: usize,
            cols: usize,
            stride: usize,
            nrt: usize,
            cv: usize,
            y: &mut [f32],
        ) {
            // SAFETY: per the contract, every index below stays inside its slice.
            unsafe {
                for h0 in (0..nq).step_by(QT) {
                    for u0 in (0..nrt).step_by(RT) {
                        let mut acc = [[$zero(); RT]; QT]; // [query][row]
                        for c in (0..cv).step_by($lanes) {
                            let r: [$v; RT] =
                                std::array::from_fn(|k| rows.$load((u0 + k) * stride + c));
                            for (i, a) in acc.iter_mut().enumerate() {
                                let q = $loadu(x.as_ptr().add((h0 + i) * cols + c));
                                for k in 0..RT {
                                    a[k] = $fmadd(q, r[k], a[k]);
                                }
                            }
                        }
                        for (i, a) in acc.iter().enumerate() {
                            for (k, v) in a.iter().enumerate() {
                                *y.get_unchecked_mut((h0 + i) * nr + u0 + k) = $sum(*v);
                            }
                        }
                    }
                }
            }
        }
    };
}

rows_dot_tiles!(
    rows_dot_tiles16,
    "avx2,fma,f16c,avx512f,avx512vl",
    16,
    load16,
    __m512,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_fmadd_ps,
    _mm512_reduce_add_ps
);
