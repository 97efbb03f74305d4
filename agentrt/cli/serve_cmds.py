"""`agentrt serve`: the OpenAI-compatible server."""
from __future__ import annotations

import enum
import os
from typing import Annotated

import typer

from agentrt.cli.cluster_cmds import RouterName, serve_replicas
from agentrt.cli.common import DEFAULT_MODEL, EngineDTypeOpt, app, err, fail, parse_size, user_errors


class ServePolicy(str, enum.Enum):
    lru = "lru"
    continuum = "continuum"
    continuum_ttl = "continuum-ttl"
    kvflow = "kvflow"
    agentrt = "agentrt"
    none = "none"


SERVE_EPILOG = """Examples:

  agentrt serve                                   # smollm2-135m on http://127.0.0.1:8000/v1

  agentrt serve tiny-random-llama --port 8001 --api-key secret --policy continuum

  agentrt serve --api-key sk-team-a --api-key sk-team-b   # two tenants, two prefix caches

  curl localhost:8000/v1/chat/completions -H 'Content-Type: application/json' -d '{"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], "program_id": "job-1", "agent_id": "coder"}'

Any OpenAI client works: openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="secret").
Send program_id (or job_id) and agent_id in the body (extra_body=...) or as X-Program-Id /
X-Agent-Id headers, and is_last_step on a program's last request: the scheduler then orders whole
programs and pins a program's KV while its tool runs. GET /metrics serves Prometheus figures."""


@app.command(epilog=SERVE_EPILOG)
def serve(
    model: Annotated[str, typer.Argument(help="model alias (see `agentrt models`) or a local HF directory")] = DEFAULT_MODEL,
    host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0: every interface)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port")] = 8000,
    api_key: Annotated[list[str] | None, typer.Option(
        "--api-key", envvar="AGENTRT_API_KEY", show_envvar=True,
        help="require 'Authorization: Bearer KEY' on /v1 routes; repeat it for several tenants: each key then "
             "gets a prefix cache of its own (cache_salt), so no tenant can probe another's prompts")] = None,
    policy: Annotated[ServePolicy, typer.Option(help="KV policy: lru, continuum, continuum-ttl, kvflow, agentrt, or none (the "
                                                     "engine's plain LRU, no program tracking events)")] = ServePolicy.agentrt,
    served_model_name: Annotated[str | None, typer.Option(help="the model name clients send (default: MODEL)")] = None,
    kv_cache_tokens: Annotated[int, typer.Option(min=16, help="device-tier KV capacity in tokens")] = 16384,
    host_kv_tokens: Annotated[int, typer.Option(min=0, help="host-tier KV capacity in tokens (0: none)")] = 0,
    max_num_seqs: Annotated[int, typer.Option(min=1, help="most requests in one engine step")] = 64,
    max_pending: Annotated[int, typer.Option(min=1, help="most requests held at once; past it: 429 with "
                                                         "Retry-After (the queue is bounded)")] = 256,
    max_body: Annotated[str, typer.Option("--max-body-bytes", help="largest request body (413 past it)")] = "4MiB",
    max_tokens: Annotated[int, typer.Option("--default-max-tokens", min=1, help="max_tokens when a request "
                                            "sends none (capped by the context left)")] = 1024,
    idle_timeout: Annotated[float, typer.Option(min=0.05, help="seconds without a request after which a "
                                                "program ends")] = 600.0,
    grace: Annotated[float, typer.Option(min=0.0, help="on SIGTERM: seconds for requests in flight to finish "
                                         "before they are aborted")] = 30.0,
    dtype: EngineDTypeOpt = "auto",
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
    replicas: Annotated[int | None, typer.Option(min=1, help="run N engine replicas as Ray actors behind this one "
                                                 "endpoint (needs `pip install 'agentrt[ray]'`); default: one "
                                                 "engine in this process, no Ray")] = None,
    router: Annotated[RouterName, typer.Option(help="with --replicas: program (a program's turns stay on its "
                                               "replica), prefix, least-loaded or round-robin")] = RouterName.program,
    ray_address: Annotated[str | None, typer.Option(help="with --replicas: an existing Ray cluster "
                                                         "(default: start a local one)")] = None,
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API, with workflow-aware scheduling.

    Endpoints: POST /v1/chat/completions and /v1/completions (streaming with SSE, tools and
    tool_choice), GET /v1/models, GET /health, GET /metrics, POST /v1/programs/{id}/end.
    """
    try:
        import uvicorn  # noqa: F401
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        fail(f"{exc.name} is missing; install the server extra: pip install 'agentrt[server]'")
    from agentrt.engine import AsyncLLMEngine, EngineConfig
    from agentrt.server.app import create_app
    from agentrt.server.run import make_server
    with user_errors():
        body_limit = parse_size(max_body)
        config = EngineConfig(kv_cache_tokens=kv_cache_tokens, host_kv_tokens=host_kv_tokens,
                              max_num_seqs=max_num_seqs, dtype=dtype, num_threads=threads or (1 if replicas else None))
    if replicas is not None:
        name = served_model_name or (model if not os.path.isdir(model) else os.path.basename(os.path.normpath(model)))
        return serve_replicas(model=model, name=name, replicas=replicas, router=router.value,
                              engine_config=config.model_dump(exclude_defaults=True),
                              policy=None if policy is ServePolicy.none else policy.value, host=host, port=port,
                              api_key=api_key[0] if api_key else None, max_pending=max_pending,
                              body_limit=body_limit, max_tokens=max_tokens, idle_timeout=idle_timeout, grace=grace,
                              log_level=log_level, ray_address=ray_address)
    with user_errors():
        with err.status(f"loading {model} ..."):
            engine = AsyncLLMEngine.from_pretrained(model, **config.model_dump(exclude_defaults=True))
    name = served_model_name or (model if not os.path.isdir(model) else os.path.basename(os.path.normpath(model)))
    keys = api_key[0] if api_key and len(api_key) == 1 else (api_key or None)
    with user_errors():
        app_ = create_app(engine, model_name=name, policy=None if policy is ServePolicy.none else policy.value,
                          api_key=keys, max_pending=max_pending, max_body_bytes=body_limit,
                          idle_timeout=idle_timeout, default_max_tokens=max_tokens)
    server = make_server(app_, host, port, grace=grace, log_level=log_level, access_log=log_level == "debug")
    err.print(f"agentrt serve: {name} on http://{host}:{port}/v1 (policy {policy.value}, "
              f"{engine.engine.max_model_len}-token context, {_keys_line(api_key)})")
    server.run()
    if not server.started:
        raise typer.Exit(1)


def _keys_line(keys: list[str] | None) -> str:
    if not keys:
        return "no API key"
    return "API key required" if len(keys) == 1 else f"{len(keys)} API keys, a prefix cache per key"
