"""`GET /metrics` of the cluster front: per-replica figures labelled `replica` (the router's view
and each replica's last ping), and the front's counters (failovers, deaths, rejoins, moves)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

P = "agentrt:"
# (metric, help, field of the replica's ping, kind)
_ENGINE = (("replica_num_requests_running", "Requests in the replica engine's running batch", "running"),
           ("replica_num_requests_waiting", "Requests queued in the replica engine", "waiting"),
           ("replica_kv_blocks_in_use", "Device KV blocks held by requests on the replica", "blocks_in_use"),
           ("replica_kv_blocks_total", "Device KV blocks of the replica", "num_blocks"),
           ("replica_prefix_cache_hit_rate", "Share of looked-up blocks the replica's prefix cache held",
            "prefix_hit_rate"),
           ("replica_programs_paused_on_tools", "Programs waiting for a tool result on the replica",
            "programs_paused"))


class ClusterMetrics:
    content_type = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self, front):
        self.front = front
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)
        self.answers = Counter(P + "replica_answers", "Requests answered, by replica and HTTP status",
                               ["replica", "status"], registry=self.registry)

    def answered(self, replica: str, status: int) -> None:
        self.answers.labels(replica or "none", str(status)).inc()

    def _per_replica(self, name: str, doc: str, values: dict[str, float], counter: bool = False):
        family = (CounterMetricFamily if counter else GaugeMetricFamily)(P + name, doc, labels=["replica"])
        for replica, value in values.items():
            if value is not None:
                family.add_metric([replica], float(value))
        return family

    def collect(self):
        loads = {load.name: load for load in self.front.router.loads()}
        yield self._per_replica("replica_up", "1 if the router routes to the replica",
                                {n: int(l.alive) for n, l in loads.items()})
        yield self._per_replica("replica_requests_in_flight", "Requests the front holds on the replica",
                                {n: l.inflight for n, l in loads.items()})
        yield self._per_replica("replica_programs", "Programs homed on the replica (paused ones included)",
                                {n: l.programs for n, l in loads.items()})
        yield self._per_replica("replica_routed_requests", "Requests routed to the replica",
                                {n: l.routed_requests for n, l in loads.items()}, counter=True)
        yield self._per_replica("replica_restarts", "Times Ray restarted the replica's actor (seen by the front)",
                                dict(self.front.replicas.restarts), counter=True)
        info = self.front.replicas.info
        for name, doc, key in _ENGINE:
            yield self._per_replica(name, doc, {n: info.get(n, {}).get(key) for n in loads})
        c = self.front.counters
        for name, doc, value in (("cluster_failovers", "Requests answered by another replica after theirs died",
                                  c.failovers),
                                 ("cluster_replica_deaths", "Replicas seen dying", c.replica_deaths),
                                 ("cluster_replica_rejoins", "Dead replicas seen answering again", c.rejoins),
                                 ("cluster_program_moves", "Programs moved off an overloaded replica",
                                  self.front.router.moves)):
            family = CounterMetricFamily(P + name, doc)
            family.add_metric([], value)
            yield family

    def render(self) -> bytes:
        return generate_latest(self.registry)
