"""The jail model-written code runs in (the coding agent's `run_python` / `run_code`).

Always: resource limits on the child (CPU seconds, address space, processes, file size, open
files; no core dumps) and, when agentrt runs as root, a switch to an unprivileged user
(nobody) so that the process limit holds. Where bubblewrap works (Debian: `apt-get install
bubblewrap`), also an OS-level jail: no network (own network namespace), a read-only system
(/usr and the Python installation, nothing else of the host: no /home, /root, /etc, /work),
only the sandbox directory writable (at its own path), a private /tmp, its own PID namespace
(the whole tree dies with the run), no capabilities.

Without bubblewrap, as root, the sandbox folder's parents must be reachable by nobody (a folder
under /tmp is; pytest's 0700 tmp_path is not).

`Jail().protection` says in words which protection is in force; the sandbox states it once at
start-up. `AGENTRT_JAIL=bwrap|rlimits` forces a mode (`bwrap` fails loudly when unavailable).
"""
from __future__ import annotations

import functools
import os
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

NOBODY = 65534


@dataclass(frozen=True, slots=True)
class Limits:
    cpu_seconds: int = 10
    memory_bytes: int = 1 << 30          # address space
    processes: int = 64                  # beyond what the jail's user already runs
    file_bytes: int = 64 << 20           # largest file the code may write
    open_files: int = 256

    def describe(self) -> str:
        return (f"CPU {self.cpu_seconds} s, memory {self.memory_bytes >> 20} MiB, {self.processes} processes, "
                f"files up to {self.file_bytes >> 20} MiB, {self.open_files} open files")


