"""Remote tools and the live event stream over MQTT (aiomqtt 2.x, a Mosquitto broker).

* `Worker`        serves `@tool` functions (`agentrt worker TARGET --broker mqtt://...`)
* `RemoteTools`   builds Tools from the workers' adverts; a workflow names them like local tools
* `EventStream`   a runtime event sink publishing every program event (`Runtime(events="mqtt://...")`)
* `Mosquitto`     a local broker on a free loopback port (tests, benchmarks, trying things out)

Needs the `mqtt` extra: `pip install 'agentrt[mqtt]'` (aiomqtt>=2.5,<3).
"""
from agentrt.tools.mqtt.broker import BrokerURL, BrokerURLError, Mosquitto, mosquitto_binary
from agentrt.tools.mqtt.client import (NoWorkerError, PayloadError, RemoteError, RemoteToolError, RemoteTools,
                                       WorkerLostError)
from agentrt.tools.mqtt.protocol import MAX_PAYLOAD, CallRequest, Reply, Topics, ToolSpec, WorkerAdvert
from agentrt.tools.mqtt.stream import EventStream, EventTable, tail_events
from agentrt.tools.mqtt.worker import Worker

__all__ = ["BrokerURL", "BrokerURLError", "CallRequest", "EventStream", "EventTable", "MAX_PAYLOAD", "Mosquitto",
           "NoWorkerError", "PayloadError", "RemoteError", "RemoteToolError", "RemoteTools", "Reply", "ToolSpec",
           "Topics", "Worker", "WorkerAdvert", "WorkerLostError", "mosquitto_binary", "tail_events"]
