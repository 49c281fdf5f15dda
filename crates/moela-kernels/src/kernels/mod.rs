//! Matrix-product kernels: `y[n, rows] = x[n, cols] · Wᵀ` for every weight type.
//!
//! Structure:
//! - [`gemm`] is the driver: it quantizes the activations once per call into the weight's
//!   partner format (`Q8` = 32-value blocks with an f32 scale for `Q8_0`/`Q4_0`, `Q8_K` for
//!   `Q4_K`/`Q6_K`; the float types and `MXFP4` use `x` as is), cuts the output into tasks of
//!   (row range × token range) and runs them on the worker pool.
//! - A task is computed by one [`KernelSet`]'s `gemm` function, chosen once per process from
//!   what the CPU supports ([`Isa`]): `avx2` (with FMA and F16C; `avx512vnni` when
//!   AVX512-VNNI/VL is there too), `neon`, or `scalar`.
//! - The scalar set is the oracle: it computes the same integer block dots as the SIMD sets
//!   and differs from them only in the order floats are summed.

mod row_data;
pub(crate) mod scalar;

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;

#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;

use std::sync::OnceLock;

pub use row_data::RowData;

use crate::dtype::{DType, FP8_BLOCK};
use crate::pack::PACK_ROWS;
use crate::parallel::{num_threads, pool, SendPtr};
use crate::quant::{QK, QK_K};

/// An instruction-set level the kernels can run at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust; the test oracle.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// [`Isa::Avx2`] plus AVX512-VNNI and AVX512-VL: 256-bit `vpdpbusd` for the 8-bit dot
    /// products and 32 vector registers (larger float tiles; `MXFP4` in 512-bit registers).
    /// Needs both extensions.
    Avx512Vnni,
    /// [`Isa::Avx512Vnni`] plus Intel AMX (AMX-TILE/INT8, with AVX-512) for packed `Q8_0`/`Q4_0`
    /// products of several tokens.
    Amx,
    /// AArch64 NEON.
    Neon,
}

impl Isa {
    /// Whether this CPU can run kernels at this level.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => avx2::supported(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => avx2::vnni_supported(),
            #[cfg(target_arch = "x86_64")]
            Isa::Amx => avx2::amx::supported(),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The fastest level this CPU supports (detected once).
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            [Isa::Amx, Isa::Avx512Vnni, Isa::Avx2, Isa::Neon]
                .into_iter()
                .find(|i| i.is_available())
                .unwrap_or(Isa::Scalar)
        })
    }

    /// The level the matmul kernels actually use in this process.
    pub fn active() -> Isa {
        best().isa
    }

    /// Every level this CPU supports, scalar first.
    pub fn available() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni, Isa::Amx, Isa::Neon]
            .into_iter()
            .filter(|i| i.is_available())
            .collect()
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Amx => "amx",
            Isa::Neon => "neon",
        }
    }
}

/// How a one-token product walks weight rows in the file's layout (`Q8_0`/`Q4_0` blocks with
/// `--mmap-only` or when the repacked copies do not fit; F32/F16/BF16 and `MXFP4` always):
/// `Single`, one row at a time, or `Quad`, four rows side by side. `kernel_bench` on the AMD
/// EPYC (Zen 4), 2 threads: expert-shaped 1408 × 2048 Q4_0 26.4 vs 14.5 GB/s, Q8_0 31.8 vs
/// 17.7; BF16 4096 × 2048 (with the 512-bit kernel) ~31 vs ~19 (four interleaved row streams
/// read slower than one); results are identical either way (each row sums alone). The packed
/// `Q8_0`/`Q4_0` copies follow the same choice: one 8-row group at a time (`Single`) or four
/// side by side. The Intel Xeon was not measured, so it keeps `Quad`, what it always ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileRowWalk {
    Single,
    Quad,
}

/// A kernel variant chosen once per process by CPU vendor, unless set explicitly (tests and
/// benchmarks compare the variants): 0 while not chosen, else the variant's number.
struct VendorChoice(std::sync::atomic::AtomicU8);

impl VendorChoice {
    const fn new() -> VendorChoice {
        VendorChoice(std::sync::atomic::AtomicU8::new(0))
    }

