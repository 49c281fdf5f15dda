"""Starts the real `moela serve` on loopback for the end-to-end tests.

The binary is $MOELA_BIN, else target/debug/moela (built by `cargo test` / `cargo build`).
The model is the tiny V3 reference checkpoint: random weights, so text is gibberish but
deterministic; tests check shapes, determinism and constraints, never meaning.
"""

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "tests" / "fixtures" / "models" / "v3"
API_KEY = "sk-e2e-test-key"


def binary() -> str:
    b = os.environ.get("MOELA_BIN") or str(ROOT / "target" / "debug" / "moela")
    if not Path(b).exists():
        pytest.fail(f"moela binary not found at {b}: run `cargo build` first or set MOELA_BIN")
    return b


class Server:
    """One `moela serve` process on 127.0.0.1 with a free port."""

    def __init__(self, *args: str):
        cmd = [binary(), "serve", "--model", str(MODEL), "--host", "127.0.0.1", "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        self.port = None
        deadline = time.monotonic() + 60
        while self.port is None:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.proc.kill()
                raise RuntimeError("moela serve did not start:\n" + "".join(self.log) + self.proc.stderr.read())
            line = self.proc.stderr.readline()
            self.log.append(line)
            m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
        # Keep draining stderr so the server never blocks on a full pipe.
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        self.url = f"http://127.0.0.1:{self.port}"

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, then the exit code (kills after `timeout`)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("moela serve did not exit after SIGTERM:\n" + "".join(self.log))


@pytest.fixture(scope="session")
def server():
    s = Server("--api-key", API_KEY, "--max-batch", "8", "--max-queue", "128", "--ctx", "1024")
    yield s
    assert s.terminate() == 0, "".join(s.log)


@pytest.fixture
def fresh_server():
    """A private server for tests that shut it down or fill its queue."""
    started = []

    def start(*args: str) -> Server:
        s = Server(*args)
        started.append(s)
        return s

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()
