"""Weights on every node: one Ray task pinned to each GPU node (node affinity, as
`versions.collect_reports` does) puts the model into that node's own cache, with
progress per node. One Hub download per cluster (`via_head`, the default): the head's
task downloads from the Hub, and each other node's task copies the head's snapshot over
the fabric (mirror.py) once it is there; Ray itself holds the copies back until the
head's download has finished (they take its manifest as an argument).

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
from .mirror import FolderServer, SnapshotServer, copy_folder_from_head, copy_from_head
from .recipes.verify import compare, copy_here, record
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


def fetch_task(repo_id: str, node_ip: str, board, revision: str | None = None) -> dict:
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
        report = fetch_here(repo_id, access, node_ip, on_plan=watch, revision=revision)
        record(report["folder"])  # the manifest an offline start checks the copy against
        board.report.remote(node_ip, report["total_bytes"], report["total_bytes"])
        return report
    except errors.SparkVllmError as exc:
        return error_value(exc)
    finally:
        done.set()


def reporter(board, node_ip: str, total: int) -> Callable[[int], None]:
    """on_bytes for a copy: the bytes so far to `board`, at most once a PROGRESS_EVERY."""
    done, last = [0], [0.0]

    def on_bytes(n: int) -> None:
        done[0] += n
        if time.monotonic() - last[0] > PROGRESS_EVERY:
            last[0] = time.monotonic()
            board.report.remote(node_ip, min(done[0], total), total)
    return on_bytes


def copy_task(manifest: dict, repo_id: str, node_ip: str, board) -> dict:
    """What runs on a worker in `via_head` mode: the head's snapshot over the fabric."""
    if "error" in manifest:
        return {**manifest, "message": f"the head's download failed: {manifest['message']}"}
    total = sum(f["size"] for f in manifest["files"])
    try:
        report = copy_from_head(manifest, repo_id, node_ip, reporter(board, node_ip, total))
        record(report["folder"])
        board.report.remote(node_ip, total, total)
        return report
    except errors.SparkVllmError as exc:
        return error_value(exc)
    except OSError as exc:
        return error_value(errors.HubError(f"the copy from the head failed: {exc}", "run it again: it resumes"))


def folder_task(server, folder: str, node_ip: str, board) -> dict:
    """What runs on a node for a local model folder: the head's copy where this node lacks it."""
    import ray

    try:
        listing = ray.get(server.listing.remote())
        total = sum(listing.values())
        report = copy_folder_from_head(folder, listing, lambda: ray.get(server.manifest.remote()), node_ip,
                                       reporter(board, node_ip, total))
        record(folder)
        board.report.remote(node_ip, total, total)
        return report
    except errors.SparkVllmError as exc:
        return error_value(exc)
    except OSError as exc:
        return error_value(errors.HubError(f"the copy of {folder} from the head failed: {exc}",
                                           "run it again: it resumes"))


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
    via_head: bool = True  # one Hub download (the head's), copies over the fabric for the others
    revision: str | None = None  # a pinned commit (a recipe's lock), else `main`
    local: bool = False  # repo_id is a local folder on the head: copied to the nodes that lack it

    def __post_init__(self) -> None:
        self.refs: dict[str, object] = {}
        self.board = None
        self.server = None  # the head's SnapshotServer actor
        self.manifest = None  # its manifest, an ObjectRef the copies wait on
        self.lock = threading.Lock()

    def start_for(self, nodes) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        with self.lock:
            if self.board is None:
                self.board = ray.remote(num_cpus=0)(ProgressBoard).remote()
            head = next((n for n in nodes if n.head), None)
            if self.local:
                self._start_folder(nodes, head)
                return
            if self.via_head and self.manifest is None and head is not None:
                self.refs[head.ip] = on_node(fetch_task, head, self.repo_id, head.ip, self.board, self.revision)
                self.server = ray.remote(num_cpus=0)(SnapshotServer).options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(head.node_id, soft=False),
                ).remote(self.repo_id, head.ip, self.refs[head.ip])
                self.manifest = self.server.manifest.remote()
            for n in nodes:
                if n.ip in self.refs:
                    continue
                if self.manifest is not None:
                    self.refs[n.ip] = on_node(copy_task, n, self.manifest, self.repo_id, n.ip, self.board)
                else:  # each from the Hub: asked for, or no head among the GPU nodes to copy from
                    self.refs[n.ip] = on_node(fetch_task, n, self.repo_id, n.ip, self.board, self.revision)

    def _start_folder(self, nodes, head) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if head is None:
            return
        if self.server is None:
            self.server = ray.remote(num_cpus=0)(FolderServer).options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(head.node_id, soft=False),
            ).remote(self.repo_id, head.ip)
            self.refs[head.ip] = ray.put({"node": head.ip, "folder": self.repo_id, "total_bytes": 0,
                                          "downloaded_bytes": 0, "source": "here"})
        for n in nodes:
            if n.ip not in self.refs:
                self.refs[n.ip] = on_node(folder_task, n, self.server, self.repo_id, n.ip, self.board)

    def close(self) -> None:
        import ray

        if self.server is not None:
            ray.kill(self.server)
            self.server = None

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
        try:
            return self._wait(state, timeout)
        finally:
            self.close()

    def _wait(self, state: ClusterState, timeout: float) -> dict[str, dict]:
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


def check_copies(state: ClusterState, model: str, revision: str | None, local: bool, verify_hashes: bool,
                 timeout: float) -> dict[str, dict]:
    """Every GPU node reads its copy of the model (recipes/verify.py) at once; the head
    holds them to its own. CopyNotVerified names each problem; else the reports."""
    import ray

    refs = {n.ip: on_node(copy_here, n, model, revision, local, verify_hashes, n.ip) for n in state.gpu_nodes}
    try:
        reports = dict(zip(refs, ray.get(list(refs.values()), timeout=timeout)))
    except Exception as exc:
        raise errors.CopyNotVerified(f"could not read the copies of {model} on every node: {exc}",
                                     "check `spark-vllm status`") from None
    head = next((n.ip for n in state.gpu_nodes if n.head), next(iter(reports)))
    problems = compare(reports, head)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise errors.CopyNotVerified(f"the copies of {model} are not complete and identical on every node: "
                                     + "; ".join(problems[:3]) + more,
                                     "fetch it again online (spark-vllm download), or fix the files' owner "
                                     "and mode; nothing was started")
    return reports
