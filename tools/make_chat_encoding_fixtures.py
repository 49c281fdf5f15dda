#!/usr/bin/env python3
"""Write the DeepSeek V3.2 / V4 / V4.1 chat-encoding goldens for `crates/moela-text`.

DeepSeek V3.2 and V4 ship no Jinja chat template; DeepSeek publishes Python encoders instead.
The vLLM wheel on PyPI carries them as plain Python files without model dependencies. This
script downloads that wheel (PyPI only, `pip download --no-deps`), extracts just the three
encoder files into a temporary directory, checks their SHA-256, imports them and records what
they render. Nothing from the wheel is written into the repository except rendered strings.

Usage (standard library only; `pip` is used to fetch the wheel, about 240 MB):

    python3 tools/make_chat_encoding_fixtures.py                 # downloads the wheel
    python3 tools/make_chat_encoding_fixtures.py --wheel /tmp/vllm/vllm-0.34.0-...whl

Writes tests/fixtures/text/golden_chat_encoding.json:

* `renders`: for each format (`deepseek_v32`, `deepseek_v4`, `deepseek_v41`) and conversation,
  the prompt string, or `{"error": ...}` where the reference raises. Inputs are stored in Moela's
  own shapes: `messages` as `ChatMessage` JSON, `options` as `RenderOptions` (`tools`,
  `thinking`, `reasoning_effort`, `add_generation_prompt`, `extra` = chat_template_kwargs).
* `completions`: what the model writes after the prompt for an assistant turn (the encoder's
  rendering of that turn, end-of-sentence token removed), with the reasoning, content and tool
  calls it came from: the goldens for parsing a completion.

How a request reaches `encode_messages` is vLLM's serving wrapper (vllm/tokenizers/
deepseek_v32.py, deepseek_v4.py, deepseek_v41.py in the same wheel), which imports transformers
and vLLM and so cannot be loaded here; `serve_*` below restate its rules:

* V3.2: thinking only when `thinking` or `enable_thinking` is truthy; request tools go into a new
  system message inserted first; earlier reasoning is dropped only when the last message is a
  user message.
* V4: thinking unless `thinking`/`enable_thinking` are given and both falsy; request tools are
  attached to the first system message (one is inserted first when there is none); a string
  `reasoning_effort` maps none -> chat mode, max -> max, low/minimal/medium -> low, anything
  else -> high; no string -> high in thinking mode; `drop_thinking` defaults to true.
* V4.1: the same thinking default; tools attached to the first system message, or a new
  `{"role": "system", "content": ""}` first; `reasoning_effort` none -> chat mode, absent ->
  high, otherwise low/high/xhigh/max or an integer 1..100 (else an error); only the roles
  system/developer/user/assistant/tool; `reasoning` is renamed `reasoning_content`;
  `add_generation_prompt` (default true) and `continue_final_message` are passed through.
"""

import argparse
import copy
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "text" / "golden_chat_encoding.json"

VLLM = "vllm==0.34.0"
ENCODERS = {
    "deepseek_v32": ("vllm/tokenizers/deepseek_v32_encoding.py",
                     "112f6b4e329c9ad20046549531e2f4c86cb850344ef2d94a6e8ba395c4d2c9fc"),
    "deepseek_v4": ("vllm/tokenizers/deepseek_v4_encoding.py",
                    "aa407637bd2e58f20a16f781ea0bc519d06f74bed49deadaecb5aa5756d7230e"),
    "deepseek_v41": ("vllm/tokenizers/deepseek_v41_encoding.py",
                     "b03b1efc604b8263eff2624a94820fc00a235b9aad4a8bc7118f8ae4979f6f81"),
}
FORMATS = list(ENCODERS)
EOS = "<｜end▁of▁sentence｜>"