    /// The variant in use: the one set, else `on_amd` on AMD CPUs and `otherwise` elsewhere.
    fn get(&self, on_amd: u8, otherwise: u8) -> u8 {
        use std::sync::atomic::Ordering;
        match self.0.load(Ordering::Relaxed) {
            0 => {
                let v = if cpu_vendor() == "AuthenticAMD" {
                    on_amd
                } else {
                    otherwise
                };
                self.0.store(v, Ordering::Relaxed);
                v
            }
            v => v,
        }
    }

    fn set(&self, v: u8) {
        self.0.store(v, std::sync::atomic::Ordering::Relaxed);
    }
}

static FILE_ROW_WALK: VendorChoice = VendorChoice::new();

impl FileRowWalk {
    /// The walk this process uses: set by [`FileRowWalk::set`], else chosen by CPU vendor
    /// (`Single` on AMD, `Quad` elsewhere).
    pub fn active() -> FileRowWalk {
        match FILE_ROW_WALK.get(1, 2) {
            1 => FileRowWalk::Single,
            _ => FileRowWalk::Quad,
        }
    }

    /// Uses this walk from now on (tests and benchmarks compare both).
    pub fn set(self) {
        FILE_ROW_WALK.set(match self {
            FileRowWalk::Single => 1,
            FileRowWalk::Quad => 2,
        });
    }

    /// Lower-case name (`single`, `quad`).
    pub fn name(self) -> &'static str {
        match self {
            FileRowWalk::Single => "single",
            FileRowWalk::Quad => "quad",
        }
    }
}

/// How wide the vectors of the attention row kernels (`rows_dot`, `weighted_sum`: scores and
/// probability-weighted values over cache rows) are at the AVX512-VNNI level: `W256` (eight
/// f32 lanes, the AVX2 tiles compiled with AVX512-VL's 32 registers) or `W512` (sixteen).
/// `kernel_bench --attention` on the Intel Xeon (Emerald Rapids), one thread, f16 rows: scores
/// 35–36 → 52–59 GMAC/s, weighted sum 35–38 → 54–62; V2-Lite Q4_0 decode at 4096 context 8.6–9.0
/// → 10.0–10.9 tok/s. The AMD EPYC (Zen 4, 512-bit operations in two 256-bit halves) was not
/// measured, so it keeps `W256`, what it always ran. Results differ between the two in float
/// summation order only (16-lane sums); within one process every call takes the same width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowVectors {
    W256,
    W512,
}

static ROW_VECTORS: VendorChoice = VendorChoice::new();

impl RowVectors {
    /// The width this process uses: set by [`RowVectors::set`], else chosen by CPU vendor
    /// (`W256` on AMD, `W512` elsewhere; only the AVX512-VNNI kernels read it).
    pub fn active() -> RowVectors {
        match ROW_VECTORS.get(1, 2) {
            1 => RowVectors::W256,
            _ => RowVectors::W512,
        }
    }

    /// Uses this width from now on (tests and benchmarks compare both).
    pub fn set(self) {
        ROW_VECTORS.set(match self {
            RowVectors::W256 => 1,
            RowVectors::W512 => 2,
        });
    }

    /// Bits per vector (`256`, `512`).
    pub fn bits(self) -> u32 {
        match self {
            RowVectors::W256 => 256,
            RowVectors::W512 => 512,
        }
    }

    /// The width the row kernels take on this thread: a test's [`with_row_vectors`], else
    /// [`RowVectors::active`].
    pub(crate) fn here() -> RowVectors {
        #[cfg(test)]
        if let Some(w) = TEST_ROW_VECTORS.with(|c| c.get()) {
            return w;
        }
        RowVectors::active()
    }
}

#[cfg(test)]
thread_local! {
    static TEST_ROW_VECTORS: std::cell::Cell<Option<RowVectors>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with the row kernels of this thread at width `w` (tests compare both widths
/// without changing what concurrently running tests get).
#[cfg(test)]
pub(crate) fn with_row_vectors<R>(w: RowVectors, f: impl FnOnce() -> R) -> R {
    TEST_ROW_VECTORS.with(|c| c.set(Some(w)));
    let r = f();
    TEST_ROW_VECTORS.with(|c| c.set(None));
    r
}

/// The CPUID vendor string (`AuthenticAMD`, `GenuineIntel`, …); empty off x86.
fn cpu_vendor() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        // CPUID leaf 0 exists on every x86-64 CPU.
        let r = std::arch::x86_64::__cpuid(0);
        let bytes: Vec<u8> = [r.ebx, r.edx, r.ecx]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        String::new()
    }
}

