"""Scale-out: N engine replicas behind one endpoint, programs routed by affinity.

* `Router(policy, replicas)`           routing policies, pure (agentrt.cluster.router)
* `ReplicaSet(n, ReplicaSpec(...))`    replicas as Ray actors (agentrt.cluster.ray_replicas; needs ray)
* `ClusterFront`, `create_cluster_app` the OpenAI endpoint over them, with failover
* `ClusterEngine`                      what `Runtime(replicas=N)` runs programs on
* `sim_replicas(n, profile, clock)`    N simulated replicas on one virtual clock (agentrt.cluster.sim)

Ray is imported only by what needs it: `pip install 'agentrt[ray]'`.
"""
from __future__ import annotations

from agentrt import lazy_exports

_EXPORTS = {
    "Router": "agentrt.cluster.router",
    "RouterConfig": "agentrt.cluster.router",
    "POLICIES": "agentrt.cluster.router",
    "ReplicaSet": "agentrt.cluster.ray_replicas",
    "ReplicaSpec": "agentrt.cluster.ray_replicas",
    "ClusterFront": "agentrt.cluster.front",
    "create_cluster_app": "agentrt.cluster.app",
    "ClusterEngine": "agentrt.cluster.engine",
    "sim_replicas": "agentrt.cluster.sim",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
