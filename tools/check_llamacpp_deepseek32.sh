#!/usr/bin/env bash
# llama.cpp reads what `moela quantize` writes for DeepSeek-V3.2 (`deepseek32`): a V3.2 model is
# written both by llama.cpp's own converter and by Moela (BF16, the stored type, so both files hold
# the same weights), and llama.cpp's greedy completion must be byte-identical on the two; Moela's
# Q8_0 file must load and generate too.
#
# The committed fixture (tests/fixtures/models/v32) has index_head_dim 16, which llama.cpp b11434
# cannot run (its indexer applies a Hadamard rotation of at least 64 dims: GGML_ASSERT in
# ggml_mul_mat), so this builds the same case with index_head_dim 64 in a temporary directory.
#
# Needs what tools/llamacpp_check_env.sh says ($REF_PY, $CONV_PY, $LLAMA_BIN, $LLAMA_SRC, $MOELA).
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/llamacpp_check_env.sh

"$REF_PY" - "$TMP" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "tools")
import make_v32_fixtures as m
m.CONFIG["index_head_dim"] = 64  # llama.cpp's smallest indexer rotation
m.CONFIG["index_n_heads"] = 8
print("seed", m.run(Path(sys.argv[1]))["seed"])
EOF
"$CONV_PY" tools/make_gguf_converter_fixtures.py --llama-cpp "$LLAMA_SRC" --case v32 \
    --src "$TMP/v32" --out "$TMP/converter-bf16.gguf"
"$MOELA" quantize --model "$TMP/v32" --type bf16 --out "$TMP/moela-bf16.gguf"
"$MOELA" quantize --model "$TMP/v32" --type q8_0 --out "$TMP/moela-q8_0.gguf"
a=$(complete "$TMP/converter-bf16.gguf" | md5sum)
b=$(complete "$TMP/moela-bf16.gguf" | md5sum)
echo "llama.cpp on the converter's file: $a"
echo "llama.cpp on Moela's file:         $b"
[[ "$a" == "$b" ]] || { echo "FAIL: llama.cpp generates differently from Moela's file"; exit 1; }
complete "$TMP/moela-q8_0.gguf" >/dev/null
echo "OK: identical greedy output; Moela's Q8_0 file runs"
