#!/usr/bin/env python3
"""Generate tests/fixtures/models/v4_mtp: the tiny DeepSeek-V4 fixture plus a random MTP layer.

transformers does not run DeepSeek-V4's MTP layer (its release ships it as `mtp.0.*`; transformers drops
it), so the reference here is the layer as DeepSeek's own inference code defines it (`MTPBlock` in the V4
release's inference/model.py), built from transformers' own DeepSeek-V4 modules in float64:

    e        = enorm(embed(t_{p+1}))                               (no position is zeroed)
    x_p[s]   = e_proj(e) + h_proj(hnorm(h_p[s]))                     for each of the hc_mult streams s
    y        = DeepseekV4DecoderLayer(layer_idx = num_hidden_layers)(x, positions p, sliding causal mask)
    logits_p = lm_head(norm(hc_head'(y)))                            (predicts t_{p+2}; hc_head' and norm
                                                                      are the MTP layer's, the head the model's)

where h_p is the main model's hc_mult residual streams after its last layer (the input of its hc_head).
The MTP block is a sliding-window layer (the release's compress_ratios gives the MTP layer 0) with routed
(not hash) experts.

The main model is the committed v4 fixture, unchanged (its tensors are copied byte for byte); the MTP
tensors (own seed; drawn and stored as make_v4_fixtures.py draws and stores a decoder layer's) are added in
the names Moela asks for: the block's as `model.layers.3.*` in transformers' names, and `model.layers.3.`
`{e_proj,h_proj,enorm,hnorm}.weight`, `shared_head.norm.weight`, `hc_head.{hc_fn,hc_base,hc_scale}` (the
release's `mtp.0.{e_proj,...,norm,hc_head_*}`). mtp_golden.json records, for the v4 golden's 300 scoring
tokens, the MTP NLL of t_{p+2} at every position, its argmax and margin, and the last row's logits.

Usage (from the repository root, in the reference environment of tools/requirements.txt):
    .venv/bin/python tools/make_v4_mtp_fixture.py
"""
from __future__ import annotations

import copy
import json
import math
import shutil
import sys
from collections import OrderedDict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_v4_fixtures as mv4  # noqa: E402  (sets HF_HUB_OFFLINE etc. before transformers loads)

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers.models.deepseek_v4 import modeling_deepseek_v4 as mdv4  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "models"
SRC = ROOT / "v4"
OUT = ROOT / "v4_mtp"
MTP_SEED = 4004


def mtp_config():
    """The v4 fixture's config with one more layer (the MTP block: sliding window, routed experts)."""
    args = copy.deepcopy(mv4.CONFIG)
    args["num_hidden_layers"] += 1
    args["layer_types"] = list(args["layer_types"]) + ["sliding_attention"]
    args["mlp_layer_types"] = list(args["mlp_layer_types"]) + ["moe"]
    return mdv4.DeepseekV4Config(**args)


