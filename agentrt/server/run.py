"""Running the app: uvicorn with a drain on SIGTERM, and a background-thread server for tests,
examples and benchmarks (`ServerThread`).

On SIGTERM (or SIGINT) the server stops taking connections and answers new requests 503; the
requests in flight get `grace` seconds to finish; then what is left is aborted (blocks freed)
and the engine closes.
"""
from __future__ import annotations

import signal
import socket
import threading
import time

import uvicorn


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state):
        super().__init__(config)
        self.service_state = state

    def handle_exit(self, sig, frame) -> None:
        """uvicorn's, without re-raising the signal once the drain is over: a drained server exits 0."""
        self.service_state.draining = True          # new requests: 503 while the others finish
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True                  # a second Ctrl-C: stop waiting
        else:
            self.should_exit = True


def make_server(app, host: str = "127.0.0.1", port: int = 8000, *, grace: float = 30.0,
                log_level: str = "warning", access_log: bool = False) -> DrainingServer:
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log,
                            timeout_graceful_shutdown=grace, lifespan="on", timeout_keep_alive=30)
    return DrainingServer(config, app.state.service.state)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerThread:
    """`with ServerThread(app) as url:` serves `app` on a free loopback port in a thread."""

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None, grace: float = 5.0,
                 log_level: str = "warning"):
        self.app, self.host = app, host
        self.port = port or free_port(host)
        self.server = make_server(app, host, self.port, grace=grace, log_level=log_level)
        self.server.install_signal_handlers = lambda: None     # not the main thread
        self.thread = threading.Thread(target=self.server.run, name="agentrt-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.02)
        return self.url

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
