#!/usr/bin/env bash
# Side-by-side speed of Moela and llama.cpp on the same GGUF file (DeepSeek-V2-Lite or Qwen2-1.5B
# shape, random weights), same machine, one engine right after the other. See shared/benchmarks.md.
#
#   bench/compare_llamacpp.sh [q4_0|q8_0|all] [deepseek2|qwen2|qwen2-untied|deepseek4]
#                                                     (defaults: q4_0, deepseek2)
#
# Model shape (2nd argument, or BENCH_ARCH; files under $MOELA_BENCH_DIR/models/):
#   deepseek2     DeepSeek-V2-Lite, 16 B MoE                    v2lite-TYPE.gguf
#   qwen2         Qwen2-1.5B, tied embeddings                   qwen2-1.5b-TYPE.gguf
#   qwen2-untied  R1-Distill-Qwen-1.5B (separate output.weight) qwen2-1.5b-untied-TYPE.gguf
#   deepseek4     DeepSeek-V4-Flash, 2 layers (CSA + HCA)       v4flash-mxfp4.gguf (the type argument is
#                 ignored: the file is what llama.cpp's converter writes from a release-format checkpoint
#                 made by bench/make_v4_bench_model.py — MXFP4 experts, Q8_0 for the FP8 weights, BF16,
#                 F32; the converter runs in $MOELA_BENCH_DIR/convvenv with
#                 tools/requirements-llamacpp-convert.txt). Its table adds each engine's cache size.
#
# Steps: build llama.cpp if missing (bench/build_llamacpp.sh), make the bench model if missing
# (bench/make_bench_model.py --arch ...), `cargo build --release`, then for each file:
#   llama-bench -m FILE -t 2 -p 128,512 -n 32 -r REPS -o json            (prefill pp128/pp512, tg32 at depth 0)
#   llama-bench -m FILE -t 2 -p 0 -n 32 -d DEPTH -r REPS -o json          (tg32 at depth DEPTH)
#   moela bench --model FILE --prompt-tokens 128 --gen-tokens 32 -r REPS --json
#   moela bench ... --prompt-tokens 512 ...
#   moela bench ... --prompt-tokens 1 --gen-tokens 32                   (decode from an empty cache, as tg32)
#   moela bench ... --prompt-tokens 128 --gen-tokens 32 --context DEPTH ...
# and prints a markdown table (each engine's mean ± sd over REPS, after its own warm-up).
#
# Environment:
#   MOELA_BENCH_DIR  scratch dir for llama.cpp, the venv and the models (default /work/scratch/bench)
#   THREADS          threads for both engines (default 2)
#   REPS             repetitions (default 3)
#   DEPTH            context(s) for the decode-at-context rows, comma-separated (default 4096; 0 skips
#                    them: each engine first prefills DEPTH tokens, minutes at 2 threads)
#   PIN              CPU list for taskset (default 0-(THREADS-1); empty disables pinning)
#   MOELA_BIN        moela binary (default: target/release/moela, built here)
#   MOELA_EXTRA      extra arguments for `moela bench` (e.g. "--ctx 4608")
#   SKIP_MOELA=1 / SKIP_LLAMA=1   run only one side
#   BENCH_ARCH       model shape when no 2nd argument is given (default deepseek2)
# Raw outputs go to $MOELA_BENCH_DIR/results/<timestamp>-<type>/ (deepseek2) or
# $MOELA_BENCH_DIR/results/<timestamp>-<file prefix>-<type>/ (other shapes).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG_TAG=compare
# shellcheck source=bench/common.sh
source "$HERE/common.sh"
REPS="${REPS:-3}"
DEPTH="${DEPTH:-4096}"
MOELA_EXTRA="${MOELA_EXTRA:-}"
SKIP_MOELA="${SKIP_MOELA:-0}"
SKIP_LLAMA="${SKIP_LLAMA:-0}"

USAGE="usage: $0 [q4_0|q8_0|mxfp4|all] [deepseek2|qwen2|qwen2-untied|deepseek4]"
WHICH="${1:-q4_0}"
case "$WHICH" in
    q4_0|q8_0|mxfp4) TYPES=("$WHICH") ;;
    all) TYPES=(q4_0 q8_0) ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    *) echo "$USAGE" >&2; exit 2 ;;
