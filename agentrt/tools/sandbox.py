"""File and Python-run tools confined to one directory, for a coding agent.

Every path a tool receives is resolved against the sandbox root; absolute paths, `..` escapes and
symlinks leading outside the root are refused. Tools return text for the model and never raise for
bad input. Code run by `run_python` / `run_code` runs in a jail (`agentrt.tools.jail`): always
resource limits (CPU seconds, memory, processes, file size, open files), a wall-clock limit and
its own process group (killed whole on timeout); where bubblewrap works, also no network, a
read-only system and only the sandbox writable. The first sandbox of a process states on stderr
which protection is in force (`Sandbox.protection`).

>>> with Sandbox() as box:
...     box.write_file("hello.py", "print('hi')")
...     box.run_python("hello.py")
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, NamedTuple

from agentrt.tools.jail import Jail, exit_note


class _Refused(Exception):
    """A path or input the sandbox will not accept; its message is the tool's error text."""


class _Captured(NamedTuple):
    text: str       # head + tail of the stream, decoded
    dropped: int    # bytes dropped between head and tail


class _StreamReader:
    """Drains a pipe in a thread, keeping only its first and last `cap` bytes."""

    __slots__ = ("_stream", "_cap", "_head", "_tail", "_dropped", "_thread")

    def __init__(self, stream: IO[bytes], cap: int) -> None:
        self._stream, self._cap = stream, cap
        self._head, self._tail, self._dropped = bytearray(), bytearray(), 0
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        with self._stream:
            while chunk := self._stream.read1(65536):
                room = self._cap - len(self._head)
                if room > 0:
                    self._head += chunk[:room]
                    chunk = chunk[room:]
                self._tail += chunk
                if len(self._tail) > self._cap:
                    excess = len(self._tail) - self._cap
                    self._dropped += excess
                    del self._tail[:excess]

    def result(self, wait: float) -> _Captured:
        self._thread.join(wait)
        text = (self._head + self._tail).decode("utf-8", errors="replace")
        return _Captured(text, self._dropped)


_MARKER_RESERVE = 32  # the longest "\n[truncated N chars]\n"


