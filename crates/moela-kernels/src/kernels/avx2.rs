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
//! FP8 E4M3 is widened in registers: `(sign_extend16(b) << 7) & 0xBF80` is the f16 whose value
//! is the FP8 value / 256 (same mantissa width, exponent bias 15 vs 7, subnormals line up too), then
//! F16C converts it; the 256 is folded into the block scale. (NaN codes, which weights never
//! hold, come out as ±480 instead of NaN.)

use std::arch::x86_64::*;

use super::{Acts, Isa, KernelSet, OutTile, RowData, Task};
use crate::dtype::{DType, FP8_BLOCK};
use crate::fp::{bf16_to_f32, f16_to_f32, fp8_e4m3_to_f32};
use crate::quant::{QK, QK_K};

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

/// One f32 dot product through the 1×1 matmul micro-kernel (hence bit-identical to it).
fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    assert_eq!(w.len(), x.len(), "dot: lengths differ");
    assert!(supported(), "avx2 kernels on a CPU without avx2/fma/f16c");
    let c = Ctx {
        w: w.as_ptr() as *const u8,
        rb: 4 * w.len(),
        cols: w.len(),
        x: x.as_ptr(),
        qs: std::ptr::null(),
        d: std::ptr::null(),
        s: std::ptr::null(),
        bs: std::ptr::null(),
        sc: std::ptr::null(),
        sc_cols: 0,
        r0: 0,
    };
    // SAFETY: features checked; `c` describes one row of `cols` f32 and one token of `cols`
    // f32, both borrowed for the call, which is all `micro_f32::<1, 1>` reads.
    unsafe { micro_f32::<1, 1>(&c, 0, 0)[0][0] }
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
// Float weights: F32, F16, BF16 (8 columns per step), FP8 (per 128-column scale block).

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

/// Eight FP8 values at `p`, each divided by 256 (see the module comment; sign-extending the
/// byte to 16 bits and shifting left by 7 puts sign, exponent and mantissa in place, the mask
/// clears the copy of the sign that lands in the exponent's top bit).
///
/// # Safety
/// `p..p+8` readable.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8_fp8(p: *const u8) -> __m256 {
    // SAFETY: caller guarantees 8 readable bytes.
    let b = unsafe { _mm_loadl_epi64(p as *const __m128i) };
    let h = _mm_and_si128(
        _mm_slli_epi16(_mm_cvtepi8_epi16(b), 7),
        _mm_set1_epi16(0xBF80u16 as i16),
    );
    _mm256_cvtph_ps(h)
}

/// Sixteen FP8 values at `p` (as [`load8_fp8`]): elements 0..8 and 8..16.
///
/// # Safety
/// `p..p+16` readable.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load16_fp8(p: *const u8) -> (__m256, __m256) {
    // SAFETY: caller guarantees 16 readable bytes.
    let b = unsafe { _mm_loadu_si128(p as *const __m128i) };
    let h = _mm256_and_si256(
        _mm256_slli_epi16(_mm256_cvtepi8_epi16(b), 7),
        _mm256_set1_epi16(0xBF80u16 as i16),
    );
    (
        _mm256_cvtph_ps(_mm256_castsi256_si128(h)),
        _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1)),
    )
}

fn scalar_f32(p: &[u8]) -> f32 {
    f32::from_le_bytes([p[0], p[1], p[2], p[3]])
}
fn scalar_f16(p: &[u8]) -> f32 {
    f16_to_f32(u16::from_le_bytes([p[0], p[1]]))
}
fn scalar_bf16(p: &[u8]) -> f32 {
    bf16_to_f32(u16::from_le_bytes([p[0], p[1]]))
}

macro_rules! float_micro {
    ($name:ident, $esize:expr, $load:ident, $scalar:ident) => {
        /// # Safety
        /// Rows `r..r+MR` and tokens `t..t+NR` of a validated `c`; CPU has avx2/fma/f16c.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name<const MR: usize, const NR: usize>(
            c: &Ctx,
            r: usize,
            t: usize,
        ) -> [[f32; NR]; MR] {
            // SAFETY: rows r..r+MR hold `cols` elements of `$esize` bytes each and tokens
            // t..t+NR hold `cols` f32 (validated); every access below stays below `cols`.
            unsafe {
                let cols = c.cols;
                let n8 = cols / 8 * 8;
                let wp: [*const u8; MR] = std::array::from_fn(|i| c.w.add((r + i) * c.rb));
                let xp: [*const f32; NR] = std::array::from_fn(|j| c.x.add((t + j) * cols));
                // Two accumulators per output (alternate 8-column steps), so even a 1×1 tile
                // (a lone dot product) has two FMA chains in flight. Every tile shape does the
                // same arithmetic per output, so results do not depend on the tiling.
                let mut acc0 = [[_mm256_setzero_ps(); NR]; MR];
                let mut acc1 = [[_mm256_setzero_ps(); NR]; MR];
                macro_rules! step {
                    ($k:expr, $acc:ident) => {
                        let mut wv = [_mm256_setzero_ps(); MR];
                        for i in 0..MR {
                            wv[i] = $load(wp[i].add($k * $esize));
                        }
                        for j in 0..NR {
                            let xv = _mm256_loadu_ps(xp[j].add($k));
                            for i in 0..MR {
                                $acc[i][j] = _mm256_fmadd_ps(wv[i], xv, $acc[i][j]);
                            }
                        }
                    };
                }
                let mut k = 0;
                while k + 16 <= n8 {
                    // Float rows are prefetched for tiles of several tokens too: a decode step
                    // of a batch reads each small matrix once, from L3 or DRAM, at a few
                    // tokens per weight (built-in model, 16 sequences, 1 thread: 2,260–2,360
                    // -> 2,440–2,930 tok/s on an EPYC Zen 4).
                    for p in wp {
                        prefetch_ahead::<1>(p.add(k * $esize), 16 * $esize);
                    }
                    step!(k, acc0);
                    step!(k + 8, acc1);
                    k += 16;
                }
                if k < n8 {
                    step!(k, acc0);
                }
                let mut res = [[0.0f32; NR]; MR];
                for i in 0..MR {
                    for j in 0..NR {
                        let mut s = hsum(_mm256_add_ps(acc0[i][j], acc1[i][j]));
                        for kk in n8..cols {
                            let wb = std::slice::from_raw_parts(wp[i].add(kk * $esize), $esize);
                            s += $scalar(wb) * *xp[j].add(kk);
                        }
                        res[i][j] = s;
                    }
                }
                res
            }
        }
    };
}

