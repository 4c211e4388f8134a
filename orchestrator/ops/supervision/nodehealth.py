"""Is this machine's spark-vllm node healthy (the container's HEALTHCHECK): pure, over
its run record and, on a serving head, the server's /health.

A worker has no server: it is healthy while its node process runs (it exits with code 7
when the head goes). A head is healthy while its process runs and, once it serves, while
vLLM's /health answers 200.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...cluster.runstate import RunRecord


@dataclass(frozen=True)
class NodeHealth:
    healthy: bool
    reason: str


def judge(records: list[RunRecord], server_health: str | None) -> NodeHealth:
    """`records`: this machine's live node records; `server_health`: health.health_state of
    the local server, read only when a record is serving (None otherwise)."""
    if not records:
        return NodeHealth(False, "no spark-vllm node runs here")
    rec = records[0]
    if rec.state == "engine-starting":
        return NodeHealth(False, f"the {rec.role} on {rec.node_ip}: vLLM's engine is still starting")
    if rec.state in ("wedged", "restarting"):
        doing = "being ended on every node" if rec.state == "wedged" else "restarting"
        return NodeHealth(False, f"the {rec.role} on {rec.node_ip}: vLLM's engine wedged and is {doing}")
    if rec.state == "serving":
        ok = server_health == "healthy"
        return NodeHealth(ok, f"the {rec.role} on {rec.node_ip} serves: /health {server_health}")
    return NodeHealth(True, f"the {rec.role} on {rec.node_ip} is up (pid {rec.pid})")