esac
SHAPE="${2:-${BENCH_ARCH:-deepseek2}}"
case "$SHAPE" in
    deepseek2) PREFIX=v2lite; GEN_ARGS=(--arch deepseek2); LABEL="" ;;
    qwen2) PREFIX=qwen2-1.5b; GEN_ARGS=(--arch qwen2); LABEL="qwen2-1.5b " ;;
    qwen2-untied) PREFIX=qwen2-1.5b-untied; GEN_ARGS=(--arch qwen2 --untied-output); LABEL="qwen2-1.5b-untied " ;;
    deepseek4) PREFIX=v4flash; GEN_ARGS=(); LABEL="v4flash "; TYPES=(mxfp4) ;;
    *) echo "$USAGE" >&2; exit 2 ;;
esac
IFS=, read -r -a DEPTHS <<< "$DEPTH"
[[ "${DEPTHS[0]}" != 0 ]] || DEPTHS=()
# results dir suffix: unchanged (<type>) for deepseek2, <prefix>-<type> otherwise
RES_PREFIX=""
[[ "$SHAPE" == deepseek2 ]] || RES_PREFIX="$PREFIX-"

# --- llama.cpp ---------------------------------------------------------------------------------
LLAMA_BIN=""
if [[ "$SKIP_LLAMA" != 1 ]]; then
    LLAMA_BIN="$("$HERE/build_llamacpp.sh" | tail -1)"
    [[ -x "$LLAMA_BIN/llama-bench" ]] || { log "llama-bench not found in '$LLAMA_BIN'"; exit 1; }
fi

# --- bench models --------------------------------------------------------------------------------
for t in "${TYPES[@]}"; do
    f="$DIR/models/$PREFIX-$t.gguf"
    if [[ ! -f "$f" && "$SHAPE" == deepseek4 ]]; then
        # a release-format checkpoint, then llama.cpp's own converter (its source tree comes with
        # build_llamacpp.sh; torch etc. in a venv of their own)
        ensure_venv
        CONV="$DIR/convvenv"
        [[ -x "$CONV/bin/python" ]] || python3 -m venv "$CONV"
        "$CONV/bin/python" -c "import torch, transformers" 2>/dev/null || \
            "$CONV/bin/pip" install -q -r "$REPO/tools/requirements-llamacpp-convert.txt" >&2
        REL="$DIR/models/v4flash-release"
        log "making $REL, then $f by llama.cpp's converter"
        nice -n 10 "$VENV/bin/python" "$HERE/make_v4_bench_model.py" "$REL" >&2
        TREE="$(ls -d "$DIR"/src/*/llama.cpp | head -1)"
        nice -n 10 "$CONV/bin/python" "$TREE/convert_hf_to_gguf.py" "$REL" --outfile "$f" >&2
        rm -rf "$REL"
    elif [[ ! -f "$f" ]]; then
        ensure_venv
        log "making $f"
        nice -n 10 "$VENV/bin/python" "$HERE/make_bench_model.py" "${GEN_ARGS[@]}" --type "$t" >&2
    fi
done

# --- Moela ---------------------------------------------------------------------------------------
MOELA=""
MOELA_NOTE=""
if [[ "$SKIP_MOELA" != 1 ]]; then
    if [[ -n "${MOELA_BIN:-}" ]]; then
        MOELA="$MOELA_BIN"
    else
        log "cargo build --release"
        if (cd "$REPO" && nice -n 10 cargo build --release --quiet >&2); then
            MOELA="$REPO/target/release/moela"
        else
            MOELA_NOTE="\`cargo build --release\` failed: Moela columns left empty"
            log "$MOELA_NOTE"
        fi
    fi
    if [[ -z "$MOELA" ]]; then
        :
    elif ! "$MOELA" bench --help >/dev/null 2>&1; then
        MOELA_NOTE="\`moela bench\` is not available in this build ($MOELA): Moela columns left empty"
        log "$MOELA_NOTE"
        MOELA=""
    fi
