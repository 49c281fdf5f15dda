//! Kernel micro-benchmark: GB/s of weights streamed by n = 1 matvec, GFLOP/s of n = 128 GEMM,
//! per weight type, at 1 and 2 threads.
//!
//! `cargo run --release -p moela-kernels --example kernel_bench [-- --quick] [--scalar] [--isa avx2]`
//!
//! `--attention` runs only the decode attention kernels' table (both `RowVectors` widths; they
//! differ at the AVX512-VNNI level only).
//!
//! `--stream N` prints only the streaming read bandwidth (median of N passes over 1 GiB, all
//! cores), the decode roofline `bench/roofline.sh` compares both engines with.
//! `--shapes 4096x4096,1408x2048` sets the matrix shapes; `--packed-only` skips the file
//! layouts.
//!
//! `--tokens N` sets the GEMM's token count (default 128). `--types mxfp4,q4_0` limits the
//! table to those weight types.
//!
//! `--walk single|quad` sets the one-token walk over `Q8_0`/`Q4_0` file-layout rows
//! ([`FileRowWalk`]; default: this CPU's choice).
//!
//! `--hot` reuses one copy of each matrix (weights stay in cache: measures compute, not DRAM).
//! `--isa NAME` forces a kernel level (`scalar`, `avx2`, `avx512vnni`, `amx`, `neon`); `--scalar` adds a
//! scalar n = 1 row for the expert-shaped matrix.
//!
//! The matvec cycles through enough copies of each matrix (≥ 640 MB, 20× the L3) that weights
//! come from DRAM, not L3, as in a real decode step. A plain streaming read gives the roofline.

use std::hint::black_box;
use std::time::{Duration, Instant};

use moela_kernels::{
    parallel_for, rows_matmul, rows_weighted_sum, set_num_threads, DType, FileRowWalk, Isa, QMat,
    RowData, RowVectors,
};

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * 0.05
        })
        .collect()
}

/// Median seconds per call of `f` over about `budget` of wall time (after one warm-up call).
fn time_it(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let mut times = vec![];
    let start = Instant::now();
    while times.len() < 5 || (start.elapsed() < budget && times.len() < 1000) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times[times.len() / 2]
}

/// Streaming read bandwidth (GB/s): `threads` threads each sum their half (or share) of a
/// 1 GiB buffer (huge pages where the kernel allows), median of `reps` passes. This is the
/// decode roofline: a bandwidth-bound matvec cannot read its weights faster.
fn stream_read_gbs(threads: usize, reps: usize) -> f64 {
    set_num_threads(threads);
    let len = 1usize << 30;
    let mut map = memmap2::MmapMut::map_anon(len).expect("1 GiB anonymous map");
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    for (i, b) in map.iter_mut().enumerate() {
        *b = i as u8;
    }
    let per = len / threads;
    let mut times: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let sums: Vec<std::sync::atomic::AtomicU64> = (0..threads)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect();
            let t = Instant::now();
            parallel_for(threads, |c| {
                let s = map[c * per..(c + 1) * per]
                    .chunks_exact(64)
                    .fold([0u64; 8], |mut a, v| {
                        for (k, w) in v.chunks_exact(8).enumerate() {
                            a[k] = a[k].wrapping_add(u64::from_le_bytes(w.try_into().unwrap()));
                        }
                        a
                    });
                sums[c].store(
                    s.iter().fold(0, |x, y| x.wrapping_add(*y)),
                    std::sync::atomic::Ordering::Relaxed,
                );
            });
            let secs = t.elapsed().as_secs_f64();
            black_box(&sums);
            secs
        })
        .collect();
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    len as f64 / times[times.len() / 2] / 1e9
}

