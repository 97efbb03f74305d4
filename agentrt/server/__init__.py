"""`agentrt serve`: an OpenAI-compatible HTTP front over the embedded engine, which feeds the
workflow-aware scheduler from what requests carry (program and agent ids, tool calls).

* `create_app(engine, model_name=..., policy=...)`  the FastAPI app (agentrt.server.app)
* `ServerThread(app)`                                serve it on a free loopback port in a thread
* `make_server(app, host, port, grace=...)`          uvicorn with a drain on SIGTERM

Needs the `server` extra (fastapi, uvicorn, prometheus-client).
"""
from __future__ import annotations

from agentrt import lazy_exports

_EXPORTS = {
    "create_app": "agentrt.server.app",
    "ServerThread": "agentrt.server.run",
    "make_server": "agentrt.server.run",
    "free_port": "agentrt.server.run",
    "NodeGraph": "agentrt.server.graphs",
    "ProgramTracker": "agentrt.server.programs",
    "Service": "agentrt.server.service",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
