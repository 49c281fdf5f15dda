#!/usr/bin/env bash
# Moela and llama.cpp (`--repack 0`) on a model larger than the memory left, alternating
# (shared/benchmarks.md, "Memory smaller than the model"; issue 17 item 5).
#   bench/memory_capped.sh [MOELA_BIN] [MODEL] [PIN_GIB] [ROUNDS]
# Pins PIN_GIB (default 16) GiB of anonymous memory in a helper process, drops the page cache
# before every run (needs root: /proc/sys/vm/drop_caches), and prints per run the prefill and
# decode rates and the bytes read from storage (`/usr/bin/time` %I, 512-byte blocks). First the
# file's own read rate: cold (`dd`, caches dropped) and from the page cache.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
LOG_TAG=memory_capped
# shellcheck source=bench/common.sh
source "$HERE/common.sh"
BIN="${1:-$REPO/target/release/moela}"
MODEL="${2:-$DIR/models/v2lite-q4_0.gguf}"
PIN_GIB="${3:-16}"
ROUNDS="${4:-2}"
LLAMA_BENCH="${LLAMA_BENCH:-$DIR/llb-11434/bin/llama-bench}"
for f in "$BIN" "$MODEL" "$LLAMA_BENCH"; do
    [[ -e "$f" ]] || { log "missing $f (bench/build_llamacpp.sh, bench/make_bench_model.py, cargo build --release)"; exit 1; }
done
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }

drop
log "file read rate (cold, then page cache):"
dd if="$MODEL" of=/dev/null bs=4M 2>&1 | tail -1
dd if="$MODEL" of=/dev/null bs=4M 2>&1 | tail -1

python3 - "$PIN_GIB" > "$DIR/pin.out" <<'PY' &
import mmap, sys, time
n = int(sys.argv[1]) << 30
m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
chunk = b"\x01" * (64 << 20)
for off in range(0, n, len(chunk)):
    m[off:off + len(chunk)] = chunk
print("pinned", flush=True)
while True:
    time.sleep(3600)
PY
PIN_PID=$!
trap 'kill $PIN_PID 2>/dev/null || true' EXIT
until grep -q pinned "$DIR/pin.out" 2>/dev/null; do sleep 1; done
log "$PIN_GIB GiB pinned; $(grep MemAvailable /proc/meminfo)"

for round in $(seq "$ROUNDS"); do
    drop
    echo "round $round moela: $(/usr/bin/time -f "read_512B=%I wall_s=%e" \
        "${TASKSET[@]}" "$BIN" bench --model "$MODEL" "${MOELA_THREADS[@]}" --prompt-tokens 16 --gen-tokens 8 -r 1 \
        --draft none 2>&1 | grep -E "prefill|decode|experts|page-ins|read_512B" | tr '\n' ' ')"
    drop
    echo "round $round llama.cpp --repack 0: $(/usr/bin/time -f "read_512B=%I wall_s=%e" \
        "${TASKSET[@]}" "$LLAMA_BENCH" -m "$MODEL" -p 16 -n 8 -t "$THREADS" --repack 0 -r 1 2>&1 \
        | grep -E "pp16|tg8|read_512B" | awk -F'|' 'NF > 2 { printf "%s %s ", $(NF-2), $(NF-1); next } { print }')"
done
