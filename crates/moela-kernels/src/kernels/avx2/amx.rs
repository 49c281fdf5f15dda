//! Intel AMX (AMX-TILE + AMX-INT8) for the packed `Q8_0`/`Q4_0` products of many tokens.
//!
//! One `tdpbssd` multiplies a 16 × 32 tile of 8-bit activations (16 tokens, one 32-value
//! block) by a 32 × 16 tile of 8-bit weights (one block of 16 rows) into 16 × 16 `i32`: the
//! exact integer block sums the other kernels compute one lane at a time. Each block's sums
//! are stored, converted and scaled (`d_w · d_a`) into 16 `f32` accumulators with AVX-512,
//! which is where most of the time goes; the tile unit itself would do 8× more.
//!
//! Weights: for each 16-row tile (two packed groups of 8) the task first writes every block's
//! weight tile in the B layout (row `k4` = the 16 rows' quant values `4·k4..4·k4+4`, signed:
//! `Q4_0` nibbles − 8, `Q8_0` as stored) and the 16 scales as f32 into a per-thread scratch,
//! then runs every 16-token tile of the task over it. Activations are the `Q8` buffer as is
//! (tile rows `cols` bytes apart); a last partial token tile is copied into a zero-padded
//! scratch once per task. Rows past the last whole 16-row tile go to the VNNI kernels.
//!
//! The tile state is configured at the start of every task and released at its end, so no
//! thread keeps 8 KB of tile registers alive between tasks.

use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::OnceLock;

use super::{vnni, Ctx, OutTile};
use crate::quant::QK;

/// Tokens and rows of one tile.
const T: usize = 16;

/// Tasks with fewer tokens run on the VNNI kernels: a padded tile costs as much as a full one
/// and the weight tiles are built for it alone, which beats the VNNI kernels from about 13
/// tokens on (`kernel_bench --tokens N`, 1408 × 2048).
pub(crate) const MIN_TOKENS: usize = 13;

/// A tail past a task's whole 16-token tiles goes on a padded tile from this many tokens on
/// (the weight tiles are already built), on the VNNI kernels below.
const MIN_TAIL: usize = 8;

/// True when the CPU has AMX-TILE and AMX-INT8 (plus AVX-512 F/BW/VL/VNNI for the rest of
/// the kernel) and the OS lets this process use the tile state (Linux: `arch_prctl`
/// permission for XTILEDATA, asked for once).
pub(crate) fn supported() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        super::vnni_supported()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && cpu_has_amx_int8()
            && request_tile_data()
    })
}

fn cpu_has_amx_int8() -> bool {
    let max_leaf = __cpuid(0).eax;
    if max_leaf < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    // EDX bit 24: AMX-TILE, bit 25: AMX-INT8.
    edx & (1 << 24) != 0 && edx & (1 << 25) != 0
}

#[cfg(target_os = "linux")]
fn request_tile_data() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: this arch_prctl request only asks the kernel to let the process use the AMX
    // tile-data state; it reads and writes no memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn request_tile_data() -> bool {
    false
}

/// The `ldtilecfg` operand: palette 1; `tmm0`/`tmm1` accumulators (16 × 16 `i32`),
/// `tmm2`/`tmm4` activation tiles (16 tokens × 32 bytes), `tmm3`/`tmm5` weight tiles
/// (8 rows of 4-byte groups × 16 weight rows).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

const CONFIG: TileConfig = {
    let mut colsb = [0u16; 16];
    let mut rows = [0u8; 16];
    let shapes = [
        (0, 16, 64),
        (1, 16, 64),
        (2, 16, 32),
        (3, 8, 64),
        (4, 16, 32),
        (5, 8, 64),
    ];
    let mut i = 0;
    while i < shapes.len() {
        let (t, r, c) = shapes[i];
        rows[t] = r;
        colsb[t] = c;
        i += 1;
    }
    TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb,
        rows,
    }
};

