"""End what is left of a wedged engine on every node: its tensor-parallel workers (Ray
actors, on the head and on the other Sparks), its placement group and the shared memory
its processes mapped, and check that nothing of it is left before the next engine starts.

A stopped or hung worker may not answer Ray's polite exit request, and the Ray node it
runs on is alive; a SIGKILLed process never unlinks its /dev/shm files (vLLM's CPU
communicator leaves 4 MiB a rank, `<port>-tp:0-[0-1]-cpushm_<rank>`): without this a
restart would leak processes and (unified) memory at each wedge.
- `snapshot`, once the engine serves: Ray's tables (its workers, their placement
  groups) and, on each node, the /dev/shm files its processes map (read from
  /proc/PID/maps by a one-off Ray task pinned to that node; on the head directly);
- `end`, after the engine core was killed: on each node, SIGKILL the workers that are
  still there (SIGKILL ends a stopped process too) and unlink the engine's /dev/shm
  files that no live process maps; remove the placement groups; wait until Ray's
  tables show the workers dead and the groups removed.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from ...serve.compat import RAY_WORKER_CLASSES
from .supervisor import is_engine_process

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
    shm: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (node id, /dev/shm paths its processes map)

    def nodes(self) -> dict[str, str]:
        """node id -> ip, of every node the engine ran on."""
        return {r.node_id: r.ip for r in self.ranks}


@dataclass(frozen=True)
class NodeEnd:
    """What was done on one node."""

    ip: str
    killed: tuple[int, ...] = ()  # still there, SIGKILLed
    gone: tuple[int, ...] = ()  # already ended (by Ray, when the engine core died)
    unlinked: tuple[str, ...] = ()  # /dev/shm files removed

    def describe(self) -> str:
        parts = [f"pid {', '.join(map(str, self.killed))} killed"] if self.killed else []
        parts += [f"pid {', '.join(map(str, self.gone))} already ended"] if self.gone else []
        parts += [f"{len(self.unlinked)} /dev/shm file(s) removed"] if self.unlinked else []
        return f"{self.ip}: {', '.join(parts) or 'nothing left'}"


@dataclass(frozen=True)
class Ended:
    """What `end` did, for the log."""

    nodes: tuple[NodeEnd, ...]
    groups_removed: int
    left: tuple[str, ...]  # what was still there at the deadline

    def describe(self) -> str:
        where = "; ".join(n.describe() for n in self.nodes) or "no worker found"
        return f"tensor-parallel workers: {where}; {self.groups_removed} placement group(s) removed"


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


def shm_paths(maps: str) -> set[str]:
    """Pure: the existing /dev/shm files in a /proc/PID/maps text (an unlinked one reads
    `... (deleted)`, as Ray's object store does)."""
    found = set()
    for line in maps.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith("/dev/shm/") and not parts[5].endswith("(deleted)"):
            found.add(parts[5])
    return found


def _maps(pid: int | str) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:  # ended, or not ours to read
        return ""


def mapped_shm(pids: list[int]) -> list[str]:
    """The /dev/shm files these processes map. Runs on their node."""
    return sorted(set().union(*(shm_paths(_maps(pid)) for pid in pids)))


def end_here(pids: list[int], paths: list[str]) -> tuple[list[int], list[int], list[str]]:
    """On the node: SIGKILL `pids` that are still Ray workers (a pid may have been reused),
    wait until they are gone, then unlink `paths` that no live process maps. Returns
    (killed, already gone, unlinked)."""
    import psutil

    killed, gone = [], []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE and "ray::" in " ".join(p.cmdline()):
                p.kill()
                killed.append(p)
                continue
        except psutil.Error:
            pass
        gone.append(pid)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_running(p) for p in killed):
        time.sleep(0.1)
    in_use = set().union(*(shm_paths(_maps(d)) for d in os.listdir("/proc") if d.isdigit())) if paths else set()
    unlinked = []
    for path in paths:
        if path not in in_use:
            try:
                os.unlink(path)
                unlinked.append(path)
            except OSError:  # gone already
                pass
    return [p.pid for p in killed], gone, unlinked


def _running(p) -> bool:
    import psutil

    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def engine_pids() -> list[int]:
    """This process's vLLM engine-core children (they map shared memory too)."""
    import psutil

    pids = []
    for child in psutil.Process().children():
        try:
            if is_engine_process(child.cmdline()):
                pids.append(child.pid)
        except psutil.Error:
            continue
    return pids


def on_nodes(work: dict[str, tuple], fn: Callable, timeout: float) -> dict[str, object]:
    """`fn(*args)` on each node of `work` (node id -> args): here for this process's node,
    elsewhere as a one-off Ray task pinned to the node (no CPU asked, its worker process
    exits after it). node id -> result; a node that did not answer is left out."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    remote = ray.remote(num_cpus=0, max_calls=1)(fn)
    pending = {node: remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(*args)
               for node, args in work.items() if node != here}
    results = {node: fn(*args) for node, args in work.items() if node == here}
    for node, ref in pending.items():
        try:
            results[node] = ray.get(ref, timeout=timeout)
        except Exception as exc:  # the node went meanwhile: Ray's own cleanup is all there is
            log.warning("could not reach node %s to end the engine there: %s", node[:8], exc)
    return results


def snapshot(timeout: float = 30.0) -> Remains:
    """The engine's workers and placement groups from Ray's tables (this process is a
    driver), and the /dev/shm files its processes map on each node."""
    import ray
    from ray._private import state

    remains = select(state.actors(), ray.util.placement_group_table())
    here = ray.get_runtime_context().get_node_id()
    work = {node: ([r.pid for r in remains.ranks if r.node_id == node] + (engine_pids() if node == here else []),)
            for node in {*remains.nodes(), here}}
    found = on_nodes(work, mapped_shm, timeout)
    return replace(remains, shm=tuple((node, tuple(paths)) for node, paths in sorted(found.items()) if paths))


def end(remains: Remains | None, timeout: float = END_TIMEOUT_S) -> Ended:
    """Kill the ranks and unlink the engine's shared memory on every node, remove the
    placement groups, wait until Ray shows them gone (bounded by `timeout`). A snapshot
    that could not be taken is taken now (the workers may be gone by then, and with
    them what they mapped)."""
    import ray
    from ray.util.placement_group import PlacementGroup

    remains = remains if remains is not None else snapshot()
    ips, shm = remains.nodes(), dict(remains.shm)
    work = {node: ([r.pid for r in remains.ranks if r.node_id == node], list(shm.get(node, ())))
            for node in {*ips, *shm}}
    done = on_nodes(work, end_here, timeout)
    for g in remains.groups:
        try:
            ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(g))))
        except Exception as exc:  # already removed with its job
            log.debug("placement group %s: %s", g, exc)
    left = wait_gone(remains, timeout)
    nodes = tuple(NodeEnd(ips.get(node, "this head"), tuple(k), tuple(g), tuple(u))
                  for node, (k, g, u) in sorted(done.items(), key=lambda kv: ips.get(kv[0], "")))
    return Ended(nodes, len(remains.groups), left)


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