fi
MOELA_COMMIT="$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(cd "$REPO" && git status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    MOELA_COMMIT="$MOELA_COMMIT+dirty"
fi
if [[ -n "${MOELA_BIN:-}" ]]; then
    MOELA_COMMIT="$MOELA_COMMIT (repo; binary given as MOELA_BIN=$MOELA_BIN)"
fi

# --- runs ----------------------------------------------------------------------------------------
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
for t in "${TYPES[@]}"; do
    FILE="$DIR/models/$PREFIX-$t.gguf"
    OUT="$DIR/results/$STAMP-$RES_PREFIX$t"
    mkdir -p "$OUT"
    log "== $t: $FILE -> $OUT"

    if [[ -n "$LLAMA_BIN" ]]; then
        log "llama-bench pp128,pp512,tg32 (r=$REPS)"
        "${TASKSET[@]}" "$LLAMA_BIN/llama-bench" -m "$FILE" -t "$THREADS" -p 128,512 -n 32 -r "$REPS" \
            -o json > "$OUT/llama.json" 2> "$OUT/llama.err" || { log "llama-bench failed, see $OUT/llama.err"; }
        for d in "${DEPTHS[@]}"; do
            log "llama-bench tg32 @ d$d (r=$REPS; prefills $d tokens once first)"
            "${TASKSET[@]}" "$LLAMA_BIN/llama-bench" -m "$FILE" -t "$THREADS" -p 0 -n 32 -d "$d" -r "$REPS" \
                -o json > "$OUT/llama-depth-$d.json" 2> "$OUT/llama-depth-$d.err" || { log "llama-bench -d failed, see $OUT/llama-depth-$d.err"; }
            if [[ "$SHAPE" == deepseek4 ]]; then
                # the cache llama.cpp allocates for a context of d tokens (its verbose load log)
                "${TASKSET[@]}" "$LLAMA_BIN/llama-completion" -m "$FILE" -p hello -n 1 -c "$d" -t "$THREADS" -no-cnv \
                    --no-warmup -v > /dev/null 2> "$OUT/llama-cache-$d.err" || log "llama-completion -c $d failed"
            fi
        done
    fi

    if [[ -n "$MOELA" ]]; then
        run_moela() {  # name, extra args...
            local name="$1"; shift
            # shellcheck disable=SC2086
            if ! "${TASKSET[@]}" "$MOELA" bench --model "$FILE" "${MOELA_THREADS[@]}" "$@" -r "$REPS" --json $MOELA_EXTRA \
                    > "$OUT/moela-$name.json" 2> "$OUT/moela-$name.err"; then
                log "moela bench $name failed: $(tail -1 "$OUT/moela-$name.err")"
                rm -f "$OUT/moela-$name.json"
            fi
        }
        log "moela bench pp128/tg32 (r=$REPS, after its warm-up)"
        run_moela pp128 --prompt-tokens 128 --gen-tokens 32
        log "moela bench pp512/tg32"
        run_moela pp512 --prompt-tokens 512 --gen-tokens 32
        log "moela bench tg32 from an empty cache"
        run_moela ctx1 --prompt-tokens 1 --gen-tokens 32
        for d in "${DEPTHS[@]}"; do
            log "moela bench tg32 @ context $d"
            run_moela "depth-$d" --prompt-tokens 128 --gen-tokens 32 --context "$d"
        done
    fi

    CPU="$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1)"
    python3 - "$OUT" "$FILE" "$LABEL$t" "$MOELA_COMMIT" "$(nproc)" "$CPU" "$THREADS" "$REPS" "$DEPTH" \
        "${TASKSET[*]:-none}" "$MOELA_NOTE" <<'PY' | tee "$OUT/table.md"
import json, os, re, sys
out, file, qt, commit, nproc, cpu, threads, reps, depth, pin, note = sys.argv[1:]
depths = [int(d) for d in depth.split(",") if int(d) > 0]

