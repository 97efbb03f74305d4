"""Sandbox tools: file round trips, path confinement, running code, timeouts, clean-up."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from agentrt.tools.sandbox import Sandbox


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """(root, outside): a sandbox root and a sibling directory it must never reach."""
    root, outside = tmp_path / "box", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret")
    return root, outside


@pytest.fixture
def box(layout: tuple[Path, Path]) -> Sandbox:
    return Sandbox(layout[0], run_timeout=5.0)


def _alive(pid: int) -> bool:
    """True while `pid` runs; a zombie waiting to be reaped counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# ------------------------------------------------------------------------------------------ files
def test_write_read_list_roundtrip(box: Sandbox) -> None:
    assert box.list_files() == "the sandbox is empty"
    assert box.write_file("sol.py", "x = 1\n") == "wrote 6 bytes to sol.py"
    assert box.write_file("pkg/deep/mod.py", "é") == "wrote 2 bytes to pkg/deep/mod.py"
    assert box.read_file("sol.py") == "x = 1\n"
    assert box.read_file("./pkg/deep/../deep/mod.py") == "é"
    assert box.list_files() == "sol.py (6 bytes)\npkg/deep/mod.py (2 bytes)"
    assert box.write_file("sol.py", "y = 2") == "wrote 5 bytes to sol.py"  # overwrite
    assert box.read_file("sol.py") == "y = 2"


def test_read_errors(box: Sandbox) -> None:
    assert box.read_file("missing.py") == "error: no such file 'missing.py'"
    box.write_file("d/f.txt", "x")
    assert box.read_file("d").startswith("error:")
    assert box.write_file("d", "x").startswith("error:")
    assert box.read_file("").startswith("error:")
    box.write_file("empty.txt", "")
    assert "empty" in box.read_file("empty.txt")


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a/../../x", "../outside/secret.txt",
                                  "/tmp/x", "..", "a/b/../../../outside/new.txt"])
def test_escapes_refused(box: Sandbox, layout: tuple[Path, Path], path: str) -> None:
    root, outside = layout
    before = sorted(p.name for p in root.parent.iterdir())
    assert box.write_file(path, "pwned").startswith("error:")
    assert box.read_file(path).startswith("error:")
    assert box.run_python(path).startswith("error:")
    assert sorted(p.name for p in root.parent.iterdir()) == before  # nothing created next to root
    assert (outside / "secret.txt").read_text() == "top secret"
    assert list(root.iterdir()) == []


def test_symlinks_out_of_root_refused(box: Sandbox, layout: tuple[Path, Path]) -> None:
    root, outside = layout
    (root / "etc").symlink_to("/etc")
    (root / "out").symlink_to(outside)
    (root / "secret").symlink_to(outside / "secret.txt")
    assert box.read_file("etc/passwd").startswith("error:")
    assert box.read_file("secret").startswith("error:")
    assert box.read_file("out/secret.txt").startswith("error:")
    assert box.write_file("out/new.txt", "pwned").startswith("error:")
    assert box.write_file("secret", "pwned").startswith("error:")
    assert box.write_file("etc/agentrt-test", "pwned").startswith("error:")
    assert not (outside / "new.txt").exists()
    assert (outside / "secret.txt").read_text() == "top secret"
    listing = box.list_files()
    assert "etc (link)" in listing and "passwd" not in listing


def test_symlink_inside_root_allowed(box: Sandbox, layout: tuple[Path, Path]) -> None:
    root, _ = layout
    box.write_file("real/a.txt", "hello")
    (root / "alias").symlink_to(root / "real")
    assert box.read_file("alias/a.txt") == "hello"


