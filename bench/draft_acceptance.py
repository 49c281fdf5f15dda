#!/usr/bin/env python3
"""Speculative decoding on the built-in model: MTP drafts vs prompt lookup vs none, same output.

Runs every prompt of models/moela-demo/mtp_prompts.json (held out of the MTP layer's training) through
`moela generate --json --temperature 0 --max-tokens 64` once per mode (`--draft mtp`, `ngram`, `none`),
the modes alternating within each round (A/B/C, then B/C/A, ...) so that a busy machine's noise falls on all
of them alike. Fails unless the three modes give the same token ids for every prompt. Prints per mode: total
generated tokens, generation seconds (prompt to last token, from the JSON; model loading excluded), tok/s,
the drafts' acceptance rate (accepted / drafted, the engine's counters) and tokens per decode step
((decode_rows + accepted) / decode_rows).

Usage: bench/draft_acceptance.py [--bin target/release/moela] [--model models/moela-demo] [--repeat N]
       [--json]     (Python 3 standard library only)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODES = ["mtp", "ngram", "none"]


def run(binary: str, model: str, prompt: str, mode: str, extra: list[str]) -> tuple[dict, float]:
    cmd = [binary, "generate", "--model", model, "--prompt", prompt, "--json", "--temperature", "0",
           "--max-tokens", "64", "--draft", mode, *extra]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd[:3])} … --draft {mode} failed ({p.returncode}):\n{p.stderr}")
    return json.loads(p.stdout.rstrip("\n").rsplit("\n", 1)[-1]), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=str(REPO / "target" / "release" / "moela"))
    ap.add_argument("--model", default=str(REPO / "models" / "moela-demo"))
    ap.add_argument("--prompts", default=str(REPO / "models" / "moela-demo" / "mtp_prompts.json"))
    ap.add_argument("--repeat", type=int, default=1, help="passes over the prompts")
    ap.add_argument("--json", action="store_true", help="print the totals as one JSON object")
    ap.add_argument("extra", nargs="*", help="more `moela generate` arguments (after --)")
    a = ap.parse_args()
    prompts = json.loads(Path(a.prompts).read_text())["prompts"]
    tot = {m: {"tokens": 0, "seconds": 0.0, "wall": 0.0, "drafted": 0, "accepted": 0, "rows": 0} for m in MODES}
    rnd = 0
    for _ in range(a.repeat):
        for prompt in prompts:
            order = MODES[rnd % 3:] + MODES[:rnd % 3]
            rnd += 1
            ids = {}
            for mode in order:
                out, wall = run(a.bin, a.model, prompt, mode, a.extra)
                d = out["draft"]
                if d["mode"] != mode:
                    sys.exit(f"asked for --draft {mode}, the engine ran {d['mode']}")
                t = tot[mode]
                t["tokens"] += out["usage"]["completion_tokens"]
                t["seconds"] += out["seconds"]
                t["wall"] += wall
                t["drafted"] += d["drafted_tokens"]
                t["accepted"] += d["accepted_tokens"]
                t["rows"] += d["decode_rows"]
                ids[mode] = out["token_ids"]
            if len({tuple(v) for v in ids.values()}) != 1:
                sys.exit(f"the modes disagree on {prompt!r}: {ids}")
    res = {}
    for m, t in tot.items():
        res[m] = {
            "tokens": t["tokens"], "seconds": round(t["seconds"], 3), "wall_seconds": round(t["wall"], 3),
            "tok_per_s": round(t["tokens"] / t["seconds"], 1) if t["seconds"] else None,
            "drafted": t["drafted"], "accepted": t["accepted"],
            "acceptance": round(t["accepted"] / t["drafted"], 4) if t["drafted"] else None,
            "tokens_per_step": round((t["rows"] + t["accepted"]) / t["rows"], 3) if t["rows"] else None,
        }
    if a.json:
        print(json.dumps({"prompts": len(prompts), "repeat": a.repeat, "identical_tokens": True, "modes": res}))
        return
    print(f"{len(prompts)} prompts × {a.repeat}, greedy, 64 tokens max: token ids identical across modes")
    print("| mode | tokens | seconds | tok/s | drafted | accepted | acceptance | tokens/step |")
    print("|---|---|---|---|---|---|---|---|")
    for m, r in res.items():
        acc = f"{100 * r['acceptance']:.1f} %" if r["acceptance"] is not None else "–"
        print(f"| {m} | {r['tokens']} | {r['seconds']:.2f} | {r['tok_per_s']} | {r['drafted']} | {r['accepted']} "
              f"| {acc} | {r['tokens_per_step']} |")


if __name__ == "__main__":
    main()