def mtp_weights(cfg4) -> "tuple[OrderedDict, OrderedDict]":
    """(stored, exact) MTP tensors: the block drawn as make_v4_fixtures draws a decoder layer (from a 4-layer
    model's state dict, layer 3), the MTP extras beside it; stored rounded as make_v4_fixtures stores."""
    n, d, hc = cfg4.num_hidden_layers - 1, cfg4.hidden_size, cfg4.hc_mult
    drawn = mv4.draw_weights(MTP_SEED, cfg4)
    p = f"model.layers.{n}."
    exact = OrderedDict((k, v) for k, v in drawn.items() if k.startswith(p))
    g = torch.Generator().manual_seed(MTP_SEED + 1)

    def randn(*shape, std=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * std

    exact[p + "e_proj.weight"] = randn(d, d, std=1 / math.sqrt(d))
    exact[p + "h_proj.weight"] = randn(d, d, std=1 / math.sqrt(d))
    for k in ("enorm.weight", "hnorm.weight", "shared_head.norm.weight"):
        exact[p + k] = 1.0 + 0.3 * randn(d)
    exact[p + "hc_head.hc_fn"] = randn(hc, hc * d, std=1 / math.sqrt(hc * d))
    exact[p + "hc_head.hc_base"] = 0.5 * randn(hc)
    exact[p + "hc_head.hc_scale"] = 1.0 + 0.3 * randn(1)
    stored = OrderedDict()
    for k, v in exact.items():
        if v.dtype == torch.int64:
            stored[k] = v
            continue
        keep = torch.float32 if k.endswith(mv4.F32_SUFFIXES) else torch.bfloat16
        stored[k] = v.to(keep).contiguous()
    # The reference computes with the stored values.
    exact = OrderedDict((k, v if v.dtype == torch.int64 else v.to(torch.float64)) for k, v in stored.items())
    return stored, exact


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def build_block(cfg4, exact, n):
    """DeepseekV4DecoderLayer(layer_idx n) in float64 with the MTP block's weights, the modules transformers
    keeps in float32 (`_keep_in_fp32_modules_strict`) in float32 as in the reference model."""
    cfg = copy.deepcopy(cfg4)
    cfg._attn_implementation = "eager"
    cfg._experts_implementation = "eager"
    block = mdv4.DeepseekV4DecoderLayer(cfg, layer_idx=n).to(torch.float64)
    p = f"model.layers.{n}."
    state = {k[len(p):]: v for k, v in exact.items() if k.startswith(p) and k[len(p):] in block.state_dict()}
    res = block.load_state_dict(state, strict=True)
    assert not res.missing_keys and not res.unexpected_keys, res
    strict = mdv4.DeepseekV4PreTrainedModel._keep_in_fp32_modules_strict
    for name, t in list(block.named_parameters()) + list(block.named_buffers()):
        if any(key in name for key in strict) and t.dtype == torch.float64:
            t.data = t.data.float()
    return block.eval()


@torch.no_grad()
def main() -> None:
    cfg4 = mtp_config()
    n = cfg4.num_hidden_layers - 1
    stored, exact = mtp_weights(cfg4)

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    with safe_open(str(SRC / "model.safetensors"), "pt") as sf:
        main_stored = OrderedDict((k, sf.get_tensor(k)) for k in sf.keys())
    assert not set(main_stored) & set(stored)
    save_file({**main_stored, **stored}, str(OUT / "model.safetensors"), metadata={"format": "pt"})
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(SRC / f, OUT / f)

    model = mv4.load_reference(SRC)
    golden = json.loads((SRC / "golden.json").read_text())
    tokens = golden["nll_tokens"]
    t_len = len(tokens)
    ids = torch.tensor([tokens])
    # h_p: the main model's streams after its last layer (the input of its hc_head).
    captured = {}
    hook = model.model.hc_head.register_forward_hook(lambda mod, inp, out: captured.update(h=inp[0]))
    main_logits = model(input_ids=ids, use_cache=False).logits[0]
    hook.remove()
    h = captured["h"][0].to(torch.float64)  # [T, hc, D]
    # The positions, rotations and mask of a T-1 token pass, as the model builds them for its layers.
    kw = {}
    pre = model.model.layers[0].register_forward_pre_hook(lambda mod, a, k: kw.update(k), with_kwargs=True)
    model(input_ids=ids[:, :-1], use_cache=False)
    pre.remove()

    eps = cfg4.rms_norm_eps
    p = f"model.layers.{n}."
    emb = model.model.embed_tokens.weight.to(torch.float64)[torch.tensor(tokens[1:])]  # embed(t_{p+1})
    e = rms_norm(emb, exact[p + "enorm.weight"], eps) @ exact[p + "e_proj.weight"].T  # [T-1, D]
    hs = rms_norm(h[:-1], exact[p + "hnorm.weight"], eps) @ exact[p + "h_proj.weight"].T  # [T-1, hc, D]
    x = (hs + e.unsqueeze(1)).unsqueeze(0)  # [1, T-1, hc, D]
    block = build_block(cfg4, exact, n)
    y = block(
        x,
        input_ids=ids[:, 1:],
        position_embeddings=kw["position_embeddings"],
        position_ids=kw["position_ids"],
        attention_mask=kw["attention_mask"],
        cache=None,
    )[0]  # [T-1, hc, D]
    head = mdv4.DeepseekV4HyperHead(cfg4).to(torch.float64)
    head.hc_fn.data = exact[p + "hc_head.hc_fn"].float()
    head.hc_base.data = exact[p + "hc_head.hc_base"].float()
    head.hc_scale.data = exact[p + "hc_head.hc_scale"].float()
    collapsed = head(y.unsqueeze(0))[0].to(torch.float64)  # [T-1, D]
    logits = rms_norm(collapsed, exact[p + "shared_head.norm.weight"], eps) @ \
        model.lm_head.weight.to(torch.float64).T  # [T-1, V]
    lp = torch.log_softmax(logits, -1)
    nll = [float(-lp[i, tokens[i + 2]]) for i in range(t_len - 2)]
    top2 = logits.topk(2, -1)
    main_lp = torch.log_softmax(main_logits.to(torch.float64), -1)
    main_nll = [float(-main_lp[i, tokens[i + 1]]) for i in range(t_len - 1)]
    record = {
        "note": "MTP layer of tests/fixtures/models/v4_mtp on the v4 golden's nll_tokens, by "
                "tools/make_v4_mtp_fixture.py (DeepSeek's MTPBlock built from transformers 5.25's DeepSeek-V4 "
                "modules, float64). Row p: inputs h_p (the main model's streams before its hc_head) and "
                "t_{p+1}; mtp_nll[p] = -log p(t_{p+2}); mtp_argmax[p]; mtp_margin[p] = top1 - top2 logit; "
                "last_logits = row T-2.",
        "tokens": tokens,
        "main_nll_max_abs_diff_vs_v4_golden": float(max(abs(a - b) for a, b in zip(main_nll, golden["nll"]))),
        "mtp_nll": nll,
        "mtp_argmax": top2.indices[:, 0].tolist(),
        "mtp_margin": (top2.values[:, 0] - top2.values[:, 1]).tolist(),
        "last_logits": logits[-1].tolist(),
    }
    print("main model NLL vs the v4 golden:", record["main_nll_max_abs_diff_vs_v4_golden"])
    assert record["main_nll_max_abs_diff_vs_v4_golden"] < 1e-9
    (OUT / "mtp_golden.json").write_text(json.dumps(record) + "\n")
    print(f"wrote {OUT}: {len(stored)} MTP tensors, mean MTP NLL {sum(nll) / len(nll):.4f}, "
          f"min margin {min(record['mtp_margin']):.3g}")


if __name__ == "__main__":
    main()