/// Activations for one task: tokens `t0..t0+nt`, each `cols` long.
#[derive(Clone, Copy)]
pub(crate) enum Acts<'a> {
    /// Plain f32, token stride `cols`.
    F32(&'a [f32]),
    /// Per 32 values: f32 scale `d`, 32 × i8 and their sum `s` (token strides `cols`,
    /// `cols/32`, `cols/32`).
    Q8 {
        qs: &'a [i8],
        d: &'a [f32],
        s: &'a [i32],
    },
    /// Per 256 values: f32 `d`, 256 × i8, 16 sums of 16 (strides `cols`, `cols/256`, `cols/16`).
    Q8K {
        qs: &'a [i8],
        d: &'a [f32],
        bsums: &'a [i16],
    },
}

/// A task's `[nt, nr]` outputs inside a larger output: token `t`'s row `r` at `ptr + t·ld + r`.
/// Tasks of one product write disjoint tiles of one `[n, rows]` buffer straight from the
/// kernels (no per-task buffer to copy out).
#[derive(Clone, Copy)]
pub(crate) struct OutTile {
    ptr: *mut f32,
    ld: usize,
    nr: usize,
    nt: usize,
}

impl OutTile {
    /// # Safety
    /// For as long as the tile is used, `ptr + t·ld + r` for every `t < nt`, `r < nr` must be
    /// valid for writes and written or read through nothing else.
    pub unsafe fn new(ptr: *mut f32, ld: usize, nr: usize, nt: usize) -> OutTile {
        OutTile { ptr, ld, nr, nt }
    }

    /// Writes output `(t, r)`.
    #[inline]
    pub fn set(&self, t: usize, r: usize, v: f32) {
        assert!(
            t < self.nt && r < self.nr,
            "output ({t}, {r}) outside the tile"
        );
        // SAFETY: inside the tile (just checked), which `new`'s contract makes writable.
        unsafe { *self.ptr.add(t * self.ld + r) = v }
    }

    /// Pointer to output `(t, r)`, for vector stores of at most `nr − r` values.
    ///
    /// # Safety
    /// `t < nt` and `r < nr`.
    #[inline]
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // the SIMD stores are x86's
    pub unsafe fn at(&self, t: usize, r: usize) -> *mut f32 {
        // SAFETY: inside the tile per the caller's contract.
        unsafe { self.ptr.add(t * self.ld + r) }
    }

    /// The `nt × nr` part of this tile from output `(t0, r0)` on.
    ///
    /// # Safety
    /// `t0 + nt` and `r0 + nr` within this tile's tokens and rows.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // split by the AMX kernels
    pub unsafe fn sub(&self, t0: usize, r0: usize, nt: usize, nr: usize) -> OutTile {
        debug_assert!(t0 + nt <= self.nt && r0 + nr <= self.nr);
        OutTile {
            // SAFETY: inside the tile per the caller's contract.
            ptr: unsafe { self.ptr.add(t0 * self.ld + r0) },
            ld: self.ld,
            nr,
            nt,
        }
    }
}

/// One unit of work: weight rows `r0..r0+nr` against `nt` tokens.
pub(crate) struct Task<'a> {
    pub dtype: DType,
    /// Bytes of rows `r0..r0+nr`, `row_bytes` each.
    pub w: &'a [u8],
    pub row_bytes: usize,
    pub nr: usize,
    /// Absolute index of the first row (selects FP8 row blocks).
    pub r0: usize,
    pub cols: usize,
    pub acts: Acts<'a>,
    pub nt: usize,
    /// FP8 only: the whole `[ceil(rows/128), ceil(cols/128)]` scale grid.
    pub scales: &'a [f32],
    /// Where the `[nt, nr]` outputs go.
    pub out: OutTile,
    /// Rows interleaved by 8 (`pack`); then `r0` and `nr` are multiples of 8.
    pub packed: bool,
}

