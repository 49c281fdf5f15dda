#!/usr/bin/env python3
"""Generate the tiny random Qwen2 and Llama fixtures (the R1-distill architectures) under
tests/fixtures/models/.

For every case this script
  1. generates random weights (fixed seed) in the Hugging Face checkpoint layout, rounds them to
     the stored dtype and writes a complete HF model directory (config.json, model.safetensors,
     the shared tiny tokenizer with DeepSeek-R1's chat template);
  2. rebuilds the model with transformers (Qwen2ForCausalLM / LlamaForCausalLM) in float64 from
     exactly the stored values, checks that a plain from_pretrained() of the directory computes
     the same, and records golden.json (next-token NLLs over 128 tokens, a 24-token greedy
     continuation, last-position logits) in the format of tools/make_model_fixtures.py, plus
     hidden.safetensors (per-layer residual stream for the first 16 positions);
  3. for the cases marked `gguf`, writes `model.gguf` with llama.cpp's `gguf` package the way
     llama.cpp's convert_hf_to_gguf.py lays such a model out: `qwen2` tensors as in the
     checkpoint; `llama` with q/k rows (weights and biases) permuted per head from HF's
     rotate-half layout to interleaved pairs (`LlamaModel.permute`), and Llama-3 RoPE scaling as
     the `rope_freqs.weight` tensor of per-frequency divisors.

It also checks that each fixture tests what it claims: dropping the RoPE scaling, enabling a
disabled sliding window, or disabling an enabled one must change the NLLs.

Usage (from the repository root; same environment as make_model_fixtures.py plus gguf):
    .venv/bin/pip install -r tools/requirements.txt -r tools/requirements-gguf.txt
    .venv/bin/python tools/make_dense_fixtures.py [--only CASE ...]

Nothing is downloaded. Deterministic: seeds are fixed.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import argparse
import copy
import json
import math
import shutil
import sys
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_model_fixtures as mmf  # noqa: E402  (shared helpers: NLL, greedy, sizes)

from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

REPO_ROOT = mmf.REPO_ROOT
DEFAULT_OUT = mmf.DEFAULT_OUT
R1_TEMPLATE = REPO_ROOT / "tests" / "fixtures" / "text" / "templates" / "deepseek-r1.jinja"
V = mmf.VOCAB_SIZE


@dataclass
class Case:
    name: str
    arch: str  # "qwen2" | "llama"
    seed: int
    dtype: str  # F32 | BF16 | F16
    config: dict  # HF config fields
    spelling: str = "official"  # "official" (as on the hub) or "transformers" (save_pretrained)
    gguf: bool = False
    # Counterfactual checks: config overrides that must change the NLLs by more than 1e-3.
    must_differ: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def dims(**over):
    d = dict(
        vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, hidden_act="silu", rms_norm_eps=1e-6,
        bos_token_id=0, eos_token_id=1, tie_word_embeddings=False, attention_dropout=0.0,
        initializer_range=0.02, use_cache=True,
    )
    d.update(over)
    return d


LLAMA3 = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=8.0,
              original_max_position_embeddings=1024, rope_type="llama3")

CASES = [
    Case(
        name="qwen2", arch="qwen2", seed=2001, dtype="BF16", gguf=True,
        config=dims(max_position_embeddings=2048, rope_theta=10000.0, use_sliding_window=False,
                    sliding_window=48, max_window_layers=1, use_mrope=False),
        must_differ={"sliding window 48 from layer 1 (disabled in the config)":
                     dict(use_sliding_window=True)},
        notes=["As R1-Distill-Qwen's config.json: q/k/v biases (Qwen2 always has them), GQA 4/2, "
               "untied head, sliding_window and max_window_layers present but use_sliding_window "
               "false, so no layer slides."],
    ),
    Case(
        name="qwen2_tied", arch="qwen2", seed=2002, dtype="F32", spelling="transformers",
        config=dims(max_position_embeddings=2048, tie_word_embeddings=True,
                    rope_parameters=dict(rope_type="default", rope_theta=1000000.0),
                    use_sliding_window=True, sliding_window=32, max_window_layers=3),
        must_differ={"sliding window 32 on every layer": dict(max_window_layers=0)},
        notes=["config.json as transformers 5 save_pretrained writes it (rope_parameters, "
               "layer_types, dtype). Tied embeddings: no lm_head.weight is stored. "
               "use_sliding_window is true but max_window_layers equals the layer count, so "
               "layer_types are all full_attention."],
    ),
    Case(
        name="qwen2_swa", arch="qwen2", seed=2003, dtype="F16",
        config=dims(max_position_embeddings=2048, rope_theta=10000.0, use_sliding_window=True,
                    sliding_window=24, max_window_layers=1),
        must_differ={"no sliding window": dict(use_sliding_window=False)},
        notes=["Sliding window 24 on layers 1 and 2 (max_window_layers 1): a query at position p "
               "sees keys p-23..p (masking_utils.sliding_window_overlay: kv > q - window)."],
    ),
    Case(
        name="llama", arch="llama", seed=2004, dtype="BF16", gguf=True,
        config=dims(max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=500000.0,
                    rope_scaling=dict(LLAMA3), attention_bias=False, mlp_bias=False,
                    pretraining_tp=1),
        must_differ={"no rope scaling": dict(rope_scaling=None)},
        notes=["As R1-Distill-Llama's config.json: GQA 4/2, Llama-3 RoPE scaling (factor 8, "
               "original 1024, low/high freq factors 1/8: with head_dim 16 and theta 5e5, "
               "frequencies 0-1 kept, 2-3 blended (smooth 0.73 and 0.03), 4-7 divided by 8)."],
    ),
    Case(
        name="llama_mqa_bias", arch="llama", seed=2005, dtype="F16", spelling="transformers",
        gguf=True,
        config=dims(max_position_embeddings=4096, num_key_value_heads=1, head_dim=24,
                    attention_bias=True, tie_word_embeddings=True,
                    rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
        notes=["MQA (one KV head for 4 query heads), head_dim 24 != hidden/heads, attention_bias "
               "(biases on q, k, v and o), tied embeddings, transformers-5 spelling."],
    ),
]


# ----------------------------------------------------------------------------------------------
# Weights and files
# ----------------------------------------------------------------------------------------------

def head_dim(cfg: dict) -> int:
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def has_qkv_bias(case: Case) -> bool:
    return case.arch == "qwen2" or case.config.get("attention_bias", False)


def make_weights(case: Case) -> "OrderedDict[str, torch.Tensor]":
    """Random float64 weights in the HF layout."""
    cfg = case.config
    g = torch.Generator().manual_seed(case.seed)
    D, I, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    H, KV, HD = cfg["num_attention_heads"], cfg["num_key_value_heads"], head_dim(cfg)
    tied = cfg["tie_word_embeddings"]

    def randn(*shape, std=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * std

    w = OrderedDict()
    # Tied: the embedding is also the head, so it gets the head's scale (logits std ~3).
    w["model.embed_tokens.weight"] = randn(V, D, std=3.2 / math.sqrt(D) if tied else 1.0)
    for l in range(L):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = 1.0 + 0.3 * randn(D)
        w[p + "post_attention_layernorm.weight"] = 1.0 + 0.3 * randn(D)
        for n, rows, cols in (("q", H * HD, D), ("k", KV * HD, D), ("v", KV * HD, D),
                              ("o", D, H * HD)):
            w[p + f"self_attn.{n}_proj.weight"] = randn(rows, cols, std=1.0 / math.sqrt(cols))
        if has_qkv_bias(case):
            w[p + "self_attn.q_proj.bias"] = randn(H * HD, std=0.5)
            w[p + "self_attn.k_proj.bias"] = randn(KV * HD, std=0.5)
            w[p + "self_attn.v_proj.bias"] = randn(KV * HD, std=0.5)
        if case.arch == "llama" and cfg.get("attention_bias", False):
            w[p + "self_attn.o_proj.bias"] = randn(D, std=0.5)
        w[p + "mlp.gate_proj.weight"] = randn(I, D, std=1.0 / math.sqrt(D))
        w[p + "mlp.up_proj.weight"] = randn(I, D, std=1.0 / math.sqrt(D))
        w[p + "mlp.down_proj.weight"] = randn(D, I, std=1.0 / math.sqrt(I))
    w["model.norm.weight"] = 1.0 + 0.3 * randn(D)
    if not tied:
        w["lm_head.weight"] = randn(V, D, std=3.2 / math.sqrt(D))
    return OrderedDict(sorted(w.items(), key=lambda kv: mmf.sort_key(kv[0])))


def store(case: Case, master):
    """(stored tensors, float64 view of exactly the stored values). Biases and norms are
    rounded like everything else (an HF checkpoint stores one dtype)."""
    dt = mmf.TORCH_DTYPES[case.dtype]
    stored = OrderedDict((k, v.to(dt).contiguous()) for k, v in master.items())
    exact = OrderedDict((k, v.to(torch.float64)) for k, v in stored.items())
    return stored, exact


STORED_TORCH_DTYPE = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
CLASSES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}


def write_config(case: Case, out: Path) -> dict:
    cfg = dict(case.config)
    if case.spelling == "official":
        d = dict(cfg, architectures=[CLASSES[case.arch]], model_type=case.arch,
                 torch_dtype=STORED_TORCH_DTYPE[case.dtype])
        for k in ("rope_theta",):
            if k in d and float(d[k]).is_integer() and case.arch == "qwen2":
                d[k] = int(d[k])  # the Qwen hub configs write an integer
        (out / "config.json").write_text(json.dumps(dict(sorted(d.items())), indent=2) + "\n")
    else:
        cls = transformers.Qwen2Config if case.arch == "qwen2" else transformers.LlamaConfig
        conf = cls(**cfg, dtype=mmf.TORCH_DTYPES[case.dtype])
        conf.architectures = [CLASSES[case.arch]]
        conf.save_pretrained(str(out))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 0, "eos_token_id": 1, "do_sample": False}, indent=2) + "\n")
    return json.loads((out / "config.json").read_text())


def write_tokenizer(tok_dir: Path, out: Path) -> None:
    """The shared tiny tokenizer, with DeepSeek-R1's chat template (the R1 distills ship it)
    and add_bos_token as the R1-Distill tokenizer_config.json files have it."""
    shutil.copyfile(tok_dir / "tokenizer.json", out / "tokenizer.json")
    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg["add_bos_token"] = True
    cfg["chat_template"] = R1_TEMPLATE.read_text(encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")


def check_config(case: Case, out: Path):
    """What transformers reads must be what the case intends."""
    c = AutoConfig.from_pretrained(str(out))
    assert c.model_type == case.arch
    want = case.config
    for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "tie_word_embeddings",
              "max_position_embeddings"):
        assert getattr(c, k) == want[k], (case.name, k, getattr(c, k), want[k])
    assert (getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads) == head_dim(want)
    return c


# ----------------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------------

def build(case: Case, cfg, exact, dtype=torch.float64):
    cfg = copy.deepcopy(cfg)
    cfg._attn_implementation = "sdpa"
    cls = transformers.Qwen2ForCausalLM if case.arch == "qwen2" else transformers.LlamaForCausalLM
    torch.manual_seed(0)
    model = cls(cfg).to(dtype)
    sd = {k: v.to(dtype) for k, v in exact.items()}
    res = model.load_state_dict(sd, strict=False)
    missing = [k for k in res.missing_keys if not (cfg.tie_word_embeddings and k == "lm_head.weight")]
    assert not missing and not res.unexpected_keys, res
    if cfg.tie_word_embeddings:
        model.tie_weights()
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.eval()
    return model


def variant(case: Case, loaded, exact, **over):
    """The reference with config fields overridden (for the counterfactual checks)."""
    d = dict(case.config, **over)
    cls = transformers.Qwen2Config if case.arch == "qwen2" else transformers.LlamaConfig
    return build(case, cls(**d), exact)


@torch.no_grad()
def hidden_states(model, ids):
    out = model(input_ids=torch.tensor([ids]), use_cache=False, output_hidden_states=True)
    hs = [h[0] for h in out.hidden_states]
    return hs, out.logits[0]


# ----------------------------------------------------------------------------------------------
# GGUF (llama.cpp's layout)
# ----------------------------------------------------------------------------------------------

def permute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py `LlamaModel.permute`: within each head, rows
    [first half | second half] (HF rotate-half) become interleaved pairs
    (gguf row 2i+j = HF row j·half+i)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def llama3_rope_factors(cfg: dict) -> list:
    """convert_hf_to_gguf.py `LlamaModel.generate_extra_tensors`: per-frequency divisors."""
    rs = cfg["rope_scaling"]
    base, dim = cfg["rope_theta"], head_dim(cfg)
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs["original_max_position_embeddings"]
    lo_wl, hi_wl = old / lo, old / hi
    out = []
    for f in freqs:
        wl = 2 * math.pi / float(f)
        if wl < hi_wl:
            out.append(1.0)
        elif wl > lo_wl:
            out.append(factor)
        else:
            s = (old / wl - lo) / (hi - lo)
            out.append(1.0 / ((1.0 - s) / factor + s))
    return out


def write_gguf(case: Case, stored, out: Path, tok_dir: Path) -> dict:
    import gguf
    import make_gguf_fixtures as mgf
    from gguf import GGMLQuantizationType as QT

    cfg = case.config
    A = case.arch
    D, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    H, KV, HD = cfg["num_attention_heads"], cfg["num_key_value_heads"], head_dim(cfg)
    path = out / "model.gguf"
    w = gguf.GGUFWriter(str(path), A)
    w.add_name(case.name)
    w.add_block_count(L)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(D)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    theta = cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    if "head_dim" in cfg:  # TextModel.set_gguf_parameters
        w.add_key_length(HD)
        w.add_value_length(HD)
    if A == "llama":  # LlamaModel.set_gguf_parameters
        w.add_vocab_size(V)
        w.add_rope_dimension_count(HD)
    ftype = {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
             "BF16": gguf.LlamaFileType.MOSTLY_BF16}[case.dtype]
    w.add_file_type(ftype)

    tok = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    tokens, types = mgf.vocab_like_llama_cpp(tok, V)
    w.add_tokenizer_model("gpt2")
    # The tiny tokenizer splits like DeepSeek-V3 (a real R1-Distill-Qwen file says
    # deepseek-r1-qwen, R1-Distill-Llama llama-bpe).
    w.add_tokenizer_pre("deepseek-v3")
    w.add_token_list(tokens)
    w.add_token_types(types)
    gguf.SpecialVocab(str(out), load_merges=True, n_vocab=V).add_to_gguf(w, quiet=True)

    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    layer_names = {
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "self_attn.o_proj.bias": "attn_output.bias",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    for n in "qkv":
        for s in ("weight", "bias"):
            layer_names[f"self_attn.{n}_proj.{s}"] = f"attn_{n}.{s}"
    permuted = []
    for name, t in stored.items():
        if name.startswith("model.layers."):
            _, _, l, rest = name.split(".", 3)
            gname = f"blk.{l}.{layer_names[rest]}"
        else:
            gname = names[name]
        arr = t.to(torch.float32).numpy()
        if A == "llama" and (".q_proj." in name or ".k_proj." in name):
            arr = permute_rope_rows(arr, H if ".q_proj." in name else KV)
            permuted.append(gname)
        if arr.ndim == 1:  # norms and biases are F32 (prepare_tensors)
            w.add_tensor(gname, np.ascontiguousarray(arr, dtype=np.float32))
        elif case.dtype == "F32":
            w.add_tensor(gname, np.ascontiguousarray(arr, dtype=np.float32))
        elif case.dtype == "F16":
            w.add_tensor(gname, np.ascontiguousarray(arr.astype(np.float16)))
        else:  # exact: every value is a bf16
            w.add_tensor(gname, gguf.quants.quantize(np.ascontiguousarray(arr), QT.BF16),
                         raw_dtype=QT.BF16)
    factors = None
    if A == "llama" and (cfg.get("rope_scaling") or {}).get("rope_type") == "llama3":
        factors = llama3_rope_factors(cfg)
        w.add_tensor("rope_freqs.weight", np.array(factors, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = gguf.GGUFReader(str(path))
    return dict(file=path.name, size=path.stat().st_size, tensors=len(r.tensors),
                permuted_rows=permuted, rope_freqs=factors, pre="deepseek-v3",
                converter_rules="llama.cpp convert_hf_to_gguf.py: LlamaModel.permute for llama q/k "
                                "weights and biases; rope_freqs from generate_extra_tensors; "
                                "norms and biases F32; qwen2 tensors unchanged")


# ----------------------------------------------------------------------------------------------
# One case
# ----------------------------------------------------------------------------------------------

def run_case(case: Case, out_root: Path, tok_dir: Path) -> dict:
    out = out_root / case.name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    master = make_weights(case)
    stored, exact = store(case, master)
    save_file(dict(stored), str(out / "model.safetensors"), metadata={"format": "pt"})
    with safe_open(str(out / "model.safetensors"), "pt") as sf:
        assert set(sf.keys()) == set(stored)
        for k in sf.keys():
            assert torch.equal(sf.get_tensor(k).view(torch.uint8), stored[k].view(torch.uint8)), k
    written = write_config(case, out)
    write_tokenizer(tok_dir, out)
    loaded = check_config(case, out)

    model = build(case, loaded, exact)
    g = torch.Generator().manual_seed(case.seed + 7)
    nll_tokens = torch.randint(0, V, (mmf.N_NLL,), generator=g).tolist()
    logits = mmf.logits_of(model, nll_tokens)
    nll = mmf.nll_of(logits, nll_tokens)

    # A plain from_pretrained() of the directory computes exactly the same.
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float64, attn_implementation="sdpa")
    cross = float((mmf.logits_of(hf.eval(), nll_tokens) - logits).abs().max())
    assert cross < 1e-12, (case.name, cross)
    del hf

    differ = {}
    for what, over in case.must_differ.items():
        alt = variant(case, loaded, exact, **over)
        d = float((mmf.nll_of(mmf.logits_of(alt, nll_tokens), nll_tokens) - nll).abs().max())
        assert d > 1e-3, (case.name, what, d)
        differ[what] = d

    chosen = None
    for attempt in range(64):
        gp = torch.Generator().manual_seed(case.seed * 100 + attempt)
        prompt = [0] + torch.randint(2, V, (mmf.N_PROMPT - 1,), generator=gp).tolist()
        toks, margins = mmf.greedy(model, prompt, mmf.N_GREEDY)
        if min(margins) > mmf.MIN_MARGIN:
            cand = (prompt, toks, margins)
            chosen = chosen or cand
            if len(set(toks)) >= 4:
                chosen = cand
                break
    assert chosen is not None, "no prompt with a safe greedy margin"
    prompt, toks, margins = chosen
    with torch.no_grad():
        model.generation_config.eos_token_id = None
        gen = model.generate(torch.tensor([prompt]), max_new_tokens=mmf.N_GREEDY, do_sample=False,
                             pad_token_id=1, use_cache=True)
    assert gen[0, len(prompt):].tolist() == toks, case.name

    hs, lg = hidden_states(model, nll_tokens[:mmf.N_HIDDEN])
    L = case.config["num_hidden_layers"]
    hid = OrderedDict()
    for i in range(L):
        hid[f"hidden.{i}"] = hs[i].to(torch.float32).contiguous()
    hid["final_norm"] = hs[L].to(torch.float32).contiguous()
    hid["logits"] = lg.to(torch.float32).contiguous()
    save_file(dict(hid), str(out / "hidden.safetensors"), metadata={"format": "pt"})

    m32 = build(case, loaded, exact, torch.float32)
    logits32 = mmf.logits_of(m32, nll_tokens).to(torch.float64)
    f32_diff = {"max_abs_logit": float((logits32 - logits).abs().max()),
                "max_abs_nll": float((mmf.nll_of(logits32, nll_tokens) - nll).abs().max())}

    gguf_info = write_gguf(case, stored, out, tok_dir) if case.gguf else None

    golden = OrderedDict(
        case=case.name,
        reference=OrderedDict(
            transformers=transformers.__version__, torch=torch.__version__.split("+")[0],
            dtype="float64", model_class=type(model).__name__, attn_implementation="sdpa",
            weights="exactly the stored values",
            precision_note=("transformers computes RMSNorm and the RoPE angles in float32 even in "
                            "a float64 model, so goldens carry ~1e-7 relative noise"),
            from_pretrained_check=f"from_pretrained(dtype=float64) max |dlogit| = {cross:.1e}",
            counterfactual_max_abs_nll=differ,
            notes=case.notes,
        ),
        **mmf.score_fields(nll_tokens, nll, prompt, toks, margins, logits, f32_diff),
        gguf=gguf_info,
        hidden_note=(f"F32 [16, hidden] tensors for positions 0..15 of nll_tokens: hidden.0 = embedding "
                     f"output, hidden.l = output of decoder layer l-1 (l = 1..{L - 1}); final_norm = "
                     f"model.norm(last layer output); logits [16, vocab]."),
    )
    (out / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    size = sum(p.stat().st_size for p in out.iterdir())
    return dict(case=case.name, arch=case.arch, dtype=case.dtype, config=written, size=size,
                margin=min(margins), mean_nll=float(nll.mean()), f32=f32_diff, differ=differ,
                gguf=gguf_info)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--only", nargs="*", help="case names to (re)generate")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    if transformers.__version__ != "5.23.0" or not torch.__version__.startswith("2.15.0"):
        print(f"warning: pinned versions are transformers 5.23.0 / torch 2.15.0, found "
              f"{transformers.__version__} / {torch.__version__}", file=sys.stderr)
    tok_dir = args.out / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        sys.exit(f"{tok_dir} is missing: run tools/make_model_fixtures.py first")
    unknown = set(args.only or []) - {c.name for c in CASES}
    if unknown:
        sys.exit(f"unknown case(s): {sorted(unknown)}")
    rows = []
    for case in CASES:
        if args.only and case.name not in args.only:
            continue
        print(f"== {case.name}", flush=True)
        rows.append(run_case(case, args.out, tok_dir))
    print()
    hdr = f"{'case':<16} {'arch':<6} {'dtype':<5} {'size':>8}  {'margin':>7} {'nll':>6} {'f32 dlogit':>10}  gguf"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        g = f"{r['gguf']['size'] / 1024:.0f}KB" if r["gguf"] else "-"
        print(f"{r['case']:<16} {r['arch']:<6} {r['dtype']:<5} {r['size'] / 1024:>6.0f}KB  "
              f"{r['margin']:>7.3f} {r['mean_nll']:>6.2f} {r['f32']['max_abs_logit']:>10.1e}  {g}")
        for what, d in r["differ"].items():
            print(f"    {what}: max |dNLL| {d:.3f}")


if __name__ == "__main__":
    main()