float_micro!(micro_f32, 4, load8_f32, scalar_f32);
float_micro!(micro_f16, 2, load8_f16, scalar_f16);
float_micro!(micro_bf16, 2, load8_bf16, scalar_bf16);

/// # Safety
/// Rows `r..r+MR` and tokens `t..t+NR` of a validated FP8 `c`; CPU has avx2/fma/f16c.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn micro_fp8<const MR: usize, const NR: usize>(
    c: &Ctx,
    r: usize,
    t: usize,
) -> [[f32; NR]; MR] {
    // SAFETY: rows hold `cols` bytes, tokens `cols` f32, and the scale grid covers row blocks
    // up to (r0+r+MR-1)/128 (validated); column indices stay below `cols`.
    unsafe {
        let cols = c.cols;
        let wp: [*const u8; MR] = std::array::from_fn(|i| c.w.add((r + i) * c.rb));
        let xp: [*const f32; NR] = std::array::from_fn(|j| c.x.add((t + j) * cols));
        let srow: [*const f32; MR] =
            std::array::from_fn(|i| c.sc.add((c.r0 + r + i) / FP8_BLOCK * c.sc_cols));
        let mut facc = [[_mm256_setzero_ps(); NR]; MR];
        let mut tail = [[0.0f32; NR]; MR];
        for cb in 0..c.sc_cols {
            let k0 = cb * FP8_BLOCK;
            let k1 = (k0 + FP8_BLOCK).min(cols);
            let kv = k0 + (k1 - k0) / 8 * 8;
            let k16 = k0 + (k1 - k0) / 16 * 16;
            let mut acc = [[_mm256_setzero_ps(); NR]; MR];
            for p in wp {
                prefetch_ahead::<NR>(p.add(k0), k1 - k0);
            }
            let mut k = k0;
            while k < k16 {
                for i in 0..MR {
                    let (lo, hi) = load16_fp8(wp[i].add(k));
                    for j in 0..NR {
                        let xl = _mm256_loadu_ps(xp[j].add(k));
                        let xh = _mm256_loadu_ps(xp[j].add(k + 8));
                        acc[i][j] = _mm256_fmadd_ps(lo, xl, acc[i][j]);
                        acc[i][j] = _mm256_fmadd_ps(hi, xh, acc[i][j]);
                    }
                }
                k += 16;
            }
            while k < kv {
                let mut wv = [_mm256_setzero_ps(); MR];
                for i in 0..MR {
                    wv[i] = load8_fp8(wp[i].add(k));
                }
                for j in 0..NR {
                    let xv = _mm256_loadu_ps(xp[j].add(k));
                    for i in 0..MR {
                        acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
                    }
                }
                k += 8;
            }
            for i in 0..MR {
                let s = *srow[i].add(cb);
                let sv = _mm256_set1_ps(s * 256.0);
                for j in 0..NR {
                    facc[i][j] = _mm256_fmadd_ps(acc[i][j], sv, facc[i][j]);
                    let mut p = 0.0f32;
                    for kk in kv..k1 {
                        p += fp8_e4m3_to_f32(*wp[i].add(kk)) * *xp[j].add(kk);
                    }
                    tail[i][j] += p * s;
                }
            }
        }
        let mut res = [[0.0f32; NR]; MR];
        for i in 0..MR {
            for j in 0..NR {
                res[i][j] = hsum(facc[i][j]) + tail[i][j];
            }
        }
        res
    }
}

// ------------------------------------------------------------------------------------------
// Q8_0 and Q4_0 weights × Q8 activations, and the per-ISA entry points. Stamped out twice:
// plain AVX2 (`vpmaddubsw` + `vpmaddwd`) and with AVX512-VNNI/VL's 256-bit `vpdpbusd`, which
// does both steps in one instruction. With AVX512-VL the compiler also has 32 vector registers
// instead of 16 for the same 256-bit code, which lets the attention scores run 4 × 4 tiles (16
// accumulators plus operands) without spilling; plain AVX2 runs them 4 × 2.

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

/// `Σ u8·i8` over groups of 4 bytes into i32 lanes.
macro_rules! dot_u8i8 {
    (false, $u:expr, $s:expr, $ones:expr) => {
        _mm256_madd_epi16(_mm256_maddubs_epi16($u, $s), $ones)
    };
    (true, $u:expr, $s:expr, $ones:expr) => {{
        let _ = $ones; // only the plain form needs it
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), $u, $s)
    }};
}

