#!/usr/bin/env python3
"""Generate tests/fixtures/models/v3_mtp: the tiny V3 fixture plus a random Multi-Token Prediction layer.

transformers does not run DeepSeek's MTP layer (it drops `model.layers.{num_hidden_layers}.*`), so the
reference here is the layer as DeepSeek-V3 defines it (§2.2 of its report) and as serving engines compute
it, built from transformers' own modules in float64:

    x_p = eh_proj([enorm(embed(t_{p+1})) ; hnorm(h_p)])      (the embedding zeroed at position 0)
    y   = DeepseekV3DecoderLayer(layer_idx = num_hidden_layers)(x, positions p, causal)
    logits_p = lm_head(shared_head.norm(y_p))                 (predicts t_{p+2}; the head is the model's)

where h_p is the main model's final residual stream (the input of its final norm) at position p.

It re-creates the "v3" case of make_model_fixtures.py exactly (same seed, same stored values: checked
against the committed fixture), adds the MTP tensors (own seed, stored F16 like the rest), and records
mtp_golden.json: for the main golden's 128 scoring tokens, the MTP NLL of t_{p+2} at every position, its
argmax, and the last position's logits.

Usage (from the repository root, in the reference environment of tools/requirements.txt):
    .venv/bin/python tools/make_mtp_fixture.py
"""
from __future__ import annotations

import json
import math
import shutil
import sys
from collections import OrderedDict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_model_fixtures as mmf  # noqa: E402  (sets HF_HUB_OFFLINE etc. before transformers loads)

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as mdv3  # noqa: E402

SRC = mmf.DEFAULT_OUT / "v3"
OUT = mmf.DEFAULT_OUT / "v3_mtp"
MTP_SEED = 2003