impl Task<'_> {
    /// Checks every length the kernels rely on; SIMD kernels read through raw pointers only
    /// after this passed.
    pub fn validate(&self) {
        let (nr, nt, cols) = (self.nr, self.nt, self.cols);
        assert_eq!(
            self.dtype.row_bytes(cols),
            Ok(self.row_bytes),
            "task: row bytes"
        );
        assert!(self.w.len() >= nr * self.row_bytes, "task: weight bytes");
        assert!(self.out.nr == nr && self.out.nt == nt, "task: output tile");
        match (self.dtype, self.acts) {
            (
                DType::F32 | DType::F16 | DType::BF16 | DType::F8E4M3Block128 | DType::MXFP4,
                Acts::F32(x),
            ) => assert!(x.len() >= nt * cols, "task: activations"),
            (DType::Q8_0 | DType::Q4_0, Acts::Q8 { qs, d, s }) => {
                assert!(
                    qs.len() >= nt * cols
                        && d.len() >= nt * (cols / QK)
                        && s.len() >= nt * (cols / QK),
                    "task: activations"
                )
            }
            (DType::Q4_K | DType::Q6_K, Acts::Q8K { qs, d, bsums }) => assert!(
                qs.len() >= nt * cols
                    && d.len() >= nt * (cols / QK_K)
                    && bsums.len() >= nt * (cols / 16),
                "task: activations"
            ),
            _ => panic!("task: activations do not match weight type {}", self.dtype),
        }
        if self.packed {
            assert!(
                crate::pack::packable(self.dtype, PACK_ROWS)
                    && nr.is_multiple_of(PACK_ROWS)
                    && self.r0.is_multiple_of(PACK_ROWS),
                "task: packed rows"
            );
        }
        if self.dtype == DType::F8E4M3Block128 && nr > 0 {
            let need = (self.r0 + nr).div_ceil(FP8_BLOCK) * cols.div_ceil(FP8_BLOCK);
            assert!(self.scales.len() >= need, "task: fp8 scales");
        }
    }
}

