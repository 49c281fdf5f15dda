//! x86-64 kernels for AVX2 + FMA + F16C, selected at run time, plus a variant for CPUs that
//! also have AVX512-VNNI with AVX512-VL (Ice Lake and later, Zen 4 and later), whose 256-bit
//! `vpdpbusd` replaces the `vpmaddubsw` + `vpmaddwd` pair in the `Q8_0`/`Q4_0` dot products.
//! Everything else is shared.
//!
//! Every task is cut into micro-tiles of `MR` weight rows × `NR` tokens; a micro-kernel walks
//! the whole row once, so each weight block it loads (and unpacks) serves `NR` tokens and each
//! activation block serves `MR` rows. Integer formats use `vpmaddubsw` (u8 × i8 → i16 pairs),
//! which needs one unsigned operand:
//! - `Q8_0`: |w| as the unsigned side and `sign(a, w)` as the signed side (|w| ≤ 128 fits u8;
//!   |a| ≤ 127 so no pair sum saturates: 2·128·127 < 2^15);
//! - `Q4_0`: the nibbles minus 8 are signed, so |a| is the unsigned side and `sign(w, a)` the
//!   signed one;
//! - `Q4_K`/`Q6_K`: the raw 4-/6-bit values are already unsigned; the min (`Q4_K`) and the −32
//!   offset (`Q6_K`) are applied through the activations' 16-value sums.
//!
//! FP8 E4M3 is widened in registers (see `float`); `MXFP4` is decoded exactly to f32 and
//! multiplied with f32 activations (see `mxfp4`; with AVX-512, in 512-bit registers).
//!
//! Files: `float` (F32/F16/BF16 and FP8 micro-kernels), `int8` (`Q8_0`/`Q4_0`, plain and
//! packed), `kquant` (`Q4_K`/`Q6_K`), `mxfp4`, `rows` (attention-row kernels), `quantize` (activation
//! quantizers), `elementwise` (exp, SwiGLU), `amx` (AMX tiles for packed int8); this file
//! holds the shared helpers and the per-ISA entry points.

use std::arch::x86_64::*;

use super::{Acts, Isa, KernelSet, OutTile, RowData, Task};
use crate::dtype::{DType, FP8_BLOCK};
use crate::quant::QK;
use elementwise::{exp_sum, silu_mul, widen_q8};
use float::{dot_f32, micro_bf16, micro_bf16_512, micro_f16, micro_f32, micro_fp8};
use kquant::{micro_q4_k, micro_q6_k};
use mxfp4::{micro_mxfp4, micro_mxfp4_512};
use quantize::{quant_q8, quant_q8k};
use rows::{rows_dot, weighted_sum, RowLoad};

/// True when this CPU has AVX2, FMA and F16C.
pub(crate) fn supported() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// True when this CPU also has AVX512-VNNI and AVX512-VL (for 256-bit `vpdpbusd`).
pub(crate) fn vnni_supported() -> bool {
    supported() && is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl")
}

pub(crate) mod amx;
mod elementwise;
mod float;
#[macro_use]
mod int8;
mod kquant;
mod mxfp4;
mod quantize;
#[macro_use]
mod rows;