def fetch_wheel(dest: Path) -> Path:
    """`pip download` the wheel from PyPI (any platform's wheel carries the same files)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
           "--index-url", "https://pypi.org/simple", "-d", str(dest), VLLM]
    subprocess.run(cmd, check=True)
    wheels = sorted(dest.glob("vllm-*.whl"))
    if len(wheels) != 1:
        sys.exit(f"expected one vllm wheel in {dest}, found {wheels}")
    return wheels[0]


def load_encoders(wheel: Path, tmp: Path) -> dict:
    modules = {}
    with zipfile.ZipFile(wheel) as z:
        for fmt, (member, sha) in ENCODERS.items():
            data = z.read(member)
            got = hashlib.sha256(data).hexdigest()
            if got != sha:
                sys.exit(f"{member}: SHA-256 {got}, expected {sha}")
            path = tmp / f"{fmt}_encoding.py"
            path.write_bytes(data)
            spec = importlib.util.spec_from_file_location(f"{fmt}_encoding", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            modules[fmt] = module
    return modules


# ---------------------------------------------------------------------------------------------
# Moela's shapes -> the encoders' inputs


def reference_message(fmt: str, m: dict) -> dict:
    """A `ChatMessage` (JSON) as the encoder reads it: `reasoning_content` is `reasoning` for
    V3.2/V4 (vLLM's message field), unknown fields (`tools`, `response_format`, `prefix`,
    `wo_eos`, `task`) pass through."""
    out = {}
    for k, v in m.items():
        if k == "reasoning_content":
            out["reasoning_content" if fmt == "deepseek_v41" else "reasoning"] = v
        else:
            out[k] = v
    return out


def kwargs_of(options: dict) -> dict:
    """RenderOptions -> chat_template_kwargs: `extra`, then the typed fields when set."""
    kw = dict(options.get("extra") or {})
    for key in ("thinking", "reasoning_effort"):
        if options.get(key) is not None:
            kw[key] = options[key]
    return kw


def serve_v32(enc, messages, tools, kw, _options):
    thinking = bool(kw.get("thinking", False) or kw.get("enable_thinking", False))
    messages = list(messages)
    if tools:
        messages.insert(0, {"role": "system", "tools": tools})
    drop = messages[-1]["role"] == "user"
    call = {"thinking_mode": "thinking" if thinking else "chat", "drop_thinking": drop}
    return call, enc.encode_messages(messages, **call)


def serve_v4(enc, messages, tools, kw, _options):
    if "thinking" in kw or "enable_thinking" in kw:
        thinking = bool(kw.get("thinking")) or bool(kw.get("enable_thinking"))
    else:
        thinking = True
    messages = list(messages)
    if tools:
        at = next((i for i, m in enumerate(messages) if m.get("role") == "system"), None)
        if at is None:
            messages.insert(0, {"role": "system"})
            at = 0
        else:
            messages[at] = copy.copy(messages[at])
        messages[at]["tools"] = tools
    effort = kw.get("reasoning_effort")
    if not isinstance(effort, str):
        effort = "high" if thinking else None
    elif effort == "none":
        thinking, effort = False, None
    elif effort == "max":
        pass
    elif effort in ("low", "minimal", "medium"):
        effort = "low"
    else:
        effort = "high"
    call = {"thinking_mode": "thinking" if thinking else "chat",
            "drop_thinking": kw.get("drop_thinking", True), "reasoning_effort": effort}
    return call, enc.encode_messages(messages, **call)


def serve_v41(enc, messages, tools, kw, options):
    messages = copy.deepcopy(messages)
    for m in messages:
        if m.get("role") not in ("system", "developer", "user", "assistant", "tool"):
            raise ValueError(f"Invalid role: {m.get('role')}")
        m["_image_indices"] = []
    if tools:
        system = next((m for m in messages if m["role"] == "system"), None)
        if system is None:
            system = {"role": "system", "content": ""}
            messages.insert(0, system)
        system["tools"] = tools
    thinking = bool(kw.get("thinking") or kw.get("enable_thinking"))
    if "thinking" not in kw and "enable_thinking" not in kw:
        thinking = True
    effort = kw.get("reasoning_effort")
    if effort == "none":
        thinking, effort = False, None
    if effort is None:
        effort = "high"
    if not ((type(effort) is int and 1 <= effort <= 100)
            or (isinstance(effort, str) and effort in enc.REASONING_EFFORT_MAPPINGS)):
        raise ValueError("DeepSeek V4.1 reasoning_effort must be low, high, xhigh, max, "
                         "or an integer within [1, 100]")
    call = {"thinking_mode": "thinking" if thinking else "chat",
            "drop_thinking": kw.get("drop_thinking", True), "reasoning_effort": effort,
            "add_generation_prompt": options.get("add_generation_prompt", True),
            "continue_final_message": kw.get("continue_final_message", False)}
    return call, enc.encode_messages(messages, **call)


SERVE = {"deepseek_v32": serve_v32, "deepseek_v4": serve_v4, "deepseek_v41": serve_v41}


def render(encoders, fmt, messages, options):
    ref = [reference_message(fmt, m) for m in messages]
    tools = options.get("tools")
    return SERVE[fmt](encoders[fmt], copy.deepcopy(ref), copy.deepcopy(tools),
                      kwargs_of(options), options)


# ---------------------------------------------------------------------------------------------
# Conversations


def msg(role, content, **fields):
    m = {"role": role, "content": content}
    m.update(fields)
    return m


def call(id_, name, arguments):
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": arguments}}


TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city (天气).",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "search", "description": "Search the web.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}},
]
# One small tool for the cases that only need tools to be present.
TOOL = [{"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
SCHEMA = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {
    "type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}}}

CALL_WEATHER = call("call_1", "get_weather", "{\"city\": \"杭州\", \"days\": 3}")
CALL_SEARCH = call("call_2", "search", json.dumps(
    {"q": "a \"b\" <i>", "opt": {"site": None}, "limit": 2.5, "exact": True, "tags": ["x", 1]},
    ensure_ascii=False))

SIMPLE = [msg("user", "Hello! 你好")]
SYS_USER = [msg("system", "You are terse."), msg("user", "What is 2+2?")]
MULTI = [
    msg("system", "Think first."),
    msg("user", "What is 2+2?"),
    msg("assistant", "4", reasoning_content="Two plus two is four."),
    msg("user", "And 3+3?"),
]
MULTI_ANSWERED = MULTI + [msg("assistant", "6", reasoning_content="Three plus three.")]
TOOL_ROUND = [
    msg("user", "Weather in Hangzhou, and search for news?"),
    msg("assistant", "Let me check.", reasoning_content="Two tools are needed.",
        tool_calls=[CALL_WEATHER, CALL_SEARCH]),
    msg("tool", "{\"temp\": 21}", tool_call_id="call_1"),
    msg("tool", "No news.", tool_call_id="call_2"),
]
# Results in the opposite order of the calls (V4 sorts them back by tool_call_id).
TOOL_ROUND_SWAPPED = TOOL_ROUND[:2] + [TOOL_ROUND[3], TOOL_ROUND[2]]
ONE_CALL = [
    msg("user", "Weather in Hangzhou?"),
    msg("assistant", "Let me check.", reasoning_content="Call the tool.", tool_calls=[CALL_WEATHER]),
    msg("tool", "{\"temp\": 21}", tool_call_id="call_1"),
]
TOOL_DONE = ONE_CALL + [
    msg("assistant", "21°C.", reasoning_content="It answered."),
    msg("user", "Thanks!"),
]
TOOL_NO_CONTENT = [
    msg("system", "Use tools."),
    msg("user", "Weather?"),
    msg("assistant", None, tool_calls=[CALL_WEATHER]),
    msg("tool", "sunny", tool_call_id="call_1"),
    msg("assistant", "Sunny.", reasoning_content="Easy."),
]

# Thinking with the low effort (no effort preamble in V4) keeps the goldens small; the
# `default` cases and `effort/*` cover the preambles.
T = {"thinking": True, "reasoning_effort": "low"}
C = {"thinking": False}


def render_cases():
    """(name, formats or None for all, messages, options)."""
    modes = (("thinking", T), ("chat", C))
    cases = []
    for mode_name, mode in modes + (("default", {}),):
        cases += [
            (f"simple/{mode_name}", None, SIMPLE, mode),
            (f"multi_turn/{mode_name}", None, MULTI, mode),
        ]
    for mode_name, mode in modes:
        cases += [
            (f"system/{mode_name}", None, SYS_USER, mode),
            (f"tool_round/{mode_name}", None, TOOL_ROUND, mode),
            (f"multi_turn_answered/{mode_name}", None, MULTI_ANSWERED, mode),
            (f"tool_done/{mode_name}", None, TOOL_DONE, mode),
            (f"tool_no_content/{mode_name}", None, TOOL_NO_CONTENT, mode),
        ]
    return cases + [
        ("tools", None, SYS_USER, {**T, "tools": TOOLS}),
        ("multi_turn/keep_reasoning", None, MULTI, {**T, "extra": {"drop_thinking": False}}),
        ("multi_turn/enable_thinking", None, MULTI, {"extra": {"enable_thinking": True}}),
        ("multi_turn/no_add_generation_prompt", None, MULTI,
         {**T, "add_generation_prompt": False}),
        ("tool_round/request_tools", None, ONE_CALL, {**T, "tools": TOOL}),
        ("tool_round/swapped_results", None, TOOL_ROUND_SWAPPED, T),
        ("tool_done/request_tools", None, TOOL_DONE, {**T, "tools": TOOL}),
        ("empty_tools", None, SYS_USER, {**T, "tools": []}),
        ("response_format", None,
         [msg("system", "Reply in JSON.", response_format=SCHEMA), msg("user", "Capital of France?")], T),
        ("developer/chat", None, [msg("developer", "Answer in French.", tools=TOOL,
                                      response_format={"type": "json_object"}),
                                  msg("user", "Hello")], C),
        ("developer/last_thinking", None, [msg("system", "S"), msg("user", "Hello"),
                                           msg("assistant", "Bonjour", reasoning_content="r"),
                                           msg("developer", "Now in German.", response_format=SCHEMA)], T),
        ("developer/dropped", None, [msg("developer", "Be brief."), msg("user", "Hello"),
                                     msg("assistant", "Hi", reasoning_content="r"),
                                     msg("user", "Bye")], T),
        ("developer/empty", None, [msg("developer", ""), msg("user", "Hello")], C),
        ("consecutive_users", None, [msg("user", "First."), msg("user", "Second.")], T),
        ("user_then_tool", None, [msg("user", "Q"),
                                  msg("assistant", None, reasoning_content="r", tool_calls=[CALL_WEATHER]),
                                  msg("tool", "a", tool_call_id="call_1"), msg("user", "More?")], T),
        ("null_contents", None, [msg("system", None), msg("user", "Q"),
                                 msg("assistant", None, reasoning_content="r", tool_calls=[CALL_WEATHER]),
                                 msg("tool", None, tool_call_id="call_1")], T),
        ("null_user_content", None, [msg("user", None)], C),
        ("system_last", None, [msg("user", "Q"), msg("assistant", "A"), msg("system", "Mid-chat rule.")], T),
        ("system_then_assistant", None, [msg("system", "S"), msg("assistant", "Opening line.")], C),
        ("assistant_last", None, [msg("user", "Q"), msg("assistant", "A", reasoning_content="R")], T),
        ("assistant_last/no_add_generation_prompt", None,
         [msg("user", "Q"), msg("assistant", "A", reasoning_content="R")],
         {**T, "add_generation_prompt": False}),
        ("thinking_answer_without_reasoning", None, [msg("user", "Q"), msg("assistant", "A")], T),
        ("tool_without_call", None, [msg("user", "Q"), msg("assistant", "A"),
                                     msg("tool", "r", tool_call_id="x")], C),
        ("too_many_results", None, [msg("user", "Q"), msg("assistant", None, tool_calls=[CALL_WEATHER]),
                                    msg("tool", "1", tool_call_id="call_1"),
                                    msg("tool", "2", tool_call_id="call_2")], C),
        ("arguments_not_object", None,
         [msg("user", "Q"), msg("assistant", None, tool_calls=[call("c", "f", "[1, 2]")])], C),
        ("arguments_double_encoded", None,
         [msg("user", "Q"), msg("assistant", None, tool_calls=[call("c", "f", json.dumps("{\"a\": 1}"))])], C),
        ("arguments_invalid_json", None,
         [msg("user", "Q"), msg("assistant", None, tool_calls=[call("c", "f", "{oops")])], C),
        ("arguments_empty_object", None,
         [msg("user", "Q"), msg("assistant", None, tool_calls=[call("c", "f", "{}")])], C),
        ("prefix", None, [msg("user", "Write a haiku."), msg("assistant", "Autumn", prefix=True)], C),
        ("wo_eos", None, [msg("user", "Q"), msg("assistant", "Partial", reasoning_content="R", wo_eos=True)], T),
        ("latest_reminder", None, [msg("user", "Q"), msg("latest_reminder", "Today is Monday.")], T),
        ("latest_reminder_before_assistant", None,
         [msg("user", "Q"), msg("latest_reminder", "Note."), msg("assistant", "A", reasoning_content="R"),
          msg("user", "Q2")], C),
        ("task/action", None, [msg("user", "Search this?", task="action")], T),
        ("task/action_chat", None, [msg("user", "Search this?", task="action")], C),
        ("task/query", None, [msg("user", "Rewrite as a query.", task="query"),
                              msg("assistant", "query text", reasoning_content="unused")], T),
        ("task/invalid", None, [msg("user", "Q", task="nope")], T),
        ("effort/max", None, SIMPLE, {**T, "reasoning_effort": "max"}),
        ("effort/high", None, SIMPLE, {**T, "reasoning_effort": "high"}),
        ("effort/medium", None, SIMPLE, {**T, "reasoning_effort": "medium"}),
        ("effort/xhigh", None, SIMPLE, {**T, "reasoning_effort": "xhigh"}),
        ("effort/other_string", None, SIMPLE, {**T, "reasoning_effort": "extreme"}),
        ("effort/none", None, SIMPLE, {"reasoning_effort": "none"}),
        ("effort/chat_max", None, SIMPLE, {**C, "reasoning_effort": "max"}),
        ("effort/budget", None, SIMPLE, {"thinking": True, "extra": {"reasoning_effort": 37}}),
        ("effort/budget_out_of_range", None, SIMPLE,
         {"thinking": True, "extra": {"reasoning_effort": 101}}),
        ("effort/system_first", None, SYS_USER, {**T, "reasoning_effort": "low"}),
        ("continue_final_message", ["deepseek_v41"],
         [msg("user", "Q"), msg("assistant", None, reasoning_content="Still thinking")],
         {**T, "extra": {"continue_final_message": True}}),
        ("continue_final_message/content", ["deepseek_v41"],
         [msg("user", "Q"), msg("assistant", "Half an ans", reasoning_content="R")],
         {**T, "extra": {"continue_final_message": True}}),
        ("continue_final_message/not_assistant", ["deepseek_v41"], SIMPLE,
         {**T, "extra": {"continue_final_message": True}}),
        ("mid_system_tools", ["deepseek_v41"],
         [msg("user", "Q"), msg("assistant", "A", reasoning_content="R"), msg("system", "New rules."),
          msg("user", "Q2")], {**T, "tools": TOOL}),
    ]


def completion_cases():
    """(name, conversation before the turn, the assistant turn, options)."""
    turn_plain = msg("assistant", "Hello there!\n\nHow can I help?", reasoning_content="The user greets me.")
    turn_calls = msg("assistant", "", reasoning_content="I need the weather and a search.",
                     tool_calls=[CALL_WEATHER, CALL_SEARCH])
    turn_text_call = msg("assistant", "Let me check.", reasoning_content="One call.",
                         tool_calls=[call("c9", "get_weather", "{\"city\": \"Paris\"}")])
    turn_no_args = msg("assistant", None, reasoning_content="", tool_calls=[call("c8", "search", "{}")])
    turn_after = msg("assistant", "It is 21°C.", reasoning_content="The tool said 21.")
    out = []
    for mode_name, mode in (("thinking", T), ("chat", C)):
        opts = {**mode, "tools": TOOL}
        out += [
            (f"plain/{mode_name}", SIMPLE, turn_plain, mode),
            (f"tool_calls/{mode_name}", SIMPLE, turn_calls, opts),
            (f"text_and_call/{mode_name}", SIMPLE, turn_text_call, opts),
            (f"no_arguments/{mode_name}", SIMPLE, turn_no_args, opts),
            (f"after_results/{mode_name}", TOOL_ROUND, turn_after, opts),
        ]
    return out


def random_cases(n: int, seed: int):
    """Random conversations for a wider differential check (not stored in the repository)."""
    import random
    rng = random.Random(seed)
    texts = [None, "", "Hi", "多语言 ✓", "a\n\nb", "</think>", "<think>x"]
    args = ["{}", "{\"a\": 1}", "{\"s\": \"x\", \"n\": null, \"l\": [1.5, true]}", "[1]",
            json.dumps("{\"a\": \"b\"}"), "oops"]
    efforts = [None, "low", "high", "max", "none", "medium", "xhigh", 30, 0]
    cases = []
    for k in range(n):
        msgs = []
        if k % 2:
            # Well-formed turns: [system] (user, assistant [calls, results])* [user].
            if rng.random() < 0.5:
                msgs.append(msg(rng.choice(["system", "developer"]), "Rules."))
            for turn in range(rng.randint(1, 3)):
                msgs.append(msg("user", f"Question {turn}"))
                calls = [call(f"call_{j}", "f", rng.choice(args[:3])) for j in range(rng.randint(0, 2))]
                m = msg("assistant", rng.choice(["", "Answer", None]), reasoning_content=f"R{turn}")
                if calls:
                    m["tool_calls"] = calls
                msgs.append(m)
                results = [msg("tool", f"result {j}", tool_call_id=c["id"]) for j, c in enumerate(calls)]
                rng.shuffle(results)
                msgs += results
                if calls and rng.random() < 0.5:
                    msgs.append(msg("assistant", "Done", reasoning_content="After tools"))
            if rng.random() < 0.5:
                msgs.append(msg("user", "Last"))
        for _ in range(0 if k % 2 else rng.randint(1, 7)):
            role = rng.choice(["system", "developer", "user", "user", "assistant", "assistant", "tool",
                               "latest_reminder"])
            m = msg(role, rng.choice(texts))
            if role == "assistant":
                if rng.random() < 0.6:
                    m["reasoning_content"] = rng.choice(texts)
                if rng.random() < 0.5:
                    m["tool_calls"] = [call(rng.choice(["call_1", "call_2", ""]), "f", rng.choice(args))
                                       for _ in range(rng.randint(1, 2))]
                for flag in ("prefix", "wo_eos"):
                    if rng.random() < 0.1:
                        m[flag] = True
            if role == "tool":
                m["tool_call_id"] = rng.choice(["call_1", "call_2", "x"])
            if role in ("system", "developer") and rng.random() < 0.3:
                m["tools"] = TOOL
            if role in ("system", "developer") and rng.random() < 0.2:
                m["response_format"] = {"type": "json_object"}
            if rng.random() < 0.07:
                m["task"] = rng.choice(["action", "query", "title", "bad"])
            msgs.append(m)
        options = {}
        if rng.random() < 0.8:
            options["thinking"] = rng.random() < 0.6
        effort = rng.choice(efforts)
        if isinstance(effort, int):
            options["extra"] = {"reasoning_effort": effort}
        elif effort is not None:
            options["reasoning_effort"] = effort
        extra = options.setdefault("extra", {})
        for key in ("drop_thinking", "continue_final_message", "enable_thinking"):
            if rng.random() < 0.15:
                extra[key] = rng.random() < 0.5
        if rng.random() < 0.3:
            options["tools"] = rng.choice([[], TOOL])
        if rng.random() < 0.2:
            options["add_generation_prompt"] = False
        cases.append((f"random/{k}", None, msgs, options))
    return cases


def make_completion(encoders, fmt, name, before, turn, options):
    """The text a model writes for `turn`: the full conversation's render minus the prompt."""
    prompt_call, prompt = render(encoders, fmt, before, options)
    full_opts = dict(options)
    if fmt == "deepseek_v41":
        full_opts["add_generation_prompt"] = False  # no fresh assistant header after the turn
    _, full = render(encoders, fmt, before + [turn], full_opts)
    if not full.startswith(prompt):
        sys.exit(f"{fmt} {name}: the prompt is not a prefix of the rendered turn")
    text = full[len(prompt):]
    if not text.endswith(EOS):
        sys.exit(f"{fmt} {name}: the turn does not end with EOS")
    text = text[: -len(EOS)]
    thinking = prompt_call["thinking_mode"] == "thinking"
    calls = [{"name": c["function"]["name"],
              "arguments": json.dumps(json.loads(c["function"]["arguments"]), ensure_ascii=False)}
             for c in (turn.get("tool_calls") or [])]
    return {
        "format": fmt, "name": name, "completion": text,
        "opens_reasoning": prompt.endswith("<think>"),
        "reasoning": (turn.get("reasoning_content") or "") if thinking else None,
        "content": turn.get("content") or "", "tool_calls": calls,
    }