/// The value after flag `name`, if given.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let i = args.iter().position(|a| a == name)?;
    Some(args.get(i + 1).map(String::as_str).unwrap_or(""))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let with_scalar = args.iter().any(|a| a == "--scalar");
    let hot = args.iter().any(|a| a == "--hot");
    let budget = Duration::from_millis(if quick { 300 } else { 1000 });
    if args.iter().any(|a| a == "--attention") {
        attention_kernels(budget);
        return;
    }
    if let Some(reps) = flag(&args, "--stream") {
        let reps = reps
            .parse()
            .unwrap_or_else(|_| panic!("--stream {reps}: not a count"));
        let threads = moela_kernels::available_cores();
        println!(
            "streaming read, {threads} thread(s): {:.1} GB/s",
            stream_read_gbs(threads, reps)
        );
        return;
    }
    let isa = match flag(&args, "--isa") {
        Some(name) => Isa::available()
            .into_iter()
            .find(|i| i.name() == name)
            .unwrap_or_else(|| {
                panic!(
                    "--isa {name}: not one of {:?}",
                    Isa::available()
                        .iter()
                        .map(|i| i.name())
                        .collect::<Vec<_>>()
                )
            }),
        None => Isa::active(),
    };
    match flag(&args, "--walk") {
        Some("single") => FileRowWalk::Single.set(),
        Some("quad") => FileRowWalk::Quad.set(),
        Some(w) => panic!("--walk {w}: not single or quad"),
        None => {}
    }
    println!(
        "kernels: {}; cores available: {}; file-layout walk: {}",
        isa.name(),
        moela_kernels::available_cores(),
        FileRowWalk::active().name()
    );
    for threads in [1, 2] {
        println!(
            "streaming read, {threads} thread(s): {:.1} GB/s",
            stream_read_gbs(threads, 5)
        );
    }

    let shapes: Vec<(usize, usize)> = match flag(&args, "--shapes") {
        Some(list) => list
            .split(',')
            .map(|p| {
                let (r, c) = p.split_once('x').unwrap_or((p, ""));
                match (r.parse(), c.parse()) {
                    (Ok(r), Ok(c)) => (r, c),
                    _ => panic!("--shapes: {p:?} is not ROWSxCOLS"),
                }
            })
            .collect(),
        None => vec![(4096, 4096), (1408, 2048)],
    };
    let nt: usize = match flag(&args, "--tokens") {
        Some(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("--tokens {v}: not a count")),
        None => 128,
    };
    println!();
    println!(
        "{:<6} {:>11} {:>9} | {:>16} {:>16} | {:>18} {:>18}",
        "dtype",
        "shape",
        "MB",
        "n=1 GB/s (1 thr)",
        "n=1 GB/s (2 thr)",
        format!("n={nt} GFLOP/s (1)"),
        format!("n={nt} GFLOP/s (2)")
    );
    // Each type in the file layout, then Q8_0/Q4_0 in the packed layout the engine runs on.
    let types: Vec<DType> = match flag(&args, "--types") {
        Some(list) => list
            .split(',')
            .map(|t| t.parse().unwrap_or_else(|e| panic!("--types: {e}")))
            .collect(),
        None => DType::ALL.to_vec(),
    };
    let file_layouts = if args.iter().any(|a| a == "--packed-only") {
        vec![]
    } else {
        types.clone()
    };
    let cases = file_layouts.into_iter().map(|d| (d, false)).chain(
        [(DType::Q8_0, true), (DType::Q4_0, true)]
            .into_iter()
            .filter(|(d, _)| types.contains(d)),
    );
    for (dtype, packed) in cases {
        for &(rows, cols) in &shapes {
            let file_layout =
                QMat::from_f32(dtype, rows, cols, &data(rows * cols, (rows + cols) as u64))
                    .unwrap();
            // Packed matrices share their bytes when cloned: pack every copy on its own.
            let copy = || {
                if packed {
                    file_layout.clone().place(moela_kernels::Placement::Fastest)
                } else {
                    file_layout.clone()
                }
            };
            let w = copy();
            let mb = w.nbytes() as f64 / 1e6;
            // Enough distinct copies that a full cycle does not fit in the 32 MB L3.
            let copies = if hot {
                1
            } else {
                ((640e6 / w.nbytes() as f64).ceil() as usize).max(1)
            };
            let ws: Vec<QMat> = (0..copies).map(|_| copy()).collect();
            let x1 = data(cols, 7);
            let xn = data(nt * cols, 8);
            let mut y1 = vec![0.0; rows];
            let mut yn = vec![0.0; nt * rows];
            let mut gbs = [0.0; 2];
            let mut gflops = [0.0; 2];
            for (ti, threads) in [1usize, 2].into_iter().enumerate() {
                set_num_threads(threads);
                let mut k = 0;
                let secs = time_it(budget, || {
                    ws[k % copies].matmul_with(isa, &x1, 1, &mut y1);
                    k += 1;
                });
                gbs[ti] = w.nbytes() as f64 / secs / 1e9;
                let secs = time_it(budget, || w.matmul_with(isa, &xn, nt, &mut yn));
                gflops[ti] = 2.0 * (rows * cols * nt) as f64 / secs / 1e9;
                black_box(&y1);
                black_box(&yn);
            }
            println!(
                "{:<6} {:>11} {:>9.1} | {:>16.1} {:>16.1} | {:>18.1} {:>18.1}",
                if w.is_packed() {
                    format!("{}x8", dtype.name())
                } else {
                    dtype.name().to_string()
                },
                format!("{rows}x{cols}"),
                mb,
                gbs[0],
                gbs[1],
                gflops[0],
                gflops[1]
            );
            if with_scalar && rows == 1408 {
                set_num_threads(1);
                let secs = time_it(budget, || w.matmul_with(Isa::Scalar, &x1, 1, &mut y1));
                println!(
                    "{:<6} {:>11} {:>9} | scalar n=1, 1 thread: {:.2} GB/s",
                    "",
                    "",
                    "",
                    w.nbytes() as f64 / secs / 1e9
                );
            }
        }
    }
    attention_kernels(budget);
    set_num_threads(0);
}

