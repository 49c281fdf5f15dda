//! Block formats, byte-for-byte as ggml/GGUF stores them (little-endian), with scalar
//! quantize/dequantize for each. The quantizers follow ggml's reference (`*_ref`) rules for
//! choosing scales, so a file we write quantizes a tensor the way `llama-quantize` would without
//! an importance matrix.
//!
//! | format | values/block | bytes | layout |
//! |---|---|---|---|
//! | `Q8_0` | 32 | 34 | f16 `d`, 32 × i8 `q`; value = `q·d` |
//! | `Q4_0` | 32 | 18 | f16 `d`, 16 bytes: low nibble of byte `j` = element `j`, high nibble = element `j+16`; value = `(q−8)·d` |
//! | `Q4_K` | 256 | 144 | f16 `d`, f16 `dmin`, 12 bytes of 6-bit scales/mins for 8 sub-blocks of 32, 128 bytes of nibbles; value = `d·sc·q − dmin·m` |
//! | `Q6_K` | 256 | 210 | `ql[128]` (low 4 bits), `qh[64]` (high 2 bits), i8 `scales[16]` (one per 16 values), f16 `d`; value = `d·sc·(q−32)` |
//! | `Q8_K` | 256 | 292 | f32 `d`, 256 × i8 `q`, 16 × i16 sums of each 16 `q`; value = `q·d` (activations only) |
//!
//! Nibble/bit placement for the K formats is documented at each (de)quantizer.

use crate::fp::{f16_to_f32, f32_to_f16, nearest_int};

/// Values per `Q8_0`/`Q4_0` block.
pub const QK: usize = 32;
/// Values per K-quant super-block.
pub const QK_K: usize = 256;
/// Bytes per `Q8_0` block.
pub const Q8_0_BYTES: usize = 34;
/// Bytes per `Q4_0` block.
pub const Q4_0_BYTES: usize = 18;
/// Bytes per `Q4_K` super-block.
pub const Q4_K_BYTES: usize = 144;
/// Bytes per `Q6_K` super-block.
pub const Q6_K_BYTES: usize = 210;
/// Bytes per `Q8_K` super-block.
pub const Q8_K_BYTES: usize = 292;

const GROUP_MAX_EPS: f32 = 1e-15;

#[inline]
fn rd_f16(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

#[inline]
fn wr_f16(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 2].copy_from_slice(&f32_to_f16(v).to_le_bytes());
}

fn check(x_len: usize, qk: usize, bytes: usize, out_len: usize, what: &str) -> usize {
    assert!(
        x_len.is_multiple_of(qk),
        "{what}: {x_len} values is not a multiple of {qk}"
    );
    let nb = x_len / qk;
    assert_eq!(out_len, nb * bytes, "{what}: wrong byte length");
    nb
}

// ---------------------------------------------------------------------------------------------
// Q8_0

/// Quantizes `x` (a multiple of 32 values) into `Q8_0` blocks: `d = amax/127`,
/// `q = round(x/d)` (half away from zero, as `roundf`).
pub fn quantize_row_q8_0(x: &[f32], out: &mut [u8]) {
    let nb = check(x.len(), QK, Q8_0_BYTES, out.len(), "quantize_row_q8_0");
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q8_0_BYTES)) {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        wr_f16(ob, 0, d);
        for j in 0..QK {
            ob[2 + j] = (xb[j] * id).round() as i8 as u8;
        }
    }
    let _ = nb;
}

/// [`quantize_row_q8_0`]'s blocks with their parts apart: `q` the quants of `x` (a multiple of
/// 32 values), `d` each block's f16 scale (bit pattern). Same arithmetic, value for value.
///
/// # Panics
/// If the lengths do not match.
pub fn quantize_q8_0_split(x: &[f32], q: &mut [i8], d: &mut [u16]) {
    assert!(
        x.len().is_multiple_of(QK) && q.len() == x.len() && d.len() == x.len() / QK,
        "quantize_q8_0_split: lengths"
    );
    for ((xb, qb), db) in x
        .chunks_exact(QK)
        .zip(q.chunks_exact_mut(QK))
        .zip(d.iter_mut())
    {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        *db = crate::fp::f32_to_f16(scale);
        for (o, &v) in qb.iter_mut().zip(xb) {
            *o = (v * id).round() as i8;
        }
    }
}