macro_rules! int_kernels {
    ($feat:literal, $vnni:tt) => {
        use super::*;

        /// # Safety
        /// Rows `r..r+MR` and tokens `t..t+NR` of a validated `Q8_0` `c`; CPU has `$feat`.
        #[inline]
        #[target_feature(enable = $feat)]
        pub(super) unsafe fn micro_q8_0<const MR: usize, const NR: usize>(
            c: &Ctx,
            r: usize,
            t: usize,
        ) -> [[f32; NR]; MR] {
            // SAFETY: each row holds cols/32 blocks of 34 bytes, each token cols i8 and
            // cols/32 f32 (validated); block indices stay below cols/32.
            unsafe {
                let nb = c.cols / QK;
                let wp: [*const u8; MR] = std::array::from_fn(|i| c.w.add((r + i) * c.rb));
                let ap: [*const i8; NR] = std::array::from_fn(|j| c.qs.add((t + j) * c.cols));
                let dp: [*const f32; NR] = std::array::from_fn(|j| c.d.add((t + j) * nb));
                let ones = _mm256_set1_epi16(1);
                let mut acc = [[_mm256_setzero_ps(); NR]; MR];
                for b in 0..nb {
                    let mut w = [_mm256_setzero_si256(); MR];
                    let mut aw = [_mm256_setzero_si256(); MR];
                    let mut dw = [_mm256_setzero_ps(); MR];
                    for i in 0..MR {
                        let blk = wp[i].add(b * 34);
                        prefetch_ahead::<NR>(blk, 34);
                        dw[i] = splat_f16(blk);
                        w[i] = _mm256_loadu_si256(blk.add(2) as *const __m256i);
                        aw[i] = _mm256_abs_epi8(w[i]);
                    }
                    for j in 0..NR {
                        let a = _mm256_loadu_si256(ap[j].add(b * QK) as *const __m256i);
                        let da = _mm256_broadcast_ss(&*dp[j].add(b));
                        for i in 0..MR {
                            let s = _mm256_sign_epi8(a, w[i]);
                            let p = dot_u8i8!($vnni, aw[i], s, ones);
                            let scale = _mm256_mul_ps(dw[i], da);
                            acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[i][j]);
                        }
                    }
                }
                hsum_tile(&acc)
            }
        }

        /// # Safety
        /// Rows `r..r+MR` and tokens `t..t+NR` of a validated `Q4_0` `c`; CPU has `$feat`.
        #[inline]
        #[target_feature(enable = $feat)]
        pub(super) unsafe fn micro_q4_0<const MR: usize, const NR: usize>(
            c: &Ctx,
            r: usize,
            t: usize,
        ) -> [[f32; NR]; MR] {
            // SAFETY: each row holds cols/32 blocks of 18 bytes, each token cols i8 and
            // cols/32 f32 (validated); block indices stay below cols/32.
            unsafe {
                let nb = c.cols / QK;
                let wp: [*const u8; MR] = std::array::from_fn(|i| c.w.add((r + i) * c.rb));
                let ap: [*const i8; NR] = std::array::from_fn(|j| c.qs.add((t + j) * c.cols));
                let dp: [*const f32; NR] = std::array::from_fn(|j| c.d.add((t + j) * nb));
                let ones = _mm256_set1_epi16(1);
                let m4 = _mm256_set1_epi8(0x0F);
                let eight = _mm256_set1_epi8(8);
                let hi4 = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
                let mut acc = [[_mm256_setzero_ps(); NR]; MR];
                for b in 0..nb {
                    let mut w = [_mm256_setzero_si256(); MR];
                    let mut dw = [_mm256_setzero_ps(); MR];
                    for i in 0..MR {
                        let blk = wp[i].add(b * 18);
                        prefetch_ahead::<NR>(blk, 18);
                        dw[i] = splat_f16(blk);
                        // Low nibbles are elements 0..16, high nibbles 16..32: the 16 bytes
                        // in both halves, the upper half shifted right by 4.
                        let q = _mm256_broadcastsi128_si256(_mm_loadu_si128(
                            blk.add(2) as *const __m128i
                        ));
                        let both = _mm256_srlv_epi32(q, hi4);
                        w[i] = _mm256_sub_epi8(_mm256_and_si256(both, m4), eight);
                    }
                    for j in 0..NR {
                        let a = _mm256_loadu_si256(ap[j].add(b * QK) as *const __m256i);
                        let aa = _mm256_abs_epi8(a);
                        let da = _mm256_broadcast_ss(&*dp[j].add(b));
                        for i in 0..MR {
                            let s = _mm256_sign_epi8(w[i], a);
                            let p = dot_u8i8!($vnni, aa, s, ones);
                            let scale = _mm256_mul_ps(dw[i], da);
                            acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[i][j]);
                        }
                    }
                }
                hsum_tile(&acc)
            }
        }

        /// Packed (`pack`) `Q8_0` (`Q8`) or `Q4_0` weights: rows `r..r+8·G` (whole groups) ×
        /// tokens `t..t+NR`, stored straight into the task's output tile. One 32-bit lane
        /// per row: each step multiplies 4 quant bytes of 8 rows by 4 broadcast activation
        /// bytes. Unsigned weight operands: `Q4_0` nibbles (the −8 comes back as −8·Σa per
        /// block); `Q8_0` with VNNI as w + 128 (−128·Σa), without VNNI through |w| and
        /// sign(a, w).
        ///
        /// # Safety
        /// A validated packed task `c` of `nr` rows (`r + 8·G ≤ nr`, `t + NR ≤` its tokens),
        /// `out` its output tile; CPU has `$feat`.
        #[inline]
        #[target_feature(enable = $feat)]
        pub(super) unsafe fn micro_packed<const Q8: bool, const G: usize, const NR: usize>(
            c: &Ctx,
            r: usize,
            t: usize,
            out: &OutTile,
        ) {
            // SAFETY: a group is 8 rows of `rb` bytes holding cols/32 packed blocks of
            // 8·(18|34) bytes; each token holds cols i8 plus cols/32 scales and sums
            // (validated); block indices stay below cols/32; outputs t+j < tokens, r+8g+8 ≤ nr.
            unsafe {
                let nb = c.cols / QK;
                let ts = if Q8 { 34 } else { 18 };
                let gp: [*const u8; G] = std::array::from_fn(|g| c.w.add((r + 8 * g) * c.rb));
                let ap: [*const i8; NR] = std::array::from_fn(|j| c.qs.add((t + j) * c.cols));
                let dp: [*const f32; NR] = std::array::from_fn(|j| c.d.add((t + j) * nb));
                let sp: [*const i32; NR] = std::array::from_fn(|j| c.s.add((t + j) * nb));
                let m4 = _mm256_set1_epi8(0x0F);
                let ones = _mm256_set1_epi16(1);
                let flip = _mm256_set1_epi8(-128);
                let offset = if Q8 { if $vnni { -128 } else { 0 } } else { -8 };
                let mut facc = [[_mm256_setzero_ps(); NR]; G];
                for b in 0..nb {
                    // Two independent integer chains per output (even/odd steps), so the
                    // multiply-add latency overlaps; summed before the float scale.
                    let mut iacc = [[_mm256_setzero_si256(); NR]; G];
                    let mut iacc2 = [[_mm256_setzero_si256(); NR]; G];
                    if offset != 0 {
                        for j in 0..NR {
                            let corr = _mm256_set1_epi32(offset * *sp[j].add(b));
                            for g in 0..G {
                                iacc[g][j] = corr;
                            }
                        }
                    }
                    let blk: [*const u8; G] = std::array::from_fn(|g| gp[g].add(b * 8 * ts));
                    for p in blk {
                        prefetch_ahead::<NR>(p, 8 * ts);
                    }
                    let act = |j: usize, k: usize| {
                        _mm256_set1_epi32(std::ptr::read_unaligned(
                            ap[j].add(b * QK + k) as *const i32
                        ))
                    };
                    if Q8 {
                        // One step: quant bytes 4·ch.. of the 8 rows into `$chain`.
                        macro_rules! q8_step {
                            ($chain:ident, $ch:expr) => {{
                                let ch = $ch;
                                let w: [__m256i; G] = std::array::from_fn(|g| {
                                    _mm256_loadu_si256(blk[g].add(16 + 32 * ch) as *const __m256i)
                                });
                                let u: [__m256i; G] = std::array::from_fn(|g| {
                                    if $vnni {
                                        _mm256_xor_si256(w[g], flip)
                                    } else {
                                        _mm256_abs_epi8(w[g])
                                    }
                                });
                                for j in 0..NR {
                                    let a = act(j, 4 * ch);
                                    for g in 0..G {
                                        $chain[g][j] = if $vnni {
                                            _mm256_dpbusd_epi32($chain[g][j], u[g], a)
                                        } else {
                                            let s = _mm256_sign_epi8(a, w[g]);
                                            let p = _mm256_madd_epi16(
                                                _mm256_maddubs_epi16(u[g], s),
                                                ones,
                                            );
                                            _mm256_add_epi32($chain[g][j], p)
                                        };
                                    }
                                }
                            }};
                        }
                        for ch in 0..4 {
                            q8_step!(iacc, 2 * ch);
                            q8_step!(iacc2, 2 * ch + 1);
                        }
                    } else {
                        for ch in 0..4 {
                            let v: [__m256i; G] = std::array::from_fn(|g| {
                                _mm256_loadu_si256(blk[g].add(16 + 32 * ch) as *const __m256i)
                            });
                            let lo: [__m256i; G] = std::array::from_fn(|g| _mm256_and_si256(v[g], m4));
                            let hi: [__m256i; G] = std::array::from_fn(|g| {
                                _mm256_and_si256(_mm256_srli_epi16(v[g], 4), m4)
                            });
                            for j in 0..NR {
                                let (alo, ahi) = (act(j, 4 * ch), act(j, 16 + 4 * ch));
                                for g in 0..G {
                                    if $vnni {
                                        iacc[g][j] = _mm256_dpbusd_epi32(iacc[g][j], lo[g], alo);
                                        iacc2[g][j] = _mm256_dpbusd_epi32(iacc2[g][j], hi[g], ahi);
                                    } else {
                                        // Pair sums ≤ 2·15·127, two of them fit i16.
                                        let p = _mm256_add_epi16(
                                            _mm256_maddubs_epi16(lo[g], alo),
                                            _mm256_maddubs_epi16(hi[g], ahi),
                                        );
                                        iacc[g][j] =
                                            _mm256_add_epi32(iacc[g][j], _mm256_madd_epi16(p, ones));
                                    }
                                }
                            }
                        }
                    }
                    for g in 0..G {
                        let ws = _mm256_cvtph_ps(_mm_loadu_si128(blk[g] as *const __m128i));
                        for j in 0..NR {
                            let scale = _mm256_mul_ps(ws, _mm256_broadcast_ss(&*dp[j].add(b)));
                            let i = _mm256_add_epi32(iacc[g][j], iacc2[g][j]);
                            facc[g][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), scale, facc[g][j]);
                        }
                    }
                }
                for g in 0..G {
                    for j in 0..NR {
                        _mm256_storeu_ps(out.at(t + j, r + 8 * g), facc[g][j]);
                    }
                }
            }
        }

        /// Walks a packed task in tiles of 8, 16 or 32 rows × runs of up to 4 tokens.
        ///
        /// # Safety
        /// As [`micro_packed`] for every tile: a validated packed task, `out` its `[nt, nr]`
        /// tile.
        #[target_feature(enable = $feat)]
        pub(super) unsafe fn gemm_packed<const Q8: bool>(c: &Ctx, nr: usize, nt: usize, out: OutTile) {
            let o = &out;
            let mut r = 0;
            while r < nr {
                // Groups per tile: fewer without VNNI (16 vector registers). A single token
                // is bound by DRAM: 4 groups are 4 prefetched streams in flight (with one
                // stream at a time, packed Q4_0 n = 1 reached 24–27 GB/s on 2 threads where 4
                // reach 26–30; `PREFETCH_AHEAD`).
                let g = match (nt, $vnni) {
                    (1, true) if nr - r >= 32 => 4,
                    (_, true) | (1, false) if nr - r >= 16 => 2,
                    _ => 1,
                };
                let mut t = 0;
                while t < nt {
                    let step = (nt - t).min(4);
                    // SAFETY: forwarded; the tile lies inside the task's rows and tokens.
                    unsafe {
                        match (g, step) {
                            (4, _) => micro_packed::<Q8, 4, 1>(c, r, t, o),
                            (2, 4) => micro_packed::<Q8, 2, 4>(c, r, t, o),
                            (2, 3) => micro_packed::<Q8, 2, 3>(c, r, t, o),
                            (2, 2) => micro_packed::<Q8, 2, 2>(c, r, t, o),
                            (2, _) => micro_packed::<Q8, 2, 1>(c, r, t, o),
                            (_, 4) => micro_packed::<Q8, 1, 4>(c, r, t, o),
                            (_, 3) => micro_packed::<Q8, 1, 3>(c, r, t, o),
                            (_, 2) => micro_packed::<Q8, 1, 2>(c, r, t, o),
                            (_, _) => micro_packed::<Q8, 1, 1>(c, r, t, o),
                        }
                    }
                    t += step;
                }
                r += 8 * g;
            }
        }

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
            // SAFETY: forwarded from this function's contract: the micro-kernels only read rows
            // `0..nr` and tokens `0..nt` of `c`.
            unsafe {
                match dtype {
                    DType::Q8_0 if packed => gemm_packed::<true>(c, nr, nt, out),
                    DType::Q4_0 if packed => gemm_packed::<false>(c, nr, nt, out),
                    // Float tiles: 4 rows × 3 tokens (24 accumulators) where AVX512-VL gives
                    // 32 vector registers, 2 × 2 in plain AVX2's 16.
                    DType::F32 if $vnni => drive!(c, nr, nt, out, micro_f32, 4 => [3, 2, 1], 1 => [4, 3, 2, 1]),
                    DType::F16 if $vnni => drive!(c, nr, nt, out, micro_f16, 4 => [3, 2, 1], 1 => [4, 3, 2, 1]),
                    DType::BF16 if $vnni => drive!(c, nr, nt, out, micro_bf16, 4 => [3, 2, 1], 1 => [4, 3, 2, 1]),
                    DType::F32 => drive!(c, nr, nt, out, micro_f32, 2 => [2, 1], 1 => [4, 3, 2, 1]),
                    DType::F16 => drive!(c, nr, nt, out, micro_f16, 2 => [2, 1], 1 => [4, 3, 2, 1]),
                    DType::BF16 => drive!(c, nr, nt, out, micro_bf16, 2 => [2, 1], 1 => [4, 3, 2, 1]),
                    DType::F8E4M3Block128 => {
                        drive!(c, nr, nt, out, micro_fp8, 4 => [2, 1], 1 => [4, 3, 2, 1])
                    }
                    DType::Q8_0 => drive!(c, nr, nt, out, micro_q8_0, 4 => [3, 2, 1], 1 => [4, 3, 2, 1]),
                    DType::Q4_0 => drive!(c, nr, nt, out, micro_q4_0, 4 => [3, 2, 1], 1 => [4, 3, 2, 1]),
                    DType::Q4_K => drive!(c, nr, nt, out, micro_q4_k, 1 => [1], 1 => [4, 3, 2, 1]),
                    DType::Q6_K => drive!(c, nr, nt, out, micro_q6_k, 1 => [1], 1 => [4, 3, 2, 1]),
                }
            }
        }

        /// [`super::weighted_sum_tiles`] compiled for `$feat`.
        ///
        /// # Safety
        /// As for the inner function, with the CPU supporting `$feat`.
        #[target_feature(enable = $feat)]
        pub(super) unsafe fn weighted_sum_tiles<const HT: usize, const CV: usize>(
            p: &[f32],
            nt: usize,
            rows: RowData<'_>,
            ct: usize,
            w: usize,
            out: &mut [f32],
        ) {
            // SAFETY: forwarded from this function's contract.
            unsafe { super::weighted_sum_tiles::<HT, CV>(p, nt, rows, ct, w, out) }
        }

        /// [`super::rows_dot_tiles`] compiled for `$feat`.
        ///
        /// # Safety
        /// As for the inner function, with the CPU supporting `$feat`.
        #[target_feature(enable = $feat)]
        pub(super) unsafe fn rows_dot_tiles<const QT: usize, const RT: usize>(
            x: &[f32],
            nq: usize,
            rows: RowData<'_>,
            nrt: usize,
            c8: usize,
            y: &mut [f32],
        ) {
            // SAFETY: forwarded from this function's contract.
            unsafe { super::rows_dot_tiles::<QT, RT>(x, nq, rows, nrt, c8, y) }
        }
    };
}