def compact_dump(golden) -> str:
    """The golden as JSON with one case a line (small and still diffable)."""
    one = lambda v: json.dumps(v, ensure_ascii=False)
    parts = [f' "reference": {one(golden["reference"])}']
    for key in ("renders", "completions"):
        rows = ",\n".join(f"  {one(case)}" for case in golden[key])
        parts.append(f' "{key}": [\n{rows}\n ]')
    return "{\n" + ",\n".join(parts) + "\n}\n"


def main():
    # The V4 encoders list their task names from a set in an error message: fix the hash seed
    # so that reruns write the same file.
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheel", type=Path, help="an already downloaded vllm-0.34.0 wheel")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--random", type=int, metavar="N",
                    help="write N random conversations instead (a wider check: point the "
                         "test at the file with MOELA_CHAT_ENCODING_GOLDEN=path)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wheel = args.wheel or fetch_wheel(tmp)
        encoders = load_encoders(wheel, tmp)

        renders = []
        cases = random_cases(args.random, args.seed) if args.random else render_cases()
        for name, formats, messages, given in cases:
            # Only the options given are stored; the rest take RenderOptions' defaults.
            options = {"add_generation_prompt": True, "tools": None, "thinking": None,
                       "reasoning_effort": None, "extra": {}, **given}
            case = {"name": name, "messages": messages, "options": given, "results": {}}
            for fmt in formats or FORMATS:
                try:
                    _, text = render(encoders, fmt, messages, options)
                    result = {"expected": text}
                except Exception as e:  # the reference raising is a golden too
                    result = {"error": f"{type(e).__name__}: {e}"}
                case["results"][fmt] = result
            renders.append(case)

        completions = []
        for name, before, turn, options in ([] if args.random else completion_cases()):
            for fmt in FORMATS:
                completions.append(make_completion(encoders, fmt, name, before, turn, options))

    golden = {
        "reference": {
            "package": VLLM,
            "files": {fmt: {"path": p, "sha256": s} for fmt, (p, s) in ENCODERS.items()},
            "note": "Rendered by DeepSeek's encoders as vLLM ships them; serving rules restated "
                    "in tools/make_chat_encoding_fixtures.py.",
        },
        "renders": renders,
        "completions": completions,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(compact_dump(golden))
    n_err = sum("error" in r for c in renders for r in c["results"].values())
    print(f"wrote {args.out}: {len(renders)} renders ({n_err} errors), {len(completions)} completions, "
          f"{args.out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
