//! Float weights: F32, F16, BF16 (8 columns per step), FP8 (per 128-column scale block),
//! and the f32 dot product through the 1×1 F32 micro-kernel.
//!
//! FP8 E4M3 is widened in registers: `(sign_extend16(b) << 7) & 0xBF80` is the f16 whose value
//! is the FP8 value / 256 (same mantissa width, exponent bias 15 vs 7, subnormals line up too), then
//! F16C converts it; the 256 is folded into the block scale. (NaN codes, which weights never
//! hold, come out as ±480 instead of NaN.)

use std::arch::x86_64::*;

use super::{hsum, load8_bf16, load8_f16, load8_f32, prefetch_ahead, supported, Ctx};
use crate::dtype::FP8_BLOCK;
use crate::fp::{bf16_to_f32, f16_to_f32, fp8_e4m3_to_f32};

/// One f32 dot product through the 1×1 matmul micro-kernel (hence bit-identical to it).
pub(super) fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
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
        pub(super) unsafe fn $name<const MR: usize, const NR: usize>(
            c: &Ctx,
            r: usize,
            t: usize,
        ) -> [[f32; NR]; MR] {
            // SAFETY: rows r..r+MR hold `cols` elements of `$esize` bytes each and tokens
            // t..t+NR hold `cols` f32 (validated); every access below stays below `cols`.
            unsafe {
                let cols = c.cols;
                let n8 = cols / 8 * 8;
                let (wp, xp) = c.f32_tile::<MR, NR>(r, t);
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

/// BF16 rows on AVX-512 (the `avx512vnni` level): 32 columns per step in two 512-bit FMA
/// chains per output, one cache line of each row per step and one prefetch per line. The
/// 256-bit kernel's 8-column steps keep a 1 × 1 tile (a single token's row walk) at
/// 8 bytes of weights per FMA latency; this one at 32 (EPYC Zen 4, DeepSeek-V4's BF16 output
/// head, 129280 × 4096, n = 1, 2 threads: see docs/benchmarks.md). Every tile shape does the
/// same arithmetic per output, as in `float_micro!`.
///
/// # Safety
/// Rows `r..r+MR` and tokens `t..t+NR` of a validated BF16 `c`; CPU has avx2/fma/f16c,
/// AVX512F and AVX512-VL.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
pub(super) unsafe fn micro_bf16_512<const MR: usize, const NR: usize>(
    c: &Ctx,
    r: usize,
    t: usize,
) -> [[f32; NR]; MR] {
    // SAFETY: rows r..r+MR hold `cols` BF16 values and tokens t..t+NR hold `cols` f32
    // (validated); every vector access below ends at or before column `n16 <= cols`.
    unsafe {
        let cols = c.cols;
        let n16 = cols / 16 * 16;
        let (wp, xp) = c.f32_tile::<MR, NR>(r, t);
        let mut acc0 = [[_mm512_setzero_ps(); NR]; MR];
        let mut acc1 = [[_mm512_setzero_ps(); NR]; MR];
        macro_rules! step {
            ($k:expr, $acc:ident) => {
                let mut wv = [_mm512_setzero_ps(); MR];
                for i in 0..MR {
                    let h = _mm256_loadu_si256(wp[i].add($k * 2) as *const __m256i);
                    wv[i] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
                }
                for j in 0..NR {
                    let xv = _mm512_loadu_ps(xp[j].add($k));
                    for i in 0..MR {
                        $acc[i][j] = _mm512_fmadd_ps(wv[i], xv, $acc[i][j]);
                    }
                }
            };
        }
        let mut k = 0;
        while k + 32 <= n16 {
            for p in wp {
                prefetch_ahead::<1>(p.add(k * 2), 64);
            }
            step!(k, acc0);
            step!(k + 16, acc1);
            k += 32;
        }
        if k < n16 {
            step!(k, acc0);
        }
        let mut res = [[0.0f32; NR]; MR];
        for i in 0..MR {
            for j in 0..NR {
                let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc0[i][j], acc1[i][j]));
                for kk in n16..cols {
                    let wb = std::slice::from_raw_parts(wp[i].add(kk * 2), 2);
                    s += scalar_bf16(wb) * *xp[j].add(kk);
                }
                res[i][j] = s;
            }
        }
        res
    }
}

float_micro!(micro_f32, 4, load8_f32, scalar_f32);
float_micro!(micro_f16, 2, load8_f16, scalar_f16);
float_micro!(micro_bf16, 2, load8_bf16, scalar_bf16);

/// # Safety
/// Rows `r..r+MR` and tokens `t..t+NR` of a validated FP8 `c`; CPU has avx2/fma/f16c.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn micro_fp8<const MR: usize, const NR: usize>(
    c: &Ctx,
    r: usize,
    t: usize,
) -> [[f32; NR]; MR] {
    // SAFETY: rows hold `cols` bytes, tokens `cols` f32, and the scale grid covers row blocks
    // up to (r0+r+MR-1)/128 (validated); column indices stay below `cols`.
    unsafe {
        let cols = c.cols;
        let (wp, xp) = c.f32_tile::<MR, NR>(r, t);
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