/// The kernels of one [`Isa`].
pub(crate) struct KernelSet {
    pub isa: Isa,
    /// Computes one task.
    pub gemm: fn(&mut Task<'_>),
    /// One f32 dot product of equal-length slices, bit-identical to one output of `gemm` on
    /// f32 weights.
    pub dot_f32: fn(&[f32], &[f32]) -> f32,
    /// Quantizes one row (a multiple of 32 values) into `Q8` activations: `(x, qs, d)`.
    pub quant_q8: fn(&[f32], &mut [i8], &mut [f32]),
    /// Quantizes one row (a multiple of 256 values) into `Q8_K` activations:
    /// `(x, qs, d, bsums)`.
    pub quant_q8k: QuantQ8kFn,
    /// `out[n, cols] += p[n, rows] · rows` (see [`crate::ops::rows_weighted_sum`]).
    pub weighted_sum: WeightedSumFn,
    /// `y[n, rows] = x[n, cols] · rowsᵀ` (see [`crate::ops::rows_matmul`]).
    pub rows_dot: RowsDotFn,
    /// `g[i] = silu(g[i]) · u[i]` (SwiGLU's gate, see [`crate::ops::silu_mul`]).
    pub silu_mul: fn(&mut [f32], &[f32]),
    /// `out[i] = q[i] · d`, `d` the f16 scale `scales[(offset + i) / 32]`, for
    /// `min(q.len(), out.len())` values (a row of an 8-bit cache widened; see [`RowData::Q8`]).
    pub widen_q8: fn(&[i8], &[u16], usize, &mut [f32]),
    /// `x[i] = e^(x[i] − shift)`, returning the sum of the results (softmax's inner step).
    pub exp_sum: fn(&mut [f32], f32) -> f32,
}

/// `(x, n, rows, y)`: see [`KernelSet::rows_dot`].
pub(crate) type RowsDotFn = fn(&[f32], usize, RowData<'_>, &mut [f32]);

/// `(p, n, rows, out)`: see [`KernelSet::weighted_sum`].
pub(crate) type WeightedSumFn = fn(&[f32], usize, RowData<'_>, &mut [f32]);

/// `(x, qs, d, bsums)`: see [`KernelSet::quant_q8k`].
pub(crate) type QuantQ8kFn = fn(&[f32], &mut [i8], &mut [f32], &mut [i16]);

static SCALAR: KernelSet = KernelSet {
    isa: Isa::Scalar,
    gemm: scalar::gemm,
    dot_f32: scalar::dot_f32_slices,
    quant_q8: scalar::quant_q8,
    quant_q8k: scalar::quant_q8k,
    weighted_sum: scalar::weighted_sum,
    rows_dot: scalar::rows_dot,
    silu_mul: scalar::silu_mul,
    widen_q8: scalar::widen_q8,
    exp_sum: scalar::exp_sum,
};

/// The kernel set for `isa`, or `None` if this CPU cannot run it.
pub(crate) fn kernel_set(isa: Isa) -> Option<&'static KernelSet> {
    if !isa.is_available() {
        return None;
    }
    match isa {
        Isa::Scalar => Some(&SCALAR),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Some(&avx2::KERNELS),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => Some(&avx2::KERNELS_VNNI),
        #[cfg(target_arch = "x86_64")]
        Isa::Amx => Some(&avx2::KERNELS_AMX),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => Some(&neon::KERNELS),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// Whether the active kernels have fast paths for packed (row-interleaved) weights.
pub(crate) fn packed_kernels_pay() -> bool {
    matches!(best().isa, Isa::Avx2 | Isa::Avx512Vnni | Isa::Amx)
}

/// The kernel set for the best ISA (chosen once).
pub(crate) fn best() -> &'static KernelSet {
    static BEST: OnceLock<&'static KernelSet> = OnceLock::new();
    BEST.get_or_init(|| kernel_set(Isa::best()).unwrap_or(&SCALAR))
}

/// A weight matrix as the kernels see it.
#[derive(Clone, Copy)]
pub(crate) struct WeightRef<'a> {
    pub dtype: DType,
    pub bytes: &'a [u8],
    pub rows: usize,
    pub cols: usize,
    pub row_bytes: usize,
    pub scales: &'a [f32],
    pub packed: bool,
}

/// Quantized activations owned for the duration of one matmul (or several, see
/// [`PreparedInput`]).
pub(crate) enum ActBuf {
    None,
    Q8 {
        qs: Vec<i8>,
        d: Vec<f32>,
        s: Vec<i32>,
    },
    Q8K {
        qs: Vec<i8>,
        d: Vec<f32>,
        bsums: Vec<i16>,
    },
}

impl ActBuf {
    fn view<'a>(&'a self, x: &'a [f32], t0: usize, nt: usize, cols: usize) -> Acts<'a> {
        match self {
            ActBuf::None => Acts::F32(&x[t0 * cols..(t0 + nt) * cols]),
            ActBuf::Q8 { qs, d, s } => {
                let nb = cols / QK;
                Acts::Q8 {
                    qs: &qs[t0 * cols..(t0 + nt) * cols],
                    d: &d[t0 * nb..(t0 + nt) * nb],
                    s: &s[t0 * nb..(t0 + nt) * nb],
                }
            }
            ActBuf::Q8K { qs, d, bsums } => {
                let (nb, ns) = (cols / QK_K, cols / 16);
                Acts::Q8K {
                    qs: &qs[t0 * cols..(t0 + nt) * cols],
                    d: &d[t0 * nb..(t0 + nt) * nb],
                    bsums: &bsums[t0 * ns..(t0 + nt) * ns],
                }
            }
        }
    }
}

/// Runs `f(token)` for every token, on the pool when there is enough work.
fn per_token(n: usize, cols: usize, f: impl Fn(usize) + Sync) {
    if n >= 4 && n * cols >= 1 << 16 {
        pool().run(n, f);
    } else {
        (0..n).for_each(f);
    }
}

/// Which activation format a weight type multiplies against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ActKind {
    F32,
    Q8,
    Q8K,
}

pub(crate) fn act_kind(dtype: DType) -> ActKind {
    match dtype {
        DType::Q8_0 | DType::Q4_0 => ActKind::Q8,
        DType::Q4_K | DType::Q6_K => ActKind::Q8K,
        _ => ActKind::F32,
    }
}

/// Activations `x[n, cols]` already in the partner format of some weight type, for running
/// several matmuls (e.g. an FFN's gate and up projections) on one quantization.
pub struct PreparedInput<'a> {
    pub(crate) x: &'a [f32],
    pub(crate) n: usize,
    pub(crate) cols: usize,
    pub(crate) kind: ActKind,
    pub(crate) acts: ActBuf,
}