def test_size_limits(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    box = Sandbox(root, max_file_bytes=100)
    assert box.write_file("big.txt", "x" * 101).startswith("error:")
    assert not (root / "big.txt").exists()
    assert box.write_file("ok.txt", "x" * 100) == "wrote 100 bytes to ok.txt"
    (root / "huge.txt").write_text("y" * 1000)
    assert box.read_file("huge.txt").startswith("error:")
    assert box.run_code("x = 1\n" * 50).startswith("error:")


# ------------------------------------------------------------------------------------------ running
def test_run_code_stdout(box: Sandbox) -> None:
    out = box.run_code("print('hello', 6 * 7)")
    assert out == "exit code 0\nstdout:\nhello 42\nstderr:\n(empty)"
    assert box.list_files() == "the sandbox is empty"  # the snippet file is removed


def test_run_python_uses_root_as_cwd_and_minimal_env(box: Sandbox, layout: tuple[Path, Path]) -> None:
    root, _ = layout
    box.write_file("data.txt", "42")
    box.write_file("main.py", "import os\nprint(open('data.txt').read())\nprint(os.getcwd())\n"
                              "print(sorted(k for k in os.environ if k != 'LC_CTYPE'))\n")
    out = box.run_python("main.py")
    assert out.startswith("exit code 0\nstdout:\n42\n")
    assert str(root) in out
    assert "['PATH']" in out


def test_scripts_import_sibling_modules(box: Sandbox) -> None:
    box.write_file("solution.py", "def add(a, b):\n    return a + b\n")
    box.write_file("check.py", "from solution import add\nassert add(2, 3) == 5\nprint('ok')\n")
    assert box.run_python("check.py") == "exit code 0\nstdout:\nok\nstderr:\n(empty)"
    assert box.run_code("import solution\nprint(solution.add(1, 1))").startswith("exit code 0\nstdout:\n2")


def test_exception_gives_traceback(box: Sandbox) -> None:
    out = box.run_code("def f():\n    raise ValueError('boom')\nf()\n")
    assert out.startswith("exit code 1\n")
    stderr = out.split("stderr:\n", 1)[1]
    assert "Traceback (most recent call last)" in stderr
    assert "ValueError: boom" in stderr


def test_syntax_error_and_bad_inputs(box: Sandbox) -> None:
    out = box.run_code("def broken(:\n")
    assert out.startswith("exit code 1\n") and "SyntaxError" in out
    assert box.run_python("nope.py") == "error: no such file 'nope.py'"
    assert box.run_code("   ").startswith("error:")


def test_stdin_is_closed(box: Sandbox) -> None:
    out = box.run_code("import sys\nprint(repr(sys.stdin.read()))")
    assert out.startswith("exit code 0\nstdout:\n''")


def test_output_truncated(layout: tuple[Path, Path]) -> None:
    box = Sandbox(layout[0], max_output_chars=500)
    out = box.run_code("print('A' * 3000)\nprint('END')\nraise SystemExit('bye')")
    assert len(out) <= 500
    assert "[truncated " in out
    assert "END" in out  # the tail of a stream survives truncation
    assert out.rstrip().endswith("bye")


def _sleepers(token: str) -> list[int]:
    """Live processes running `sleep <token>` (found by command line: in a jail with its own PID
    namespace the pid the code sees is not the host's)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd[:2] == [b"sleep", token.encode()] and _alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def _gone(token: str, wait: float = 3.0) -> bool:
    deadline = time.monotonic() + wait
    while _sleepers(token) and time.monotonic() < deadline:  # init may take a moment to reap it
        time.sleep(0.02)
    return not _sleepers(token)


def test_timeout_kills_process_group(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    box = Sandbox(root, run_timeout=1.0)
    code = ("import subprocess\n"
            "child = subprocess.Popen(['sleep', '60.0417'])\n"
            "while True:\n    pass\n")
    start = time.monotonic()
    assert box.run_code(code) == "error: timed out after 1.0 s"
    assert time.monotonic() - start < 5.0
    assert _gone("60.0417")


def test_background_child_does_not_outlive_run(box: Sandbox, layout: tuple[Path, Path]) -> None:
    root, _ = layout
    code = ("import subprocess, time\n"
            "child = subprocess.Popen(['sleep', '60.0418'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
            "time.sleep(0.2)\n")
    assert box.run_code(code).startswith("exit code 0")
    assert _gone("60.0418")


# ------------------------------------------------------------------------------------------ lifecycle
def test_owned_root_removed_on_close() -> None:
    box = Sandbox()
    root = box.root
    assert root.is_dir() and root.name.startswith("agentrt-sandbox-")
    box.write_file("a/b.txt", "x")
    box.close()
    assert not root.exists()
    box.close()  # idempotent
    with pytest.raises(RuntimeError):
        box.read_file("a/b.txt")


def test_context_manager() -> None:
    with Sandbox() as box:
        root = box.root
        box.write_file("x.txt", "x")
    assert not root.exists()


def test_given_root_kept(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    with Sandbox(root) as box:
        box.write_file("keep.txt", "x")
    assert (root / "keep.txt").read_text() == "x"


def test_missing_root_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Sandbox(tmp_path / "nope")

