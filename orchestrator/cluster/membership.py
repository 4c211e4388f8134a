"""Cluster membership: reach the head, wait until the GPU nodes have joined, and
watch them afterwards (a worker watches its head; the head watches the nodes).
Each wait has a deadline and ends early when this node's own Ray processes die."""

from __future__ import annotations

import logging
import socket
import time
from typing import Callable

from ..errors import ClusterIncomplete, HeadUnreachable, NodeLost, WrongSubnet
from ..net.discovery import Interface
from .nodes import ClusterState, newly_joined, newly_lost
from .ray_node import RayNode, cluster_state

log = logging.getLogger("spark_vllm")


def check_head_subnet(head_ip: str, iface: Interface) -> None:
    """A worker's head must be on the chosen interface's subnet (pure)."""
    if not iface.subnet_holds(head_ip):
        raise WrongSubnet(
            f"head {head_ip} is not on {iface.name}'s subnet ({', '.join(iface.ipv4) or 'no IPv4'})",
            "wrong interface or cable: check --iface and --head-ip, and which port the cable is in",
        )


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float,
                  clock: Callable[[], float] = time.monotonic) -> float:
    """Retry with backoff until host:port accepts, logging progress. Returns seconds."""
    start = clock()
    delay, next_log = 0.2, start
    while True:
        if port_open(host, port, timeout=min(2.0, max(0.2, timeout))):
            return clock() - start
        now = clock()
        if now - start >= timeout:
            raise HeadUnreachable(
                f"head {host}:{port} did not answer within {timeout:g} s",
                f"start the head first (spark-vllm head), check the cable and that port {port} is open",
            )
        if now >= next_log:
            log.info("waiting for the head at %s:%d (%.0f s of %g s)", host, port, now - start, timeout)
            next_log = now + 5
        time.sleep(min(delay, max(0.0, timeout - (now - start))))
        delay = min(delay * 2, 0.5)  # a short cap: the join follows the head's start closely


def log_changes(before: ClusterState | None, now: ClusterState) -> None:
    """One line per node that joined or left between two looks at the cluster; nodes
    first seen together (a driver attaching to a formed cluster) are counted one by one."""
    joined = newly_joined(before, now)
    for count, n in enumerate(joined, len(now.gpu_nodes) - len(joined) + 1):
        log.info("node %s joined (%g GPU%s) - %d of %d GPU nodes",
                 n.ip, n.gpus, "" if n.gpus == 1 else "s", count, now.want)
    for n in newly_lost(before, now):
        log.warning("node %s left the cluster (%s)", n.ip, now.summary())


def wait_for_nodes(want: int, timeout: float, poll: float = 0.25,
                   alive: Callable[[], list[str]] = lambda: []) -> ClusterState:
    """Block until `want` alive GPU nodes are in the cluster; log each join.

    `alive()` returns the names of this node's dead Ray processes, so the wait ends
    at once when our own node dies instead of running out the clock.
    """
    start, state, last_log = time.monotonic(), None, 0.0
    while True:
        now_state = cluster_state(want)
        log_changes(state, now_state)
        state = now_state
        if state.complete:
            return state
        dead = alive()
        if dead:
            raise NodeLost(f"this machine's Ray processes died: {', '.join(dead)}",
                           "see the Ray logs under /tmp/ray/session_latest/logs")
        elapsed = time.monotonic() - start
        if elapsed >= timeout:
            raise ClusterIncomplete(
                f"only {state.summary()} after {timeout:g} s ({state.missing} missing)",
                "on the other Spark run `spark-vllm worker --head-ip <this head>`; check the "
                "cable, the interface, and that both run the same image",
            )
        if elapsed - last_log >= 10:
            log.info("waiting for %d more GPU node(s): %s", state.missing, state.summary())
            last_log = elapsed
        time.sleep(poll)


def watch_worker(node: RayNode, head_ip: str, port: int, grace: float = 5.0,
                 poll: float = 1.0) -> None:
    """Stay joined like `ray start --block`; raise NodeLost when the head goes away
    (its GCS port stops answering for `grace` seconds) or our raylet dies."""
    down_since = None
    while True:
        dead = node.dead_processes()
        if dead:
            raise NodeLost(f"this worker's Ray processes died: {', '.join(dead)}",
                           "the head may have gone away; see /tmp/ray/session_latest/logs")
        if port_open(head_ip, port, timeout=1.0):
            down_since = None
        else:
            down_since = down_since or time.monotonic()
            if time.monotonic() - down_since >= grace:
                raise NodeLost(f"the head {head_ip}:{port} went away",
                               "restart this worker once the head is back (a restart policy does it)")
        time.sleep(poll)


def watch_head(node: RayNode, want: int, poll: float = 1.0) -> None:
    """Keep the head up; log nodes leaving and joining. Returns never; raises NodeLost
    when the head's own Ray processes die."""
    state = cluster_state(want)
    while True:
        dead = node.dead_processes()
        if dead:
            raise NodeLost(f"the head's Ray processes died: {', '.join(dead)}",
                           "see /tmp/ray/session_latest/logs")
        now = cluster_state(want)
        log_changes(state, now)
        state = now
        time.sleep(poll)