def load_llama(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return []

ll = load_llama(os.path.join(out, "llama.json"))
for d in depths:
    ll += load_llama(os.path.join(out, f"llama-depth-{d}.json"))
build = next((f"{r.get('build_number')} ({r.get('build_commit')})" for r in ll), "n/a")

def llama(n_prompt, n_gen, n_depth):
    for r in ll:
        if r.get("n_prompt") == n_prompt and r.get("n_gen") == n_gen and r.get("n_depth", 0) == n_depth:
            return r.get("avg_ts"), r.get("stddev_ts")
    return None, None

def moela(name, key):
    try:
        with open(os.path.join(out, f"moela-{name}.json")) as f:
            obj = json.loads(f.read().strip().splitlines()[-1])
        return float(obj[key]), obj.get(f"{key}_sd")
    except (OSError, ValueError, IndexError, KeyError, TypeError):
        return None, None

def fmt(v, sd=None):
    if v is None:
        return "—"
    return f"{v:.2f} ± {sd:.2f}" if sd is not None else f"{v:.2f}"

rows = [
    ("prefill pp128 (tok/s)", llama(128, 0, 0), moela("pp128", "prefill_tok_s")),
    ("prefill pp512 (tok/s)", llama(512, 0, 0), moela("pp512", "prefill_tok_s")),
    ("decode tg32 @ ctx 0 (tok/s)", llama(0, 32, 0), moela("ctx1", "decode_tok_s")),
    ("decode tg32 after 128 prompt tokens (tok/s)", llama(0, 32, 0), moela("pp128", "decode_tok_s")),
]
for d in depths:
    rows.append((f"decode tg32 @ ctx {d} (tok/s)", llama(0, 32, d), moela(f"depth-{d}", "decode_tok_s")))

def llama_cache_mib(d):
    """Every buffer llama.cpp's verbose load log sizes for a d-token context: the KV caches
    (`llama_kv_cache: size = X MiB`) and DeepSeek-V4's compressor states."""
    try:
        text = open(os.path.join(out, f"llama-cache-{d}.err"), errors="replace").read()
    except OSError:
        return None
    kv = [float(m) for m in re.findall(r"llama_kv_cache: size =\s*([0-9.]+) MiB", text)]
    st = [float(m) for m in re.findall(r"llama_dsv4_comp_state: .*? size =\s*([0-9.]+) MiB", text)]
    return sum(kv) + sum(st) if kv else None

cache_rows = []
for d in depths:
    lc = llama_cache_mib(d)
    bpt, _ = moela(f"depth-{d}", "kv_bytes_per_token")
    # plus what a sequence keeps outside the blocks (DeepSeek-V4's window state), as llama.cpp's
    # figure includes its compressor states
    ws, _ = moela(f"depth-{d}", "kv_window_state_bytes_per_sequence")
    if lc is not None or bpt is not None:
        mc = (bpt * d + (ws or 0)) / 2**20 if bpt is not None else None
        cache_rows.append((f"cache for {d} tokens (MiB)", (lc, None), (mc, None)))

size = os.path.getsize(file) if os.path.exists(file) else 0
print(f"### {qt}: Moela vs llama.cpp\n")
print(f"- file: `{file}` ({size / 1e9:.2f} GB)")
print(f"- llama.cpp build: {build}")
print(f"- Moela commit: {commit}")
print(f"- machine: {cpu}, nproc {nproc}; threads {threads}; pinned: {pin}; shared machine (quote ratios)")
print(f"- both: mean ± sd over {reps} reps after the engine's own warm-up "
      f"(llama-bench -r {reps}; moela bench -r {reps})")
print(f"- Moela 'ctx 0' decode follows a 1-token prompt; the next row decodes after its 128-token prompt "
      f"(llama.cpp's column repeats its tg32)")
if note:
    print(f"- note: {note}")
print()
print("| metric | llama.cpp | Moela | Moela / llama.cpp |")
print("|---|---|---|---|")
for name, (lv, lsd), (mv, msd) in rows + cache_rows:
    ratio = f"{mv / lv:.2f}×" if (lv and mv) else "—"
    print(f"| {name} | {fmt(lv, lsd)} | {fmt(mv, msd)} | {ratio} |")
print()
PY
    log "raw results in $OUT"
done