/// The x86 kernel sets differ only in their GEMM and whether the 8-bit attention dots use
/// `vpdpbusd`.
const fn kernel_set<const VNNI: bool>(isa: Isa, gemm: fn(&mut Task<'_>)) -> KernelSet {
    KernelSet {
        isa,
        gemm,
        dot_f32,
        quant_q8,
        quant_q8k,
        weighted_sum: weighted_sum::<VNNI>,
        rows_dot: rows_dot::<VNNI>,
        silu_mul,
        widen_q8,
        exp_sum,
    }
}

pub(crate) static KERNELS: KernelSet = kernel_set::<false>(Isa::Avx2, gemm_plain);
pub(crate) static KERNELS_VNNI: KernelSet = kernel_set::<true>(Isa::Avx512Vnni, gemm_vnni);
pub(crate) static KERNELS_AMX: KernelSet = kernel_set::<true>(Isa::Amx, gemm_amx);

/// Raw views of a validated task (strides in elements).
#[derive(Clone, Copy)]
pub(super) struct Ctx {
    w: *const u8,
    rb: usize,
    cols: usize,
    x: *const f32,
    qs: *const i8,
    d: *const f32,
    s: *const i32,
    bs: *const i16,
    sc: *const f32,
    sc_cols: usize,
    r0: usize,
}

impl Ctx {
    /// Pointers to weight rows `r..r+MR` and f32 activation tokens `t..t+NR` of a micro-tile.
    ///
    /// # Safety
    /// Rows and tokens of the validated task `self` describes.
    #[inline(always)]
    unsafe fn f32_tile<const MR: usize, const NR: usize>(
        &self,
        r: usize,
        t: usize,
    ) -> ([*const u8; MR], [*const f32; NR]) {
        // SAFETY: inside the task's rows and tokens (this function's contract).
        unsafe {
            (
                self.weight_rows(r),
                std::array::from_fn(|j| self.x.add((t + j) * self.cols)),
            )
        }
    }

    /// Pointers to weight rows `r..r+MR` of the task.
    ///
    /// # Safety
    /// Rows of the validated task `self` describes.
    #[inline(always)]
    unsafe fn weight_rows<const MR: usize>(&self, r: usize) -> [*const u8; MR] {
        // SAFETY: inside the task's rows (this function's contract).
        std::array::from_fn(|i| unsafe { self.w.add((r + i) * self.rb) })
    }
}

fn ctx(t: &Task<'_>) -> Ctx {
    let mut c = Ctx {
        w: t.w.as_ptr(),
        rb: t.row_bytes,
        cols: t.cols,
        x: std::ptr::null(),
        qs: std::ptr::null(),
        d: std::ptr::null(),
        s: std::ptr::null(),
        bs: std::ptr::null(),
        sc: t.scales.as_ptr(),
        sc_cols: t.cols.div_ceil(FP8_BLOCK),
        r0: t.r0,
    };
    match t.acts {
        Acts::F32(x) => c.x = x.as_ptr(),
        Acts::Q8 { qs, d, s } => (c.qs, c.d, c.s) = (qs.as_ptr(), d.as_ptr(), s.as_ptr()),
        Acts::Q8K { qs, d, bsums } => (c.qs, c.d, c.bs) = (qs.as_ptr(), d.as_ptr(), bsums.as_ptr()),
    }
    c
}

fn gemm_plain(t: &mut Task<'_>) {
    t.validate();
    assert!(supported(), "avx2 kernels on a CPU without avx2/fma/f16c");
    let c = ctx(t);
    // SAFETY: the CPU features were checked just above; `validate` checked that every pointer
    // in `c` covers the rows, tokens and scales the micro-kernels read, and that `t.out` is the
    // task's `[nt, nr]` tile.
    unsafe { plain::gemm_impl(&c, t.dtype, t.packed, t.nr, t.nt, t.out) }
}

fn gemm_vnni(t: &mut Task<'_>) {
    t.validate();
    assert!(
        vnni_supported(),
        "vnni kernels on a CPU without avx512vnni/avx512vl"
    );
    let c = ctx(t);
    // SAFETY: as in `gemm_plain`, with the VNNI features checked too.
    unsafe { vnni::gemm_impl(&c, t.dtype, t.packed, t.nr, t.nt, t.out) }
}

fn gemm_amx(t: &mut Task<'_>) {
    t.validate();
    assert!(amx::supported(), "amx kernels on a CPU or OS without AMX");
    let c = ctx(t);
    let tiles = t.packed && t.nt >= amx::MIN_TOKENS;
    // SAFETY: as in `gemm_vnni`, with AMX (which implies the VNNI features) checked too.
    unsafe {
        match t.dtype {
            DType::Q8_0 if tiles => amx::gemm_packed(&c, true, t.nr, t.nt, t.out),
            DType::Q4_0 if tiles => amx::gemm_packed(&c, false, t.nr, t.nt, t.out),
            _ => vnni::gemm_impl(&c, t.dtype, t.packed, t.nr, t.nt, t.out),
        }
    }
}

/// Every accumulator of an `MR × NR` micro-tile summed across its lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_tile<const MR: usize, const NR: usize>(acc: &[[__m256; NR]; MR]) -> [[f32; NR]; MR] {
    std::array::from_fn(|i| std::array::from_fn(|j| hsum(acc[i][j])))
}

/// Walks the task in micro-tiles: `$mrb` rows at a time (then single rows), tokens in runs of
/// the largest listed `NR` that fits.
macro_rules! drive {
    ($c:expr, $nr:expr, $nt:expr, $out:expr, $micro:ident, $mrb:literal => [$($nb:literal),*], 1 => [$($n1:literal),*]) => {{
        let (nr, nt) = ($nr, $nt);
        let mut r = 0;
        while r < nr {
            let mr = if nr - r >= $mrb { $mrb } else { 1 };
            let mut t = 0;
            while t < nt {
                let left = nt - t;
                let step = if mr == $mrb {
                    drive!(@pick $c, $out, nr, r, t, left, $mrb, $micro, [$($nb),*])
                } else {
                    drive!(@pick $c, $out, nr, r, t, left, 1, $micro, [$($n1),*])
                };
                t += step;
            }
            r += mr;
        }
    }};
    (@pick $c:expr, $out:expr, $nr:ident, $r:ident, $t:ident, $left:ident, $mr:literal, $micro:ident, [$($n:literal),*]) => {
        'pick: {
            $(
                if $left >= $n {
                    let res = $micro::<$mr, $n>($c, $r, $t);
                    for i in 0..$mr {
                        for j in 0..$n {
                            $out.set($t + j, $r + i, res[i][j]);
                        }
                    }
                    break 'pick $n;
                }
            )*
            unreachable!("token run lists end with 1")
        }
    };
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Eight lanes of the f16 at `p` (unaligned).
///
/// # Safety
/// `p..p+2` must be readable.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn splat_f16(p: *const u8) -> __m256 {
    // SAFETY: the caller guarantees two readable bytes at `p`.
    let h = unsafe { (p as *const i16).read_unaligned() };
    _mm256_cvtph_ps(_mm_set1_epi16(h))
}

