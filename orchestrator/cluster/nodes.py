"""What the cluster looks like: Ray's node table turned into plain values, and the
pure judgement of whether it is complete. No Ray calls here."""

from __future__ import annotations

from dataclasses import dataclass

HEAD_RESOURCE = "node:__internal_head__"


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    ip: str
    alive: bool
    gpus: float
    head: bool
    death_reason: str = ""
    raylet_port: int = 0  # the node manager's TCP port: what the head probes while serving

    def to_json(self) -> dict:
        return {"ip": self.ip, "alive": self.alive, "gpus": self.gpus, "head": self.head,
                "node_id": self.node_id, "death_reason": self.death_reason}


@dataclass(frozen=True)
class ClusterState:
    nodes: tuple[NodeInfo, ...]
    want: int

    @property
    def gpu_nodes(self) -> tuple[NodeInfo, ...]:
        return tuple(n for n in self.nodes if n.alive and n.gpus > 0)

    @property
    def gpus(self) -> int:
        return int(sum(n.gpus for n in self.gpu_nodes))

    @property
    def complete(self) -> bool:
        return len(self.gpu_nodes) >= self.want

    @property
    def missing(self) -> int:
        return max(0, self.want - len(self.gpu_nodes))

    @property
    def dead(self) -> tuple[NodeInfo, ...]:
        return tuple(n for n in self.nodes if not n.alive)

    def summary(self) -> str:
        joined = ", ".join(f"{n.ip} ({n.gpus:g} GPU)" for n in self.gpu_nodes) or "none"
        return f"{len(self.gpu_nodes)} of {self.want} GPU nodes: {joined}"


def parse_nodes(raw: list[dict]) -> tuple[NodeInfo, ...]:
    """`ray.nodes()` rows -> NodeInfo. A restarted node shows twice (dead, then alive)."""
    nodes = []
    for r in raw:
        resources = r.get("Resources") or {}
        nodes.append(NodeInfo(
            node_id=r.get("NodeID", ""),
            ip=r.get("NodeManagerAddress", ""),
            alive=bool(r.get("Alive")),
            gpus=float(resources.get("GPU", 0)),
            head=HEAD_RESOURCE in resources or bool(r.get("IsHeadNode")),
            death_reason=r.get("DeathReasonMessage", "") or "",
            raylet_port=int(r.get("NodeManagerPort") or 0),
        ))
    return tuple(sorted(nodes, key=lambda n: (not n.head, not n.alive, n.ip)))


def newly_joined(before: ClusterState | None, now: ClusterState) -> tuple[NodeInfo, ...]:
    seen = {n.node_id for n in before.gpu_nodes} if before else set()
    return tuple(n for n in now.gpu_nodes if n.node_id not in seen)


def newly_lost(before: ClusterState | None, now: ClusterState) -> tuple[NodeInfo, ...]:
    alive_now = {n.node_id for n in now.gpu_nodes}
    return tuple(n for n in (before.gpu_nodes if before else ()) if n.node_id not in alive_now)
