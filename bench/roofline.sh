#!/usr/bin/env bash
# Decode against the memory roofline: how much of this machine's streaming read bandwidth each
# engine's decode uses, measured in the same minutes (the VM's bandwidth drifts: 30-35 GB/s
# most of the time, bursts above 50).
#
#   bench/roofline.sh FILE.gguf [ROUNDS]         (default 3 rounds)
#
# Per round: streaming read (kernel_bench --stream 5: 1 GiB, all cores, median of 5), then
#   moela bench --model FILE --prompt-tokens 1 --gen-tokens 32 --json
#   streaming read again, then
#   llama-bench -m FILE -t T -p 0 -n 32 -r 1 -o json
#   and a third streaming read.
# Each engine's decode GB/s is tok/s × the weight bytes a token reads (bench/bytes_per_token.py:
# every tensor once, one embedding row, expert_used_count/expert_count of the routed experts),
# its share the GB/s over the mean of the reads around it. The last row holds the medians (the
# ratio column: median of the per-round ratios). A bandwidth-bound decode sits near 100 %: if
# llama.cpp runs at share s, Moela can be about 1/s times faster at most. Single rounds scatter
# widely on this VM (memory bandwidth changes within seconds; shares above 100 % happen), so
# use 5 rounds or more.
#
# Environment: MOELA_BENCH_DIR (default /work/scratch/bench: llama.cpp build and venv, as made by
# bench/compare_llamacpp.sh), THREADS (default 2), PIN (taskset CPU list, default 0-(THREADS-1)).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG_TAG=roofline
# shellcheck source=bench/common.sh
source "$HERE/common.sh"
FILE="${1:?usage: $0 FILE.gguf [ROUNDS]}"
ROUNDS="${2:-3}"
[[ -f "$FILE" ]] || { log "no such file: $FILE"; exit 1; }

LLAMA_BIN="$("$HERE/build_llamacpp.sh" | tail -1)"
ensure_venv
(cd "$REPO" && cargo build --release --quiet && cargo build --release --quiet -p moela-kernels --example kernel_bench)
MOELA="$REPO/target/release/moela"
PROBE="$REPO/target/release/examples/kernel_bench"
BYTES="$("$VENV/bin/python" "$HERE/bytes_per_token.py" "$FILE")"

stream() { "${TASKSET[@]}" "$PROBE" --stream 5 | awk '{print $(NF-1)}'; }
json_field() { python3 -c "import json,sys; d=json.load(sys.stdin); d=d[0] if isinstance(d,list) else d; print(d['$1'])"; }

echo "file: $FILE ($(python3 -c "print(f'{$BYTES/1e9:.3f}')") GB read per token), $THREADS threads, moela $(cd "$REPO" && git rev-parse --short HEAD)"
echo
echo "| time (UTC) | stream GB/s (before/between/after) | Moela tok/s | Moela GB/s (share) | llama.cpp tok/s | llama.cpp GB/s (share) | Moela / llama.cpp |"
echo "|---|---|---|---|---|---|---|"
ROWS="$(mktemp)"
trap 'rm -f "$ROWS"' EXIT
for _ in $(seq "$ROUNDS"); do
    s1="$(stream)"
    m="$("${TASKSET[@]}" "$MOELA" bench --model "$FILE" "${MOELA_THREADS[@]}" --prompt-tokens 1 --gen-tokens 32 --json 2>/dev/null | json_field decode_tok_s)"
    s2="$(stream)"
    l="$(LD_LIBRARY_PATH="$LLAMA_BIN" "${TASKSET[@]}" "$LLAMA_BIN/llama-bench" -m "$FILE" -t "$THREADS" -p 0 -n 32 -r 1 -o json 2>/dev/null | json_field avg_ts)"
    s3="$(stream)"
    echo "$s1 $s2 $s3 $m $l" >>"$ROWS"
    python3 - "$(date -u +%T)" "$s1" "$s2" "$s3" "$m" "$l" "$BYTES" <<'PY'
import sys
t, s1, s2, s3, m, l, b = sys.argv[1], *map(float, sys.argv[2:])
mg, lg = m * b / 1e9, l * b / 1e9
print(f"| {t} | {s1:.1f} / {s2:.1f} / {s3:.1f} | {m:.2f} | {mg:.1f} ({100 * mg / ((s1 + s2) / 2):.0f} %) "
      f"| {l:.2f} | {lg:.1f} ({100 * lg / ((s2 + s3) / 2):.0f} %) | {m / l:.2f}× |")
PY
done
python3 - "$ROWS" "$BYTES" <<'PY'
import statistics as st, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1])]
b = float(sys.argv[2]) / 1e9
med = lambda xs: st.median(xs)
m, l = med([r[3] for r in rows]), med([r[4] for r in rows])
ms = med([r[3] * b / ((r[0] + r[1]) / 2) for r in rows])
ls = med([r[4] * b / ((r[1] + r[2]) / 2) for r in rows])
ratio = med([r[3] / r[4] for r in rows])
print(f"| **median of {len(rows)}** | | **{m:.2f}** | {m * b:.1f} ({100 * ms:.0f} %) | **{l:.2f}** "
      f"| {l * b:.1f} ({100 * ls:.0f} %) | **{ratio:.2f}×** |")
PY