// ------------------------------------------------------------------------------------------
// Loads shared by the float and attention-row kernels.

/// # Safety
/// `p..p+32` readable.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8_f32(p: *const u8) -> __m256 {
    // SAFETY: caller guarantees 32 readable bytes.
    unsafe { _mm256_loadu_ps(p as *const f32) }
}

/// # Safety
/// `p..p+16` readable.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8_f16(p: *const u8) -> __m256 {
    // SAFETY: caller guarantees 16 readable bytes.
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
}

/// # Safety
/// `p..p+16` readable.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8_bf16(p: *const u8) -> __m256 {
    // SAFETY: caller guarantees 16 readable bytes.
    let v = unsafe { _mm_loadu_si128(p as *const __m128i) };
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16))
}

// ------------------------------------------------------------------------------------------
// Prefetching of single-token weight streams.

/// How far ahead of a single token's product each weight stream is prefetched, in bytes.
///
/// A one-token product reads every weight once, so it runs at the rate cache lines arrive,
/// and a core keeps too few of them in flight on the hardware prefetchers alone: a plain
/// streaming read gets 13 GB/s per core on the Xeon (Emerald Rapids) this was tuned on. With
/// each stream (a packed group, a row) prefetched 2 KB ahead, packed Q4_0 matvecs went from
/// 17–19 to 27–30 GB/s on 2 threads (`kernel_bench`, 1408 × 2048 and 8960 × 1536), Q6_K
/// from 16 to 24 (1024 bytes: the same within noise; 4–16 KB slightly less).
pub(super) const PREFETCH_AHEAD: usize = 2048;

/// For a micro-tile of `NR` tokens: prefetches the `len` bytes `PREFETCH_AHEAD` past `p`, the
/// part of a weight stream that a one-token product will read that far ahead of the block at
/// `p`. The integer and K-quant tiles of several tokens reuse each weight block from cache and
/// prefetch nothing; the float kernels call this as `prefetch_ahead::<1>` for every tile (see
/// `float_micro!`: a batch's small float matrices are read once per step, from L3 or DRAM).
#[inline(always)]
fn prefetch_ahead<const NR: usize>(p: *const u8, len: usize) {
    if NR != 1 {
        return;
    }
    let q = p.wrapping_add(PREFETCH_AHEAD);
    let mut off = 0;
    while off < len {
        // SAFETY: a prefetch reads no memory architecturally and never faults, whatever the
        // address (past the end of the weights too).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(off) as *const i8) };
        off += 64;
    }
    // SAFETY: as above.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(len - 1) as *const i8) };
}

// ------------------------------------------------------------------------------------------
// The per-ISA entry points, with the `Q8_0` and `Q4_0` kernels of `int8`. Stamped out twice:
// plain AVX2 (`vpmaddubsw` + `vpmaddwd`) and with AVX512-VNNI/VL's 256-bit `vpdpbusd`, which
// does both steps in one instruction. With AVX512-VL the compiler also has 32 vector registers
// instead of 16 for the same 256-bit code, which lets the attention scores run 4 × 4 tiles (16
// accumulators plus operands) without spilling; plain AVX2 runs them 4 × 2.

