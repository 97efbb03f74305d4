"""The jail for model-written code: each escape is refused or contained, the test process (the
runtime) survives, and the program gets an error observation. Runs in both modes: bubblewrap
(skipped where it does not work, unless AGENTRT_REQUIRE_BWRAP=1) and resource limits only."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from runtime_helpers import ScriptedEngine, arun
from agentrt import Agent, Runtime, Workflow, tool
from agentrt.tools import TOOL_CALL_CLOSE
from agentrt.tools.jail import Jail, Limits, bwrap_status
from agentrt.tools.sandbox import Sandbox

LIMITS = Limits(cpu_seconds=5, memory_bytes=512 << 20, processes=32, file_bytes=1 << 20, open_files=64)


def bwrap_or_skip():
    if bwrap_status()[0] is None:
        if os.environ.get("AGENTRT_REQUIRE_BWRAP") == "1":
            pytest.fail(f"AGENTRT_REQUIRE_BWRAP=1 but {bwrap_status()[1]}")
        pytest.skip(reason=bwrap_status()[1])


@pytest.fixture(params=["bwrap", "rlimits"])
def mode(request):
    if request.param == "bwrap":
        bwrap_or_skip()
    return request.param


@pytest.fixture
def layout():
    # under /tmp, not pytest's 0700 tmp_path: without bwrap the jailed user (nobody, as root) must reach it
    base = Path(tempfile.mkdtemp(prefix="agentrt-jailtest-"))
    base.chmod(0o755)
    root, outside = base / "root", base / "outside"
    root.mkdir()
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("the secret")
    secret.chmod(0o600)
    yield root, outside
    shutil.rmtree(base, ignore_errors=True)


def box_for(mode, root, **kw):
    return Sandbox(root, jail=Jail(mode, LIMITS), **kw)


def run(box: Sandbox, code: str) -> str:
    return box.run_code(code)


def test_protection_is_stated_in_words(mode):
    jail = Jail(mode, LIMITS)
    text = jail.protection
    assert "CPU 5 s" in text and "memory 512 MiB" in text and "32 processes" in text
    if mode == "bwrap":
        assert text.startswith("bubblewrap jail") and "no network" in text and "only the sandbox writable" in text
    else:
        assert text.startswith("resource limits only") and "no OS-level jail" in text


def test_reading_outside_the_root_is_refused(layout):
    bwrap_or_skip()
    root, outside = layout
    box = box_for("bwrap", root)
    for path in (outside / "secret.txt", Path(__file__), Path("/etc/passwd"), Path.home() / ".bashrc"):
        report = run(box, f"print(open({str(path)!r}).read())")
        assert report.startswith("exit code 1") and ("FileNotFoundError" in report or "PermissionError" in report), report
    assert "the secret" not in run(box, f"import os; print(os.listdir('/'))")


def test_reading_as_nobody_without_bwrap_cannot_read_private_files(layout):
    if not Jail("rlimits").as_nobody:
        pytest.skip("only root drops to nobody, and only where nobody can reach this Python")
    root, outside = layout
    report = run(box_for("rlimits", root), f"print(open({str(outside / 'secret.txt')!r}).read())")
    assert report.startswith("exit code 1") and "PermissionError" in report and "the secret" not in report


def test_writing_outside_the_root_is_refused_and_inside_works(layout):
    bwrap_or_skip()
    root, outside = layout
    box = box_for("bwrap", root)
    target = outside / "planted.txt"
    report = run(box, f"open({str(target)!r}, 'w').write('x')")
    assert report.startswith("exit code 1") and not target.exists()
    report = run(box, "open('/usr/planted', 'w')")
    assert "Read-only file system" in report or "Permission denied" in report, report
    report = run(box, "open('made.txt', 'w').write('inside'); import os; print(os.getcwd())")
    assert report.startswith("exit code 0") and (root / "made.txt").read_text() == "inside"
    assert box.read_file("made.txt") == "inside"                      # the file tools still see it


def test_opening_a_socket_is_refused(layout):
    bwrap_or_skip()
    root, _ = layout
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    try:
        report = run(box_for("bwrap", root),
                     f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2); print('connected')")
        assert report.startswith("exit code 1") and "connected" not in report.split("stderr:")[0]
        assert "ConnectionRefusedError" in report or "OSError" in report or "Network is unreachable" in report
        with pytest.raises(socket.timeout):
            listener.accept()                                         # nothing ever reached the host
    finally:
        listener.close()


def test_a_fork_bomb_is_contained(mode, layout):
    root, _ = layout
    box = box_for(mode, root, run_timeout=2.0)
    if not box.jail.limits_processes:           # root without bwrap: a bomb would hurt the whole machine
        assert "the process limit does not hold" in box.protection
        pytest.skip("as root without bubblewrap the process limit does not hold (stated in the protection)")
    began = time.monotonic()
    report = run(box, "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n")
    assert report.startswith("error: timed out") or "BlockingIOError" in report or "Resource temporarily" in report
    assert time.monotonic() - began < 10
    proc = subprocess.run([sys.executable, "-c", "print('alive')"], capture_output=True, text=True, timeout=20)
    assert proc.stdout == "alive\n"                                   # this process can still start others
    time.sleep(0.2)
    assert _jailed_processes() == [], "jailed processes outlived the run"


def _jailed_processes() -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes()
                state = Path(f"/proc/{entry.name}/stat").read_text().split()[2]
            except OSError:
                continue
            if b"_snippet_" in cmd and state != "Z":
                found.append(int(entry.name))
    return found


def test_a_memory_hog_gets_a_memory_error(mode, layout):
    root, _ = layout
    report = run(box_for(mode, root), "x = bytearray(2 << 30)\nprint('allocated')")
    assert report.startswith("exit code 1") and "MemoryError" in report and "allocated" not in report


def test_an_endless_loop_is_stopped_by_the_cpu_limit_and_the_clock(mode, layout):
    root, _ = layout
    cpu_box = Sandbox(root, jail=Jail(mode, Limits(cpu_seconds=1)), run_timeout=20.0)
    began = time.monotonic()
    report = cpu_box.run_code("while True:\n    pass\n")
    assert "SIGXCPU" in report.splitlines()[0] and time.monotonic() - began < 10, report
    report = box_for(mode, root, run_timeout=1.0).run_code("import time\nwhile True:\n    time.sleep(0.01)\n")
    assert report == "error: timed out after 1.0 s"


def test_a_huge_file_hits_the_file_size_limit(mode, layout):
    root, _ = layout
    report = run(box_for(mode, root), "open('big.bin', 'wb').write(b'x' * (4 << 20))")
    assert report.startswith("exit code 1") and "File too large" in report
    assert (root / "big.bin").stat().st_size <= LIMITS.file_bytes


class Coding(BaseModel):
    task: str = "t"
    answer: str = ""


def test_the_program_gets_an_error_observation_and_goes_on(layout):
    box = Sandbox(layout[0], jail=Jail(None, LIMITS), run_timeout=2.0)

    @tool(timeout=15.0)
    def run_code(code: str) -> str:
        """Run Python."""
        return box.run_code(code)
    coder = Agent("coder", "You code.", tools=[run_code], max_turns=4)
    wf = Workflow("coding", Coding, output="answer")
    wf.llm("solve", coder, "{task}", output="answer")
    bomb = '<tool_call>{"name": "run_code", "arguments": {"code": "import os\\nwhile True:\\n    os.fork()"}}' + TOOL_CALL_CLOSE
    hog = '<tool_call>{"name": "run_code", "arguments": {"code": "x = bytearray(2 << 30)"}}' + TOOL_CALL_CLOSE
    engine = ScriptedEngine([bomb, hog, "gave up"])

    async def main():
        async with Runtime(engine) as rt:
            return await rt.run(wf, {})
    result = arun(main())
    assert result.status == "done" and result.output == "gave up"
    after_bomb, after_hog = engine.prompt_text(1), engine.prompt_text(2)
    assert "BlockingIOError" in after_bomb or "timed out" in after_bomb
    assert "MemoryError" in after_hog
