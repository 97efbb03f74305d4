"""Tenant isolation in `agentrt serve`, through real HTTP on loopback: with several API keys every
key has a prefix cache of its own; a body's `cache_salt` (vLLM's field) keeps caches apart on an
open server; a bad salt is an OpenAI-shaped 400. Reported cached tokens and, on a runner whose step
time grows with the tokens it computes (as a real accelerator's does), latency both show tenant B
gets none of tenant A's prefix."""
from __future__ import annotations

import statistics
import time

import httpx
import openai
import pytest

from agentrt.engine import AsyncLLMEngine, EngineConfig, LLMEngine
from agentrt.server import ServerThread, create_app
from agentrt.server.tenancy import Tenancy
from server_helpers import ScriptRunner, assert_pool_clean

MODEL = "tiny-random-llama"
KEY_A, KEY_B = "sk-tenant-a", "sk-tenant-b"


def chat(url: str, key: str, content: str, **body) -> dict:
    r = httpx.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=30,
                   json={"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 2,
                         "temperature": 0, **body})
    assert r.status_code == 200, r.text
    return r.json()


def cached(body: dict) -> int:
    return body["usage"]["prompt_tokens_details"]["cached_tokens"]


class PrefillCost(ScriptRunner):
    """The scripted runner, each step taking `per_token` seconds per token it computes."""

    per_token = 0.0005

    def run(self, batch):
        time.sleep(self.per_token * batch.total_tokens)
        return super().run(batch)


@pytest.fixture(scope="module")
def tenants(tiny_loaded):
    """The tiny model (real compute) behind two API keys: two tenants."""
    engine = AsyncLLMEngine(LLMEngine(tiny_loaded, EngineConfig(device="cpu", dtype="float32", kv_cache_tokens=8192,
                                                                max_model_len=1024)))
    app = create_app(engine, model_name=MODEL, policy="agentrt", api_key=[KEY_A, KEY_B])
    with ServerThread(app) as url:
        yield url, engine
    engine.engine.pool.check_invariants()


@pytest.fixture(scope="module")
def open_server(tiny_loaded):
    """No API key; a runner whose prefill time shows in the latency."""
    engine = AsyncLLMEngine(LLMEngine(tiny_loaded, EngineConfig(device="cpu", kv_cache_tokens=8192),
                                      runner=lambda layout: PrefillCost(layout)))
    app = create_app(engine, model_name=MODEL, policy="lru")
    with ServerThread(app) as url:
        yield url, engine


# ------------------------------------------------------------------------------------------ per key
def test_tenant_b_gets_none_of_tenant_a_s_prefix(tenants):
    url, engine = tenants
    prompt = "The secret plan of tenant A, in detail: " + "step, " * 40
    a1 = chat(url, KEY_A, prompt)
    b1 = chat(url, KEY_B, prompt)
    a2 = chat(url, KEY_A, prompt)
    b2 = chat(url, KEY_B, prompt)
    n = a1["usage"]["prompt_tokens"]
    assert n >= 200 and b1["usage"]["prompt_tokens"] == n
    assert cached(a1) == 0 and cached(b1) == 0                      # B's first: nothing of A's
    assert cached(a2) == cached(b2) == n // 16 * 16                 # each repeat: its own tenant's blocks
    assert a1["choices"][0]["message"] == b1["choices"][0]["message"]   # a salt changes no answer
    # a body salt mixes with the key's tenant: it never reaches another tenant's cache
    assert cached(chat(url, KEY_B, prompt, cache_salt="team-x")) == 0
    assert cached(chat(url, KEY_A, prompt, cache_salt="team-x")) == 0
    assert cached(chat(url, KEY_A, prompt, cache_salt="team-x")) == n // 16 * 16
    assert_pool_clean(engine)


def test_streamed_usage_reports_the_tenant_s_own_cache(tenants):
    url, _ = tenants
    prompt = "Streaming tenant prompt " + "abc " * 30
    client_a = openai.OpenAI(base_url=url + "/v1", api_key=KEY_A, max_retries=0)
    client_b = openai.OpenAI(base_url=url + "/v1", api_key=KEY_B, max_retries=0)
    kw = dict(model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=2, temperature=0,
              stream=True, stream_options={"include_usage": True})
    first = list(client_a.chat.completions.create(**kw))[-1].usage
    other = list(client_b.chat.completions.create(**kw))[-1].usage
    again = list(client_a.chat.completions.create(**kw))[-1].usage
    assert first.prompt_tokens_details.cached_tokens == other.prompt_tokens_details.cached_tokens == 0
    assert again.prompt_tokens_details.cached_tokens == first.prompt_tokens // 16 * 16 > 0


