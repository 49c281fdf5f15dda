#!/usr/bin/env bash
# llama.cpp reads what `moela quantize` writes for DeepSeek-V4 (`deepseek4`): a V4 checkpoint in
# DeepSeek's release format (FP8 projections with ue8m0 scales, FP4 experts) is written both by
# llama.cpp's own converter and by Moela with `--type q8_0` (the converter's choice for FP8 weights;
# the FP4 experts become MXFP4 in both), and llama.cpp's greedy completion must be byte-identical on
# the two files; Moela's file converted again from the converter's GGUF, and its BF16 file, must load
# and generate too.
#
# The committed fixture (tests/fixtures/models/v4_release) has index_head_dim 16, which llama.cpp
# b11434 cannot run: its indexer cache always rotates keys by a Hadamard matrix of at least 64 dims
# (llama-kv-cache.cpp, n_rot_k = 64 for DeepSeek indexers), and the reshape fails with
# `ggml.c:3739: GGML_ASSERT(ggml_nelements(a) == ne0*ne1) failed` under
# `llama_model_deepseek4::graph::build_attention_impl`. So this builds the same case (same seed, same
# generator) with index_head_dim 64 in a temporary directory; nothing committed changes.
#
# Needs what tools/llamacpp_check_env.sh says ($REF_PY, $CONV_PY, $LLAMA_BIN, $LLAMA_SRC, $MOELA).
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/llamacpp_check_env.sh

"$REF_PY" - "$TMP" <<'EOF'
import copy
import sys
from pathlib import Path
sys.path.insert(0, "tools")
import make_v4_fixtures as m
out = Path(sys.argv[1])
m.RELEASE_CONFIG["index_head_dim"] = 64  # llama.cpp's smallest indexer rotation
cfg = m.DeepseekV4Config(**copy.deepcopy(m.RELEASE_CONFIG))
stored = m.release_tensors(m.draw_weights(m.RELEASE_FIRST_SEED, cfg), cfg)
m.write_release_dir(m.RELEASE_CONFIG, stored, out / "v4_release", out / "tokenizer")
print("seed", m.RELEASE_FIRST_SEED, "index_head_dim", cfg.index_head_dim)
EOF
"$CONV_PY" tools/make_gguf_converter_fixtures.py --llama-cpp "$LLAMA_SRC" --case v4_release \
    --src "$TMP/v4_release" --out "$TMP/converter.gguf"
"$MOELA" quantize --model "$TMP/v4_release" --type q8_0 --out "$TMP/moela-q8_0.gguf"
"$MOELA" quantize --model "$TMP/converter.gguf" --type q8_0 --out "$TMP/moela-from-gguf.gguf"
"$MOELA" quantize --model "$TMP/v4_release" --type bf16 --out "$TMP/moela-bf16.gguf"
a=$(complete "$TMP/converter.gguf" | md5sum)
b=$(complete "$TMP/moela-q8_0.gguf" | md5sum)
c=$(complete "$TMP/moela-from-gguf.gguf" | md5sum)
echo "llama.cpp on the converter's file:                $a"
echo "llama.cpp on Moela's file (from the release):     $b"
echo "llama.cpp on Moela's file (from the converter's): $c"
[[ "$a" == "$b" && "$a" == "$c" ]] || { echo "FAIL: llama.cpp generates differently from Moela's file"; exit 1; }
complete "$TMP/moela-bf16.gguf" >/dev/null
echo "OK: identical greedy output; Moela's BF16 file runs"