impl<'a> PreparedInput<'a> {
    /// Quantizes `x` (`[n, cols]`) for weights of type `dtype` (a no-op for float types).
    pub fn new(dtype: DType, x: &'a [f32], n: usize, cols: usize) -> PreparedInput<'a> {
        Self::with_kernels(best(), dtype, x, n, cols)
    }

    /// [`PreparedInput::new`] with kernel set `ks`.
    pub(crate) fn with_kernels(
        ks: &KernelSet,
        dtype: DType,
        x: &'a [f32],
        n: usize,
        cols: usize,
    ) -> PreparedInput<'a> {
        assert_eq!(
            x.len(),
            n * cols,
            "prepared input: x is not [n, cols] = [{n}, {cols}]"
        );
        assert!(
            cols.is_multiple_of(dtype.block_size()),
            "prepared input: {cols} columns is not a multiple of {dtype}'s block size"
        );
        PreparedInput {
            x,
            n,
            cols,
            kind: act_kind(dtype),
            acts: quantize_acts(ks, dtype, x, n, cols),
        }
    }

    /// Number of tokens.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Whether weights of type `dtype` can use this input.
    pub fn fits(&self, dtype: DType) -> bool {
        act_kind(dtype) == self.kind
    }
}

fn quantize_acts(ks: &KernelSet, dtype: DType, x: &[f32], n: usize, cols: usize) -> ActBuf {
    match dtype {
        DType::Q8_0 | DType::Q4_0 => {
            let nb = cols / QK;
            let mut qs = vec![0i8; n * cols];
            let mut d = vec![0f32; n * nb];
            let mut s = vec![0i32; n * nb];
            let (qp, dp, sp) = (
                SendPtr(qs.as_mut_ptr()),
                SendPtr(d.as_mut_ptr()),
                SendPtr(s.as_mut_ptr()),
            );
            per_token(n, cols, |t| {
                // SAFETY: token `t` owns `qs[t*cols..][..cols]`, `d[t*nb..][..nb]` and
                // `s[t*nb..][..nb]`; tokens are disjoint and the vectors outlive this call.
                let (q, dd, ss) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(qp.get().add(t * cols), cols),
                        std::slice::from_raw_parts_mut(dp.get().add(t * nb), nb),
                        std::slice::from_raw_parts_mut(sp.get().add(t * nb), nb),
                    )
                };
                (ks.quant_q8)(&x[t * cols..(t + 1) * cols], q, dd);
                for (sb, b) in ss.iter_mut().zip(q.chunks_exact(QK)) {
                    *sb = b.iter().map(|&v| v as i32).sum();
                }
            });
            ActBuf::Q8 { qs, d, s }
        }
        DType::Q4_K | DType::Q6_K => {
            let (nb, ns) = (cols / QK_K, cols / 16);
            let mut qs = vec![0i8; n * cols];
            let mut d = vec![0f32; n * nb];
            let mut bsums = vec![0i16; n * ns];
            let (qp, dp, bp) = (
                SendPtr(qs.as_mut_ptr()),
                SendPtr(d.as_mut_ptr()),
                SendPtr(bsums.as_mut_ptr()),
            );
            per_token(n, cols, |t| {
                // SAFETY: as above, token `t` owns its disjoint slices of the three vectors.
                let (q, dd, bs) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(qp.get().add(t * cols), cols),
                        std::slice::from_raw_parts_mut(dp.get().add(t * nb), nb),
                        std::slice::from_raw_parts_mut(bp.get().add(t * ns), ns),
                    )
                };
                (ks.quant_q8k)(&x[t * cols..(t + 1) * cols], q, dd, bs);
            });
            ActBuf::Q8K { qs, d, bsums }
        }
        _ => ActBuf::None,
    }
}

