"""`GET /metrics`: Prometheus figures, named as vLLM names them but under `agentrt:`.

Engine figures are read at scrape time (`LLMEngine.stats()`) or published by an engine observer
(preemptions, evictions, swaps, pinned blocks); latency figures are measured by the server per
request. Each app has its own registry, so several servers can live in one process (tests).
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from agentrt.engine.observe import EngineObserver

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TTFT = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_ITL = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
        0.75, 1.0, 2.5)
_E2E = (0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0)
PIN_SCAN_SECONDS = 0.5


class PolicyObserver(EngineObserver):
    """Runs on the engine thread: counts preemptions, evictions and swaps, and every half second
    counts the cached blocks that a TTL pin keeps (blocks whose readers include a pinned program)."""

    def __init__(self, pool, door, clock):
        self.pool, self.door, self.clock = pool, door, clock
        self.preemptions = self.evicted = self.swapped_out = self.dropped = self.loaded = self.prefetched = 0
        self.pinned_blocks = self.pinned_programs = 0
        self._next_scan = 0.0

    def on_evict(self, block) -> None:
        self.evicted += 1

    def on_swap_out(self, block, stored: bool) -> None:
        if stored:
            self.swapped_out += 1
        else:
            self.dropped += 1

    def on_load(self, n: int, prefetched: bool) -> None:
        if prefetched:
            self.prefetched += n
        else:
            self.loaded += n

    def on_step(self, batch, in_use: int) -> None:
        self.preemptions += batch.num_preempted
        now = self.clock.now()
        if self.door is None or now < self._next_scan:
            return
        self._next_scan = now + PIN_SCAN_SECONDS
        try:
            entries = list(self.door.table.entries.items())
        except RuntimeError:                      # resized by the event loop meanwhile: next step
            return
        pinned = {pid for pid, e in entries if e.pin_until is not None and e.pin_until > now and not e.finished}
        self.pinned_programs = len(pinned)
        self.pinned_blocks = 0 if not pinned else sum(
            1 for b in self.pool.blocks
            if b.block_hash is not None and b.ref_count == 0 and any(r[0] in pinned for r in b.readers))


class ServerMetrics:
    def __init__(self, engine, door, tracker, service_state):
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.observer = PolicyObserver(engine.engine.pool, door, engine.clock)
        engine.add_observer(self.observer)
        self._engine, self._tracker, self._state = engine, tracker, service_state
        registry.register(self)
        p = "agentrt:"
        self.ttft = Histogram(p + "time_to_first_token_seconds", "Time to first token", buckets=_TTFT, registry=registry)
        self.itl = Histogram(p + "inter_token_latency_seconds", "Time between streamed tokens", buckets=_ITL,
                             registry=registry)
        self.e2e = Histogram(p + "e2e_request_latency_seconds", "Request latency, arrival to last token",
                             buckets=_E2E, registry=registry)
        self.queue_time = Histogram(p + "request_queue_time_seconds", "Arrival to first scheduled step (approx.: "
                                    "arrival to first token minus one step)", buckets=_TTFT, registry=registry)
        self.prompt_tokens = Counter(p + "prompt_tokens", "Prompt tokens processed", registry=registry)
        self.generation_tokens = Counter(p + "generation_tokens", "Tokens generated", registry=registry)
        self.prefix_queries = Counter(p + "prefix_cache_queries", "Prompt tokens looked up in the prefix cache",
                                      registry=registry)
        self.prefix_hits = Counter(p + "prefix_cache_hits", "Prompt tokens served from the prefix cache",
                                   registry=registry)
        self.success = Counter(p + "request_success", "Requests finished", ["finished_reason"], registry=registry)
        self.errors = Counter(p + "request_errors", "Requests answered with an error", ["status"], registry=registry)
        self.disconnects = Counter(p + "client_disconnects", "Requests aborted because the client went away",
                                   registry=registry)

    def finished(self, prompt_len: int, cached: int, generated: int, reason: str) -> None:
        self.prompt_tokens.inc(prompt_len)
        self.generation_tokens.inc(generated)
        self.prefix_queries.inc(prompt_len)
        self.prefix_hits.inc(cached)
        self.success.labels(reason).inc()

    def collect(self):
        """The figures read at scrape time (engine stats, the observer's counts, programs)."""
        s, o, p = self._engine.engine.stats(), self.observer, "agentrt:"

        def gauge(name, doc, value):
            g = GaugeMetricFamily(p + name, doc)
            g.add_metric([], value)
            return g

        def counter(name, doc, value):
            c = CounterMetricFamily(p + name, doc)
            c.add_metric([], value)
            return c
        yield gauge("num_requests_running", "Requests in the engine's running batch", s["running"])
        yield gauge("num_requests_waiting", "Requests queued in the engine", s["waiting"])
        yield gauge("num_requests_pending", "Requests the server holds (bounded by --max-pending)",
                    self._state.pending)
        yield gauge("kv_cache_usage_perc", "Device KV blocks held by requests, 0-1", s["blocks_in_use"] / s["num_blocks"])
        yield gauge("kv_blocks_in_use", "Device KV blocks held by requests", s["blocks_in_use"])
        yield gauge("kv_blocks_cached_free", "Device KV blocks cached, held by no request", s["blocks_cached_free"])
        yield gauge("kv_blocks_total", "Device KV blocks", s["num_blocks"])
        yield gauge("host_kv_blocks_in_use", "Host-tier KV blocks holding swapped-out KV", s["host_blocks_used"])
        yield counter("num_preemptions", "Requests preempted (blocks ran out)", o.preemptions)
        yield counter("evicted_blocks", "Cached device blocks evicted", o.evicted)
        yield counter("swapped_out_blocks", "Evicted blocks copied to the host tier", o.swapped_out)
        yield counter("loaded_blocks", "Blocks loaded back from the host tier on demand", o.loaded)
        yield counter("prefetched_blocks", "Blocks brought back from the host tier ahead of need", o.prefetched)
        yield gauge("pinned_blocks", "Cached blocks a TTL pin keeps (programs paused on a tool)", o.pinned_blocks)
        yield gauge("pinned_programs", "Programs whose blocks a TTL pin keeps", o.pinned_programs)
        yield gauge("programs_running", "Programs the server tracks", len(self._tracker.programs))
        yield gauge("programs_paused_on_tools", "Programs waiting for a tool result", self._tracker.paused)
        yield counter("programs_started", "Programs started", self._tracker.started)
        yield counter("programs_ended", "Programs ended", self._tracker.ended)
        yield counter("tool_pauses", "Replies that paused their program on a tool", self._tracker.pauses)

    def render(self) -> bytes:
        return generate_latest(self.registry)
