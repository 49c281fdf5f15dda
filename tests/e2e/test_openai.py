"""`moela serve` driven by the official `openai` client over loopback.

Every request is bounded (max_tokens, client timeouts); the load test uses a fixed number of
streams and ends by checking the engine is idle with every KV block released.
"""

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from openai import OpenAI

from conftest import API_KEY

MODEL = "v3"


def client(server, key=API_KEY) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)


def raw(server, method, path, body=None, headers=None):
    """A plain HTTP request: (status, headers, body bytes)."""
    h = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    h.update(headers or {})
    req = urllib.request.Request(server.url + path, data=body, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def metrics(server) -> dict:
    status, _, body = raw(server, "GET", "/metrics")
    assert status == 200
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def wait_idle(server, timeout=20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        m = metrics(server)
        if m["moela_running_sequences"] == 0 and m["moela_queue_depth"] == 0 and m["moela_kv_blocks_used"] == 0:
            return m
        assert time.monotonic() < deadline, f"engine not idle: {m}"
        time.sleep(0.05)


def ask(text="Hello"):
    return [{"role": "user", "content": text}]


BOUNDED_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 8},
        "ok": {"type": "boolean"},
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
        "kind": {"enum": ["a", "b"]},
    },
    "required": ["city", "ok", "n", "kind"],
    "additionalProperties": False,
}

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"enum": ["Paris", "Oslo"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def test_models(server):
    c = client(server)
    models = c.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert c.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-nothing")


def test_health_is_open(server):
    status, _, body = raw(server, "GET", "/health", headers={"Authorization": ""})
    assert (status, json.loads(body)) == (200, {"status": "ok"})


def test_chat_completion(server):
    r = client(server).chat.completions.create(model=MODEL, messages=ask(), max_tokens=12, temperature=0)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    ch = r.choices[0]
    assert ch.message.role == "assistant"
    assert isinstance(ch.message.content, str) and ch.message.content
    assert ch.finish_reason in ("stop", "length")
    assert ch.message.tool_calls is None
    u = r.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert 0 < u.completion_tokens <= 12
    extra = u.model_extra
    assert extra["prompt_cache_hit_tokens"] + extra["prompt_cache_miss_tokens"] == u.prompt_tokens
    assert u.prompt_tokens_details.cached_tokens == extra["prompt_cache_hit_tokens"]


def test_prefix_cache_hits_are_reported_on_repeat(server):
    c = client(server)
    msgs = ask("A long shared prefix " * 20)
    c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=2, temperature=0)
    r = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=2, temperature=0)
    extra = r.usage.model_extra
    assert extra["prompt_cache_hit_tokens"] + extra["prompt_cache_miss_tokens"] == r.usage.prompt_tokens
    assert extra["prompt_cache_hit_tokens"] == r.usage.prompt_tokens_details.cached_tokens
    assert 0 < extra["prompt_cache_hit_tokens"] < r.usage.prompt_tokens  # whole blocks of the repeat
    assert metrics(server)["moela_prompt_cache_hit_tokens_total"] >= extra["prompt_cache_hit_tokens"]