/// 64 bytes, aligned for whole-vector stores and tile loads.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Per-thread scratch: a row tile's weight tiles and scales, the padded last token tile.
#[derive(Default)]
struct Scratch {
    b: Vec<Line>,
    dw: Vec<Line>,
    a: Vec<Line>,
    da: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

fn lines(v: &mut Vec<Line>, n: usize) -> *mut u8 {
    if v.len() < n {
        v.resize(n, Line([0; 64]));
    }
    v.as_mut_ptr() as *mut u8
}

/// A packed `Q8_0` (`q8`) or `Q4_0` task on the tile unit: every whole 16-row tile × the
/// whole 16-token tiles, plus a last partial token tile of at least `MIN_TAIL` (padded);
/// the rest (rows past the last whole row tile, fewer tail tokens) on the VNNI kernels.
///
/// # Safety
/// `c` a validated packed task of `nr` rows and `nt` tokens, `out` its `[nt, nr]` tile; the
/// CPU and OS support AMX ([`supported`]).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn gemm_packed(c: &Ctx, q8: bool, nr: usize, out_nt: usize, out: OutTile) {
    let nr16 = nr / T * T;
    let full = out_nt / T * T;
    let nt = if out_nt - full >= MIN_TAIL || full == 0 {
        out_nt
    } else {
        full
    };
    let rest = out_nt - nt;
    // SAFETY: rows r.. and tokens t.. of the same validated task; the shifted context and
    // sub-tile cover exactly those rows and tokens.
    let on_vnni = |r: usize, nr: usize, t: usize, tn: usize| unsafe {
        let nb = c.cols / QK;
        let sub_c = Ctx {
            w: c.w.add(r * c.rb),
            r0: c.r0 + r,
            qs: c.qs.add(t * c.cols),
            d: c.d.add(t * nb),
            s: c.s.add(t * nb),
            ..*c
        };
        let sub = out.sub(t, r, tn, nr);
        if q8 {
            vnni::gemm_packed::<true>(&sub_c, nr, tn, sub)
        } else {
            vnni::gemm_packed::<false>(&sub_c, nr, tn, sub)
        }
    };
    if rest > 0 {
        on_vnni(0, nr, nt, rest);
    }
    if nr16 < nr && nt > 0 {
        on_vnni(nr16, nr - nr16, 0, nt);
    }
    if nr16 == 0 || nt == 0 {
        return;
    }
    let nb = c.cols / QK;
    SCRATCH.with(|s| {
        let s = &mut *s.borrow_mut();
        let bt = lines(&mut s.b, 8 * nb);
        let dw = lines(&mut s.dw, nb) as *mut f32;
        let (pa, pd) = if full < nt {
            // The last token tile, padded with zero tokens.
            let m = nt - full;
            let pa = lines(&mut s.a, T * c.cols / 64 + 1);
            s.da.clear();
            s.da.resize(T * nb, 0.0);
            // SAFETY: tokens full..nt of the task hold cols i8 and nb scales each; the pad
            // buffers hold T tokens of both (sized just above).
            unsafe {
                std::ptr::write_bytes(pa, 0, T * c.cols);
                std::ptr::copy_nonoverlapping(c.qs.add(full * c.cols) as *const u8, pa, m * c.cols);
                std::ptr::copy_nonoverlapping(c.d.add(full * nb), s.da.as_mut_ptr(), m * nb);
            }
            (pa as *const i8, s.da.as_ptr())
        } else {
            (std::ptr::null(), std::ptr::null())
        };
        // SAFETY: the configuration describes the six tiles used below; every tile load
        // reads whole tiles inside the activations (full tiles), the pad or the weight
        // scratch, and every store writes the 1 KB accumulator buffers.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) &CONFIG as *const TileConfig, options(nostack, readonly));
            for r in (0..nr16).step_by(T) {
                build_weight_tiles(c, q8, r, nb, bt, dw);
                for t0 in (0..nt).step_by(T) {
                    let m = (nt - t0).min(T);
                    let (a, da) = if m == T {
                        (c.qs.add(t0 * c.cols), c.d.add(t0 * nb))
                    } else {
                        (pa, pd)
                    };
                    let acc = tile_products(a, c.cols, da, nb, bt, dw);
                    for (i, v) in acc.iter().enumerate().take(m) {
                        _mm512_storeu_ps(out.at(t0 + i, r), *v);
                    }
                }
            }
            asm!("tilerelease", options(nostack, nomem));
        }
    });
}

/// Writes row tile `r..r+16`'s weight tiles (`8 · nb` lines: block `b` at line `8b`, B
/// layout, signed values) to `bt` and its scales (16 f32 per block) to `dw`.
///
/// # Safety
/// Rows `r..r+16` are two packed groups of `c`; `bt` holds `8 · nb` lines, `dw` `16 · nb`
/// f32, both 64-byte aligned.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn build_weight_tiles(c: &Ctx, q8: bool, r: usize, nb: usize, bt: *mut u8, dw: *mut f32) {
    // SAFETY: per the contract, the two groups hold nb packed blocks of 8·(34|18) bytes
    // each; block b writes lines 8b..8b+8 of bt and scales 16b..16b+16 of dw.
    unsafe {
        let (g0, g1) = (c.w.add(r * c.rb), c.w.add((r + 8) * c.rb));
        let ts = if q8 { 34 } else { 18 };
        let m4 = _mm512_set1_epi8(0x0F);
        let eight = _mm512_set1_epi8(8);
        let both = |p0: *const u8, p1: *const u8| {
            _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_loadu_si256(p0 as *const __m256i)),
                _mm256_loadu_si256(p1 as *const __m256i),
            )
        };
        for b in 0..nb {
            let (p0, p1) = (g0.add(b * 8 * ts), g1.add(b * 8 * ts));
            let h = _mm256_inserti128_si256::<1>(
                _mm256_castsi128_si256(_mm_loadu_si128(p0 as *const __m128i)),
                _mm_loadu_si128(p1 as *const __m128i),
            );
            _mm512_store_ps(dw.add(16 * b), _mm512_cvtph_ps(h));
            let dst = bt.add(512 * b) as *mut __m512i;
            if q8 {
                for ch in 0..8 {
                    let v = both(p0.add(16 + 32 * ch), p1.add(16 + 32 * ch));
                    _mm512_store_si512(dst.add(ch), v);
                }
            } else {
                for ch in 0..4 {
                    let v = both(p0.add(16 + 32 * ch), p1.add(16 + 32 * ch));
                    let lo = _mm512_sub_epi8(_mm512_and_si512(v, m4), eight);
                    let hi =
                        _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16::<4>(v), m4), eight);
                    _mm512_store_si512(dst.add(ch), lo);
                    _mm512_store_si512(dst.add(ch + 4), hi);
                }
            }
        }
    }
}