macro_rules! int_kernels {
    ($feat:literal, $vnni:tt) => {
        use super::*;

        int8_kernels!($feat, $vnni);

        /// # Safety
        /// `c` must describe a task that passed `Task::validate`, `out` be its `[nt, nr]`
        /// tile, and the CPU must support `$feat`.
        #[target_feature(enable = $feat)]
        pub(super) unsafe fn gemm_impl(
            c: &Ctx,
            dtype: DType,
            packed: bool,
            nr: usize,
            nt: usize,
            out: OutTile,
        ) {
            // One token over file-layout rows: one row at a time where that reads faster.
            let single = nt == 1 && super::super::FileRowWalk::active() == super::super::FileRowWalk::Single;
            // SAFETY: forwarded from this function's contract: the micro-kernels only read rows
            // `0..nr` and tokens `0..nt` of `c`.
            unsafe {
                match dtype {
                    DType::Q8_0 if packed => gemm_packed::<true>(c, nr, nt, out),
                    DType::Q4_0 if packed => gemm_packed::<false>(c, nr, nt, out),
                    // Float tiles: 4 rows × 3 tokens (24 accumulators) where AVX512-VL gives
                    // 32 vector registers, 2 × 2 in plain AVX2's 16.
                    DType::F32 if single => drive!(c, nr, nt, out, micro_f32, 1 => [1], 1 => [1]),
                    DType::F16 if single => drive!(c, nr, nt, out, micro_f16, 1 => [1], 1 => [1]),
                    DType::BF16 if $vnni && single => drive!(c, nr, nt, out, micro_bf16_512, 1 => [1], 1 => [1]),
                    DType::BF16 if single => drive!(c, nr, nt, out, micro_bf16, 1 => [1], 1 => [1]),
                    DType::MXFP4 if $vnni && single => drive!(c, nr, nt, out, micro_mxfp4_512, 1 => [1], 1 => [1]),
                    DType::F32 if $vnni => drive!(c, nr, nt, out, micro_f32, 4 => [3, 2, 1], 1 => [4, 3, 2, 1]),
                    DType::F16 if $vnni => drive!(c, nr, nt, out, micro_f16, 4 => [3, 2, 1], 1 => [4, 3, 2, 1]),
                    DType::BF16 if $vnni => drive!(c, nr, nt, out, micro_bf16_512, 4 => [3, 2, 1], 1 => [4, 3, 2, 1]),
                    DType::F32 => drive!(c, nr, nt, out, micro_f32, 2 => [2, 1], 1 => [4, 3, 2, 1]),
                    DType::F16 => drive!(c, nr, nt, out, micro_f16, 2 => [2, 1], 1 => [4, 3, 2, 1]),
                    DType::BF16 => drive!(c, nr, nt, out, micro_bf16, 2 => [2, 1], 1 => [4, 3, 2, 1]),
                    DType::F8E4M3Block128 => {
                        drive!(c, nr, nt, out, micro_fp8, 4 => [2, 1], 1 => [4, 3, 2, 1])
                    }
                    DType::Q8_0 if single => drive!(c, nr, nt, out, micro_q8_0, 1 => [1], 1 => [1]),
                    DType::Q4_0 if single => drive!(c, nr, nt, out, micro_q4_0, 1 => [1], 1 => [1]),
                    DType::Q8_0 => drive!(c, nr, nt, out, micro_q8_0, 4 => [3, 2, 1], 1 => [4, 3, 2, 1]),
                    DType::Q4_0 => drive!(c, nr, nt, out, micro_q4_0, 4 => [3, 2, 1], 1 => [4, 3, 2, 1]),
                    DType::Q4_K => drive!(c, nr, nt, out, micro_q4_k, 1 => [1], 1 => [4, 3, 2, 1]),
                    DType::Q6_K => drive!(c, nr, nt, out, micro_q6_k, 1 => [1], 1 => [4, 3, 2, 1]),
                    // Exactly decoded f32 weights: 512-bit decode and FMA with AVX-512 (4 × 3
                    // tiles, 24 accumulators), the 2 × 2 float tiles in plain AVX2.
                    DType::MXFP4 if $vnni => drive!(c, nr, nt, out, micro_mxfp4_512, 4 => [3, 2, 1], 1 => [4, 3, 2, 1]),
                    DType::MXFP4 => drive!(c, nr, nt, out, micro_mxfp4, 2 => [2, 1], 1 => [4, 3, 2, 1]),
                }
            }
        }

        // The attention row tiles in 256-bit vectors for `$feat` (AVX512-VL's 32 registers in
        // the `vnni` build; the 512-bit tiles are stamped in `rows`).
        weighted_sum_tiles!(
            weighted_sum_tiles,
            $feat,
            8,
            load8,
            __m256,
            _mm256_setzero_ps,
            _mm256_set1_ps,
            _mm256_fmadd_ps,
            _mm256_loadu_ps,
            _mm256_storeu_ps,
            _mm256_add_ps
        );
        rows_dot_tiles!(
            rows_dot_tiles,
            $feat,
            8,
            load8,
            __m256,
            _mm256_setzero_ps,
            _mm256_loadu_ps,
            _mm256_fmadd_ps,
            hsum
        );
    };
}

mod plain {
    int_kernels!("avx2,fma,f16c", false);
}

mod vnni {
    int_kernels!("avx2,fma,f16c,avx512vnni,avx512vl", true);
}
