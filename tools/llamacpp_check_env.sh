# Sourced (from the repository root) by tools/check_llamacpp_deepseek32.sh and
# check_llamacpp_deepseek4.sh: the tools they need, a temporary directory $TMP (removed on exit)
# holding the fixtures' tokenizer, and `complete FILE`, llama.cpp's 32-token greedy completion of
# one fixed prompt.
#
# Needs: the reference venv of tools/requirements-v32.txt ($REF_PY), the converter venv of
# tools/requirements-llamacpp-convert.txt ($CONV_PY), llama.cpp b11434 built by
# bench/build_llamacpp.sh ($LLAMA_BIN) and its source tree ($LLAMA_SRC), target/debug/moela.
set -euo pipefail
REF_PY=${REF_PY:?python of a venv with tools/requirements-v32.txt}
CONV_PY=${CONV_PY:?python of a venv with tools/requirements-llamacpp-convert.txt}
LLAMA_BIN=${LLAMA_BIN:?llama.cpp bin directory (bench/build_llamacpp.sh prints it)}
LLAMA_SRC=${LLAMA_SRC:?llama.cpp source directory (the one holding convert_hf_to_gguf.py)}
MOELA=${MOELA:-target/debug/moela}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cp -r tests/fixtures/models/tokenizer "$TMP/"

complete() {
    "$LLAMA_BIN/llama-completion" -m "$1" -p "The quick brown fox jumps over the lazy dog and then" \
        -n 32 --temp 0 -no-cnv --no-warmup -t 2 2>/dev/null
}
