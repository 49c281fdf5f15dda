#!/usr/bin/env bash
# Guard: `moela bench` with default flags must be within 5 % of an explicit `--threads $(nproc)`.
# (Issue 21: the default path once re-read the CPU count from /proc and /sys on every kernel
# call and ran 10x slower than an explicit count; every benchmark passed --threads, so none saw it.)
#
#   bench/default_threads_guard.sh [MOELA_BIN] [MODEL]      (defaults: target/release/moela, built-in model)
#
# Per round: PAIRS alternating runs of each configuration (default, explicit), each
# `moela bench -r 8` (prefill 128 tokens, decode 64); a configuration's figure is its best
# timed sample over the round (the one least disturbed by whatever else the machine does: on a
# shared VM single samples of the same binary scatter by +-20 %). A round passes when the defaults'
# best prefill and decode are both >= (1 - TOLERANCE) of the explicit ones. The guard fails
# only when ROUNDS rounds in a row fail, so one noisy minute on a shared VM does not fail CI,
# while a real slowdown (it was 10x) fails every round.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
BIN="${1:-$HERE/../target/release/moela}"
MODEL="${2:-}"
PAIRS="${PAIRS:-6}"
ROUNDS="${ROUNDS:-5}"
TOLERANCE="${TOLERANCE:-0.05}"
THREADS="$(nproc)"
[[ -x "$BIN" ]] || { echo "default_threads_guard: no moela binary at $BIN" >&2; exit 2; }
MODEL_ARGS=()
[[ -n "$MODEL" ]] && MODEL_ARGS=(--model "$MODEL")

run() { # extra args...; prints "best-prefill best-decode threads"
    "$BIN" bench "${MODEL_ARGS[@]}" --prompt-tokens 128 --gen-tokens 64 -r 8 --json "$@" \
        | python3 -c 'import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); print(max(d["prefill_tok_s_samples"]), max(d["decode_tok_s_samples"]), d["threads"])'
}

for round in $(seq 1 "$ROUNDS"); do
    dp=0; dd=0; ep=0; ed=0; dthreads=?
    for _ in $(seq 1 "$PAIRS"); do
        read -r p d t < <(run)
        dthreads=$t
        dp=$(python3 -c "print(max($dp, $p))"); dd=$(python3 -c "print(max($dd, $d))")
        read -r p d _ < <(run --threads "$THREADS")
        ep=$(python3 -c "print(max($ep, $p))"); ed=$(python3 -c "print(max($ed, $d))")
    done
    verdict=$(python3 -c "
t = 1 - $TOLERANCE
ok = $dp >= t * $ep and $dd >= t * $ed
print('ok' if ok else 'slow')")
    printf 'round %d: defaults (%s threads) prefill %.0f decode %.0f tok/s; --threads %s prefill %.0f decode %.0f tok/s (ratios %.3f, %.3f): %s\n' \
        "$round" "$dthreads" "$dp" "$dd" "$THREADS" "$ep" "$ed" \
        "$(python3 -c "print($dp / $ep)")" "$(python3 -c "print($dd / $ed)")" "$verdict"
    if [[ "$verdict" == ok ]]; then
        echo "default_threads_guard: defaults within ${TOLERANCE} of --threads $THREADS"
        exit 0
    fi
done
echo "default_threads_guard: FAILED: defaults more than ${TOLERANCE} slower than --threads $THREADS in $ROUNDS rounds" >&2
exit 1