mod plain {
    int_kernels!("avx2,fma,f16c", false);
}

mod vnni {
    int_kernels!("avx2,fma,f16c,avx512vnni,avx512vl", true);
}

// ------------------------------------------------------------------------------------------
// K-quants × Q8_K activations.

/// The 6-bit scales and mins of a `Q4_K` super-block (see `quant::q4_k_scale_min`).
#[inline]
fn q4_k_unpack(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 63;
        m[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 6) << 4);
        m[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, m)
}

/// # Safety
/// Rows `r..r+MR` and tokens `t..t+NR` of a validated `Q4_K` `c`; CPU has avx2/fma/f16c.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn micro_q4_k<const MR: usize, const NR: usize>(
    c: &Ctx,
    r: usize,
    t: usize,
) -> [[f32; NR]; MR] {
    // SAFETY: each row holds cols/256 super-blocks of 144 bytes; each token cols i8, cols/256
    // f32 and cols/16 i16 (validated); super-block indices stay below cols/256.
    unsafe {
        let nsb = c.cols / QK_K;
        let wp: [*const u8; MR] = std::array::from_fn(|i| c.w.add((r + i) * c.rb));
        let ap: [*const i8; NR] = std::array::from_fn(|j| c.qs.add((t + j) * c.cols));
        let dp: [*const f32; NR] = std::array::from_fn(|j| c.d.add((t + j) * nsb));
        let bp: [*const i16; NR] = std::array::from_fn(|j| c.bs.add((t + j) * nsb * 16));
        let m4 = _mm256_set1_epi8(0x0F);
        let mut acc = [[_mm256_setzero_ps(); NR]; MR];
        for sb in 0..nsb {
            for i in 0..MR {
                let blk = wp[i].add(sb * 144);
                prefetch_ahead::<NR>(blk, 144);
                let d = splat_f16(blk);
                let dmin = splat_f16(blk.add(2));
                let (sc, m) = q4_k_unpack(&*(blk.add(4) as *const [u8; 12]));
                let mut isum = [_mm256_setzero_si256(); NR];
                for cc in 0..4 {
                    let q = _mm256_loadu_si256(blk.add(16 + 32 * cc) as *const __m256i);
                    let lo = _mm256_and_si256(q, m4);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                    let s1 = _mm256_set1_epi16(sc[2 * cc] as i16);
                    let s2 = _mm256_set1_epi16(sc[2 * cc + 1] as i16);
                    for j in 0..NR {
                        let a = ap[j].add(sb * QK_K + 64 * cc);
                        let a0 = _mm256_loadu_si256(a as *const __m256i);
                        let a1 = _mm256_loadu_si256(a.add(32) as *const __m256i);
                        let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, a0), s1);
                        let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, a1), s2);
                        isum[j] = _mm256_add_epi32(isum[j], _mm256_add_epi32(p0, p1));
                    }
                }
                // Mins: Σ_j m_j · (bsum[2j] + bsum[2j+1]), via each m duplicated per pair.
                let mv = _mm_cvtepu8_epi16(_mm_loadl_epi64(m.as_ptr() as *const __m128i));
                let mins = _mm256_set_m128i(_mm_unpackhi_epi16(mv, mv), _mm_unpacklo_epi16(mv, mv));
                for j in 0..NR {
                    let bs = _mm256_loadu_si256(bp[j].add(sb * 16) as *const __m256i);
                    let msum = _mm256_madd_epi16(mins, bs);
                    let da = _mm256_broadcast_ss(&*dp[j].add(sb));
                    acc[i][j] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(isum[j]),
                        _mm256_mul_ps(d, da),
                        acc[i][j],
                    );
                    acc[i][j] = _mm256_fnmadd_ps(
                        _mm256_cvtepi32_ps(msum),
                        _mm256_mul_ps(dmin, da),
                        acc[i][j],
                    );
                }
            }
        }
        hsum_tile(&acc)
    }
}

