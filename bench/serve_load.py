#!/usr/bin/env python3
"""Aggregate decode throughput and time to first token of a running `moela serve`, at several
concurrency levels, with the official `openai` client (streaming chat completions, greedy).

    moela serve --port 8080 --max-batch 64 &          # built-in model, or --model FILE
    python bench/serve_load.py --base-url http://127.0.0.1:8080/v1 --streams 1 4 16 64

Prints one markdown row per level: streams, aggregate generated tok/s, per-stream tok/s, TTFT p50/p90/p99.
Every request asks for exactly --max-tokens tokens (ignore_eos is not an OpenAI field, so the prompt is
chosen to make the model talk; the count is taken from `usage`).
"""
import argparse
import statistics
import threading
import time

from openai import OpenAI


def one(client, model, prompt, max_tokens, out):
    t0 = time.perf_counter()
    ttft = None
    n = 0
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if ttft is None and chunk.choices:
            d = chunk.choices[0].delta
            if d.content or getattr(d, "reasoning_content", None):
                ttft = time.perf_counter() - t0
        if chunk.usage:
            n = chunk.usage.completion_tokens
    out.append((ttft if ttft is not None else time.perf_counter() - t0, n, time.perf_counter() - t0))


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    ap.add_argument("--model", default="moela")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt", default="Write a Python function that reverses a string.")
    a = ap.parse_args()
    client = OpenAI(base_url=a.base_url, api_key="none", max_retries=0, timeout=600)
    print("| streams | aggregate tok/s | per-stream tok/s | TTFT p50 ms | TTFT p90 ms | TTFT p99 ms |")
    print("|---|---|---|---|---|---|")
    for s in a.streams:
        out = []
        threads = [threading.Thread(target=one, args=(client, a.model, a.prompt, a.max_tokens, out)) for _ in range(s)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        toks = sum(n for _, n, _ in out)
        ttfts = [x * 1e3 for x, _, _ in out]
        per = statistics.mean(n / d for _, n, d in out if d > 0)
        print(f"| {s} | {toks / wall:.1f} | {per:.1f} | {pct(ttfts, 50):.0f} | {pct(ttfts, 90):.0f} | {pct(ttfts, 99):.0f} |")


if __name__ == "__main__":
    main()
