"""A real Mosquitto for the tests (on a free 127.0.0.1 port, generated config, stopped after),
worker threads and worker processes, all stopped (bounded waits) when the test ends.

Without mosquitto or aiomqtt the tests skip — unless AGENTRT_REQUIRE_MOSQUITTO=1 (CI sets it),
which makes that a failure, so CI cannot pass without running them."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REQUIRED = os.environ.get("AGENTRT_REQUIRE_MOSQUITTO") == "1"
TESTS = Path(__file__).resolve().parent


def need_broker_stack() -> None:
    from agentrt.tools.mqtt.broker import mosquitto_binary
    try:
        import aiomqtt  # noqa: F401
        missing = None if mosquitto_binary() else "mosquitto is not installed (apt-get install -y mosquitto)"
    except ImportError:
        missing = "aiomqtt is not installed (pip install 'agentrt[mqtt]')"
    if missing:
        if REQUIRED:
            pytest.fail(f"{missing}, and AGENTRT_REQUIRE_MOSQUITTO=1")
        pytest.skip(reason=missing)


@pytest.fixture
def broker():
    need_broker_stack()
    from agentrt.tools.mqtt import Mosquitto
    b = Mosquitto().start()
    pid = b.proc.pid
    yield b
    b.close()
    assert b.proc is None and not _alive(pid), "mosquitto still running after the test"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:                                     # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


class ThreadWorker:
    """A Worker serving on its own event loop in a thread of the test process."""

    def __init__(self, tools, url: str, **options):
        from agentrt.tools.mqtt import Worker
        self.worker = Worker(tools, url, **options)
        self.loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.worker.connected.is_set():
            assert time.monotonic() < deadline, "worker did not connect within 10 s"
            time.sleep(0.01)

    def _main(self) -> None:
        self.loop.run_until_complete(self.worker.serve(self._stop))
        self.loop.close()

    @property
    def id(self) -> str:
        return self.worker.id

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
            self.thread.join(10)
        assert not self.thread.is_alive(), "worker thread did not stop within 10 s"


class Fleet:
    """Workers a test starts; all stopped (and checked gone) at teardown."""

    def __init__(self, url: str):
        self.url, self.threads, self.procs = url, [], []

    def thread(self, tools, **options) -> ThreadWorker:
        w = ThreadWorker(tools, self.url, **options)
        self.threads.append(w)
        return w

    def process(self, worker_id: str, target: str = str(TESTS / "mqtt_tools.py"), *args: str) -> subprocess.Popen:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}
        proc = subprocess.Popen([sys.executable, "-m", "agentrt.cli", "worker", target, "--broker", self.url,
                                 "--id", worker_id, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env, text=True)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for w in self.threads:
            w.stop()
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            if p.stdout:
                p.stdout.close()
        assert all(p.poll() is not None for p in self.procs), "a worker process survived the test"


@pytest.fixture
def fleet(broker):
    f = Fleet(broker.url)
    yield f
    f.close()


@pytest.fixture
def remote(broker):
    from agentrt.tools.mqtt import RemoteTools
    r = RemoteTools(broker.url, accept_timeout=2.0)
    yield r
    r.close()
    assert not r._thread.is_alive(), "the remote tools client thread survived close()"