/// Expands [`quantize_q8_0_split`]'s parts (`q` from element `offset` of the region `d`
/// scales) into `out`.
pub fn dequantize_q8_0_split(q: &[i8], d: &[u16], offset: usize, out: &mut [f32]) {
    for (i, (o, &v)) in out.iter_mut().zip(q).enumerate() {
        *o = v as f32 * crate::fp::f16_to_f32(d[(offset + i) / QK]);
    }
}

/// Expands `Q8_0` blocks into `out`.
pub fn dequantize_row_q8_0(b: &[u8], out: &mut [f32]) {
    check(out.len(), QK, Q8_0_BYTES, b.len(), "dequantize_row_q8_0");
    for (blk, ob) in b.chunks_exact(Q8_0_BYTES).zip(out.chunks_exact_mut(QK)) {
        let d = rd_f16(blk, 0);
        for j in 0..QK {
            ob[j] = (blk[2 + j] as i8) as f32 * d;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Q4_0

/// Quantizes into `Q4_0`: `d = max/−8` where `max` is the value of largest magnitude (so it maps
/// to nibble 0), `q = min(15, trunc(x/d + 8.5))`.
pub fn quantize_row_q4_0(x: &[f32], out: &mut [u8]) {
    check(x.len(), QK, Q4_0_BYTES, out.len(), "quantize_row_q4_0");
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q4_0_BYTES)) {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in xb {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        wr_f16(ob, 0, d);
        for j in 0..QK / 2 {
            // `as i8` truncates toward zero like C's float → int8_t conversion.
            let x0 = ((xb[j] * id + 8.5) as i8).min(15) as u8;
            let x1 = ((xb[j + QK / 2] * id + 8.5) as i8).min(15) as u8;
            ob[2 + j] = x0 | (x1 << 4);
        }
    }
}

/// Expands `Q4_0` blocks into `out`.
pub fn dequantize_row_q4_0(b: &[u8], out: &mut [f32]) {
    check(out.len(), QK, Q4_0_BYTES, b.len(), "dequantize_row_q4_0");
    for (blk, ob) in b.chunks_exact(Q4_0_BYTES).zip(out.chunks_exact_mut(QK)) {
        let d = rd_f16(blk, 0);
        for j in 0..QK / 2 {
            let q = blk[2 + j];
            ob[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
            ob[j + QK / 2] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Q4_K

/// Sub-block `j` (0..8) scale and min of a `Q4_K` super-block from its 12 packed bytes:
/// bytes 0..4 hold scales 0..4 in their low 6 bits, bytes 4..8 mins 0..4; scales/mins 4..8 keep
/// their low 4 bits in bytes 8..12 (scale low nibble, min high nibble) and their top 2 bits in
/// the top 2 bits of bytes 0..4 (scales) and 4..8 (mins).
#[inline]
pub fn q4_k_scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// All 8 (scale, min) pairs of a `Q4_K` super-block.
#[inline]
pub fn q4_k_scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..8 {
        (sc[j], m[j]) = q4_k_scale_min(j, s);
    }
    (sc, m)
}

/// ggml's `make_qkx2_quants`: fits `x ≈ scale·L + min` with `L ∈ 0..=nmax`, `min ≤ 0`, weighted,
/// trying `nstep+1` candidate scales. Returns `(scale, −min)`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    l: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l[..n].fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let li = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = li as u8;
        let diff = scale * l[i] as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let li = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = li as u8;
            let lf = li as f32;
            let w = weights[i];
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let dd = sum_w * sum_l2 - sum_l * sum_l;
        if dd > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / dd;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / dd;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Quantizes into `Q4_K` following ggml's `quantize_row_q4_K_ref`: each 32-value sub-block is
/// fitted as `scale·q − min` (weights `rms + |x|`), then scales and mins are themselves quantized
/// to 6 bits against the super-block's largest, and `q` is recomputed with the rounded values.
/// Nibbles: byte `32c + l` of `qs` holds element `64c + l` (low) and `64c + 32 + l` (high).
pub fn quantize_row_q4_k(x: &[f32], out: &mut [u8]) {
    check(x.len(), QK_K, Q4_K_BYTES, out.len(), "quantize_row_q4_k");
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 32];
    let mut weights = [0.0f32; 32];
    for (xb, ob) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(Q4_K_BYTES)) {
        let mut scales = [0.0f32; 8];
        let mut mins = [0.0f32; 8];
        let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
        for j in 0..8 {
            let xs = &xb[32 * j..32 * j + 32];
            let sum_x2: f32 = xs.iter().fold(0.0, |s, v| s + v * v);
            let av_x = (sum_x2 / 32.0).sqrt();
            for i in 0..32 {
                weights[i] = av_x + xs[i].abs();
            }
            let (s, m) = make_qkx2_quants(
                xs,
                &weights,
                15,
                &mut l[32 * j..32 * j + 32],
                &mut laux,
                -1.0,
                0.1,
                20,
            );
            scales[j] = s;
            mins[j] = m;
            if s > max_scale {
                max_scale = s;
            }
            if m > max_min {
                max_min = m;
            }
        }
        let inv_scale = if max_scale > 0.0 {
            63.0 / max_scale
        } else {
            0.0
        };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        let sb = &mut ob[4..16];
        sb.fill(0);
        for j in 0..8 {
            // `as u8` wraps like C's int → uint8_t before the MIN.
            let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
            let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
            if j < 4 {
                sb[j] = ls;
                sb[j + 4] = lm;
            } else {
                sb[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
                sb[j - 4] |= (ls >> 4) << 6;
                sb[j] |= (lm >> 4) << 6;
            }
        }
        wr_f16(ob, 0, max_scale / 63.0);
        wr_f16(ob, 2, max_min / 63.0);
        let d = rd_f16(ob, 0);
        let dmin = rd_f16(ob, 2);
        for j in 0..8 {
            let (sc, m) = q4_k_scale_min(j, &ob[4..16]);
            let dj = d * sc as f32;
            if dj == 0.0 {
                continue;
            }
            let dm = dmin * m as f32;
            for i in 0..32 {
                l[32 * j + i] = nearest_int((xb[32 * j + i] + dm) / dj).clamp(0, 15) as u8;
            }
        }
        let qs = &mut ob[16..144];
        for c in 0..4 {
            for i in 0..32 {
                qs[32 * c + i] = l[64 * c + i] | (l[64 * c + 32 + i] << 4);
            }
        }
    }
}

/// Expands `Q4_K` super-blocks into `out`.
pub fn dequantize_row_q4_k(b: &[u8], out: &mut [f32]) {
    check(out.len(), QK_K, Q4_K_BYTES, b.len(), "dequantize_row_q4_k");
    for (blk, ob) in b.chunks_exact(Q4_K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
        let d = rd_f16(blk, 0);
        let dmin = rd_f16(blk, 2);
        let (sc, m) = q4_k_scales_mins(&blk[4..16]);
        let qs = &blk[16..144];
        for c in 0..4 {
            let (d1, m1) = (d * sc[2 * c] as f32, dmin * m[2 * c] as f32);
            let (d2, m2) = (d * sc[2 * c + 1] as f32, dmin * m[2 * c + 1] as f32);
            for i in 0..32 {
                let q = qs[32 * c + i];
                ob[64 * c + i] = d1 * (q & 0x0F) as f32 - m1;
                ob[64 * c + 32 + i] = d2 * (q >> 4) as f32 - m2;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Q6_K

/// ggml's `make_qx_quants` with `rmse_type = 1` and no importance weights: symmetric fit
/// `x ≈ scale·(L − nmax)`, weights `x²`, trying 19 candidate scales. Stores `L + nmax` in `l`.
fn make_qx_quants(x: &[f32], nmax: i32, l: &mut [i8]) -> f32 {
    let n = x.len();
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l[..n].fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = -nmaxf / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..n {
        let li = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l[i] = (li + nmax) as i8;
        let w = x[i] * x[i];
        let lf = li as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmaxf + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for i in 0..n {
            let lf = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1) as f32;
            let w = x[i] * x[i];
            sumlx += w * x[i] * lf;
            suml2 += w * lf * lf;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                let li = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
                l[i] = (nmax + li) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Quantizes into `Q6_K` following ggml's `quantize_row_q6_K_ref`: each 16-value group gets a
/// fitted scale, the scales are quantized to i8 against the largest (`d = max/−128`), then the
/// 6-bit values `q ∈ 0..64` (meaning `q − 32`) are recomputed. Bit placement within each half
/// (128 values, `ql` 64 bytes, `qh` 32 bytes), for `l < 32`: element `l` is the low nibble of
/// `ql[l]` with bits 0–1 of `qh[l]` on top; `l+32` the low nibble of `ql[l+32]` with bits 2–3;
/// `l+64` the high nibble of `ql[l]` with bits 4–5; `l+96` the high nibble of `ql[l+32]` with
/// bits 6–7.
pub fn quantize_row_q6_k(x: &[f32], out: &mut [u8]) {
    check(x.len(), QK_K, Q6_K_BYTES, out.len(), "quantize_row_q6_k");
    let mut l = [0i8; QK_K];
    for (xb, ob) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(Q6_K_BYTES)) {
        let mut scales = [0.0f32; 16];
        let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
        for ib in 0..16 {
            let s = make_qx_quants(
                &xb[16 * ib..16 * ib + 16],
                32,
                &mut l[16 * ib..16 * ib + 16],
            );
            scales[ib] = s;
            if s.abs() > max_abs_scale {
                max_abs_scale = s.abs();
                max_scale = s;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            ob.fill(0);
            continue;
        }
        let iscale = -128.0 / max_scale;
        wr_f16(ob, 208, 1.0 / iscale);
        for ib in 0..16 {
            ob[192 + ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
        }
        let d = rd_f16(ob, 208);
        for j in 0..16 {
            let dj = d * (ob[192 + j] as i8) as f32;
            if dj == 0.0 {
                continue;
            }
            for i in 0..16 {
                let li = nearest_int(xb[16 * j + i] / dj).clamp(-32, 31);
                l[16 * j + i] = (li + 32) as i8;
            }
        }
        let (ql, rest) = ob.split_at_mut(128);
        let qh = &mut rest[..64];
        for h in 0..2 {
            let lb = &l[128 * h..128 * h + 128];
            for i in 0..32 {
                let q1 = lb[i] as u8;
                let q2 = lb[i + 32] as u8;
                let q3 = lb[i + 64] as u8;
                let q4 = lb[i + 96] as u8;
                ql[64 * h + i] = (q1 & 0x0F) | ((q3 & 0x0F) << 4);
                ql[64 * h + i + 32] = (q2 & 0x0F) | ((q4 & 0x0F) << 4);
                qh[32 * h + i] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
            }
        }
    }
}

/// The 6-bit value (0..64, meaning `q − 32`) of element `e` (0..256) of a `Q6_K` super-block.
#[inline]
pub fn q6_k_value(blk: &[u8], e: usize) -> u8 {
    let (h, r) = (e / 128, e % 128);
    let (k, i) = (r / 32, r % 32);
    let ql = blk[64 * h + i + if k & 1 == 1 { 32 } else { 0 }];
    let low = if k >= 2 { ql >> 4 } else { ql & 0x0F };
    let high = (blk[128 + 32 * h + i] >> (2 * k)) & 3;
    low | (high << 4)
}

/// Expands `Q6_K` super-blocks into `out`.
pub fn dequantize_row_q6_k(b: &[u8], out: &mut [f32]) {
    check(out.len(), QK_K, Q6_K_BYTES, b.len(), "dequantize_row_q6_k");
    for (blk, ob) in b.chunks_exact(Q6_K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
        let d = rd_f16(blk, 208);
        for e in 0..QK_K {
            let sc = blk[192 + e / 16] as i8;
            ob[e] = d * sc as f32 * (q6_k_value(blk, e) as i32 - 32) as f32;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Q8_K (activations for the K formats)

/// Quantizes one 256-value super-block the way ggml's `quantize_row_q8_K_ref` does:
/// `max` = the value of largest magnitude (first one on ties), `iscale = −127/max`,
/// `q = min(127, nearest_int(iscale·x))`, `d = 1/iscale`. Returns `d`; fills `q` and the 16
/// sums of 16 values.
pub fn quantize_block_q8_k(x: &[f32], q: &mut [i8], bsums: &mut [i16]) -> f32 {
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in &x[..QK_K] {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        q[..QK_K].fill(0);
        bsums[..16].fill(0);
        return 0.0;
    }
    let iscale = -127.0 / max;
    for j in 0..QK_K {
        q[j] = nearest_int(iscale * x[j]).min(127) as i8;
    }
    for (j, s) in bsums[..16].iter_mut().enumerate() {
        *s = q[16 * j..16 * j + 16].iter().map(|&v| v as i16).sum();
    }
    1.0 / iscale
}

/// Quantizes `x` into `Q8_K` blocks (ggml layout: f32 `d`, 256 × i8, 16 × i16 sums).
pub fn quantize_row_q8_k(x: &[f32], out: &mut [u8]) {
    check(x.len(), QK_K, Q8_K_BYTES, out.len(), "quantize_row_q8_k");
    let mut q = [0i8; QK_K];
    let mut bs = [0i16; 16];
    for (xb, ob) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(Q8_K_BYTES)) {
        let d = quantize_block_q8_k(xb, &mut q, &mut bs);
        ob[0..4].copy_from_slice(&d.to_le_bytes());
        for j in 0..QK_K {
            ob[4 + j] = q[j] as u8;
        }
        for j in 0..16 {
            ob[260 + 2 * j..262 + 2 * j].copy_from_slice(&bs[j].to_le_bytes());
        }
    }
}

/// Expands `Q8_K` blocks into `out`.
pub fn dequantize_row_q8_k(b: &[u8], out: &mut [f32]) {
    check(out.len(), QK_K, Q8_K_BYTES, b.len(), "dequantize_row_q8_k");
    for (blk, ob) in b.chunks_exact(Q8_K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
        let d = f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]);
        for j in 0..QK_K {
            ob[j] = (blk[4 + j] as i8) as f32 * d;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Activations for the 32-value formats

/// Quantizes one 32-value block of activations for `Q8_0`/`Q4_0` weights: `d = amax/127`,
/// `q = round_half_even(x/d)`. (Unlike a stored `Q8_0` block, `d` stays f32 and rounding is to
/// even, so the SIMD quantizer can match this bit for bit.) Returns `d`.
#[inline]
pub fn quantize_block_q8_act(x: &[f32], q: &mut [i8]) -> f32 {
    let amax = x[..QK].iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for j in 0..QK {
        q[j] = (x[j] * id).round_ties_even() as i8;
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize, seed: u32) -> Vec<f32> {
        // Deterministic pseudo-random values in about [-1, 1] with a few larger outliers.
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                let u = (s as f32 / u32::MAX as f32) * 2.0 - 1.0;
                if i % 97 == 5 {
                    u * 4.0
                } else {
                    u
                }
            })
            .collect()
    }

    fn max_err(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn q4_0_known_block() {
        // d = 0.5, nibble j in byte j's low half and (15 - j) in its high half.
        let mut blk = vec![0u8; Q4_0_BYTES];
        blk[0..2].copy_from_slice(&f32_to_f16(0.5).to_le_bytes());
        for j in 0..16u8 {
            blk[2 + j as usize] = j | ((15 - j) << 4);
        }
        let mut out = vec![0.0; 32];
        dequantize_row_q4_0(&blk, &mut out);
        for j in 0..16 {
            assert_eq!(out[j], (j as f32 - 8.0) * 0.5);
            assert_eq!(out[16 + j], ((15 - j) as f32 - 8.0) * 0.5);
        }
    }

    #[test]
    fn q8_0_split_equals_the_block_form() {
        let x: Vec<f32> = (0..96)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.173)
            .collect();
        let mut blocks = vec![0u8; 3 * Q8_0_BYTES];
        quantize_row_q8_0(&x, &mut blocks);
        let (mut q, mut d) = (vec![0i8; 96], vec![0u16; 3]);
        quantize_q8_0_split(&x, &mut q, &mut d);
        let (mut a, mut b) = (vec![0.0; 96], vec![0.0; 96]);
        dequantize_row_q8_0(&blocks, &mut a);
        dequantize_q8_0_split(&q, &d, 0, &mut b);
        assert_eq!(a, b);
        // From an offset inside the region: the same values.
        let mut c = vec![0.0; 40];
        dequantize_q8_0_split(&q[50..90], &d, 50, &mut c);
        assert_eq!(c, a[50..90]);
    }

    #[test]
    fn q8_0_known_block() {
        let mut blk = vec![0u8; Q8_0_BYTES];
        blk[0..2].copy_from_slice(&f32_to_f16(0.25).to_le_bytes());
        for j in 0..32 {
            blk[2 + j] = (j as i8 - 16) as u8;
        }
        blk[2] = (-128i8) as u8;
        let mut out = vec![0.0; 32];
        dequantize_row_q8_0(&blk, &mut out);
        assert_eq!(out[0], -32.0);
        for j in 1..32 {
            assert_eq!(out[j], (j as f32 - 16.0) * 0.25);
        }
    }

    #[test]
    fn q4_k_known_block() {
        // d = 1, dmin = 0.5; sub-block j: scale j+1 (and for j ≥ 4 a high bit: +16), min 2j;
        // every nibble = element index mod 16.
        let mut blk = vec![0u8; Q4_K_BYTES];
        blk[0..2].copy_from_slice(&f32_to_f16(1.0).to_le_bytes());
        blk[2..4].copy_from_slice(&f32_to_f16(0.5).to_le_bytes());
        let sc: Vec<u8> = (0..8)
            .map(|j| if j < 4 { j + 1 } else { j + 1 + 16 })
            .collect();
        let mn: Vec<u8> = (0..8)
            .map(|j| 2 * j + if j >= 4 { 32 } else { 0 })
            .collect();
        let s = &mut blk[4..16];
        for j in 0..8 {
            if j < 4 {
                s[j] = sc[j];
                s[j + 4] = mn[j];
            } else {
                s[j + 4] = (sc[j] & 0xF) | ((mn[j] & 0xF) << 4);
                s[j - 4] |= (sc[j] >> 4) << 6;
                s[j] |= (mn[j] >> 4) << 6;
            }
        }
        for c in 0..4 {
            for i in 0..32 {
                let lo = ((64 * c + i) % 16) as u8;
                let hi = ((64 * c + 32 + i) % 16) as u8;
                blk[16 + 32 * c + i] = lo | (hi << 4);
            }
        }
        assert_eq!(
            q4_k_scales_mins(&blk[4..16]),
            (
                [sc[0], sc[1], sc[2], sc[3], sc[4], sc[5], sc[6], sc[7]],
                [mn[0], mn[1], mn[2], mn[3], mn[4], mn[5], mn[6], mn[7]]
            )
        );
        let mut out = vec![0.0; 256];
        dequantize_row_q4_k(&blk, &mut out);
        for e in 0..256 {
            let j = e / 32;
            let want = sc[j] as f32 * (e % 16) as f32 - 0.5 * mn[j] as f32;
            assert_eq!(out[e], want, "element {e}");
        }
    }

    #[test]
    fn q6_k_known_block() {
        // d = 0.5, scale of group g = g - 8, 6-bit value of element e = e % 64.
        let mut blk = vec![0u8; Q6_K_BYTES];
        blk[208..210].copy_from_slice(&f32_to_f16(0.5).to_le_bytes());
        for g in 0..16 {
            blk[192 + g] = (g as i8 - 8) as u8;
        }
        for h in 0..2 {
            for i in 0..32 {
                let v = |k: usize| ((128 * h + 32 * k + i) % 64) as u8;
                blk[64 * h + i] = (v(0) & 0xF) | ((v(2) & 0xF) << 4);
                blk[64 * h + i + 32] = (v(1) & 0xF) | ((v(3) & 0xF) << 4);
                blk[128 + 32 * h + i] =
                    (v(0) >> 4) | ((v(1) >> 4) << 2) | ((v(2) >> 4) << 4) | ((v(3) >> 4) << 6);
            }
        }
        let mut out = vec![0.0; 256];
        dequantize_row_q6_k(&blk, &mut out);
        for e in 0..256 {
            let want = 0.5 * (e / 16) as f32 - 4.0;
            let want = want * ((e % 64) as f32 - 32.0);
            assert_eq!(out[e], want, "element {e}");
        }
    }

    #[test]
    fn q8_k_layout_and_sums() {
        let x = ramp(512, 3);
        let mut b = vec![0u8; 2 * Q8_K_BYTES];
        quantize_row_q8_k(&x, &mut b);
        for blk in b.chunks_exact(Q8_K_BYTES) {
            for j in 0..16 {
                let s: i32 = (0..16).map(|i| blk[4 + 16 * j + i] as i8 as i32).sum();
                assert_eq!(
                    i16::from_le_bytes([blk[260 + 2 * j], blk[261 + 2 * j]]) as i32,
                    s
                );
            }
        }
        let mut y = vec![0.0; 512];
        dequantize_row_q8_k(&b, &mut y);
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(max_err(&x, &y) <= amax / 127.0 * 0.5 + 1e-6);
    }

    #[test]
    fn round_trip_error_bounds() {
        let x = ramp(1024, 7);
        let amax_blk = |n: usize, i: usize| {
            x[i / n * n..i / n * n + n]
                .iter()
                .fold(0.0f32, |m, v| m.max(v.abs()))
        };
        let mut y = vec![0.0; 1024];

        let mut b = vec![0u8; 32 * Q8_0_BYTES];
        quantize_row_q8_0(&x, &mut b);
        dequantize_row_q8_0(&b, &mut y);
        for i in 0..1024 {
            // Half a step plus the f16 rounding of d (≤ 2^-11 relative, times up to 127 steps).
            let step = amax_blk(32, i) / 127.0;
            assert!(
                (x[i] - y[i]).abs() <= step * 0.5 + amax_blk(32, i) * 1e-3,
                "q8_0 {i}"
            );
        }

        let mut b = vec![0u8; 32 * Q4_0_BYTES];
        quantize_row_q4_0(&x, &mut b);
        dequantize_row_q4_0(&b, &mut y);
        for i in 0..1024 {
            // The extreme maps to −8, so values of the other sign near +amax clamp at +7: up to
            // a whole step there, half a step elsewhere.
            let step = amax_blk(32, i) / 8.0;
            assert!(
                (x[i] - y[i]).abs() <= step + amax_blk(32, i) * 2e-3,
                "q4_0 {i}"
            );
        }

        let mut b = vec![0u8; 4 * Q4_K_BYTES];
        quantize_row_q4_k(&x, &mut b);
        dequantize_row_q4_k(&b, &mut y);
        let rms = |a: &[f32]| (a.iter().map(|v| v * v).sum::<f32>() / a.len() as f32).sqrt();
        let diff: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a - b).collect();
        // 4.5 bits per value: about 7% relative RMS error on this uniform-plus-outliers data
        // (Q4_0 does about as well here; Q4_K gains on real, bell-shaped weights).
        assert!(
            rms(&diff) < 0.09 * rms(&x),
            "q4_k rms {}",
            rms(&diff) / rms(&x)
        );
        for i in 0..1024 {
            assert!((x[i] - y[i]).abs() <= amax_blk(32, i) * 0.25, "q4_k {i}");
        }

        let mut b = vec![0u8; 4 * Q6_K_BYTES];
        quantize_row_q6_k(&x, &mut b);
        dequantize_row_q6_k(&b, &mut y);
        let diff: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a - b).collect();
        assert!(
            rms(&diff) < 0.025 * rms(&x),
            "q6_k rms {}",
            rms(&diff) / rms(&x)
        );
        for i in 0..1024 {
            assert!(
                (x[i] - y[i]).abs() <= amax_blk(16, i) / 32.0 * 1.5,
                "q6_k {i}"
            );
        }
    }

    #[test]
    fn zero_blocks_stay_zero() {
        let x = vec![0.0f32; 256];
        let mut y = vec![1.0; 256];
        let mut b = vec![0xAAu8; Q4_K_BYTES];
        quantize_row_q4_k(&x, &mut b);
        dequantize_row_q4_k(&b, &mut y);
        assert!(y.iter().all(|v| *v == 0.0));
        let mut b = vec![0xAAu8; Q6_K_BYTES];
        quantize_row_q6_k(&x, &mut b);
        dequantize_row_q6_k(&b, &mut y);
        assert!(y.iter().all(|v| *v == 0.0));
        let mut b = vec![0xAAu8; 8 * Q4_0_BYTES];
        quantize_row_q4_0(&x, &mut b);
        dequantize_row_q4_0(&b, &mut y);
        assert!(y.iter().all(|v| *v == 0.0));
    }

    #[test]
    fn q4_0_extreme_maps_to_nibble_zero() {
        let mut x = vec![0.1f32; 32];
        x[7] = -3.0;
        let mut b = vec![0u8; Q4_0_BYTES];
        quantize_row_q4_0(&x, &mut b);
        assert_eq!(b[2 + 7] & 0x0F, 0);
        let mut y = vec![0.0; 32];
        dequantize_row_q4_0(&b, &mut y);
        assert_eq!(y[7], -3.0);
    }
}