/// # Safety
/// Rows `r..r+MR` and tokens `t..t+NR` of a validated `Q6_K` `c`; CPU has avx2/fma/f16c.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn micro_q6_k<const MR: usize, const NR: usize>(
    c: &Ctx,
    r: usize,
    t: usize,
) -> [[f32; NR]; MR] {
    // SAFETY: each row holds cols/256 super-blocks of 210 bytes; each token cols i8, cols/256
    // f32 and cols/16 i16 (validated); super-block indices stay below cols/256.
    unsafe {
        let nsb = c.cols / QK_K;
        let wp: [*const u8; MR] = std::array::from_fn(|i| c.w.add((r + i) * c.rb));
        let ap: [*const i8; NR] = std::array::from_fn(|j| c.qs.add((t + j) * c.cols));
        let dp: [*const f32; NR] = std::array::from_fn(|j| c.d.add((t + j) * nsb));
        let bp: [*const i16; NR] = std::array::from_fn(|j| c.bs.add((t + j) * nsb * 16));
        let m4 = _mm256_set1_epi8(0x0F);
        let m30 = _mm256_set1_epi8(0x30);
        let mut acc = [[_mm256_setzero_ps(); NR]; MR];
        for sb in 0..nsb {
            for i in 0..MR {
                let blk = wp[i].add(sb * 210);
                prefetch_ahead::<NR>(blk, 210);
                let d = splat_f16(blk.add(208));
                let scb = blk.add(192) as *const i8;
                let mut isum = [_mm256_setzero_si256(); NR];
                for h in 0..2 {
                    let ql0 = _mm256_loadu_si256(blk.add(64 * h) as *const __m256i);
                    let ql1 = _mm256_loadu_si256(blk.add(64 * h + 32) as *const __m256i);
                    let qh = _mm256_loadu_si256(blk.add(128 + 32 * h) as *const __m256i);
                    for k in 0..4 {
                        // Element l+32k of this half: nibble of ql[l] (k even) or ql[l+32]
                        // (k odd), low (k < 2) or high; 2 high bits from qh[l] at 2k.
                        let ql = if k & 1 == 0 { ql0 } else { ql1 };
                        let low = if k < 2 {
                            _mm256_and_si256(ql, m4)
                        } else {
                            _mm256_and_si256(_mm256_srli_epi16(ql, 4), m4)
                        };
                        let high = match k {
                            0 => _mm256_slli_epi16(qh, 4),
                            1 => _mm256_slli_epi16(qh, 2),
                            2 => qh,
                            _ => _mm256_srli_epi16(qh, 2),
                        };
                        let q = _mm256_or_si256(low, _mm256_and_si256(high, m30));
                        // Values 0..16 of this group use scale 8h+2k, values 16..32 the next.
                        let g = 8 * h + 2 * k;
                        let sv = _mm256_set_m128i(
                            _mm_set1_epi16(*scb.add(g + 1) as i16),
                            _mm_set1_epi16(*scb.add(g) as i16),
                        );
                        for j in 0..NR {
                            let a = _mm256_loadu_si256(
                                ap[j].add(sb * QK_K + 128 * h + 32 * k) as *const __m256i
                            );
                            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), sv);
                            isum[j] = _mm256_add_epi32(isum[j], p);
                        }
                    }
                }
                // The −32 offset: Σ_g sc_g · 32 · bsum_g.
                let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(scb as *const __m128i));
                for j in 0..NR {
                    let bs = _mm256_loadu_si256(bp[j].add(sb * 16) as *const __m256i);
                    let corr = _mm256_slli_epi32(_mm256_madd_epi16(sc16, bs), 5);
                    let tot = _mm256_sub_epi32(isum[j], corr);
                    let da = _mm256_broadcast_ss(&*dp[j].add(sb));
                    acc[i][j] =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(tot), _mm256_mul_ps(d, da), acc[i][j]);
                }
            }
        }
        hsum_tile(&acc)
    }
}