/// One block's `i32` tile, as stored by `tilestored`.
#[repr(C, align(64))]
struct Sums([[i32; 16]; 16]);

/// Starts block `b`'s product in `tmm0` (`$c` = 0: activations `tmm2`, weights `tmm3`) or
/// `tmm1` (`tmm4`, `tmm5`).
macro_rules! start_product {
    ($c:tt, $a:tt, $w:tt, $pa:expr, $pw:expr, $stride:expr) => {
        asm!(
            concat!("tilezero tmm", $c),
            concat!("tileloadd tmm", $a, ", [{a} + {st}*1]"),
            concat!("tileloadd tmm", $w, ", [{w} + {ws}*1]"),
            concat!("tdpbssd tmm", $c, ", tmm", $a, ", tmm", $w),
            a = in(reg) $pa,
            w = in(reg) $pw,
            st = in(reg) $stride,
            ws = in(reg) 64usize,
            options(nostack, readonly),
        )
    };
}

/// The 16 tokens at `a` (rows `stride` bytes apart, scales `da`, `nb` per token) against the
/// row tile in `bt`/`dw`: 16 vectors of 16 outputs, token by token.
///
/// Blocks go in pairs on two accumulator tiles, software-pipelined: a pair's sums are stored
/// only after the next pair's products have been started (the tile unit works in order, so
/// storing a product right away would wait for it), and scaled while those run.
///
/// # Safety
/// Tiles configured by [`CONFIG`]; `a` holds 16 tokens of `nb` blocks `stride` bytes apart,
/// `da` their `16 · nb` scales; `bt`/`dw` as written by [`build_weight_tiles`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_products(
    a: *const i8,
    stride: usize,
    da: *const f32,
    nb: usize,
    bt: *const u8,
    dw: *const f32,
) -> [__m512; 16] {
    let mut acc = [_mm512_setzero_ps(); 16];
    let mut s0 = Sums([[0; 16]; 16]);
    let mut s1 = Sums([[0; 16]; 16]);
    // SAFETY: block b's activation tile is 16 rows of 32 bytes at a + 32b (stride apart),
    // its weight tile 8 lines at bt + 512b (b < nb); the sums go to s0/s1 (1 KB each, 64-byte
    // rows), each stored before it is read.
    unsafe {
        let start = |b: usize| {
            let (pa, pw) = (a.add(QK * b), bt.add(512 * b));
            if b.is_multiple_of(2) {
                start_product!("0", "2", "3", pa, pw, stride);
            } else {
                start_product!("1", "4", "5", pa, pw, stride);
            }
        };
        let scale = |acc: &mut [__m512; 16], s: &Sums, b: usize| {
            let w = _mm512_load_ps(dw.add(16 * b));
            for (i, v) in acc.iter_mut().enumerate() {
                let sum = _mm512_cvtepi32_ps(_mm512_load_si512(s.0[i].as_ptr() as *const __m512i));
                let k = _mm512_mul_ps(w, _mm512_set1_ps(*da.add(i * nb + b)));
                *v = _mm512_fmadd_ps(sum, k, *v);
            }
        };
        for b in 0..nb.min(2) {
            start(b);
        }
        let mut b = 0;
        while b < nb {
            let pair = nb - b >= 2;
            asm!("tilestored [{c} + {cs}*1], tmm0", c = in(reg) s0.0.as_mut_ptr(),
                cs = in(reg) 64usize, options(nostack));
            if pair {
                asm!("tilestored [{c} + {cs}*1], tmm1", c = in(reg) s1.0.as_mut_ptr(),
                    cs = in(reg) 64usize, options(nostack));
            }
            for n in b + 2..nb.min(b + 4) {
                start(n);
            }
            scale(&mut acc, &s0, b);
            if pair {
                scale(&mut acc, &s1, b + 1);
            }
            b += 2;
        }
    }
    acc
}
