#!/usr/bin/env python3
"""Train the Multi-Token Prediction (MTP) layer of Moela's built-in demo model (models/moela-demo/), on CPU.

The main model stays frozen: its weights, its file `model.safetensors` and its goldens do not change. This
script adds DeepSeek-V3's first MTP layer (`model.layers.5.*`, `num_nextn_predict_layers: 1`), which Moela
uses to draft tokens for speculative decoding (`--draft mtp`). The layer computes, at main position p, from
the main model's final residual h_p (the input of `model.norm`) and the next token t_{p+1}:

    x_p = eh_proj([enorm(embed(t_{p+1})) ; hnorm(h_p)])      (the embedding zeroed at position 0)
    y   = DeepseekV3DecoderLayer(layer_idx = 5)(x, positions p, causal)    (MoE, like layers 1-4)
    logits_p = lm_head(shared_head.norm(y_p))                 (predicts t_{p+2}; embed and lm_head: the model's)

built from transformers' own modules exactly as tools/make_mtp_fixture.py builds the float64 reference that
Moela's MTP layer is tested against, so what is trained here is what Moela runs.

Objective: self-distillation. Greedy speculative decoding accepts the draft argmax(MTP_p) exactly when it
equals the main model's argmax at p+1, so the layer is trained to match the frozen model's next-token
distribution at p+1: KL(main_{p+1} || MTP_p), plus `--ce-weight` times DeepSeek's MTP cross-entropy on the
true t_{p+2} (default 0: on text the model did not write, the true token and the model's choice disagree).

Initialisation: the block is a copy of layer 4 (the last main layer, the one whose output the head reads),
`shared_head.norm` a copy of `model.norm`, enorm/hnorm ones, and eh_proj = [0 | I]: at step 0 the layer is
"one more layer 4 applied to the normalised final residual", a working language-model layer whose logits
are already close to the model's own (it predicts roughly t_{p+1} again) instead of noise. The zero
embedding half is not a dead start: its gradient, (dL/dx) enorm(embed(t_{p+1}))^T, is non-zero from the first
step, so the layer learns at once how to use the next token; a random half would only add noise to a good
start.

Training text (local files only, nothing downloaded; see DATA.md): the Python 3.11 standard library of this
machine and the 20 Rust crates of the demo model's own training data (from the cargo registry), with the same
exclusions (`colorsys.py` and `either`'s `src/into_either.rs`, the held-out text, are not used); and chat
conversations rendered with the model's chat template from the instructions listed below, answered by the
frozen model itself (greedy), since at decode time the MTP layer drafts continuations of the model's own
text. The 20 prompts of `models/moela-demo/mtp_prompts.json` are held out of training (checked).

Stages (each skipped when its output exists, unless --force):
  data     tokenize the text, generate the chat answers with the frozen model -> WORK/data.pt
  train    AdamW, time-budgeted (--minutes), resumable from WORK/mtp_ckpt.pt; logs the held-out greedy
           acceptance (argmax MTP_p == argmax main_{p+1}) on heldout.txt and on the held-out chat answers
  export   WORK/mtp_ckpt.pt -> models/moela-demo/model-mtp.safetensors (BF16; the router's correction bias
           F32, as the main file stores it), model.safetensors.index.json, config.json
           num_nextn_predict_layers = 1; then the acceptance of the stored (BF16-rounded) layer

Usage (from the repository root, environment of tools/requirements-train.txt):
    nice -n 19 .venv-train/bin/python tools/train_demo_mtp.py --work /tmp/moela-demo-mtp [--minutes 20]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import math
import random
import sys
import time
from collections import OrderedDict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_demo_model as tdm  # noqa: E402  (offline environment variables, sources, layout helpers)

import torch  # noqa: E402
from torch import nn  # noqa: E402

DIR = tdm.DEFAULT_OUT
PROMPTS_FILE = DIR / "mtp_prompts.json"
MTP_FILE = "model-mtp.safetensors"
SEED = 4321
TRAIN = dict(seq_len=384, batch=4, lr=1e-3, min_lr_ratio=0.1, warmup_steps=20, weight_decay=0.01,
             betas=(0.9, 0.95), grad_clip=1.0, bias_update_speed=1e-3, p_chat_row=0.5,
             log_every=10, eval_every=100, ckpt_seconds=120)
ANSWER_TOKENS = 160      # greedy answer length of the training conversations
HELDOUT_ANSWER_TOKENS = 64  # as bench/draft_acceptance.sh generates them

# ----------------------------------------------------------------------------------------------
# Instructions (written for this script). Held-out prompts: models/moela-demo/mtp_prompts.json.
# ----------------------------------------------------------------------------------------------

PY_TASKS = """returns the sum of a list of numbers | returns the largest number in a list | reverses a list
counts the words in a sentence | checks whether a number is even | returns the average of a list of numbers
removes duplicates from a list | returns the factorial of a number | checks whether a string is a palindrome
returns the n-th Fibonacci number | counts the vowels in a string | converts a string to upper case
checks whether a number is prime | returns the smallest element of a list | merges two dictionaries
sorts a list of strings by length | returns the length of the longest word in a sentence
flattens a list of lists | returns the squares of the numbers in a list | joins a list of strings with commas
splits a string into words | counts how often each character occurs in a string | returns the last element of a list
checks whether a list is sorted | returns the greatest common divisor of two numbers | converts Celsius to Fahrenheit
reads a file and returns its lines | writes a string to a file | returns the keys of a dictionary sorted
removes the whitespace at both ends of a string | capitalizes the first letter of every word
checks whether two strings are anagrams | returns the product of a list of numbers | returns the digits of a number
converts a list of numbers to strings | filters the odd numbers out of a list | returns the index of an item in a list
counts the lines in a text file | checks whether a string contains only digits | returns the middle element of a list
replaces every space in a string with an underscore | converts a snake_case name to camelCase
returns the unique elements of a list in order | zips two lists into a dictionary | returns the cube of a number
computes the power of a number | checks whether a year is a leap year | returns the sum of the digits of a number
truncates a string to a given length | returns the first n prime numbers | rotates a list by k positions
returns the minimum and maximum of a list | checks whether a key is in a dictionary | swaps two variables
returns a list of the even numbers up to n | counts the uppercase letters in a string | parses a JSON string
formats a number with two decimals | returns the absolute difference of two numbers | checks whether a list is empty""".replace("\n", " | ")
PY_PHRASES = ["Write a Python function that {c}.", "Write a function in Python that {c}.",
              "Implement a Python function that {c}.", "How do I write a Python function that {c}?"]
RS_TASKS = """returns the sum of a slice of integers | returns the largest element of a vector | reverses a string
checks whether a number is prime | counts the words in a string | returns the factorial of a number
returns the n-th Fibonacci number | checks whether a string is a palindrome | removes duplicates from a vector
converts a string to upper case | returns the average of a slice of f64 values | splits a string on commas
returns the length of the longest line | parses an integer from a string | returns the minimum of two values
sorts a vector of strings | checks whether a vector is sorted | counts the vowels in a string""".replace("\n", " | ")
RS_PHRASES = ["Write a Rust function that {c}.", "Write a function in Rust that {c}.",
              "Implement a Rust function that {c}."]
PY_MODULES = """os sys json re math random datetime collections itertools functools pathlib shutil subprocess
argparse logging string textwrap time calendar csv hashlib base64 struct copy heapq bisect array enum
dataclasses typing abc contextlib operator statistics fractions decimal glob fnmatch tempfile pickle shelve
sqlite3 zlib gzip zipfile tarfile io codecs unicodedata difflib pprint inspect ast dis traceback warnings
threading queue socket selectors signal urllib http email html xml uuid secrets getpass platform locale
gettext shlex configparser tomllib weakref gc graphlib numbers cmath""".split()
MODULE_PHRASES = ["What does the `{m}` module do?", "What is the Python module `{m}` for?"]
GLOSSARY = """generator | decorator | list comprehension | dictionary | tuple | lambda function | iterator | module
package | class | method | context manager | exception | coroutine | keyword argument | docstring | slice
namespace | virtual environment | set | f-string | type hint | global variable | recursion""".replace("\n", " | ")
GLOSSARY_PHRASES = ["What is a {t} in Python?", "Explain what a {t} is in Python."]
COMMANDS = """ls cp mv rm mkdir cat grep find chmod chown tar ps kill df du head tail sort uniq wc echo sed
awk ssh less diff ln touch date man which""".split()
MAN_PHRASES = ["Que fait la commande {c} ?", "Was macht der Befehl {c}?", "¿Qué hace el comando {c}?",
               "Quelle est la syntaxe de {c} ?", "Wie lautet die Syntax von {c}?", "¿Cuál es la sintaxis de {c}?"]
SMALL_TALK = ["Hello!", "Hi, who are you?", "Bonjour !", "Hallo, wer bist du?", "¡Hola! ¿Quién eres?",
              "What can you do?", "Good morning!", "Thank you!", "Can you help me with Python?",
              "Kannst du mir helfen?", "Peux-tu m'aider ?", "¿Puedes ayudarme?"]


def training_instructions() -> list[str]:
    out = []
    for c in (x.strip() for x in PY_TASKS.split("|")):
        out += [p.format(c=c) for p in PY_PHRASES]
    for c in (x.strip() for x in RS_TASKS.split("|")):
        out += [p.format(c=c) for p in RS_PHRASES]
    for m in PY_MODULES:
        out += [p.format(m=m) for p in MODULE_PHRASES]
    for t in (x.strip() for x in GLOSSARY.split("|")):
        out += [p.format(t=t) for p in GLOSSARY_PHRASES]
    for c in COMMANDS:
        out += [p.format(c=c) for p in MAN_PHRASES]
    out += SMALL_TALK
    held = set(json.loads(PROMPTS_FILE.read_text())["prompts"])
    clash = held & set(out)
    assert not clash, f"held-out prompts in the training instructions: {sorted(clash)}"
    return out


def log(*a):
    print(*a, flush=True)


# ----------------------------------------------------------------------------------------------
# The main model and the MTP layer
# ----------------------------------------------------------------------------------------------

def load_main():
    from transformers import DeepseekV3ForCausalLM
    model = DeepseekV3ForCausalLM.from_pretrained(str(DIR), dtype=torch.float32)
    model.config._attn_implementation = "sdpa"
    model.eval()
    model.requires_grad_(False)
    return model


class Mtp(nn.Module):
    """DeepSeek-V3's MTP layer over a frozen main model (embedding and head shared, not trained)."""

    def __init__(self, main):
        super().__init__()
        from transformers.models.deepseek_v3 import modeling_deepseek_v3 as mdv3
        cfg = main.config
        d, n = cfg.hidden_size, cfg.num_hidden_layers
        self.n = n
        self.eps = cfg.rms_norm_eps
        self.enorm = nn.Parameter(torch.ones(d))
        self.hnorm = nn.Parameter(torch.ones(d))
        self.eh_proj = nn.Parameter(torch.cat([torch.zeros(d, d), torch.eye(d)], 1))
        self.block = mdv3.DeepseekV3DecoderLayer(cfg, layer_idx=n)
        res = self.block.load_state_dict(main.model.layers[n - 1].state_dict(), strict=True)
        assert not res.missing_keys and not res.unexpected_keys, res
        self.norm = nn.Parameter(main.model.norm.weight.detach().clone())
        # Frozen parts of the main model, kept out of this module's parameters.
        self.main = [main]

    def rms(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def forward(self, h, next_ids):
        """h: [B, T, D] final residuals at positions 0..T-1; next_ids: [B, T] tokens t_{p+1}. -> [B, T, V]."""
        main = self.main[0]
        emb = main.model.embed_tokens(next_ids)
        emb = torch.cat([torch.zeros_like(emb[:, :1]), emb[:, 1:]], 1)  # zeroed at position 0
        x = torch.cat([self.rms(emb, self.enorm), self.rms(h, self.hnorm)], -1) @ self.eh_proj.T
        t = x.shape[1]
        pos = torch.arange(t).unsqueeze(0)
        cos_sin = main.model.rotary_emb(x, pos)
        mask = torch.full((t, t), float("-inf")).triu(1)[None, None]
        out = self.block(x, attention_mask=mask, position_ids=pos, position_embeddings=cos_sin)
        y = out[0] if isinstance(out, tuple) else out
        return main.lm_head(self.rms(y, self.norm))

    def router(self):
        return self.block.mlp.gate

    def official_state(self) -> "OrderedDict[str, torch.Tensor]":
        """The layer in DeepSeek's checkpoint layout and stored types (as the main file: BF16, bias F32)."""
        p = f"model.layers.{self.n}."
        sd = {p + k: v for k, v in self.block.state_dict().items()}
        sd[p + "enorm.weight"] = self.enorm
        sd[p + "hnorm.weight"] = self.hnorm
        sd[p + "eh_proj.weight"] = self.eh_proj
        sd[p + "shared_head.norm.weight"] = self.norm
        return tdm.official_state(sd)


@torch.no_grad()
def main_pass(main, ids):
    """The frozen model on [B, T] ids: its final residuals (input of model.norm) and its logits."""
    captured = {}
    hook = main.model.norm.register_forward_hook(lambda mod, inp, out: captured.update(h=inp[0]))
    logits = main(input_ids=ids, use_cache=False).logits
    hook.remove()
    return captured["h"], logits


def mtp_logits(mtp, main, ids):
    """Main logits [B, T, V] and MTP logits for positions 0..T-2 ([B, T-1, V]; row p predicts t_{p+2})."""
    h, logits = main_pass(main, ids)
    return logits, mtp(h[:, :-1], ids[:, 1:])


# ----------------------------------------------------------------------------------------------
# Stage: data
# ----------------------------------------------------------------------------------------------

def raw_documents():
    docs = []
    root = Path("/usr/lib/python3.11")
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        if set(rel.parts[:-1]) & tdm.STDLIB_SKIP_DIRS or rel.name.startswith("_sysconfigdata"):
            continue
        if str(rel) == tdm.HELDOUT_PY:
            continue
        docs.append(("python", p.read_text(encoding="utf-8", errors="replace")))
    for origin, _rel, text in tdm.rust_sources():  # excludes the held-out either/src/into_either.rs
        docs.append(("rust", text))
    return docs


def chat_prompt_ids(tok, user: str) -> list[int]:
    text = tok.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def greedy_answers(main, tok, prompts: list[list[int]], n: int, batch: int = 24) -> list[list[int]]:
    """The frozen model's greedy continuations (up to n tokens, ending at EOS included)."""
    eos = main.config.eos_token_id
    out = []
    t0 = time.time()
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        width = max(map(len, chunk))
        ids = torch.tensor([[eos] * (width - len(p)) + p for p in chunk])
        att = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        gen = main.generate(input_ids=ids, attention_mask=att, max_new_tokens=n, do_sample=False,
                            pad_token_id=eos, eos_token_id=eos)
        for row in gen[:, width:].tolist():
            out.append(row[: row.index(eos) + 1] if eos in row else row)
        log(f"data: answered {len(out)}/{len(prompts)} instructions ({time.time() - t0:.0f} s)")
    return out


def stage_data(work: Path, force: bool):
    path = work / "data.pt"
    if path.exists() and not force:
        log(f"data: {path} exists")
        return
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(DIR))
    main = load_main()
    bos, eos = main.config.bos_token_id, main.config.eos_token_id
    raw = {"python": [], "rust": []}
    for kind, text in raw_documents():
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) > 16:
            raw[kind].append(ids + [eos])
    log("data: raw documents " + ", ".join(f"{k} {len(v)} ({sum(map(len, v)):,} tokens)" for k, v in raw.items()))
    instr = training_instructions()
    prompts = [chat_prompt_ids(tok, u) for u in instr]
    answers = greedy_answers(main, tok, prompts, ANSWER_TOKENS)
    chats = [p + a for p, a in zip(prompts, answers)]
    held = json.loads(PROMPTS_FILE.read_text())["prompts"]
    hp = [chat_prompt_ids(tok, u) for u in held]
    ha = greedy_answers(main, tok, hp, HELDOUT_ANSWER_TOKENS)
    heldout = [bos] + tok(DIR.joinpath("heldout.txt").read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    torch.save({"raw": raw, "chats": chats, "instructions": instr,
                "heldout_chat": [(p, a) for p, a in zip(hp, ha)], "heldout_text": heldout}, path)
    log(f"data: {len(chats)} training conversations ({sum(map(len, chats)):,} tokens), "
        f"{len(held)} held-out prompts -> {path}")


class Batcher:
    """Rows of seq_len tokens: chat rows (whole conversations, packed) or random raw-text windows."""

    def __init__(self, data, seq_len):
        self.raw = data["raw"]
        self.raw_kinds = list(self.raw)
        self.raw_weights = [0.75, 0.25]  # python, rust (the main mixture's ratio of the two, 45:15)
        self.chats = data["chats"]
        self.T = seq_len

    def row(self, rng: random.Random) -> list[int]:
        if rng.random() < TRAIN["p_chat_row"]:
            out = []
            while len(out) < self.T:
                out += rng.choice(self.chats)
            return out[: self.T]
        kind = rng.choices(self.raw_kinds, self.raw_weights)[0]
        out = []
        while len(out) < self.T:
            doc = rng.choice(self.raw[kind])
            start = rng.randrange(max(1, len(doc) - self.T // 2)) if not out else 0
            out += doc[start:]
        return out[: self.T]

    def batch(self, step: int, b: int) -> torch.Tensor:
        rng = random.Random(SEED * 1_000_003 + step)
        return torch.tensor([self.row(rng) for _ in range(b)])


# ----------------------------------------------------------------------------------------------
# Stage: train
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def acceptance(mtp, main, data) -> dict:
    """Greedy acceptance: share of positions p where argmax(MTP_p) == argmax(main_{p+1})."""
    ids = torch.tensor([data["heldout_text"]])
    logits, m = mtp_logits(mtp, main, ids)
    text_hits = (m[0].argmax(-1) == logits[0, 1:].argmax(-1)).float()
    hits = n = 0
    for p, a in data["heldout_chat"]:
        # positions whose draft the decode loop verifies: the last prompt token's row drafts the 2nd answer token
        ids = torch.tensor([p + a])
        logits, m = mtp_logits(mtp, main, ids)
        rows = range(len(p) - 1, len(p) + len(a) - 2)
        ok = [bool(m[0, r].argmax() == logits[0, r + 1].argmax()) for r in rows]
        hits += sum(ok)
        n += len(ok)
    return {"heldout_text": float(text_hits.mean()), "heldout_chat": hits / max(n, 1), "chat_positions": n}


def lr_at(step: int, progress: float) -> float:
    if step < TRAIN["warmup_steps"]:
        return TRAIN["lr"] * (step + 1) / TRAIN["warmup_steps"]
    lo = TRAIN["lr"] * TRAIN["min_lr_ratio"]
    return lo + 0.5 * (TRAIN["lr"] - lo) * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def stage_train(work: Path, minutes: float, ce_weight: float, max_steps: int | None):
    data = torch.load(work / "data.pt", weights_only=False)
    main = load_main()
    torch.manual_seed(SEED)
    mtp = Mtp(main)
    opt = torch.optim.AdamW(mtp.parameters(), lr=TRAIN["lr"], betas=TRAIN["betas"],
                            weight_decay=TRAIN["weight_decay"])
    ckpt = work / "mtp_ckpt.pt"
    state = {"step": 0, "seconds": 0.0, "tokens": 0, "done": False, "log": []}
    if ckpt.exists():
        c = torch.load(ckpt, weights_only=False)
        mtp.load_state_dict(c["mtp"])
        opt.load_state_dict(c["opt"])
        state = c["state"]
        log(f"train: resumed at step {state['step']} ({state['seconds'] / 60:.1f} min)")
    if state["done"]:
        log("train: finished run in the checkpoint")
        return
    budget = minutes * 60

    def save():
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"mtp": mtp.state_dict(), "opt": opt.state_dict(), "state": state}, tmp)
        tmp.replace(ckpt)

    def evaluate():
        mtp.eval()
        acc = acceptance(mtp, main, data)
        mtp.train()
        state["log"].append({"step": state["step"], "minutes": state["seconds"] / 60, **acc})
        log(f"eval step {state['step']}: held-out greedy acceptance: text {acc['heldout_text']:.3f}, "
            f"chat answers {acc['heldout_chat']:.3f} ({acc['chat_positions']} positions)")

    if state["step"] == 0:
        evaluate()
    batcher = Batcher(data, TRAIN["seq_len"])
    router = mtp.router()
    mtp.train()
    last_save = time.time()
    while state["seconds"] < budget and (max_steps is None or state["step"] < max_steps):
        t0 = time.time()
        step = state["step"]
        for g in opt.param_groups:
            g["lr"] = lr_at(step, state["seconds"] / budget)
        ids = batcher.batch(step, TRAIN["batch"])
        load = {}
        hook = router.register_forward_hook(lambda mod, a, out: load.update(idx=out[2].detach()))
        logits, m = mtp_logits(mtp, main, ids)
        hook.remove()
        teacher = torch.log_softmax(logits[:, 1:], -1)
        student = torch.log_softmax(m, -1)
        kl = (teacher.exp() * (teacher - student)).sum(-1).mean()
        loss = kl
        ce = torch.nn.functional.nll_loss(student[:, :-1].reshape(-1, student.shape[-1]), ids[:, 2:].reshape(-1))
        if ce_weight:
            loss = loss + ce_weight * ce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(mtp.parameters(), TRAIN["grad_clip"])
        opt.step()
        with torch.no_grad():  # DeepSeek-V3's aux-loss-free balancing of the block's router, as in the main run
            cnt = torch.bincount(load["idx"].reshape(-1), minlength=router.e_score_correction_bias.numel()).float()
            router.e_score_correction_bias += TRAIN["bias_update_speed"] * torch.sign(cnt.mean() - cnt)
        agree = float((m.argmax(-1) == logits[:, 1:].argmax(-1)).float().mean())
        state["step"] += 1
        state["tokens"] += ids.numel()
        state["seconds"] += time.time() - t0
        if state["step"] % TRAIN["log_every"] == 0:
            log(f"step {state['step']}: kl {kl.item():.4f} ce {ce.item():.4f} train-acceptance {agree:.3f} "
                f"|g| {gn:.2f} lr {opt.param_groups[0]['lr']:.2e} {ids.numel() / (time.time() - t0):.0f} tok/s "
                f"({state['seconds'] / 60:.1f}/{minutes:.0f} min)")
        if state["step"] % TRAIN["eval_every"] == 0:
            evaluate()
        if time.time() - last_save > TRAIN["ckpt_seconds"]:
            save()
            last_save = time.time()
    state["done"] = state["seconds"] >= budget
    evaluate()
    save()
    log(f"train: {state['step']} steps, {state['tokens']:,} tokens, {state['seconds'] / 60:.1f} min")


# ----------------------------------------------------------------------------------------------
# Stage: export
# ----------------------------------------------------------------------------------------------

def stage_export(work: Path):
    from safetensors import safe_open
    from safetensors.torch import save_file
    c = torch.load(work / "mtp_ckpt.pt", weights_only=False)
    if not c["state"]["done"]:
        log("export: WARNING: the training run has not finished; exporting the last checkpoint")
    main = load_main()
    mtp = Mtp(main)
    mtp.load_state_dict(c["mtp"])
    stored = mtp.official_state()
    save_file(dict(stored), str(DIR / MTP_FILE), metadata={"format": "pt"})
    os.chmod(DIR / MTP_FILE, 0o644)
    weight_map, total = {}, 0
    for fname in ("model.safetensors", MTP_FILE):
        with safe_open(str(DIR / fname), "pt") as f:
            for k in f.keys():
                assert k not in weight_map, k
                weight_map[k] = fname
                t = f.get_slice(k)
                total += math.prod(t.get_shape()) * {"BF16": 2, "F32": 4}[t.get_dtype()]
    index = {"metadata": {"total_size": total},
             "weight_map": OrderedDict((k, weight_map[k]) for k in sorted(weight_map, key=tdm.sort_key))}
    (DIR / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    cfg_path = DIR / "config.json"
    cfg = json.loads(cfg_path.read_text(), object_pairs_hook=OrderedDict)
    cfg["num_nextn_predict_layers"] = 1
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    log(f"export: {len(stored)} MTP tensors -> {DIR / MTP_FILE}; index: {len(weight_map)} tensors, {total:,} bytes")

    # What Moela runs: the stored (rounded) values.
    with safe_open(str(DIR / MTP_FILE), "pt") as f:
        exact = {k: f.get_tensor(k).float() for k in f.keys()}
    mtp.load_state_dict(stored_to_module(mtp, exact))
    mtp.eval()
    acc = acceptance(mtp, main, torch.load(work / "data.pt", weights_only=False))
    log(f"export: held-out greedy acceptance of the stored layer: text {acc['heldout_text']:.3f}, "
        f"chat answers {acc['heldout_chat']:.3f} ({acc['chat_positions']} positions)")
    (work / "export.json").write_text(json.dumps({"train": c["state"], "stored_acceptance": acc}, indent=2) + "\n")


def stored_to_module(mtp: Mtp, exact: dict) -> dict:
    """DeepSeek-layout tensors -> this module's state dict (experts fused as transformers holds them)."""
    p = f"model.layers.{mtp.n}."
    ep = p + "mlp.experts."
    cfg = mtp.main[0].config
    sd = {"enorm": exact.pop(p + "enorm.weight"), "hnorm": exact.pop(p + "hnorm.weight"),
          "eh_proj": exact.pop(p + "eh_proj.weight"), "norm": exact.pop(p + "shared_head.norm.weight")}
    experts = range(cfg.n_routed_experts)
    sd["block.mlp.experts.gate_up_proj"] = torch.stack(
        [torch.cat([exact.pop(ep + f"{e}.gate_proj.weight"), exact.pop(ep + f"{e}.up_proj.weight")]) for e in experts])
    sd["block.mlp.experts.down_proj"] = torch.stack([exact.pop(ep + f"{e}.down_proj.weight") for e in experts])
    sd.update({"block." + k[len(p):]: v for k, v in exact.items()})
    return sd


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/moela-demo-mtp"))
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--ce-weight", type=float, default=0.0)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stages", default="data,train,export")
    ap.add_argument("--force", action="store_true", help="redo the data stage")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    a.work.mkdir(parents=True, exist_ok=True)
    stages = a.stages.split(",")
    if "data" in stages:
        stage_data(a.work, a.force)
    if "train" in stages:
        stage_train(a.work, a.minutes, a.ce_weight, a.max_steps)
    if "export" in stages:
        stage_export(a.work)


if __name__ == "__main__":
    main()