def test_stream_equals_whole_and_ends_with_usage(server):
    c = client(server)
    whole = c.chat.completions.create(model=MODEL, messages=ask(), max_tokens=10, temperature=0)
    chunks = list(
        c.chat.completions.create(
            model=MODEL, messages=ask(), max_tokens=10, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert text == whole.choices[0].message.content
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(ch.usage is None for ch in chunks[:-1])


def test_completions(server):
    c = client(server)
    r = c.completions.create(model=MODEL, prompt="Once upon", max_tokens=6, temperature=0)
    assert r.object == "text_completion"
    text = r.choices[0].text
    assert r.usage.completion_tokens <= 6
    streamed = "".join(
        ch.choices[0].text
        for ch in c.completions.create(model=MODEL, prompt="Once upon", max_tokens=6, temperature=0, stream=True)
        if ch.choices
    )
    assert streamed == text
    echo = c.completions.create(model=MODEL, prompt="Once upon", max_tokens=6, temperature=0, echo=True)
    assert echo.choices[0].text == "Once upon" + text
    lp = c.completions.create(model=MODEL, prompt="Once upon", max_tokens=3, temperature=0, logprobs=2).choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == 3
    assert all(1 <= len(t) <= 2 for t in lp.top_logprobs)  # keyed by text: equal texts merge


def test_logprobs(server):
    r = client(server).chat.completions.create(
        model=MODEL, messages=ask(), max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for t in content:
        assert t.logprob <= 0
        assert len(t.top_logprobs) == 3
        assert [a.logprob for a in t.top_logprobs] == sorted((a.logprob for a in t.top_logprobs), reverse=True)
        assert t.top_logprobs[0].token == t.token  # greedy picks the most likely
    assert bytes(b for t in content for b in t.bytes).decode("utf-8", "replace") == r.choices[0].message.content


def test_stop(server):
    c = client(server)
    full = c.chat.completions.create(model=MODEL, messages=ask(), max_tokens=20, temperature=0).choices[0].message.content
    assert len(full) > 6
    stop = full[3:5]
    r = c.chat.completions.create(model=MODEL, messages=ask(), max_tokens=20, temperature=0, stop=[stop])
    assert r.choices[0].message.content == full[: full.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_seeded_determinism_and_n(server):
    c = client(server)
    kw = dict(model=MODEL, messages=ask("Tell me"), max_tokens=16, temperature=1.0, seed=42, n=2)
    a = c.chat.completions.create(**kw)
    b = c.chat.completions.create(**kw)
    assert [x.message.content for x in a.choices] == [x.message.content for x in b.choices]
    assert [x.index for x in a.choices] == [0, 1]
    other = c.chat.completions.create(**{**kw, "seed": 7, "n": 1})
    assert other.choices[0].message.content != a.choices[0].message.content


def test_json_schema_is_enforced(server):
    c = client(server)
    for seed in (1, 2):
        r = c.chat.completions.create(
            model=MODEL, messages=ask("JSON please"), max_tokens=200, temperature=1.0, seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": BOUNDED_SCHEMA, "strict": True}},
        )
        assert r.choices[0].finish_reason == "stop"
        v = json.loads(r.choices[0].message.content)
        assert set(v) == {"city", "ok", "n", "kind"}
        assert isinstance(v["city"], str) and len(v["city"]) <= 8
        assert isinstance(v["ok"], bool)
        assert isinstance(v["n"], int) and 0 <= v["n"] <= 99
        assert v["kind"] in ("a", "b")


def test_json_object(server):
    r = client(server).chat.completions.create(
        model=MODEL, messages=ask("JSON"), max_tokens=200, temperature=0, response_format={"type": "json_object"}
    )
    content = r.choices[0].message.content
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)
    else:
        assert content.lstrip().startswith("{")


def test_forced_tool_call(server):
    c = client(server)
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        r = c.chat.completions.create(
            model=MODEL, messages=ask("Weather in Oslo?"), max_tokens=200, temperature=0,
            tools=[WEATHER], tool_choice=choice, parallel_tool_calls=False,
        )
        ch = r.choices[0]
        assert ch.finish_reason == "tool_calls"
        assert ch.message.content is None
        (call,) = ch.message.tool_calls
        assert call.id.startswith("call_") and call.type == "function"
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments)["city"] in ("Paris", "Oslo")
    # Streaming: the call arrives as a tool_calls delta; no markup in content.
    chunks = list(
        c.chat.completions.create(
            model=MODEL, messages=ask("Weather?"), max_tokens=200, temperature=0, stream=True,
            tools=[WEATHER], tool_choice="required", parallel_tool_calls=False,
        )
    )
    calls = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert [tc.function.name for tc in calls] == ["get_weather"]
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == ""
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == ["tool_calls"]


def test_auto_tools_response_shape(server):
    c = client(server)
    for seed in range(3):
        r = c.chat.completions.create(
            model=MODEL, messages=ask("Weather?"), max_tokens=24, temperature=1.0, seed=seed, tools=[WEATHER]
        )
        ch = r.choices[0]
        assert (ch.finish_reason == "tool_calls") == bool(ch.message.tool_calls)
        if not ch.message.tool_calls:
            assert isinstance(ch.message.content, str)
    # A tool round trip renders through the chat template.
    msgs = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    r = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4, tools=[WEATHER])
    assert r.choices[0].message.role == "assistant"


def test_auth(server):
    with pytest.raises(openai.AuthenticationError) as e:
        client(server, key="sk-wrong").chat.completions.create(model=MODEL, messages=ask(), max_tokens=2)
    assert e.value.status_code == 401
    assert e.value.body["code"] == "invalid_api_key"
    status, headers, body = raw(server, "POST", "/v1/chat/completions", b"{}", headers={"Authorization": ""})
    assert status == 401
    assert "missing" in json.loads(body)["error"]["message"]


@pytest.mark.parametrize(
    "kwargs, param, needle",
    [
        (dict(max_tokens=-1), "max_tokens", "at least 1"),
        (dict(max_completion_tokens=0), "max_completion_tokens", "at least 1"),
        (dict(temperature=9), "temperature", "temperature"),
        (dict(n=0), "n", "n must be"),
        (dict(top_p=0), "top_p", "top_p"),
        (dict(extra_body={"temperature": "hot"}), "temperature", "temperature"),
        (dict(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role", "role"),
        (dict(response_format={"type": "json_schema", "json_schema": {"name": "x"}}), "response_format.json_schema.schema", "schema"),
        (dict(tool_choice="required"), "tool_choice", "no tools"),
        (dict(logprobs=True, top_logprobs=99), "top_logprobs", "top_logprobs"),
    ],
)
def test_bad_requests(server, kwargs, param, needle):
    args = dict(model=MODEL, messages=ask(), max_tokens=2)
    args.update(kwargs)
    with pytest.raises(openai.BadRequestError) as e:
        client(server).chat.completions.create(**args)
    err = e.value.body
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert needle in err["message"]


def test_prompt_longer_than_context(server):
    with pytest.raises(openai.BadRequestError) as e:
        client(server).chat.completions.create(model=MODEL, messages=ask("word " * 1500), max_tokens=2)
    assert e.value.body["code"] == "context_length_exceeded"
    assert "context holds 1024" in e.value.body["message"]


@pytest.mark.parametrize(
    "body, needle",
    [
        (b'{"model": "v3", "messages": [', "not valid JSON"),
        (b'{"model": "v3", "messages": [{"role": "user", "content": "\xff\xfe"}]}', "UTF-8"),
        (b"", "empty"),
        (b'{"model": "v3", "messages": [{"role": "user", "content": "hi"}]} trailing', "not valid JSON"),
        (b'{"model": "v3", "messages": [{"role": "user", "content": "\\ud800"}]}', "JSON"),
    ],
)
def test_malformed_bodies(server, body, needle):
    status, _, out = raw(server, "POST", "/v1/chat/completions", body)
    assert status == 400, out
    err = json.loads(out)["error"]
    assert needle in err["message"]
    assert set(err) == {"message", "type", "param", "code"}


def test_oversized_body_and_unknown_routes(server):
    status, _, out = raw(server, "POST", "/v1/chat/completions", b'{"messages": "' + b"x" * (5 << 20) + b'"}')
    assert status == 413 and "limit" in json.loads(out)["error"]["message"]
    status, _, out = raw(server, "GET", "/v1/nothing")
    assert status == 404 and json.loads(out)["error"]["type"] == "invalid_request_error"
    status, _, out = raw(server, "DELETE", "/v1/chat/completions")
    assert status == 405 and "error" in json.loads(out)


def test_metrics(server):
    client(server).chat.completions.create(model=MODEL, messages=ask(), max_tokens=3)
    m = metrics(server)
    for name in (
        "moela_queue_depth", "moela_running_sequences", "moela_kv_cache_tokens",
        "moela_kv_blocks_used", "moela_kv_blocks_free", "moela_prompt_tokens_total",
        "moela_generation_tokens_total", "moela_prompt_cache_hit_tokens_total",
        "moela_time_to_first_token_seconds_count", "moela_inter_token_latency_seconds_count",
        'moela_key_requests_total{key="default",outcome="completed"}',
    ):
        assert name in m, name
    assert m['moela_requests_total{endpoint="/v1/chat/completions",status="200"}'] >= 1
    assert m["moela_time_to_first_token_seconds_count"] >= 1


def test_client_disconnect_cancels(server):
    stream = client(server).chat.completions.create(
        model=MODEL, messages=ask("Go on"), max_tokens=900, temperature=0, stream=True
    )
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    wait_idle(server)


def test_load_64_concurrent_streams(server):
    c = client(server)

    def one(i):
        text, finish = "", None
        for ch in c.chat.completions.create(
            model=MODEL, messages=ask(f"Request {i}"), max_tokens=16, temperature=0.8, seed=i, stream=True
        ):
            if ch.choices:
                text += ch.choices[0].delta.content or ""
                finish = ch.choices[0].finish_reason or finish
        return finish

    with ThreadPoolExecutor(max_workers=64) as pool:
        results = list(pool.map(one, range(64)))
    assert all(f in ("stop", "length") for f in results), results
    m = wait_idle(server)
    assert m["moela_kv_cache_tokens"] == 0
    assert m["moela_stream_errors_total"] == 0


def hostile_tools(n):
    """`n` small tools (a request with more than 128 is refused)."""
    return [dict(WEATHER, function=dict(WEATHER["function"], name=f"tool_{i}")) for i in range(n)]


def test_hostile_requests_get_cheap_400s_and_never_stall_health(server):
    """Parsing, tokenizing, template rendering and grammar compilation run off the HTTP runtime,
    bounded, behind cheap limits: a 3.6 MB one-word prompt is refused from its byte length
    (without tokenizing), more than 128 tools or a schema over 64 KB are refused, and /health
    stays fast (p99 < 50 ms) while 8 hostile requests (a 60 KB schema to compile, the oversized
    prompt) run at once."""
    big = json.dumps({"model": MODEL, "messages": ask("x" * 3_600_000), "max_tokens": 1}).encode()
    status, _, body = raw(server, "POST", "/v1/chat/completions", big)
    err = json.loads(body)["error"]
    assert status == 400 and err["code"] == "context_length_exceeded", err
    assert "bytes, at least" in err["message"], err
    too_many = json.dumps({"model": MODEL, "messages": ask(), "max_tokens": 1, "tools": hostile_tools(129)})
    status, _, body = raw(server, "POST", "/v1/chat/completions", too_many.encode())
    err = json.loads(body)["error"]
    assert status == 400 and err["param"] == "tools" and "at most 128" in err["message"], err

    def schema_request(n_props):
        props = {f"field_{k:04}": {"type": "string", "maxLength": 40} for k in range(n_props)}
        schema = {"type": "object", "properties": props, "additionalProperties": False}
        rf = {"type": "json_schema", "json_schema": {"name": "big", "schema": schema}}
        return json.dumps({"model": MODEL, "messages": ask("Go"), "max_tokens": 1, "temperature": 0,
                           "response_format": rf}).encode()

    status, _, body = raw(server, "POST", "/v1/chat/completions", schema_request(1600))
    err = json.loads(body)["error"]
    assert status == 400 and "at most 65536" in err["message"], err
    heavy = schema_request(1400)
    status, _, body = raw(server, "POST", "/v1/chat/completions", heavy)
    assert status == 200, body

    stop = threading.Event()
    outcomes = []

    def hostile(i):
        while not stop.is_set():
            status, _, _ = raw(server, "POST", "/v1/chat/completions", heavy if i % 2 else big)
            outcomes.append(status)

    threads = [threading.Thread(target=hostile, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    latencies = []
    for _ in range(100):
        t0 = time.monotonic()
        status, _, _ = raw(server, "GET", "/health")
        latencies.append(time.monotonic() - t0)
        assert status == 200
        time.sleep(0.02)
    stop.set()
    for t in threads:
        t.join()
    latencies.sort()
    p99 = latencies[98]
    assert p99 < 0.05, f"/health p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
    assert set(outcomes) == {200, 400}, outcomes
    wait_idle(server)


def closed_within(sock, seconds):
    """Whether the server closes `sock` within `seconds` (reading whatever it sends first)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except (socket.timeout, TimeoutError):
        return False
    except ConnectionResetError:
        return True


def test_slow_and_idle_clients_are_cut_and_capped(fresh_server):
    """Header-read, keep-alive idle and body timeouts, and a connection cap: idle and slow clients
    are closed, and they cannot keep /health from being answered (issue: 300 idle connections under
    `ulimit -n 256` made /health time out)."""
    s = fresh_server("--header-timeout", "1", "--body-timeout", "1", "--max-connections", "8")
    host, port = "127.0.0.1", s.port
    # An idle connection (never sends a byte) and one whose headers trickle in are closed.
    idle = socket.create_connection((host, port))
    slow = socket.create_connection((host, port))
    slow.sendall(b"GET /health HTTP/1.1\r\n")
    assert closed_within(idle, 5) and closed_within(slow, 5)
    # Keep-alive: after a response, an idle connection is closed too.
    ka = socket.create_connection((host, port))
    ka.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    ka.settimeout(5)
    assert ka.recv(4096).startswith(b"HTTP/1.1 200")
    assert closed_within(ka, 5)
    # A body that never completes: 408 after the body timeout.
    body = socket.create_connection((host, port))
    body.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{\"messages\"")
    body.settimeout(5)
    reply = body.recv(4096)
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert b"request_timeout" in reply
    # 30 idle connections against a cap of 8: /health is still answered, within the time the
    # idle ones hold their slots (rounds of 8 connections, 1 s header timeout each).
    hogs = [socket.create_connection((host, port)) for _ in range(30)]
    t0 = time.monotonic()
    status, _, _ = raw(s, "GET", "/health")
    assert status == 200 and time.monotonic() - t0 < 8
    for h in hogs + [idle, slow, ka, body]:
        h.close()


def test_full_queue_answers_429(fresh_server):
    s = fresh_server("--max-batch", "1", "--max-queue", "1", "--ctx", "2048")
    c = client(s, key="unused")
    long = dict(model=MODEL, messages=ask("Go on"), max_tokens=2000, temperature=0, stream=True)
    a = c.chat.completions.create(**long)
    next(iter(a))  # A is running
    deadline = time.monotonic() + 20
    while metrics(s)["moela_running_sequences"] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    b = c.chat.completions.create(**long)  # B waits in the queue
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model=MODEL, messages=ask(), max_tokens=2)
    assert e.value.response.headers["retry-after"] == "1"
    assert e.value.body["type"] == "rate_limit_error"
    a.close()
    b.close()
    wait_idle(s)
    assert s.terminate() == 0


def test_sigterm_drains_running_requests_then_exits(fresh_server):
    s = fresh_server()
    c = client(s, key="unused")
    stream = c.chat.completions.create(model=MODEL, messages=ask("Go on"), max_tokens=300, temperature=0, stream=True)
    it = iter(stream)
    chunks = [next(it)]
    s.proc.send_signal(15)  # SIGTERM while the request runs
    # Draining: the listener stays open; /health and new requests answer 503 with Retry-After.
    deadline = time.monotonic() + 10
    while raw(s, "GET", "/health")[0] != 503:
        assert time.monotonic() < deadline, "/health never reported draining"
        time.sleep(0.01)
    status, _, body = raw(s, "GET", "/health")
    assert status == 503 and json.loads(body)["status"] == "draining"
    body = json.dumps({"model": MODEL, "messages": ask(), "max_tokens": 2}).encode()
    status, headers, err = raw(s, "POST", "/v1/chat/completions", body)
    assert status == 503 and headers.get("retry-after") == "1", (status, headers)
    assert "shutting down" in json.loads(err)["error"]["message"]
    chunks += list(it)
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finish == ["length"], "the running request finished in full"
    assert s.proc.wait(timeout=30) == 0
    assert any("draining" in line for line in s.log)
    with pytest.raises(openai.APIConnectionError):
        c.models.list()


def test_sigterm_drain_timeout_ends_open_streams_with_an_error_and_done(fresh_server):
    s = fresh_server("--drain-timeout", "0", "--ctx", "2560")
    body = json.dumps({"model": MODEL, "messages": ask("Go on"), "max_tokens": 2500, "temperature": 0,
                       "stream": True}).encode()
    req = urllib.request.Request(s.url + "/v1/chat/completions", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        first = r.readline()
        assert first.startswith(b"data: {"), first
        started = time.monotonic()
        s.proc.send_signal(15)
        events = [line.strip() for line in r.read().decode().splitlines() if line.strip()]
    assert events[-1] == "data: [DONE]", events[-3:]
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert error["type"] == "server_error" and "shutting down" in error["message"], error
    assert s.proc.wait(timeout=30) == 0
    assert time.monotonic() - started < 15
    assert any("drain timeout" in line for line in s.log)