def test_tenancy_salts():
    assert Tenancy().cache_salt(None, "s") == "s" and Tenancy().cache_salt(None, None) is None
    one = Tenancy("k")
    assert not one.isolated and one.cache_salt(one.authenticate("k"), None) is None        # one key: no salt
    many = Tenancy(["k1", "k2"])
    t1, t2 = many.authenticate("k1"), many.authenticate("k2")
    assert many.isolated and t1 != t2 and many.cache_salt(t1, None) != many.cache_salt(t2, None)
    assert many.cache_salt(t1, "x") not in (many.cache_salt(t2, "x"), "x", many.cache_salt(t1, None))
    shared = Tenancy({"k1": "team", "k2": "team", "k3": "other"})              # keys of one tenant share
    assert shared.cache_salt(shared.authenticate("k1"), None) == shared.cache_salt(shared.authenticate("k2"), None)
    assert shared.cache_salt(shared.authenticate("k3"), None) != shared.cache_salt(shared.authenticate("k1"), None)
    for bad in ([""], {"k": ""}):
        with pytest.raises(ValueError):
            Tenancy(bad)


def test_wrong_or_missing_key_is_still_401(tenants):
    url, _ = tenants
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(url + "/v1/chat/completions", json=body).status_code == 401
    r = httpx.post(url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-tenant-c"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


# ------------------------------------------------------------------------------------------ per request
def test_body_cache_salt_keeps_caches_apart_as_in_vllm(open_server):
    url, engine = open_server
    prompt = "Shared system prompt for salted clients. " * 8
    full = lambda r: r["usage"]["prompt_tokens"] // 16 * 16
    plain = chat(url, "", prompt)
    assert cached(plain) == 0 and cached(chat(url, "", prompt)) == full(plain)       # unsalted: as before
    assert cached(chat(url, "", prompt, cache_salt="tenant-1")) == 0
    assert cached(chat(url, "", prompt, cache_salt="tenant-2")) == 0
    assert cached(chat(url, "", prompt, cache_salt="tenant-1")) == full(plain)       # same salt: shared
    r = httpx.post(url + "/v1/completions", timeout=30, json={"model": MODEL, "prompt": prompt, "max_tokens": 2,
                                                              "cache_salt": "tenant-3"})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert_pool_clean(engine)


def test_timing_shows_no_cross_tenant_hit(open_server):
    """Supplementary: B's request after A's same prompt takes as long as an uncached one, A's repeat
    much less (the runner charges 0.5 ms a computed token: ~800 tokens uncached are ~0.4 s)."""
    url, _ = open_server
    repeat, probe = [], []
    for i in range(3):
        prompt = f"Tenant A's private document {i}: " + "lorem ipsum " * 64
        chat(url, "", prompt, cache_salt="A")
        t0 = time.perf_counter()
        b = chat(url, "", prompt, cache_salt=f"B-{i}")      # a fresh prober (B's own system prompt would hit)
        t1 = time.perf_counter()
        a = chat(url, "", prompt, cache_salt="A")
        t2 = time.perf_counter()
        assert cached(b) == 0 and cached(a) > 700
        probe.append(t1 - t0)
        repeat.append(t2 - t1)
    assert statistics.median(probe) > 0.3 and statistics.median(probe) > 3 * statistics.median(repeat), \
        (probe, repeat)


@pytest.mark.parametrize("salt", [5, "", "x" * 300, ["a"], {"k": "v"}])
def test_a_bad_cache_salt_is_a_400_naming_it(open_server, salt):
    url, _ = open_server
    r = httpx.post(url + "/v1/chat/completions", timeout=30,
                   json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "cache_salt": salt})
    body = r.json()
    assert r.status_code == 400 and body["error"]["param"] == "cache_salt", body
    assert body["error"]["type"] == "invalid_request_error"
