"""End what is left of a wedged engine on every node: its tensor-parallel workers (Ray
actors, on the head and on the other Sparks) and its placement group, and check that
nothing of it is left before the next engine starts.

A stopped or hung worker does not answer Ray's polite exit request, and the Ray node it
runs on is alive, so nothing else would end it: a restart would leak its process and its
(unified) memory at each wedge. `snapshot` reads Ray's tables while the engine core
still owns them (before it is killed); `end` SIGKILLs each worker process on its own
node (SIGKILL ends a stopped process too), on the head directly and elsewhere through a
one-off Ray task pinned to that node, removes the engine's placement groups, and waits
until Ray's tables show them gone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ...serve.compat import RAY_WORKER_CLASSES

log = logging.getLogger("spark_vllm")

END_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Rank:
    """One of vLLM's tensor-parallel worker actors."""

    actor_id: str
    node_id: str
    ip: str
    pid: int


@dataclass(frozen=True)
class Remains:
    """What an engine holds in Ray: its worker actors and its placement groups."""

    ranks: tuple[Rank, ...] = ()
    groups: tuple[str, ...] = ()  # placement group ids (hex)


@dataclass(frozen=True)
class Ended:
    """What `end` did, for the log."""

    killed: tuple[tuple[str, tuple[int, ...]], ...]  # (node ip, pids)
    groups_removed: int
    left: tuple[str, ...]  # what was still there at the deadline

    def describe(self) -> str:
        where = "; ".join(f"{ip}: pid {', '.join(map(str, pids))}" for ip, pids in self.killed) or "none left"
        return f"tensor-parallel workers killed ({where}), {self.groups_removed} placement group(s) removed"


def select(actors: dict, groups: dict, classes: tuple[str, ...] = RAY_WORKER_CLASSES) -> Remains:
    """Pure, over Ray's actor table (`ray._private.state.actors()`) and placement group
    table (`ray.util.placement_group_table()`): vLLM's live worker actors and the
    placement groups of their jobs (a placement group's id ends with its job's id)."""
    ranks = tuple(sorted((Rank(aid, a["Address"]["NodeID"], a["Address"]["IPAddress"], int(a["Pid"]))
                          for aid, a in actors.items()
                          if a.get("ActorClassName") in classes and a.get("State") != "DEAD" and a.get("Pid")),
                         key=lambda r: (r.ip, r.pid)))
    jobs = {a["JobID"] for aid, a in actors.items() if a.get("ActorClassName") in classes}
    ids = tuple(sorted(g for g, info in groups.items()
                       if info.get("state") != "REMOVED" and any(g.endswith(j) for j in jobs)))
    return Remains(ranks, ids)


def snapshot() -> Remains:
    """The engine's workers and placement groups, from Ray's tables (this process is a driver)."""
    import ray
    from ray._private import state

    return select(state.actors(), ray.util.placement_group_table())


def kill_ray_workers(pids: list[int]) -> list[int]:
    """SIGKILL these processes if they are still Ray workers (a pid may have been
    reused); wait until they are gone. Runs on the node that holds them."""
    import psutil

    procs = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if "ray::" in " ".join(p.cmdline()) or p.name().startswith("ray::"):
                p.kill()
                procs.append(p)
        except psutil.Error:
            continue
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_running(p) for p in procs):
        time.sleep(0.1)
    return [p.pid for p in procs]


def _running(p) -> bool:
    import psutil

    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def end(remains: Remains | None, timeout: float = END_TIMEOUT_S) -> Ended:
    """Kill the ranks on their nodes, remove the placement groups, wait until Ray shows
    them gone (bounded by `timeout`). A snapshot that could not be taken is taken now."""
    import ray
    from ray.util.placement_group import PlacementGroup
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remains = remains if remains is not None else snapshot()
    here = ray.get_runtime_context().get_node_id()
    by_node: dict[str, list[Rank]] = {}
    for r in remains.ranks:
        by_node.setdefault(r.node_id, []).append(r)
    killer = ray.remote(num_cpus=0, max_calls=1)(kill_ray_workers)  # max_calls: no idle worker stays
    killed, pending = [], []
    for node_id, ranks in by_node.items():
        pids = [r.pid for r in ranks]
        if node_id == here:
            killed.append((ranks[0].ip, tuple(kill_ray_workers(pids))))
        else:
            strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
            pending.append((ranks[0].ip, killer.options(scheduling_strategy=strategy).remote(pids)))
    for ip, ref in pending:
        try:
            killed.append((ip, tuple(ray.get(ref, timeout=timeout))))
        except Exception as exc:  # the node went meanwhile: Ray's own cleanup is all there is
            log.warning("could not kill the engine's workers on %s: %s", ip, exc)
    for g in remains.groups:
        try:
            ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(g))))
        except Exception as exc:  # already removed with its job
            log.debug("placement group %s: %s", g, exc)
    left = wait_gone(remains, timeout)
    return Ended(tuple(killed), len(remains.groups), left)


def wait_gone(remains: Remains, timeout: float, poll: float = 0.5) -> tuple[str, ...]:
    """Until Ray's tables show every rank dead and every placement group removed; what is
    still there at the deadline."""
    import ray
    from ray._private import state

    deadline = time.monotonic() + timeout
    while True:
        left = []
        for r in remains.ranks:
            info = state.actors(actor_id=r.actor_id)
            if info and info.get("State") != "DEAD":
                left.append(f"actor {r.actor_id[:8]} (pid {r.pid} on {r.ip}) {info.get('State')}")
        table = ray.util.placement_group_table()
        left += [f"placement group {g[:8]} {table[g]['state']}" for g in remains.groups
                 if g in table and table[g].get("state") != "REMOVED"]
        if not left or time.monotonic() >= deadline:
            return tuple(left)
        time.sleep(poll)


