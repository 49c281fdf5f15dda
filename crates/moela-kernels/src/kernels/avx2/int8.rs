//! `Q8_0` and `Q4_0` weights × Q8 activations, plain (one row a tile row) and packed (8 rows
//! interleaved). Defined as a macro so that `int_kernels!` in the parent stamps them out once
//! per feature set (plain AVX2, and AVX512-VNNI/VL), inside its `plain` and `vnni` modules.

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

/// The `Q8_0`/`Q4_0` micro-kernels and the packed walker for one feature set (`$feat`, and
/// `$vnni` for `vpdpbusd`), expanded by `int_kernels!` in a module that sees the parent's items.
macro_rules! int8_kernels {
    ($feat:literal, $vnni:tt) => {
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
                let wp: [*const u8; MR] = c.weight_rows(r);
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
                let wp: [*const u8; MR] = c.weight_rows(r);
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
                let offset = if Q8 {
                    if $vnni {
                        -128
                    } else {
                        0
                    }
                } else {
                    -8
                };
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
                            let lo: [__m256i; G] =
                                std::array::from_fn(|g| _mm256_and_si256(v[g], m4));
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
                                        iacc[g][j] = _mm256_add_epi32(
                                            iacc[g][j],
                                            _mm256_madd_epi16(p, ones),
                                        );
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
        pub(super) unsafe fn gemm_packed<const Q8: bool>(
            c: &Ctx,
            nr: usize,
            nt: usize,
            out: OutTile,
        ) {
            let o = &out;
            // Groups per tile: fewer without VNNI (16 vector registers). A single token
            // is bound by DRAM: 4 groups are 4 prefetched streams in flight (on the Xeon,
            // with one stream at a time packed Q4_0 n = 1 reached 24–27 GB/s on 2 threads
            // where 4 reach 26–30; `PREFETCH_AHEAD`). On the EPYC (Zen 4) one stream reads
            // faster, as for the file layout (`FileRowWalk::Single`): Q4_0 n = 1, 2 threads,
            // 1408 × 2048 / 2048 × 10944 / 4096 × 4096 21–24 / 29–30 / 27 → 29–33 / 32–35 /
            // 32–34 GB/s.
            let single = nt == 1
                && crate::kernels::FileRowWalk::active() == crate::kernels::FileRowWalk::Single;
            let mut r = 0;
            while r < nr {
                let g = match (nt, $vnni) {
                    (1, _) if single => 1,
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
    };
}
