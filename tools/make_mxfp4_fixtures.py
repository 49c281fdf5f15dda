#!/usr/bin/env python3
"""Write tests/fixtures/mxfp4/golden.json: GGUF's MXFP4 type as llama.cpp's own `gguf` Python
package (gguf-py) defines it, for `crates/moela-kernels` (`mxfp4::tests`).

Usage (pinned versions in tools/requirements-gguf.txt; only gguf and numpy are needed):

    python3 -m venv /tmp/g && /tmp/g/bin/pip install -r tools/requirements-gguf.txt
    /tmp/g/bin/python tools/make_mxfp4_fixtures.py       # (re)writes tests/fixtures/mxfp4/

What it records (deterministic; seeds fixed; floats as their f32 bit patterns):

* `ggml_type`, `block_size`, `type_size`: `GGMLQuantizationType.MXFP4` and its
  `GGML_QUANT_SIZES` entry; `kvalues`: `gguf.quants.MXFP4.kvalues` (e2m1 values, doubled).
* `half_scale_bits`: `MXFP4.e8m0_to_fp32_half(e)` for every exponent byte 0..=255.
* `quantize`: f32 vectors (ordinary weights, nearest-value ties, a zero block, clipping, block
  maxima next to powers of two, tiny and huge blocks) with the bytes `gguf.quants.quantize`
  makes of them and those bytes `gguf.quants.dequantize`d.
* `release`: DeepSeek-V4's FP4 layout of a small matrix (random bytes: codes [rows, cols/2],
  two e2m1 codes per byte, low nibble first; ue8m0 scales [rows, cols/32]), its repacking into
  MXFP4 blocks, and the values. The script checks that gguf-py's dequantization of the
  repacked blocks equals a direct decoding of the release layout (OCP MX v1.0: e2m1 value ·
  2^(e − 127)), which is what pins ggml's element order and scale convention.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT
from gguf.quants import MXFP4

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "mxfp4"

# e2m1 codes 0..7 (sign in bit 3): exponent bits 2..1 (bias 1), mantissa bit 0.
E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=np.float64)


def bits(a: np.ndarray) -> list[int]:
    return [int(v) for v in np.asarray(a, dtype=np.float32).reshape(-1).view(np.uint32)]


def below(v: float) -> np.float32:
    """The largest f32 below `v`."""
    return np.nextafter(np.float32(v), np.float32(0.0))


def quantize_cases(rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    cases = [("weights", (rng.standard_normal(128) * 0.02).astype(np.float32))]
    # amax 1 gives e = 125, half scale 2^-3 = 0.125: every value on a midpoint between
    # neighbouring table entries (0.5, 1.5, 2.5, 3.5, 5, 7, 10 units), both signs, plus
    # values on the entries themselves.
    units = [0.5, 1.5, 2.5, 3.5, 5.0, 7.0, 0.25, 6.0]
    ties = [u * 0.125 for u in units] + [-u * 0.125 for u in units]
    ties += [8 * 0.125, -1.0, 0.0, -0.0] + [k * 0.125 for k in (1, 2, 3, 4, 6, -1, -3, -6)]
    ties += [0.9, -0.3, 0.55, -0.8]
    cases.append(("ties", np.array(ties, dtype=np.float32)))
    cases.append(("zero", np.zeros(32, dtype=np.float32)))
    # amax 1.9: 15.2 units clip to 12 (1.5); 1.6 units round to 2.
    clip = np.linspace(-1.9, 1.9, 32).astype(np.float32)
    cases.append(("clip", clip))
    # Block maxima just below and at powers of two (floor(log2f(amax)) at its edges).
    edges = []
    for p in (-10, -3, -1, 0, 2, 4, 60):
        for m in (below(2.0**p), np.float32(2.0**p)):
            x = (rng.uniform(-1, 1, 32) * 0.5 * float(m)).astype(np.float32)
            x[int(rng.integers(0, 32))] = -m if p % 2 else m
            edges.append(x)
    cases.append(("pow2_edges", np.concatenate(edges)))
    big = (rng.uniform(-1, 1, 32) * 3e37).astype(np.float32)
    big[5] = np.float32(3.0e38)
    small = (rng.uniform(-1, 1, 32) * 1e-36).astype(np.float32)
    cases.append(("huge_and_small", np.concatenate([big, small])))
    return cases


def repack_release(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """DeepSeek's [rows, cols/2] codes + [rows, cols/32] scales -> [rows, cols/32 * 17] blocks."""
    rows, nb = scales.shape
    c = codes.reshape(rows, nb, 16)
    elems = np.stack([c & 0x0F, c >> 4], axis=-1).reshape(rows, nb, 32)  # element order
    qs = elems[..., :16] | (elems[..., 16:] << 4)                         # ggml: j | j+16
    return np.concatenate([scales[..., None], qs], axis=-1).astype(np.uint8).reshape(rows, -1)