@functools.lru_cache(maxsize=1)
def bwrap_status() -> tuple[str | None, str]:
    """(path to a working bwrap or None, why not / its version)."""
    path = shutil.which("bwrap")
    if path is None:
        return None, "bubblewrap is not installed (apt-get install bubblewrap)"
    try:
        probe = subprocess.run([path, "--ro-bind", "/", "/", "--unshare-net", "--unshare-pid", "--dev", "/dev",
                                "--proc", "/proc", "true"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"bubblewrap does not run here: {exc}"
    if probe.returncode != 0:
        return None, f"bubblewrap does not run here: {probe.stderr.strip()[:200]}"
    version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    return path, version or "bubblewrap"


def _uid_processes(uid: int) -> int:
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += 1
            except OSError:
                pass
    return count


class Jail:
    """Runs `python -E -s SCRIPT` for a sandbox directory under the limits and, where it can,
    inside bubblewrap. `mode`: auto (bwrap when it works), bwrap, or rlimits."""

    def __init__(self, mode: str | None = None, limits: Limits = Limits()):
        mode = mode or os.environ.get("AGENTRT_JAIL", "auto")
        if mode not in ("auto", "bwrap", "rlimits"):
            raise ValueError(f"jail mode {mode!r}: choose auto, bwrap or rlimits")
        self.limits = limits
        self.bwrap, why = bwrap_status() if mode != "rlimits" else (None, "rlimits asked for")
        if mode == "bwrap" and self.bwrap is None:
            raise RuntimeError(f"AGENTRT_JAIL=bwrap but {why}")
        self.mode = "bwrap" if self.bwrap else "rlimits"
        self._why = why
        self.as_nobody = os.geteuid() == 0
        self._root_note = ""
        if self.as_nobody and self.mode == "rlimits" and not _reachable(os.path.realpath(sys.executable)):
            # nobody could not even start this Python (e.g. it lives under /root): stay root, say so
            self.as_nobody = False
            self._root_note = (f"running as root (user nobody cannot reach {os.path.realpath(sys.executable)}), "
                               "so the process limit does not hold; ")

    @property
    def protection(self) -> str:
        user = "as user nobody (65534), " if self.as_nobody else ""
        if self.mode == "bwrap":
            return (f"bubblewrap jail ({self._why}): no network, read-only system, only the sandbox writable, "
                    f"own PID namespace, {user}limits: {self.limits.describe()}")
        exposure = "it can read what that user can read" if self.as_nobody else \
            "it can read and write what this user can and open network connections"
        return (f"resource limits only ({self._why}): {self._root_note}{user}limits: {self.limits.describe()}; "
                f"no OS-level jail, so {exposure}")

    @property
    def limits_processes(self) -> bool:
        """Whether the process limit holds (not for root, which the kernel exempts)."""
        return self.mode == "bwrap" and self.as_nobody or os.geteuid() != 0 or self.as_nobody

    # ------------------------------------------------------------------ running
    def command(self, script: Path, root: Path) -> list[str]:
        python = sys.executable
        if self.mode != "bwrap":
            return [python, "-E", "-s", str(script)]
        inside = str(script)             # the sandbox keeps its own path inside: tracebacks and cwd read the same
        argv = [self.bwrap, "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--hostname", "jail",
                "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
                "--symlink", "usr/sbin", "/sbin"]
        if os.path.isdir("/usr/lib64"):
            argv += ["--symlink", "usr/lib64", "/lib64"]
        made: set[str] = set()

        def parents(place: str) -> list[str]:    # made traversable (bwrap would make them 0700)
            out = []
            for parent in reversed(Path(place).parents):
                p = str(parent)
                if p != "/" and p not in made:
                    out += ["--perms", "0755", "--dir", p]
                    made.add(p)
            return out
        argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        for prefix in dict.fromkeys((sys.base_prefix, sys.prefix)):   # the Python installation (and venv)
            real = os.path.realpath(prefix)
            for place in dict.fromkeys((prefix, real)):
                if not (place.startswith("/usr/") or place == "/usr"):
                    argv += [*parents(place), "--ro-bind", real, place]
        argv += [*parents(str(root)), "--bind", str(root), str(root), "--chdir", str(root), "--clearenv",
                 "--setenv", "PATH", "/usr/bin:/bin"]
        python = ["/usr/bin/env", "-u", "PWD", python]          # bwrap's --chdir sets PWD: keep the env minimal
        if self.as_nobody:       # root in the host namespace: keep only what dropping to nobody needs
            argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--",
                     *python, "-E", "-s", "-c", _DROP_TO_NOBODY, inside]
        else:
            argv += ["--unshare-user", "--cap-drop", "ALL", "--", *python, "-E", "-s", inside]
        return argv

    def popen(self, script: Path, root: Path, **kwargs) -> subprocess.Popen:
        """Start the script (kwargs go to Popen: pipes, cwd...)."""
        limits, nobody, mode = self.limits, self.as_nobody, self.mode
        owner = NOBODY if nobody else os.geteuid()
        nproc = limits.processes + _uid_processes(owner)
        if nobody:
            _chown_tree(root, NOBODY)
            os.chmod(root, os.stat(root).st_mode | 0o001)   # bwrap (root without capabilities) must enter it

        def apply_limits() -> None:                  # in the child, before exec
            # CPU: SIGXCPU at the soft limit (the hard one, a second later, would be a bare SIGKILL)
            resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
            for what, value in ((resource.RLIMIT_AS, limits.memory_bytes), (resource.RLIMIT_FSIZE, limits.file_bytes),
                                (resource.RLIMIT_NOFILE, limits.open_files), (resource.RLIMIT_CORE, 0),
                                (resource.RLIMIT_NPROC, nproc)):
                resource.setrlimit(what, (value, value))

        extra = {}
        if nobody and mode != "bwrap":               # bwrap drops to nobody inside, after its mounts
            extra = {"user": NOBODY, "group": NOBODY, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", os.defpath)} if mode != "bwrap" else {}
        return subprocess.Popen(self.command(script, root), preexec_fn=apply_limits, env=env, **extra, **kwargs)


_DROP_TO_NOBODY = ("import os,sys; os.setgroups([]); os.setgid(65534); os.setuid(65534); "
                   "os.execv(sys.executable, [sys.executable, '-E', '-s', *sys.argv[1:]])")


def _reachable(path: str) -> bool:
    """Whether any user may walk to `path` and read/run it (o+x on every parent, o+r on it)."""
    p = Path(path)
    try:
        return all(parent.stat().st_mode & 0o001 for parent in p.parents) and bool(p.stat().st_mode & 0o004)
    except OSError:
        return False


def _chown_tree(root: Path, uid: int) -> None:
    """Let the jail's user write the sandbox (the tools, as root, still can)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            try:
                os.lchown(name, uid, uid)
            except OSError:
                pass


def exit_note(code: int) -> str:
    """Why a jailed run ended by a signal, in words ('' for a normal exit)."""
    import signal
    sig = -code if code < 0 else code - 128 if code > 128 else 0
    names = {signal.SIGXCPU: "the CPU-time limit", signal.SIGKILL: "killed", signal.SIGSEGV: "a crash",
             signal.SIGXFSZ: "the file-size limit"}
    if sig <= 0 or sig not in names:
        return ""
    return f" ({signal.Signals(sig).name}: {names[sig]})"