def _clip(cap: _Captured, limit: int) -> str:
    """Keep the start and the end of a stream (a traceback's last line matters most)."""
    text, extra = cap
    if len(text) <= limit and not extra:
        return text
    keep = min(max(limit - _MARKER_RESERVE, 0), len(text))
    head, tail = text[: keep // 2], text[len(text) - (keep - keep // 2):] if keep else ""
    return f"{head}\n[truncated {len(text) - keep + extra} chars]\n{tail}"


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Sandbox:
    """A directory the agent can list, read, write and run Python files in."""

    __slots__ = ("root", "run_timeout", "max_output_chars", "max_file_bytes", "jail", "_owned", "_closed")

    def __init__(self, root: str | Path | None = None, *, run_timeout: float = 10.0,
                 max_output_chars: int = 2000, max_file_bytes: int = 200_000, jail: Jail | None = None) -> None:
        self._owned = root is None
        self.root = Path(tempfile.mkdtemp(prefix="agentrt-sandbox-") if root is None else root).resolve()
        if not self.root.is_dir():
            raise ValueError(f"sandbox root {self.root} is not a directory")
        self.run_timeout, self.max_output_chars, self.max_file_bytes = run_timeout, max_output_chars, max_file_bytes
        self.jail = jail if jail is not None else default_jail()
        self._closed = False

    @property
    def protection(self) -> str:
        """Which protection code run here gets, in words."""
        return self.jail.protection

    # ------------------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Delete the root if this sandbox created it; safe to call twice."""
        if not self._closed and self._owned:
            shutil.rmtree(self.root, ignore_errors=True)
        self._closed = True

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ paths
    def _resolve(self, path: str) -> Path:
        """The absolute path for `path`, or _Refused when it is empty or leaves the root."""
        if self._closed:
            raise RuntimeError("sandbox is closed")
        if not isinstance(path, str) or not path.strip() or "\0" in path:
            raise _Refused(f"error: invalid path {path!r}")
        if os.path.isabs(path):
            raise _Refused(f"error: '{path}' is absolute; use a path relative to the sandbox")
        try:
            target = (self.root / path).resolve()  # follows symlinks: a link out of root is caught
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
            raise _Refused(f"error: cannot resolve '{path}': {exc}") from None
        if not target.is_relative_to(self.root):
            raise _Refused(f"error: '{path}' is outside the sandbox")
        return target

    # ------------------------------------------------------------------------------ file tools
    def list_files(self) -> str:
        """List the files in the sandbox with their sizes in bytes."""
        if self._closed:
            raise RuntimeError("sandbox is closed")
        lines: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.root):  # does not descend into symlinks
            dirnames.sort()
            base = Path(dirpath)
            for name in sorted(filenames) + [d for d in dirnames if (base / d).is_symlink()]:
                entry = base / name
                rel = entry.relative_to(self.root).as_posix()
                lines.append(f"{rel} (link)" if entry.is_symlink() else f"{rel} ({entry.stat().st_size} bytes)")
        if not lines:
            return "the sandbox is empty"
        return _clip(_Captured("\n".join(lines), 0), self.max_output_chars)

    def read_file(self, path: str) -> str:
        """Read a text file from the sandbox."""
        try:
            target = self._resolve(path)
            if not target.exists():
                return f"error: no such file '{path}'"
            if not target.is_file():
                return f"error: '{path}' is not a file"
            size = target.stat().st_size
            if size > self.max_file_bytes:
                return f"error: '{path}' is {size} bytes, over the {self.max_file_bytes}-byte limit"
            text = target.read_bytes().decode("utf-8", errors="replace")
        except _Refused as refused:
            return str(refused)
        except OSError as exc:
            return f"error: cannot read '{path}': {exc.strerror or exc}"
        return text if text else f"(file '{path}' is empty)"

    def write_file(self, path: str, content: str) -> str:
        """Write text to a file in the sandbox, creating folders as needed."""
        if not isinstance(content, str):
            return "error: content must be text"
        data = content.encode("utf-8", errors="replace")
        if len(data) > self.max_file_bytes:
            return f"error: content is {len(data)} bytes, over the {self.max_file_bytes}-byte limit"
        try:
            target = self._resolve(path)
            if target == self.root or target.is_dir():
                return f"error: '{path}' is a directory"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        except _Refused as refused:
            return str(refused)
        except OSError as exc:
            return f"error: cannot write '{path}': {exc.strerror or exc}"
        return f"wrote {len(data)} bytes to {target.relative_to(self.root).as_posix()}"

    # ------------------------------------------------------------------------------ run tools
    def run_python(self, path: str) -> str:
        """Run a Python file from the sandbox and show its exit code, stdout and stderr."""
        try:
            target = self._resolve(path)
        except _Refused as refused:
            return str(refused)
        if not target.is_file():
            return f"error: no such file '{path}'"
        return self._run(target)

    def run_code(self, code: str) -> str:
        """Run a snippet of Python code in the sandbox and show its exit code, stdout and stderr."""
        if self._closed:
            raise RuntimeError("sandbox is closed")
        if not isinstance(code, str) or not code.strip():
            return "error: no code given"
        data = code.encode("utf-8", errors="replace")
        if len(data) > self.max_file_bytes:
            return f"error: code is {len(data)} bytes, over the {self.max_file_bytes}-byte limit"
        fd, name = tempfile.mkstemp(prefix="_snippet_", suffix=".py", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return self._run(Path(name))
        finally:
            Path(name).unlink(missing_ok=True)

    def _run(self, script: Path) -> str:
        cap = 4 * self.max_output_chars  # bytes kept per end of each stream: enough for any clip
        # -E -s rather than -I: no PYTHON* variables or user site, but the script's folder stays on
        # sys.path (-I implies -P) so sandbox files can import each other.
        try:
            proc = self.jail.popen(script, self.root, cwd=self.root, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        except (OSError, subprocess.SubprocessError) as exc:  # e.g. out of processes after a fork bomb
            return f"error: could not start python: {exc}"
        out, err = _StreamReader(proc.stdout, cap), _StreamReader(proc.stderr, cap)
        code: int | None = None
        try:
            code = proc.wait(timeout=self.run_timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:  # also on KeyboardInterrupt: no process of the run may outlive it
            # Kills the whole group (the pid is its id): background processes the code started too.
            _kill_group(proc.pid)
            proc.wait()
        stdout, stderr = out.result(wait=2.0), err.result(wait=2.0)
        if code is None:
            return f"error: timed out after {self.run_timeout} s"
        return self._format(code, stdout, stderr)

    def _format(self, code: int, stdout: _Captured, stderr: _Captured) -> str:
        """The run report; both streams are clipped to fit max_output_chars together."""
        budget = max(self.max_output_chars - 40, 0)  # 40: the longest header lines
        half = budget // 2
        out_len, err_len = len(stdout.text) + stdout.dropped, len(stderr.text) + stderr.dropped
        if out_len <= half:
            out_limit, err_limit = out_len, budget - out_len
        elif err_len <= half:
            out_limit, err_limit = budget - err_len, err_len
        else:
            out_limit, err_limit = half, budget - half
        out, err = _clip(stdout, out_limit).rstrip("\n"), _clip(stderr, err_limit).rstrip("\n")
        return f"exit code {code}{exit_note(code)}\nstdout:\n{out or '(empty)'}\nstderr:\n{err or '(empty)'}"


_DEFAULT_JAIL: list[Jail] = []


def default_jail() -> Jail:
    """The process's jail (AGENTRT_JAIL picks the mode); made, and stated on stderr, on first use."""
    if not _DEFAULT_JAIL:
        jail = Jail()
        _DEFAULT_JAIL.append(jail)
        print(f"agentrt sandbox: code runs under {jail.protection}", file=sys.stderr)
    return _DEFAULT_JAIL[0]