def release_case(rng: np.random.Generator) -> dict:
    rows, cols = 3, 96
    codes = rng.integers(0, 256, (rows, cols // 2), dtype=np.uint8)
    scales = rng.integers(0, 256, (rows, cols // 32), dtype=np.uint8)
    scales[0, :3] = [0, 1, 2]       # subnormal half scales
    scales[1, :3] = [127, 254, 255]  # 2^0, 2^127, and the spec's NaN code (ggml: 2^128)
    blocks = repack_release(codes, scales)
    with np.errstate(over="ignore"):  # e = 255: 2^127 · 12 is +inf in f32, as in ggml
        values = gguf.quants.dequantize(blocks, QT.MXFP4).astype(np.float32)
    # Direct decoding of the release layout.
    nib = np.stack([codes & 0x0F, codes >> 4], axis=-1).reshape(rows, cols)
    mag = E2M1[nib & 7] * np.where(nib & 8, -1.0, 1.0)
    scale = np.exp2(np.repeat(scales.astype(np.float64), 32, axis=1) - 127.0)
    with np.errstate(over="ignore"):
        direct = (mag * scale).astype(np.float32)
    assert values.shape == direct.shape
    assert np.array_equal(values, direct), "gguf-py's MXFP4 differs from the OCP decoding"
    return {
        "rows": rows,
        "cols": cols,
        "codes_hex": codes.tobytes().hex(),
        "scales_hex": scales.tobytes().hex(),
        "blocks_hex": blocks.tobytes().hex(),
        "value_bits": bits(values),
    }


def dump(golden: dict) -> str:
    """JSON with one line per top-level key and per quantize case."""
    def compact(v) -> str:
        return json.dumps(v, separators=(",", ":"))
    lines = []
    for k, v in golden.items():
        if k == "quantize":
            cases = ",\n".join("  " + compact(c) for c in v)
            lines.append(f' "{k}": [\n{cases}\n ]')
        else:
            lines.append(f" {json.dumps(k)}: {compact(v)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main() -> None:
    rng = np.random.default_rng(20260416)
    block, size = gguf.GGML_QUANT_SIZES[QT.MXFP4]
    golden = {
        "generator": f"tools/make_mxfp4_fixtures.py (gguf {version('gguf')}, numpy {np.__version__})",
        "ggml_type": int(QT.MXFP4),
        "block_size": block,
        "type_size": size,
        "kvalues": list(MXFP4.kvalues),
        "half_scale_bits": bits(MXFP4.e8m0_to_fp32_half(np.arange(256, dtype=np.uint8)[:, None])),
        "quantize": [],
    }
    for name, x in quantize_cases(rng):
        assert x.dtype == np.float32 and x.size % block == 0
        with np.errstate(over="ignore"):  # the huge block's errors |k·d − x| overflow to inf
            q = gguf.quants.quantize(x.reshape(1, -1), QT.MXFP4)
        y = gguf.quants.dequantize(q, QT.MXFP4).reshape(-1)
        golden["quantize"].append({
            "name": name,
            "x_bits": bits(x),
            "blocks_hex": q.tobytes().hex(),
            "dequant_bits": bits(y),
        })
    golden["release"] = release_case(rng)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "golden.json").write_text(dump(golden), encoding="utf-8")
    print(f"golden.json: {len(golden['quantize'])} quantize cases, "
          f"{(OUT / 'golden.json').stat().st_size} bytes")


if __name__ == "__main__":
    main()