// ------------------------------------------------------------------------------------------
// Activation quantizers (bit-identical to the scalar ones).

/// Rounds `v·s` to nearest-even i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn round_mul(v: __m256, s: __m256) -> __m256i {
    _mm256_cvtps_epi32(_mm256_round_ps(
        _mm256_mul_ps(v, s),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    ))
}

/// Packs four vectors of i32 (each within i8 range) into 32 bytes in element order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pack_i8(q0: __m256i, q1: __m256i, q2: __m256i, q3: __m256i) -> __m256i {
    let p = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
    _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn abs_ps(v: __m256) -> __m256 {
    _mm256_andnot_ps(_mm256_set1_ps(-0.0), v)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hmax(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_movehdup_ps(m));
    _mm_cvtss_f32(m)
}

fn quant_q8(x: &[f32], qs: &mut [i8], d: &mut [f32]) {
    assert!(supported());
    let nb = x.len() / QK;
    assert!(x.len().is_multiple_of(QK) && qs.len() >= nb * QK && d.len() >= nb);
    // SAFETY: features checked; lengths checked above.
    unsafe { quant_q8_impl(x, qs, d) }
}

/// # Safety
/// avx2/fma/f16c available; `x.len()` a multiple of 32, `qs`/`d` at least as long as needed.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quant_q8_impl(x: &[f32], qs: &mut [i8], d: &mut [f32]) {
    for b in 0..x.len() / QK {
        // SAFETY: block b reads x[32b..32b+32] and writes qs[32b..32b+32], all in bounds.
        unsafe {
            let p = x.as_ptr().add(b * QK);
            let v: [__m256; 4] = std::array::from_fn(|k| _mm256_loadu_ps(p.add(8 * k)));
            let m = _mm256_max_ps(
                _mm256_max_ps(abs_ps(v[0]), abs_ps(v[1])),
                _mm256_max_ps(abs_ps(v[2]), abs_ps(v[3])),
            );
            let amax = hmax(m);
            let db = amax / 127.0;
            let id = _mm256_set1_ps(if db != 0.0 { 1.0 / db } else { 0.0 });
            let q = pack_i8(
                round_mul(v[0], id),
                round_mul(v[1], id),
                round_mul(v[2], id),
                round_mul(v[3], id),
            );
            _mm256_storeu_si256(qs.as_mut_ptr().add(b * QK) as *mut __m256i, q);
            d[b] = db;
        }
    }
}

