"""Broker addresses (`mqtt://[user[:password]@]host[:port][/prefix]`), the MQTT client settings
agentrt uses, and `Mosquitto`: a real broker started on a free loopback port with a generated
config (the tests, `agentrt bench tools`, and a user trying things out all use it).

    with Mosquitto() as broker:          # needs Debian's `mosquitto` package (apt-get install mosquitto)
        print(broker.url)                # mqtt://127.0.0.1:40123
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

DEFAULT_PORT = 1883
DEFAULT_PREFIX = "agentrt"


_CLIENT_LOG = logging.getLogger("agentrt.mqtt.client")
_CLIENT_LOG.setLevel(logging.ERROR)


class BrokerURLError(ValueError):
    """A broker address agentrt cannot use; the message says what would work."""


@dataclass(frozen=True, slots=True)
class BrokerURL:
    host: str
    port: int = DEFAULT_PORT
    username: str | None = None
    password: str | None = None
    prefix: str = DEFAULT_PREFIX           # every agentrt topic starts with it

    @classmethod
    def parse(cls, url: str | BrokerURL) -> BrokerURL:
        if isinstance(url, BrokerURL):
            return url
        text = str(url).strip()
        if "://" not in text:
            text = "mqtt://" + text
        parts = urlsplit(text)
        if parts.scheme not in ("mqtt", "tcp"):
            raise BrokerURLError(f"broker {url!r}: scheme {parts.scheme!r} is not supported; use mqtt://host:port")
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            raise BrokerURLError(f"broker {url!r}: the port is not a number in 1..65535") from None
        if not parts.hostname:
            raise BrokerURLError(f"broker {url!r} names no host; e.g. mqtt://127.0.0.1:1883")
        prefix = parts.path.strip("/") or DEFAULT_PREFIX
        if any(c in prefix for c in "+#") or "//" in prefix:
            raise BrokerURLError(f"broker {url!r}: topic prefix {prefix!r} may not contain + # or empty levels")
        return cls(parts.hostname, port, unquote(parts.username) if parts.username else None,
                   unquote(parts.password) if parts.password else None, prefix)

    def __str__(self) -> str:
        auth = f"{self.username}@" if self.username else ""
        tail = "" if self.prefix == DEFAULT_PREFIX else f"/{self.prefix}"
        return f"mqtt://{auth}{self.host}:{self.port}{tail}"

    def client(self, **options):
        """An aiomqtt client (MQTT v5) for this broker; `options` go to aiomqtt.Client."""
        import aiomqtt
        options.setdefault("logger", _CLIENT_LOG)   # aiomqtt's "N pending publish calls" is load, not trouble
        options.setdefault("keepalive", 5)
        options.setdefault("timeout", 5.0)
        # small request/response messages: Nagle's algorithm would hold each one ~40 ms
        options.setdefault("socket_options", [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        return aiomqtt.Client(self.host, self.port, username=self.username, password=self.password,
                              protocol=aiomqtt.ProtocolVersion.V5, **options)


def require_aiomqtt() -> None:
    """ImportError with the install line when the mqtt extra is missing."""
    try:
        import aiomqtt  # noqa: F401
    except ImportError:
        raise ImportError("remote tools and the event stream need aiomqtt: pip install 'agentrt[mqtt]'") from None


# ------------------------------------------------------------------------------------ a local broker
def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
                                              if os.access(p, os.X_OK)), None)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


class Mosquitto:
    """A mosquitto process on 127.0.0.1 (a free port unless given), its config generated in a
    temporary folder; `stop()` ends it (bounded), `restart()` stops and starts it on the same port."""

    def __init__(self, port: int | None = None, *, binary: str | None = None, start_timeout: float = 10.0):
        self.binary = binary or mosquitto_binary()
        if self.binary is None:
            raise FileNotFoundError("mosquitto is not installed (Debian/Ubuntu: apt-get install -y mosquitto)")
        self.host, self.port, self.start_timeout = "127.0.0.1", port or free_port(), start_timeout
        self._dir = Path(tempfile.mkdtemp(prefix="agentrt-mosquitto-"))
        self.config = self._dir / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
            f"max_inflight_messages 100\nmax_queued_messages 10000\nlog_dest file {self._dir / 'mosquitto.log'}\n"
            "log_type error\nlog_type warning\n")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> Mosquitto:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.config)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if not wait_for_port(self.host, self.port, self.start_timeout):
            err = b""
            if self.proc.poll() is not None:
                err = self.proc.stderr.read() if self.proc.stderr else b""
            self.stop()
            raise RuntimeError(f"mosquitto did not listen on {self.host}:{self.port} within "
                               f"{self.start_timeout} s: {err.decode(errors='replace').strip()}")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def mosquitto_version(binary: str | None = None) -> str:
    binary = binary or mosquitto_binary()
    if binary is None:
        return "absent"
    try:
        out = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = out.splitlines()[0] if out else ""
    return first.replace("mosquitto version", "").strip() or "unknown"