/// Tokens per task: activations of one token block stay in L2 while every row tile of a task
/// sweeps over them (128 rather than 64: each weight tile is read half as often; Qwen2-1.5B
/// Q4_0 pp128 best of 5 193.7 → 200.0 tok/s, pp512 unchanged).
const TOKEN_BLOCK: usize = 128;

/// `y[n, rows] = x[n, cols] · wᵀ` with kernel set `ks`.
pub(crate) fn gemm(ks: &KernelSet, w: &WeightRef<'_>, x: &[f32], n: usize, y: &mut [f32]) {
    assert_eq!(
        y.len(),
        n * w.rows,
        "matmul: y is not [n, rows] = [{n}, {}]",
        w.rows
    );
    // SAFETY: `y` holds the `[n, rows]` output (asserted) and is borrowed for the call.
    unsafe { gemm_into(ks, w, x, n, SendPtr(y.as_mut_ptr())) }
}

/// [`gemm`] into a raw `[n, rows]` output, every element of which it writes.
///
/// # Safety
/// `y` must be valid for writes of `n · rows` f32 that nothing else accesses during the call.
pub(crate) unsafe fn gemm_into(
    ks: &KernelSet,
    w: &WeightRef<'_>,
    x: &[f32],
    n: usize,
    y: SendPtr<f32>,
) {
    let x = PreparedInput::with_kernels(ks, w.dtype, x, n, w.cols);
    // SAFETY: forwarded.
    unsafe { gemm_batch_into(ks, &[BatchItem { w: *w, x: &x, y }]) }
}

/// [`gemm`] on activations prepared earlier.
pub(crate) fn gemm_prepared(
    ks: &KernelSet,
    w: &WeightRef<'_>,
    p: &PreparedInput<'_>,
    y: &mut [f32],
) {
    gemm_batch(ks, &mut [(*w, p, y)]);
}

/// [`gemm_batch_into`] on output slices, each `[x.n, w.rows]`.
pub(crate) fn gemm_batch(
    ks: &KernelSet,
    items: &mut [(WeightRef<'_>, &PreparedInput<'_>, &mut [f32])],
) {
    let batch: Vec<BatchItem<'_>> = items
        .iter_mut()
        .map(|(w, x, y)| {
            assert_eq!(
                y.len(),
                x.n * w.rows,
                "matmul: y is not [n, rows] = [{}, {}]",
                x.n,
                w.rows
            );
            BatchItem {
                w: *w,
                x,
                y: SendPtr(y.as_mut_ptr()),
            }
        })
        .collect();
    // SAFETY: each output is its item's `[n, rows]` slice (asserted), mutably borrowed for
    // the call, so disjoint from the others.
    unsafe { gemm_batch_into(ks, &batch) }
}

/// One product of a batch (see [`gemm_batch_into`]): `y[n, rows] = x · wᵀ`, `y` a raw
/// `[x.n, w.rows]` output.
pub(crate) struct BatchItem<'a> {
    pub w: WeightRef<'a>,
    pub x: &'a PreparedInput<'a>,
    pub y: SendPtr<f32>,
}