def mtp_master(cfg: dict) -> "OrderedDict[str, torch.Tensor]":
    """Random float64 weights of the MTP layer, in the DeepSeek checkpoint layout."""
    n, d = cfg["num_hidden_layers"], cfg["hidden_size"]
    g = torch.Generator().manual_seed(MTP_SEED)

    def randn(*shape, std=1.0, mean=0.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * std + mean

    def norm_w(k):
        return 1.0 + 0.3 * randn(k)

    p = f"model.layers.{n}."
    w = OrderedDict()
    w[p + "enorm.weight"] = norm_w(d)
    w[p + "hnorm.weight"] = norm_w(d)
    w[p + "eh_proj.weight"] = randn(d, 2 * d, std=1 / math.sqrt(2 * d))
    w[p + "shared_head.norm.weight"] = norm_w(d)
    w[p + "input_layernorm.weight"] = norm_w(d)
    w[p + "post_attention_layernorm.weight"] = norm_w(d)
    w[p + "self_attn.q_a_layernorm.weight"] = norm_w(cfg["q_lora_rank"])
    w[p + "self_attn.kv_a_layernorm.weight"] = norm_w(cfg["kv_lora_rank"])
    e = cfg["n_routed_experts"]
    w[p + "mlp.gate.weight"] = randn(e, d, std=1.5 / math.sqrt(d))
    w[p + "mlp.gate.e_score_correction_bias"] = randn(e, std=0.2, mean=-0.35)
    with_mtp = dict(cfg, num_hidden_layers=n + 1)
    for name, r, c in mmf.linear_names(with_mtp):
        if name.startswith(p):
            w[name + ".weight"] = randn(r, c, std=1 / math.sqrt(c))
    return w


def block_state(cfg: dict, exact: dict) -> dict:
    """The MTP block's tensors in transformers' DeepseekV3DecoderLayer layout (fused experts)."""
    n = cfg["num_hidden_layers"]
    p = f"model.layers.{n}."
    sd = {}
    for name, t in exact.items():
        if name.startswith(p) and ".mlp.experts." not in name:
            sd[name[len(p):]] = t
    for k in ("enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight"):
        sd.pop(k)
    ep = p + "mlp.experts."
    experts = range(cfg["n_routed_experts"])
    sd["mlp.experts.gate_up_proj"] = torch.stack(
        [torch.cat([exact[ep + f"{e}.gate_proj.weight"], exact[ep + f"{e}.up_proj.weight"]], 0) for e in experts])
    sd["mlp.experts.down_proj"] = torch.stack([exact[ep + f"{e}.down_proj.weight"] for e in experts])
    return sd


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


@torch.no_grad()
def main() -> None:
    case = next(c for c in mmf.CASES if c.name == "v3")
    cfg = case.config
    master = mmf.make_master_weights(case)
    stored, exact = mmf.store_weights(case, master)
    # The committed fixture holds exactly these values.
    with safe_open(str(SRC / "model.safetensors"), "pt") as sf:
        assert set(sf.keys()) == set(stored), "the v3 fixture changed: rerun make_model_fixtures.py first"
        for k in sf.keys():
            assert torch.equal(sf.get_tensor(k).view(torch.uint8), stored[k].view(torch.uint8)), k
    m_stored, m_exact = mmf.store_weights(case, mtp_master(cfg))
    stored.update(m_stored)
    exact.update(m_exact)

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    all_stored = OrderedDict(sorted(stored.items(), key=lambda kv: mmf.sort_key(kv[0])))
    save_file(dict(all_stored), str(OUT / "model.safetensors"), metadata={"format": "pt"})
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(SRC / f, OUT / f)

    loaded_cfg = mmf.check_config_semantics(case, OUT)
    main_exact = OrderedDict((k, v) for k, v in exact.items() if k not in m_exact)
    model = mmf.build_reference(case, loaded_cfg, main_exact, torch.float64)
    ref_cfg = model.config
    ref_cfg._attn_implementation = "sdpa"  # float64 softmax (eager takes it in float32)
    n = cfg["num_hidden_layers"]
    block = mdv3.DeepseekV3DecoderLayer(ref_cfg, layer_idx=n).to(torch.float64)
    res = block.load_state_dict({k: v.to(torch.float64) for k, v in block_state(cfg, exact).items()}, strict=True)
    assert not res.missing_keys and not res.unexpected_keys, res
    block.mlp.gate.e_score_correction_bias.data = block.mlp.gate.e_score_correction_bias.data.float()
    block.eval()

    golden = json.loads((SRC / "golden.json").read_text())
    tokens = golden["nll_tokens"]
    ids = torch.tensor([tokens])
    # h_p: the input of the main model's final norm.
    captured = {}
    hook = model.model.norm.register_forward_hook(lambda mod, inp, out: captured.update(h=inp[0]))
    main_logits = model(input_ids=ids, use_cache=False).logits[0]
    hook.remove()
    h = captured["h"][0]  # [T, D]
    t_len = len(tokens)
    eps = cfg["rms_norm_eps"]
    p = f"model.layers.{n}."
    emb = exact["model.embed_tokens.weight"][torch.tensor(tokens[1:])]  # embed(t_{p+1}), p = 0..T-2
    emb[0] = 0.0  # position 0
    x = torch.cat([rms_norm(emb, exact[p + "enorm.weight"], eps), rms_norm(h[:-1], exact[p + "hnorm.weight"], eps)], -1)
    x = x @ exact[p + "eh_proj.weight"].T
    positions = torch.arange(t_len - 1).unsqueeze(0)
    cos_sin = model.model.rotary_emb(x.unsqueeze(0), positions)
    mask = torch.full((t_len - 1, t_len - 1), float("-inf"), dtype=torch.float64).triu(1)[None, None]
    out = block(x.unsqueeze(0), attention_mask=mask, position_ids=positions, position_embeddings=cos_sin)
    y = (out[0] if isinstance(out, tuple) else out)[0]
    logits = rms_norm(y, exact[p + "shared_head.norm.weight"], eps) @ exact["lm_head.weight"].T  # [T-1, V]
    lp = torch.log_softmax(logits, -1)
    nll = [float(-lp[i, tokens[i + 2]]) for i in range(t_len - 2)]
    top2 = logits.topk(2, -1)
    record = {
        "note": "MTP layer of tests/fixtures/models/v3_mtp on golden.json's nll_tokens of the v3 fixture, by "
                "tools/make_mtp_fixture.py (transformers 5.25 modules, float64). Row p: inputs h_p (main "
                "model's final residual) and t_{p+1}; mtp_nll[p] = -log p(t_{p+2}); mtp_argmax[p]; "
                "mtp_margin[p] = top1 - top2 logit; last_logits = row T-2.",
        "tokens": tokens,
        "main_nll_max_abs_diff_vs_v3_golden": float(max(
            abs(a - b) for a, b in zip(mmf.nll_of(main_logits, tokens).tolist(), golden["nll"]))),
        "mtp_nll": nll,
        "mtp_argmax": top2.indices[:, 0].tolist(),
        "mtp_margin": (top2.values[:, 0] - top2.values[:, 1]).tolist(),
        "last_logits": logits[-1].tolist(),
    }
    print("main model NLL vs the v3 golden:", record["main_nll_max_abs_diff_vs_v3_golden"])
    assert record["main_nll_max_abs_diff_vs_v3_golden"] < 1e-9
    (OUT / "mtp_golden.json").write_text(json.dumps(record) + "\n")
    print(f"wrote {OUT}: {len(m_stored)} MTP tensors, mean MTP NLL {sum(nll) / len(nll):.4f}")


if __name__ == "__main__":
    main()
