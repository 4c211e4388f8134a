"""Weights on every node: one Ray task pinned to each GPU node (node affinity, as
`versions.collect_reports` does) fetches the model into that node's own cache, in
parallel, with progress per node.

Each task reads its node's environment (HF_TOKEN or the stored login, HF_HOME,
HF_ENDPOINT, HF_HUB_OFFLINE): the token never leaves the node it belongs to.
Errors come back as values and are raised again here as the same spark-vllm error.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .. import errors
from ..cluster.nodes import ClusterState, NodeInfo
from .hub import HubAccess, cached_bytes, fetch_here
from .memory import fmt

PROGRESS_EVERY = 1.0  # seconds between a node's progress reports


def on_node(fn, node: NodeInfo, *args):
    """Submit `fn(*args)` as a Ray task pinned to `node` (no CPU reserved: it waits on I/O)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(fn)
    return task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False)).remote(*args)


def error_value(exc: errors.SparkVllmError) -> dict:
    return {"error": type(exc).__name__, "message": exc.message, "hint": exc.hint}


def raise_value(report: dict, node: str) -> None:
    """A task's error value -> the same spark-vllm error, naming the node."""
    if "error" in report:
        kind = getattr(errors, report["error"], errors.HubError)
        raise kind(f"on {node}: {report['message']}", report["hint"])


def fetch_task(repo_id: str, node_ip: str, board) -> dict:
    """What runs on each node: fetch_here, with its cache's size reported to `board`."""
    access = HubAccess.from_env(os.environ)
    done = threading.Event()

    def watch(plan, missing):
        def loop():
            while not done.wait(PROGRESS_EVERY):
                board.report.remote(node_ip, min(cached_bytes(repo_id, access), plan.total_bytes), plan.total_bytes)
        board.report.remote(node_ip, plan.total_bytes - missing, plan.total_bytes)
        threading.Thread(target=loop, daemon=True).start()

    try:
        report = fetch_here(repo_id, access, node_ip, on_plan=watch)
        board.report.remote(node_ip, report["total_bytes"], report["total_bytes"])
        return report
    except errors.SparkVllmError as exc:
        return error_value(exc)
    finally:
        done.set()


class ProgressBoard:
    """A tiny Ray actor the tasks report to and the head reads: node -> (done, total)."""

    def __init__(self) -> None:
        self.progress: dict[str, tuple[int, int]] = {}

    def report(self, node: str, done: int, total: int) -> None:
        self.progress[node] = (done, total)

    def read(self) -> dict[str, tuple[int, int]]:
        return dict(self.progress)


def describe_progress(progress: dict[str, tuple[int, int]]) -> str:
    """Pure: `192.168.100.10 100% (3.1 of 3.1 GiB), 192.168.100.11 40% (1.2 GiB of 3.1 GiB)`."""
    return ", ".join(f"{node} {100 * done // max(1, total)}% ({fmt(done)} of {fmt(total)})"
                     for node, (done, total) in sorted(progress.items()))


@dataclass
class Prefetch:
    """Fetches `repo_id` on each GPU node as it joins; `finish` waits for them all."""

    repo_id: str
    on_progress: Callable[[str], None]
    interval: float = 5.0

    def __post_init__(self) -> None:
        self.refs: dict[str, object] = {}
        self.board = None
        self.lock = threading.Lock()

    def start_for(self, nodes) -> None:
        import ray

        with self.lock:
            if self.board is None:
                self.board = ray.remote(num_cpus=0)(ProgressBoard).remote()
            for n in nodes:
                if n.ip not in self.refs:
                    self.refs[n.ip] = on_node(fetch_task, n, self.repo_id, n.ip, self.board)

    def follow_joins(self, want: int, stop: threading.Event) -> threading.Thread:
        """In the background, while the head waits for the nodes: start each node's fetch
        as soon as it joins (the driver connects inside the wait; until then, nothing)."""
        def loop():
            import ray
            from ..cluster.ray_node import cluster_state

            while not stop.wait(1.0):
                if ray.is_initialized():
                    try:
                        self.start_for(cluster_state(want).gpu_nodes)
                    except Exception:  # the driver is still connecting, or shutting down
                        continue
        thread = threading.Thread(target=loop, name="prefetch-joins", daemon=True)
        thread.start()
        return thread

    def finish(self, state: ClusterState, timeout: float) -> dict[str, dict]:
        """Start what is missing, wait for every node, log progress; raise a node's error."""
        import ray

        self.start_for(state.gpu_nodes)
        pending = dict(self.refs)
        reports: dict[str, dict] = {}
        deadline = time.monotonic() + timeout
        while pending:
            ready, _ = ray.wait(list(pending.values()), num_returns=len(pending), timeout=self.interval)
            for ip, ref in list(pending.items()):
                if ref in ready:
                    reports[ip] = ray.get(ref)
                    raise_value(reports[ip], ip)
                    del pending[ip]
            if pending:
                if time.monotonic() > deadline:
                    raise errors.HubError(f"fetching {self.repo_id} did not finish within {timeout:g} s on "
                                          + ", ".join(sorted(pending)), "check the network, or pass --no-prefetch")
                self.on_progress(describe_progress(ray.get(self.board.read.remote())))
        return reports