/// Several independent products in one pool dispatch (e.g. every active expert's gate and up
/// projections of a decode step): tasks are cut per product as for one, in proportion to its
/// work, and all of them share the workers. Saves a dispatch and a wait per product, and
/// balances small products against each other. Writes every element of every output.
///
/// # Safety
/// Each item's `y` must be valid for writes of `x.n · w.rows` f32, disjoint from the others
/// and unaccessed by anything else during the call.
pub(crate) unsafe fn gemm_batch_into(ks: &KernelSet, items: &[BatchItem<'_>]) {
    for it in items {
        assert!(
            it.x.fits(it.w.dtype),
            "matmul batch: input prepared for other weights than {}",
            it.w.dtype
        );
        assert_eq!(
            it.x.cols, it.w.cols,
            "matmul: input has {} columns, weights {}",
            it.x.cols, it.w.cols
        );
        if it.w.cols == 0 && it.x.n * it.w.rows > 0 {
            // SAFETY: `y` covers `n · rows` elements (this function's contract).
            unsafe { std::ptr::write_bytes(it.y.get(), 0, it.x.n * it.w.rows) };
        }
    }
    let work: Vec<usize> = items
        .iter()
        .map(|it| it.w.rows * it.w.cols * it.x.n)
        .collect();
    let total: usize = work.iter().sum::<usize>().max(1);
    let budget = num_threads() * 8;
    let plans: Vec<Plan> = items
        .iter()
        .zip(&work)
        .map(|(it, &wk)| {
            let want = (budget * wk).div_ceil(total).max(1);
            Plan::new(it.w.rows, it.w.cols, it.x.n, want)
        })
        .collect();
    let mut starts = Vec::with_capacity(plans.len() + 1);
    starts.push(0usize);
    for p in &plans {
        starts.push(starts.last().copied().unwrap_or(0) + p.tasks());
    }
    pool().run(starts[plans.len()], |i| {
        let j = starts.partition_point(|&s| s <= i) - 1;
        let it = &items[j];
        // SAFETY: each `y` is a `[n, rows]` output of its item (this function's contract);
        // tasks of one plan write disjoint parts of their item's output.
        unsafe { plans[j].run_task(ks, &it.w, it.x.x, &it.x.acts, &it.y, i - starts[j]) }
    });
}

/// How one product is cut into tasks: token blocks of ≤ `TOKEN_BLOCK`, then row chunks (multiples of 16
/// rows where there are more: whole packed groups and whole 16-row AMX tiles, and FP8 micro tiles
/// never straddle a 128-row scale block).
struct Plan {
    rows: usize,
    cols: usize,
    n: usize,
    tok_chunk: usize,
    n_tc: usize,
    row_chunk: usize,
    n_rc: usize,
}

impl Plan {
    /// About `want_tasks` tasks (one for tiny products).
    fn new(rows: usize, cols: usize, n: usize, want_tasks: usize) -> Plan {
        let n_tc = n.div_ceil(TOKEN_BLOCK).max(1);
        let tok_chunk = n.div_ceil(n_tc);
        let want = if rows * cols * n < 1 << 15 {
            1
        } else {
            want_tasks
        };
        let row_tasks = want.div_ceil(n_tc).max(1);
        let row_chunk = rows
            .div_ceil(row_tasks)
            .next_multiple_of(2 * PACK_ROWS)
            .max(PACK_ROWS);
        let n_rc = rows.div_ceil(row_chunk);
        Plan {
            rows,
            cols,
            n,
            tok_chunk,
            n_tc,
            row_chunk,
            n_rc,
        }
    }

    fn tasks(&self) -> usize {
        if self.n == 0 || self.rows == 0 || self.cols == 0 {
            0
        } else {
            self.n_rc * self.n_tc
        }
    }

    /// Computes task `i` into `y`.
    ///
    /// # Safety
    /// `y` points to a `[n, rows]` output that no one else reads or writes during the call
    /// except other tasks of this plan.
    unsafe fn run_task(
        &self,
        ks: &KernelSet,
        w: &WeightRef<'_>,
        x: &[f32],
        acts: &ActBuf,
        y: &SendPtr<f32>,
        i: usize,
    ) {
        let (tc, rc) = (i / self.n_rc, i % self.n_rc);
        let r0 = rc * self.row_chunk;
        let nr = self.row_chunk.min(self.rows - r0);
        let t0 = tc * self.tok_chunk;
        let nt = self.tok_chunk.min(self.n - t0);
        // SAFETY: this task alone writes y[(t0+t)*rows + r0 ..][..nr] for t < nt (tasks
        // partition rows × tokens), inside the `[n, rows]` output (r0+nr ≤ rows, t0+nt ≤ n)
        // that this function's contract hands to the plan's tasks.
        let out = unsafe { OutTile::new(y.get().add(t0 * self.rows + r0), self.rows, nr, nt) };
        let mut task = Task {
            dtype: w.dtype,
            w: &w.bytes[r0 * w.row_bytes..(r0 + nr) * w.row_bytes],
            row_bytes: w.row_bytes,
            nr,
            r0,
            cols: self.cols,
            acts: acts.view(x, t0, nt, self.cols),
            nt,
            scales: w.scales,
            out,
            packed: w.packed,
        };
        (ks.gemm)(&mut task);
    }
}

#[cfg(test)]
pub(crate) mod tests;
