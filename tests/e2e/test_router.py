"""Two `moela serve` replicas behind SGLang's router (`sglang-router`, pinned in requirements.txt,
cache-aware policy), all on loopback, driven by the official `openai` client through the router
(docs/deploy.md).

Which replica served a request is read from the replicas' own `/metrics` around it: exactly one
replica's count of answered chat completions moves (the checked requests are sent one at a time;
the one long request that runs beside them is counted when it ends, after the checks).
The router is required: without it these tests fail, they do not skip.
"""

import concurrent.futures
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest
from openai import OpenAI

from conftest import API_KEY, Server
from test_openai import metrics, raw

MODEL = "v3"
CHAT_OK = 'moela_requests_total{endpoint="/v1/chat/completions",status="200"}'
HITS = "moela_prompt_cache_hit_tokens_total"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Router:
    """`python -m sglang_router.launch_router` over the given replicas, cache-aware, checking
    each replica's `/health` every second (one failure takes it out), retrying a refused request
    for about 1.6 s (docs/deploy.md)."""

    def __init__(self, replicas):
        try:
            import sglang_router  # noqa: F401
        except ImportError:
            pytest.fail("sglang-router is not installed: pip install -r tests/e2e/requirements.txt")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1",
               "--port", str(port), "--worker-urls", *[r.url for r in replicas],
               "--policy", "cache_aware", "--health-check-interval-secs", "1",
               "--health-failure-threshold", "1", "--retry-initial-backoff-ms", "200",
               "--prometheus-host", "127.0.0.1",
               "--prometheus-port", str(free_port()), "--api-key", API_KEY, "--log-level", "warn"]
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                workers = self.workers()
                if len(workers) == len(replicas) and all(w["is_healthy"] for w in workers.values()):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("the router did not start:\n" + self.output())
            time.sleep(0.1)

    def workers(self) -> dict:
        """The router's worker list, by URL."""
        req = urllib.request.Request(self.url + "/workers", headers={"Authorization": f"Bearer {API_KEY}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return {w["url"]: w for w in json.loads(r.read())["workers"]}

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def fleet():
    """Two replicas (small batches, long enough context for the drain test) and the router."""
    replicas = []
    router = None
    try:
        for _ in range(2):
            replicas.append(Server("--api-key", API_KEY, "--max-batch", "2", "--ctx", "2560"))
        router = Router(replicas)
        yield replicas, router
    finally:
        if router is not None:
            router.stop()
        for s in replicas:
            if s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()


def counters(replicas):
    return [(m.get(CHAT_OK, 0.0), m[HITS]) for m in map(metrics, replicas)]


def turn(c: OpenAI, replicas, messages):
    """One chat request through the router: (response, index of the replica that served it,
    prompt-cache hit tokens each replica counted for it)."""
    before = counters(replicas)
    r = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
    after = counters(replicas)
    served = [a[0] - b[0] for a, b in zip(after, before)]
    assert sorted(served) == [0] * (len(replicas) - 1) + [1], f"one replica answers each request: {served}"
    return r, served.index(1), [a[1] - b[1] for a, b in zip(after, before)]


def converse(c, replicas, opening, follow_ups):
    """A multi-turn conversation (every request repeats the whole history): per turn, the serving
    replica and the hits per replica."""
    messages = [{"role": "user", "content": opening}]
    turns = []
    for nxt in [*follow_ups, None]:
        r, who, hits = turn(c, replicas, messages)
        hit = r.usage.model_extra["prompt_cache_hit_tokens"]
        assert hits[who] == hit, (hits, hit)
        turns.append((who, hits))
        messages.append({"role": "assistant", "content": r.choices[0].message.content})
        if nxt is not None:
            messages.append({"role": "user", "content": nxt})
    return messages, turns


OPENING = ("You are reviewing a long design document about a distributed key-value store with "
           "consistent hashing, leaderless replication, hinted handoff, read repair, Merkle-tree "
           "anti-entropy and sloppy quorums. Summarize each section in one sentence, then list open "
           "questions about failure handling and about how clients observe stale reads.")
FOLLOW_UPS = ["Now the section on hinted handoff, in more detail.",
              "What happens to reads during a network partition?",
              "And how does anti-entropy repair converge afterwards?"]
OTHERS = ["Quelle est la capitale de la Norvège et pourquoi ?",
          "Write a haiku about rain on a tin roof.",
          "Zähle drei Primzahlen über hundert auf."]


def test_router_keeps_a_conversation_on_one_replica_and_drains_on_sigterm(fleet):
    replicas, router = fleet
    c = OpenAI(base_url=router.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)

    # The router registered each replica under its served model name (from /server_info).
    assert {w["model_id"] for w in router.workers().values()} == {MODEL}
    assert [m.id for m in c.models.list().data] == [MODEL]

    messages, turns = converse(c, replicas, OPENING, FOLLOW_UPS)
    home = turns[0][0]
    other = 1 - home
    assert [who for who, _ in turns] == [home] * len(turns), f"the conversation moved: {turns}"
    for who, hits in turns[1:]:
        # Every follow-up reused the cached history, on the replica that holds it; none on the other.
        assert hits[home] > 0 and hits[other] == 0, turns
    print(f"conversation on replica {home}: hit tokens per turn {[h[home] for _, h in turns]}")

    # The conversation's next request asks for eight long answers (two decoded at a time on the
    # replica): it goes to the conversation's replica and keeps it busy for a while.
    s = replicas[home]
    long = [*messages, {"role": "user", "content": "Now write every section out in full, several times."}]
    busy = concurrent.futures.ThreadPoolExecutor(1).submit(
        c.chat.completions.create, model=MODEL, messages=long, max_tokens=2500, n=8, temperature=0,
        extra_body={"ignore_eos": True})
    deadline = time.monotonic() + 20
    while metrics(s)["moela_running_sequences"] < 2:
        assert time.monotonic() < deadline and not busy.done(), busy
        time.sleep(0.02)

    # Unrelated conversations share no prefix with it: the router sends each to the least loaded
    # replica, the other one, and its second turn follows it there.
    for text in OTHERS:
        _, others = converse(c, replicas, text, ["Say more."])
        assert [who for who, _ in others] == [other, other], (others, "busy:", home)
    served = [m[CHAT_OK] for m in map(metrics, replicas)]
    print(f"chat completions answered per replica: {served}")
    assert not busy.done(), "the busy request ended too early to show anything"

    # SIGTERM the busy replica: it drains (/health 503, new requests 503, the open request goes
    # on); the conversation goes on through the router on the other replica at once (a request
    # that reaches the draining replica gets 503 and the router retries it), and the router's
    # health check takes the draining replica out.
    refused = 'moela_requests_total{endpoint="/v1/chat/completions",status="503"}'
    s.proc.send_signal(15)
    sent = time.monotonic()
    while raw(s, "GET", "/health")[0] != 503:
        assert time.monotonic() < sent + 10, "/health never reported draining"
        time.sleep(0.01)
    for question in ["What about hinted handoff limits?", "And sloppy quorums?"]:
        messages.append({"role": "user", "content": question})
        before = metrics(replicas[other])[CHAT_OK]
        r = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
        assert metrics(replicas[other])[CHAT_OK] == before + 1, "served by the remaining replica"
        messages.append({"role": "assistant", "content": r.choices[0].message.content})
    while router.workers()[s.url]["is_healthy"]:
        assert time.monotonic() < sent + 20, "the router kept the draining replica\n" + router.output()
        time.sleep(0.05)
    taken_out = time.monotonic() - sent
    m = metrics(s)
    assert not busy.done(), "taken out while draining, not after the drain"
    assert m[CHAT_OK] == served[home], "the draining replica answered no new request"
    retried = m.get(refused, 0.0)

    # The open request finished in full, through the router; then the replica exited.
    finish = [choice.finish_reason for choice in busy.result(timeout=120).choices]
    assert finish == ["length"] * 8, finish
    assert s.proc.wait(timeout=30) == 0
    print(f"drain: the router took the replica out {taken_out:.1f} s after SIGTERM, while it was busy; "
          f"it refused {retried:.0f} request(s) with 503, which the router retried; it exited "
          f"{time.monotonic() - sent:.1f} s after SIGTERM")