fn quant_q8k(x: &[f32], qs: &mut [i8], d: &mut [f32], bsums: &mut [i16]) {
    assert!(supported());
    let nb = x.len() / QK_K;
    assert!(x.len().is_multiple_of(QK_K) && qs.len() >= nb * QK_K && d.len() >= nb);
    assert!(bsums.len() >= nb * 16);
    // SAFETY: features checked; lengths checked above.
    unsafe { quant_q8k_impl(x, qs, d, bsums) }
}

/// # Safety
/// avx2/fma/f16c available; `x.len()` a multiple of 256, outputs long enough.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quant_q8k_impl(x: &[f32], qs: &mut [i8], d: &mut [f32], bsums: &mut [i16]) {
    for b in 0..x.len() / QK_K {
        // SAFETY: super-block b reads x[256b..][..256], writes qs[256b..][..256] and
        // bsums[16b..][..16], all in bounds.
        unsafe {
            let p = x.as_ptr().add(b * QK_K);
            let mut m = _mm256_setzero_ps();
            for k in 0..32 {
                m = _mm256_max_ps(m, abs_ps(_mm256_loadu_ps(p.add(8 * k))));
            }
            let amax = hmax(m);
            let q = qs.as_mut_ptr().add(b * QK_K);
            if amax == 0.0 {
                std::ptr::write_bytes(q, 0, QK_K);
                bsums[16 * b..16 * b + 16].fill(0);
                d[b] = 0.0;
                continue;
            }
            // The signed value of largest magnitude, first on ties (as the scalar rule).
            let target = _mm256_set1_ps(amax);
            let mut max = 0.0f32;
            for k in 0..32 {
                let eq = _mm256_cmp_ps(abs_ps(_mm256_loadu_ps(p.add(8 * k))), target, _CMP_EQ_OQ);
                let mask = _mm256_movemask_ps(eq);
                if mask != 0 {
                    max = *p.add(8 * k + mask.trailing_zeros() as usize);
                    break;
                }
            }
            let iscale = -127.0 / max;
            let is = _mm256_set1_ps(iscale);
            let ones8 = _mm256_set1_epi8(1);
            let ones16 = _mm256_set1_epi16(1);
            let lim = _mm256_set1_epi32(127);
            for g in 0..8 {
                let v: [__m256i; 4] = std::array::from_fn(|k| {
                    _mm256_min_epi32(round_mul(_mm256_loadu_ps(p.add(32 * g + 8 * k)), is), lim)
                });
                let packed = pack_i8(v[0], v[1], v[2], v[3]);
                _mm256_storeu_si256(q.add(32 * g) as *mut __m256i, packed);
                // Sums of 16: pairs → quads → two halves.
                let s4 = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, packed), ones16);
                let h = _mm_hadd_epi32(_mm256_castsi256_si128(s4), _mm256_extracti128_si256(s4, 1));
                let h = _mm_hadd_epi32(h, h);
                bsums[16 * b + 2 * g] = _mm_cvtsi128_si32(h) as i16;
                bsums[16 * b + 2 * g + 1] = _mm_extract_epi32(h, 1) as i16;
            }
            d[b] = 1.0 / iscale;
        }
    }
}

// ------------------------------------------------------------------------------------------
// Weighted sums of rows (attention's probability-weighted values) and rows' dot products
// (attention scores). `VL`: run the copy compiled with AVX512-VL (see `int_kernels!`).

/// Eight values of `rows` from element `at` (`row · stride + column`) as f32.
///
/// # Safety
/// `at + 8 ≤` the rows' data length.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8_row(rows: RowData<'_>, at: usize) -> __m256 {
    // SAFETY: the 8 values at `at` lie inside the data (caller), 4 or 2 bytes each.
    unsafe {
        match rows {
            RowData::F32 { data, .. } => load8_f32(data.as_ptr().add(at) as *const u8),
            RowData::F16 { data, .. } => load8_f16(data.as_ptr().add(at) as *const u8),
        }
    }
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

fn weighted_sum<const VL: bool>(p: &[f32], n: usize, rows: RowData<'_>, out: &mut [f32]) {
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
    let (ht, cw) = WS_TILE;
    let (nt, ct) = (n / ht * ht, cols / (8 * cw) * (8 * cw));
    // SAFETY: features checked; the tiles read rows 0..nr, columns below ct and heads below
    // nt, inside `rows`, `p` and `out` (lengths asserted).
    unsafe {
        if VL {
            vnni::weighted_sum_tiles::<{ WS_TILE.0 }, { WS_TILE.1 }>(p, nt, rows, ct, cols, out)
        } else {
            plain::weighted_sum_tiles::<{ WS_TILE.0 }, { WS_TILE.1 }>(p, nt, rows, ct, cols, out)
        }
    };
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

/// [`weighted_sum_tiles`]' tile, (heads, 8-column vectors): 4 × 2, 8 accumulators, in both
/// builds (f16 rows on Zen 4, one core: 52 GMAC/s; 8 × 2 gave 44 with 32 registers and spilled
/// to 33 with 16; 4 × 4 48, 2 × 4 52 with f16 but 44 with f32).
const WS_TILE: (usize, usize) = (4, 2);

/// Tiles of `HT` heads × `8·CV` columns: each row chunk is loaded (and widened) once for `HT`
/// heads, `HT·CV` independent accumulators.
///
/// # Safety
/// `p` holds `nt · rows` weights, `out` `nt · w`, `ct ≤ w ≤` the row length; `nt` and `ct`
/// multiples of the tile; CPU has avx2, fma and f16c.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn weighted_sum_tiles<const HT: usize, const CV: usize>(
    p: &[f32],
    nt: usize,
    rows: RowData<'_>,
    ct: usize,
    w: usize,
    out: &mut [f32],
) {
    let (nr, stride) = (rows.rows(), rows.stride());
    // SAFETY: per the contract, every index below stays inside its slice.
    unsafe {
        for h0 in (0..nt).step_by(HT) {
            for c0 in (0..ct).step_by(8 * CV) {
                let mut acc = [[_mm256_setzero_ps(); CV]; HT];
                for u in 0..nr {
                    let r: [__m256; CV] =
                        std::array::from_fn(|k| load8_row(rows, u * stride + c0 + 8 * k));
                    for (hh, a) in acc.iter_mut().enumerate() {
                        let w = _mm256_broadcast_ss(p.get_unchecked((h0 + hh) * nr + u));
                        for k in 0..CV {
                            a[k] = _mm256_fmadd_ps(w, r[k], a[k]);
                        }
                    }
                }
                for (hh, a) in acc.iter().enumerate() {
                    for (k, v) in a.iter().enumerate() {
                        let o = out.as_mut_ptr().add((h0 + hh) * w + c0 + 8 * k);
                        _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), *v));
                    }
                }
            }
        }
    }
}

