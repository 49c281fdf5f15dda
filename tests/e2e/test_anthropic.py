"""`moela serve` driven by the official `anthropic` client (Messages API), and llama-server's
`/tokenize` / `/detokenize` plus the model list's context fields, over loopback.

The model is the tiny random V3 fixture: tests check shapes, determinism and constraints.
"""

import json

import anthropic
import pytest

from conftest import API_KEY
from test_openai import raw

MODEL = "v3"
LONG_SYSTEM = "You answer briefly and precisely. " * 12
WEATHER = {
    "name": "get_weather",
    "description": "Weather of a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"enum": ["Paris", "Oslo"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


# This SDK no longer has `temperature`/`top_p`/`top_k` arguments; the API (and moela) still
# takes them in the body.
GREEDY = {"extra_body": {"temperature": 0}}


def client(server, key=API_KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0, timeout=60)


def ask(text="Hello"):
    return [{"role": "user", "content": text}]


def text_of(msg) -> str:
    return "".join(b.text for b in msg.content if b.type == "text")


def test_message_and_stream_agree(server):
    c = client(server)
    kw = dict(model=MODEL, max_tokens=12, system=LONG_SYSTEM, messages=ask("Hi"), **GREEDY)
    whole = c.messages.create(**kw)
    assert whole.type == "message" and whole.role == "assistant"
    assert whole.id.startswith("msg_")
    assert whole.stop_reason in ("end_turn", "max_tokens")
    assert whole.stop_sequence is None
    assert 0 < whole.usage.output_tokens <= 12

    # The raw event sequence (the SDK hides `ping`).
    status, _, body = raw(
        server, "POST", "/v1/messages", json.dumps({**{k: v for k, v in kw.items() if k != "extra_body"}, "temperature": 0, "stream": True}).encode(),
        headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01", "Authorization": ""},
    )
    assert status == 200
    names = [line[len("event: "):] for line in body.decode().splitlines() if line.startswith("event: ")]
    assert names[:2] == ["message_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    assert set(names[2:-2]) <= {"content_block_start", "content_block_delta", "content_block_stop"}
    if whole.content:
        assert names[2] == "content_block_start" and names[-3] == "content_block_stop"

    events = list(c.messages.create(stream=True, **kw))
    assert [e.type for e in events] == [n for n in names if n != "ping"]
    deltas = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert deltas == text_of(whole)
    assert events[-2].delta.stop_reason == whole.stop_reason

    # The SDK's own accumulation gives the same message, with the cache split of the repeat.
    with c.messages.stream(**kw) as s:
        final = s.get_final_message()
    assert text_of(final) == text_of(whole)
    assert final.stop_reason == whole.stop_reason
    assert final.usage.cache_read_input_tokens > 0
    counted = c.messages.count_tokens(model=MODEL, system=LONG_SYSTEM, messages=ask("Hi")).input_tokens
    for u in (whole.usage, final.usage):
        assert u.input_tokens + u.cache_read_input_tokens == counted
        assert u.cache_creation_input_tokens == 0


def test_stop_sequence_and_max_tokens(server):
    c = client(server)
    free = c.messages.create(model=MODEL, max_tokens=24, messages=ask("Count"), **GREEDY)
    assert free.stop_reason == "max_tokens"
    text = text_of(free)
    stop = text[4:7]
    assert len(stop) == 3, text
    r = c.messages.create(
        model=MODEL, max_tokens=24, messages=ask("Count"), stop_sequences=["zzzq", stop], **GREEDY
    )
    assert (r.stop_reason, r.stop_sequence) == ("stop_sequence", stop)
    assert text_of(r) == text[: text.index(stop)]


@pytest.mark.parametrize(
    "choice", [{"type": "any", "disable_parallel_tool_use": True}, {"type": "tool", "name": "get_weather"}]
)
def test_forced_tool_use_round_trip(server, choice):
    c = client(server)
    kw = dict(model=MODEL, max_tokens=200, tools=[WEATHER], tool_choice=choice, **GREEDY)
    r = c.messages.create(messages=ask("Weather in Paris?"), **kw)
    assert r.stop_reason == "tool_use"
    calls = [b for b in r.content if b.type == "tool_use"]
    assert calls and calls[0].name == "get_weather"
    assert calls[0].input["city"] in ("Paris", "Oslo")
    assert calls[0].id.startswith("toolu_")

    with c.messages.stream(messages=ask("Weather in Paris?"), **kw) as s:
        events = list(s)
        final = s.get_final_message()
    assert any(e.type == "content_block_delta" and e.delta.type == "input_json_delta" for e in events)
    assert final.stop_reason == "tool_use"
    assert [b.input for b in final.content if b.type == "tool_use"] == [b.input for b in calls]

    history = ask("Weather in Paris?") + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in r.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": calls[0].id, "content": "sunny, 21 C"}]},
    ]
    follow = c.messages.create(model=MODEL, max_tokens=6, tools=[WEATHER], messages=history, **GREEDY)
    assert follow.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert follow.usage.input_tokens + follow.usage.cache_read_input_tokens > r.usage.input_tokens


def test_errors_in_anthropic_shape(server):
    with pytest.raises(anthropic.AuthenticationError) as e:
        client(server, key="sk-wrong").messages.create(model=MODEL, max_tokens=4, messages=ask())
    assert e.value.status_code == 401
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "authentication_error"

    c = client(server)
    for bad in (
        dict(max_tokens=4, messages=ask(), extra_body={"temperature": 1.5}),
        dict(max_tokens=0, messages=ask()),
        dict(max_tokens=4, messages=[{"role": "user", "content": [{"type": "image", "source": {}}]}]),
        dict(max_tokens=4, messages=ask(), tool_choice={"type": "tool", "name": "missing"}, tools=[WEATHER]),
    ):
        with pytest.raises(anthropic.BadRequestError) as e:
            c.messages.create(model=MODEL, **bad)
        body = e.value.body
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", body
        assert body["error"]["message"]
    # max_tokens is required, as Anthropic requires it (the SDK insists too: send it raw).
    status, _, out = raw(
        server, "POST", "/v1/messages", json.dumps({"model": MODEL, "messages": ask()}).encode(),
        headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01", "Authorization": ""},
    )
    assert status == 400
    assert json.loads(out)["error"]["message"].startswith("max_tokens")


def test_tokenize_detokenize_and_models(server):
    text = "Hello wörld"
    status, _, out = raw(server, "POST", "/tokenize", json.dumps({"content": text}).encode())
    assert status == 200
    ids = json.loads(out)["tokens"]
    assert ids and all(isinstance(i, int) for i in ids)
    _, _, out = raw(server, "POST", "/tokenize", json.dumps({"content": text, "with_pieces": True}).encode())
    pieces = json.loads(out)["tokens"]
    assert [p["id"] for p in pieces] == ids
    joined = b"".join(p["piece"].encode() if isinstance(p["piece"], str) else bytes(p["piece"]) for p in pieces)
    assert joined.decode() == text
    status, _, out = raw(server, "POST", "/detokenize", json.dumps({"tokens": ids}).encode())
    assert (status, json.loads(out)) == (200, {"content": text})
    status, _, out = raw(server, "POST", "/detokenize", json.dumps({"tokens": [ids[0], 10**9]}).encode())
    assert status == 400 and json.loads(out)["error"]["param"] == "tokens"
    # The prompt of a message is what /tokenize counts for its rendered text; here, the raw
    # text's count matches the completions route's prompt count.
    status, _, out = raw(
        server, "POST", "/v1/completions", json.dumps({"model": MODEL, "prompt": text, "max_tokens": 1}).encode()
    )
    _, _, with_special = raw(
        server, "POST", "/tokenize", json.dumps({"content": text, "add_special": True}).encode()
    )
    assert json.loads(out)["usage"]["prompt_tokens"] == len(json.loads(with_special)["tokens"])

    _, _, out = raw(server, "GET", "/v1/models")
    m = json.loads(out)["data"][0]
    assert m["context_length"] == m["max_model_len"] == m["meta"]["n_ctx"] == 1024
    assert m["meta"]["n_ctx_train"] > 0 and m["meta"]["n_vocab"] > 0