/// GMAC/s of the decode attention kernels on one thread, cache rows hot in L2: scores of 16
/// heads against 64 latent rows of 576 (`rows_matmul`), then the weighted sum of the rows'
/// first 512 columns (`rows_weighted_sum`), the V2-Lite shape, for an f32, an f16 and a `Q8_0`
/// cache (widened once per pass, as the model does).
fn attention_kernels(budget: Duration) {
    let (heads, rows, cols, width) = (16usize, 64usize, 576usize, 512usize);
    let q = data(heads * cols, 11);
    let p = data(heads * rows, 12);
    let f32_rows = data(rows * cols, 13);
    let f16_rows: Vec<u16> = f32_rows
        .iter()
        .map(|&v| half::f16::from_f32(v).to_bits())
        .collect();
    // An 8-bit cache block: quants and one f16 scale per 32 (values of no consequence here).
    let q8_quants: Vec<i8> = f32_rows.iter().map(|&v| (v * 2540.0) as i8).collect();
    let q8_scales: Vec<u16> = (0..rows * cols / 32)
        .map(|i| half::f16::from_f32(0.0004 + i as f32 * 1e-7).to_bits())
        .collect();
    let mut wide = Vec::new();
    println!();
    println!("attention kernels, 1 thread (cache rows hot), GMAC/s: {heads} heads × {rows} rows");
    let chosen = RowVectors::active();
    for width_bits in [RowVectors::W256, RowVectors::W512] {
        width_bits.set();
        for (name, r) in [
            ("f32", RowData::f32(&f32_rows, cols)),
            ("f16", RowData::f16(&f16_rows, cols)),
            ("q8_0", RowData::q8(&q8_quants, &q8_scales, cols)),
        ] {
            let mut y = vec![0.0; heads * rows];
            let mut out = vec![0.0; heads * width];
            // As the model runs them: an 8-bit block widened once per pass for all heads.
            let dot = time_it(budget, || {
                rows_matmul(&q, heads, r.widened(&mut wide), &mut y)
            });
            let sum = time_it(budget, || {
                rows_weighted_sum(&p, heads, r.widened(&mut wide), &mut out)
            });
            black_box((&y, &out));
            println!(
                "{name}, {}-bit vectors{}: scores (×{cols}) {:.1}, weighted sum (×{width}) {:.1}",
                width_bits.bits(),
                if width_bits == chosen {
                    " (this CPU's choice)"
                } else {
                    ""
                },
                (heads * rows * cols) as f64 / dot / 1e9,
                (heads * rows * width) as f64 / sum / 1e9
            );
        }
    }
    chosen.set();
}