fn rows_dot<const VL: bool>(x: &[f32], n: usize, rows: RowData<'_>, y: &mut [f32]) {
    let (nr, cols) = (rows.rows(), rows.cols());
    assert!(
        x.len() >= n * cols && y.len() >= n * nr,
        "rows_dot: lengths"
    );
    assert_features::<VL>();
    let (qt, rt) = if VL { RD_TILE_VL } else { RD_TILE };
    let (nq, nrt, c8) = (n / qt * qt, nr / rt * rt, cols / 8 * 8);
    // SAFETY: features checked; tiles read x rows below nq, cache rows below nrt and columns
    // below c8, all inside the asserted lengths, and write y inside `n · nr`.
    unsafe {
        if VL {
            vnni::rows_dot_tiles::<{ RD_TILE_VL.0 }, { RD_TILE_VL.1 }>(x, nq, rows, nrt, c8, y)
        } else {
            plain::rows_dot_tiles::<{ RD_TILE.0 }, { RD_TILE.1 }>(x, nq, rows, nrt, c8, y)
        }
    };
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

/// [`rows_dot_tiles`]' tile, (queries, rows): 4 × 4 (16 accumulators) with AVX512-VL's 32
/// vector registers, 4 × 2 in the 16 of plain AVX2 (f16 rows on Zen 4, one core: 55 and
/// 50 GMAC/s; 4 × 4 spilled to 32 with 16 registers).
const RD_TILE_VL: (usize, usize) = (4, 4);
const RD_TILE: (usize, usize) = (4, 2);

/// Tiles of `QT` queries × `RT` rows over columns `0..c8`: each row vector is loaded (and
/// widened) once for `QT` queries, each query vector once for `RT` rows.
///
/// # Safety
/// `x` holds `nq · cols` values, `rows` at least `nrt` rows, `y` `nq · rows` outputs; `nq`,
/// `nrt` multiples of `QT`, `RT`; `c8 ≤ cols` a multiple of 8; CPU has avx2, fma and f16c.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_dot_tiles<const QT: usize, const RT: usize>(
    x: &[f32],
    nq: usize,
    rows: RowData<'_>,
    nrt: usize,
    c8: usize,
    y: &mut [f32],
) {
    let (nr, cols, stride) = (rows.rows(), rows.cols(), rows.stride());
    // SAFETY: per the contract, every index below stays inside its slice.
    unsafe {
        for h0 in (0..nq).step_by(QT) {
            for u0 in (0..nrt).step_by(RT) {
                let mut acc = [[_mm256_setzero_ps(); RT]; QT]; // [query][row]
                for c in (0..c8).step_by(8) {
                    let r: [__m256; RT] =
                        std::array::from_fn(|k| load8_row(rows, (u0 + k) * stride + c));
                    for (i, a) in acc.iter_mut().enumerate() {
                        let q = _mm256_loadu_ps(x.as_ptr().add((h0 + i) * cols + c));
                        for k in 0..RT {
                            a[k] = _mm256_fmadd_ps(q, r[k], a[k]);
                        }
                    }
                }
                for (i, a) in acc.iter().enumerate() {
                    for (k, v) in a.iter().enumerate() {
                        *y.get_unchecked_mut((h0 + i) * nr + u0 + k) = hsum(*v);
                    }
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Elementwise: exp and SwiGLU's gate.

/// `e^x` in 8 lanes: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2` (ln 2 split in two parts for an
/// exact reduction), `e^r` by its degree-7 Taylor polynomial (truncation below 2⁻²⁷ relative),
/// `2ⁿ` built in the exponent bits. `x` is clamped to `[-87, 88]`, where `2ⁿ` stays a normal
/// float; below −87 the result is 0 (the true value is under 2⁻¹²⁵, and `e^−∞` must be 0).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn exp8(x: __m256) -> __m256 {
    let keep = _mm256_cmp_ps::<_CMP_GE_OQ>(x, _mm256_set1_ps(-87.0));
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.0)),
        _mm256_set1_ps(88.0),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
    // Horner from 1/7! down to 1.
    let mut p = _mm256_set1_ps(1.0 / 5040.0);
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(bits)), keep)
}

fn silu_mul(g: &mut [f32], u: &[f32]) {
    assert_eq!(g.len(), u.len(), "silu_mul: lengths");
    assert!(supported(), "avx2 kernels on a CPU without avx2/fma/f16c");
    // SAFETY: features checked; lengths equal.
    unsafe { silu_mul_impl(g, u) }
}

/// # Safety
/// `g.len() == u.len()`; CPU has avx2 and fma.
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_impl(g: &mut [f32], u: &[f32]) {
    let n8 = g.len() / 8 * 8;
    let one = _mm256_set1_ps(1.0);
    for i in (0..n8).step_by(8) {
        // SAFETY: i + 8 ≤ n8 ≤ both lengths.
        unsafe {
            let x = _mm256_loadu_ps(g.as_ptr().add(i));
            let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
            let y = _mm256_div_ps(
                _mm256_mul_ps(x, _mm256_loadu_ps(u.as_ptr().add(i))),
                _mm256_add_ps(one, e),
            );
            _mm256_storeu_ps(g.as_mut_ptr().add(i), y);
        }
    }
    super::scalar::silu_mul(&mut g[n8..], &u[n8..]);
}

fn exp_sum(x: &mut [f32], shift: f32) -> f32 {
    assert!(supported(), "avx2 kernels on a CPU without avx2/fma/f16c");
    // SAFETY: features checked.
    unsafe { exp_sum_impl(x, shift) }
}

/// # Safety
/// CPU has avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn exp_sum_impl(x: &mut [f32], shift: f32) -> f32 {
    let n8 = x.len() / 8 * 8;
    let s = _mm256_set1_ps(shift);
    let mut acc = _mm256_setzero_ps();
    for i in (0..n8).step_by(8) {
        // SAFETY: i + 8 ≤ n8 ≤ x.len().
        unsafe {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(i)), s));
            _mm256_storeu_ps(x.as_mut_ptr().add(i), e);
            acc = _mm256_add_ps(acc, e);
        }
    }
    hsum(acc) + super::scalar::exp_sum(&mut x[n8..], shift)
}
