"""`agentrt bench serve`'s llama.cpp peer: a server that cannot start is reported, not a crash."""
from __future__ import annotations

import subprocess
import sys
import tempfile

import pytest

from agentrt.bench.serve_bench import PeerUnavailable, wait_ready
from agentrt.server.run import free_port


def test_a_peer_server_that_dies_at_start_is_reported_with_its_last_line():
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit('No module named sse_starlette')"],
                            stdout=subprocess.DEVNULL, stderr=log)
    with pytest.raises(PeerUnavailable, match="did not start.*No module named sse_starlette"):
        wait_ready(proc, f"http://127.0.0.1:{free_port()}", log, 30)
    log.close()
