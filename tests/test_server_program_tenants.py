"""Program ids per tenant in `agentrt serve`, through real HTTP on loopback: with several API keys a
program id is the tenant's own, so tenant B can neither see, end nor join (and so end the tool pause
of) tenant A's program of the same id; with one key or none program ids are as sent."""
from __future__ import annotations

import re

import httpx
import pytest

from agentrt.engine import AsyncLLMEngine, EngineConfig, LLMEngine
from agentrt.server import ServerThread, create_app
from agentrt.server.programs import ProgramIds
from agentrt.server.tenancy import Tenancy
from server_helpers import ScriptRunner, assert_pool_clean

MODEL = "tiny-random-llama"
KEY_A, KEY_B = "sk-programs-a", "sk-programs-b"


@pytest.fixture(scope="module")
def two_tenants(tiny_loaded):
    """A scripted model that always replies with a bash block (so every reply pauses its program on
    `ls`) behind two API keys."""
    def runner(layout):
        r = ScriptRunner(layout)
        r.script = b"```bash\nls -la\n```"
        return r
    engine = AsyncLLMEngine(LLMEngine(tiny_loaded, EngineConfig(device="cpu", kv_cache_tokens=4096), runner=runner))
    app = create_app(engine, model_name=MODEL, policy="agentrt", api_key=[KEY_A, KEY_B])
    with ServerThread(app) as url:
        yield url, engine


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def step(url: str, key: str, program: str, **fields) -> None:
    r = httpx.post(url + "/v1/chat/completions", headers=auth(key), timeout=30,
                   json={"model": MODEL, "messages": [{"role": "user", "content": "next"}], "max_tokens": 24,
                         "program_id": program, **fields})
    assert r.status_code == 200, r.text


def describe(url: str, key: str, program: str) -> httpx.Response:
    return httpx.get(url + f"/v1/programs/{program}", headers=auth(key), timeout=10)


def gauge(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    m = re.search(rf"^agentrt:{name} (\S+)$", text, re.MULTILINE)
    assert m, name
    return float(m.group(1))


def test_tenant_b_can_neither_see_nor_end_tenant_a_s_program(two_tenants):
    url, engine = two_tenants
    step(url, KEY_A, "a-job")
    mine = describe(url, KEY_A, "a-job")
    assert mine.status_code == 200 and mine.json()["id"] == "a-job" and mine.json()["paused_on"] == ["ls"]
    seen = describe(url, KEY_B, "a-job")
    assert seen.status_code == 404 and seen.json()["error"]["code"] == "program_not_found"
    r = httpx.post(url + "/v1/programs/a-job/end", headers=auth(KEY_B), timeout=10)
    assert r.status_code == 404, r.text
    error = r.json()["error"]
    assert error["code"] == "program_not_found" and error["param"] == "program_id" and "a-job" in error["message"]
    after = describe(url, KEY_A, "a-job").json()                 # A's program is live, still paused
    assert after["requests"] == 1 and after["paused_on"] == ["ls"]
    r = httpx.post(url + "/v1/programs/a-job/end", headers=auth(KEY_A), timeout=10)
    assert r.status_code == 200 and r.json() == {"id": "a-job", "object": "program", "ended": True}
    assert describe(url, KEY_A, "a-job").status_code == 404
    assert_pool_clean(engine)


def test_one_program_id_sent_by_two_tenants_is_two_programs(two_tenants):
    url, engine = two_tenants
    running, started = gauge(url, "programs_running"), gauge(url, "programs_started_total")
    step(url, KEY_A, "shared")
    step(url, KEY_B, "shared")              # were it A's program, this would end A's pause and count 2
    assert gauge(url, "programs_running") == running + 2 and gauge(url, "programs_started_total") == started + 2
    a, b = describe(url, KEY_A, "shared").json(), describe(url, KEY_B, "shared").json()
    assert a["id"] == b["id"] == "shared"
    assert a["requests"] == b["requests"] == 1 and a["paused_on"] == b["paused_on"] == ["ls"]
    step(url, KEY_B, "shared", is_last_step=True)               # B's last step ends B's program only
    assert describe(url, KEY_B, "shared").status_code == 404
    a = describe(url, KEY_A, "shared").json()
    assert a["requests"] == 1 and a["paused_on"] == ["ls"]
    step(url, KEY_A, "shared", is_last_step=True)
    assert describe(url, KEY_A, "shared").status_code == 404
    assert gauge(url, "programs_running") == running
    assert_pool_clean(engine)


def test_program_keys_are_per_tenant_only_with_several_tenants():
    ids = ProgramIds("job-1", "coder", True)
    for single in (Tenancy(), Tenancy("k")):                   # open or one key: ids as sent
        tenant = single.authenticate("k") if single.required else None
        assert single.program_key(tenant, "job-1") == "job-1" and single.scope(tenant, ids) == ids
    many = Tenancy(["k1", "k2"])
    t1, t2 = many.authenticate("k1"), many.authenticate("k2")
    assert many.program_key(t1, "job-1") != many.program_key(t2, "job-1")
    assert "job-1" not in (many.program_key(t1, "job-1"), many.program_key(t2, "job-1"))
    scoped = many.scope(t1, ids)
    assert scoped == ProgramIds(many.program_key(t1, "job-1"), "coder", True)
    assert many.scope(t1, ProgramIds(None)) == ProgramIds(None)                 # plain requests stay plain
    shared = Tenancy({"k1": "team", "k2": "team", "k3": "other"})              # keys of one tenant share
    team = [shared.program_key(shared.authenticate(k), "p") for k in ("k1", "k2", "k3")]
    assert team[0] == team[1] != team[2]
    # ids are kept apart whatever the tenant names and ids hold
    odd = Tenancy({"x": "a:b", "y": "a"})
    assert odd.program_key("a:b", "c") != odd.program_key("a", "b:c")
