"""The Ray cluster: start or join this machine's Ray node through Ray's own Python
code (what `ray start --head/--address --block` runs), wait for the GPU nodes,
check versions across them, and watch the cluster afterwards.

The communication plan must already be applied to `os.environ`: the raylet and
every Ray worker on this node inherit the environment of this process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .discovery import Interface
from .errors import (ClusterError, ClusterIncomplete, HeadUnreachable, NodeLost, VersionSkew,
                     WrongSubnet)
from .nodes import ClusterState, newly_joined, newly_lost, parse_nodes
from .versions import compare, local_report, skew_table

log = logging.getLogger("spark_vllm")

DEFAULT_PORT = 6379


@dataclass(frozen=True)
class ClusterOptions:
    node_ip: str
    head_ip: str  # equals node_ip on the head
    port: int = DEFAULT_PORT
    num_gpus: int | None = None  # None: Ray detects them
    num_cpus: int | None = None
    simulate: bool = False
    dashboard_host: str | None = None  # None: the head's fabric address
    nodes: int = 2
    wait_timeout: float = 600.0
    join_timeout: float = 120.0
    allow_version_skew: bool = False
    temp_dir: str | None = None

    @property
    def head(self) -> bool:
        return self.node_ip == self.head_ip

    @property
    def gcs_address(self) -> str:
        return f"{self.head_ip}:{self.port}"


def ray_params(opts: ClusterOptions) -> dict:
    """Pure: the RayParams of this node."""
    params = dict(
        node_ip_address=opts.node_ip,
        num_gpus=1 if opts.simulate and opts.num_gpus is None else opts.num_gpus,
        num_cpus=opts.num_cpus,
        temp_dir=opts.temp_dir,
    )
    if opts.simulate:
        # Two simulated Sparks share one machine's memory: keep Ray's object store small.
        params["object_store_memory"] = 256 * 1024 * 1024
    if opts.head:
        params.update(gcs_server_port=opts.port,
                      dashboard_host=opts.dashboard_host or opts.node_ip)
    else:
        params.update(gcs_address=opts.gcs_address)
    return {k: v for k, v in params.items() if v is not None}


def attach_address(environ) -> str | None:
    """Inside `ray job submit`, or with RAY_ADDRESS set, use that cluster: start nothing."""
    if environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        return environ.get("RAY_ADDRESS") or "auto"
    return environ.get("RAY_ADDRESS") or None


def check_head_subnet(head_ip: str, iface: Interface) -> None:
    """A worker's head must be on the chosen interface's subnet (pure)."""
    if not iface.subnet_holds(head_ip):
        raise WrongSubnet(
            f"head {head_ip} is not on {iface.name}'s subnet ({', '.join(iface.ipv4) or 'no IPv4'})",
            "wrong interface or cable: check --iface and --head-ip, and which port the cable is in",
        )


# --- effects: TCP ------------------------------------------------------------------
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
        delay = min(delay * 2, 2.0)


# --- effects: the Ray node -----------------------------------------------------------
AUTH_HINT = "the cluster uses token authentication: pass --token-file with a copy of the head's token file"


def _auth_refused(exc: BaseException) -> bool:
    """Ray reports a refused token as a RuntimeError whose text holds the traceback of
    an AuthenticationError (sometimes chained under a ConnectionError)."""
    return any("InvalidAuthToken" in str(e) for e in (exc, exc.__cause__) if e is not None)


class RayNode:
    """This machine's Ray processes (GCS and dashboard on the head, raylet everywhere)."""

    def __init__(self, opts: ClusterOptions) -> None:
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # else `ray start` asks and waits 10 s
        from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled
        from ray._private.node import Node
        from ray._private.parameter import RayParams
        from ray._private.utils import write_ray_address

        ensure_token_if_auth_enabled(None, create_token_if_missing=False)
        self.opts = opts
        try:
            self._node = Node(RayParams(**ray_params(opts)), head=opts.head,
                              shutdown_at_exit=False, spawn_reaper=True)
        except Exception as exc:  # Ray raises bare Exceptions/ConnectionErrors here
            if _auth_refused(exc):
                raise ClusterError(f"the head {opts.gcs_address} refused this node's Ray auth token",
                                   AUTH_HINT) from exc
            raise ClusterError(f"Ray could not start on {opts.node_ip}: {exc}",
                               "see the Ray logs under /tmp/ray/session_latest/logs") from exc
        self.address = self._node.gcs_address
        write_ray_address(self.address, opts.temp_dir)  # so `ray status` works as before

    def dead_processes(self) -> list[str]:
        return [name for name, _ in self._node.dead_processes()]

    def stop(self, grace: float = 5.0) -> None:
        """Stop Ray's processes, then any descendant they left behind (the raylet's
        dashboard and runtime-env agents outlive it otherwise)."""
        import psutil

        me = psutil.Process()
        before = me.children(recursive=True)
        self._node.kill_all_processes(check_alive=False, allow_graceful=True, wait=True)
        left = [p for p in before if p.is_running()]
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, alive = psutil.wait_procs(left, timeout=grace)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()


def connect_driver(address: str, node_ip: str | None = None, quiet: bool = False) -> None:
    """Connect this process to the cluster as a Ray driver (vLLM reuses the connection)."""
    import ray

    if not ray.is_initialized():
        # ray.init replaces the SIGTERM handler with `sys.exit(15)` (and its C++ core
        # worker chains a stack dump in front): put back the caller's, so a stopped
        # head still tears its node down and exits 0.
        main = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGTERM) if main else None
        try:
            ray.init(address=address, _node_ip_address=node_ip, logging_level=logging.WARNING,
                     log_to_driver=not quiet, configure_logging=not quiet)
        except Exception as exc:
            if _auth_refused(exc):
                raise ClusterError(f"the Ray cluster at {address} refused this process's auth token",
                                   AUTH_HINT) from exc
            raise ClusterError(f"could not connect to the Ray cluster at {address}: {exc}") from exc
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def cluster_state(want: int) -> ClusterState:
    import ray

    return ClusterState(parse_nodes(ray.nodes()), want)


def log_changes(before: ClusterState | None, now: ClusterState) -> None:
    """One line per node that joined or left between two looks at the cluster."""
    for n in newly_joined(before, now):
        log.info("node %s joined (%g GPU%s) - %d of %d GPU nodes",
                 n.ip, n.gpus, "" if n.gpus == 1 else "s", len(now.gpu_nodes), now.want)
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


# --- versions across nodes -----------------------------------------------------------
def collect_reports(state: ClusterState, timeout: float = 60.0) -> dict[str, dict]:
    """Run `local_report` on every alive node, pinned there by node affinity."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0)(local_report)
    refs = {
        n.ip: task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False)).remote()
        for n in state.nodes if n.alive
    }
    try:
        values = ray.get(list(refs.values()), timeout=timeout)
    except Exception as exc:
        raise ClusterError(f"could not read versions from every node: {exc}") from exc
    return dict(zip(refs, values))


def check_versions(state: ClusterState, allow_skew: bool) -> dict[str, dict]:
    reports = collect_reports(state)
    skews = compare(reports)
    if skews and not allow_skew:
        raise VersionSkew(
            "versions differ between nodes:\n" + skew_table(skews),
            "run the same image on every Spark, or pass --allow-version-skew",
        )
    if skews:
        log.warning("versions differ between nodes (allowed by --allow-version-skew):\n%s", skew_table(skews))
    return reports


# --- supervision -------------------------------------------------------------------
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
