"""Supervision while serving: notice a lost node within seconds, without request traffic.

vLLM alone notices a killed worker in about 2 s (its Ray actors die), but a cut link
only after about 63 s: TCP to the worker hangs, `/health` stays 200 and requests hang.
So the head watches the nodes itself, once a second:
- Ray's node table (the GCS marks a node dead after its health checks, which
  `ray_node.HEALTH_CHECK` shortens to 5-10 s);
- a TCP connect to each other GPU node's raylet port, answered by that node's kernel
  even when the machine is busy: refused (the node's processes died) or unanswered
  (the link is down) for `grace` seconds means the node is lost.
On a loss the supervisor SIGKILLs vLLM's engine-core process. vLLM's front end then
does what it does for a dead engine: `/health` answers 503, requests in flight end
with an error, new ones get an error, and its watchdog stops the server within 5 s.
`recovery` takes it from there.

`judge` is the pure decision; `Supervisor` is the thread around it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from ...cluster.nodes import ClusterState, NodeInfo

log = logging.getLogger("spark_vllm")

POLL_S = 1.0  # how often the nodes are looked at
GRACE_S = 3.0  # unreachable for this long: lost (a busy node still answers a connect in ms)
PROBE_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Loss:
    """A node the engine runs on went away while serving."""

    ip: str
    reason: str
    silent_s: float  # from the node's last sign of life to the detection
    fatal: bool = False  # the head's own Ray died: nothing to wait for

    def describe(self) -> str:
        return f"node {self.ip} lost: {self.reason}"


def peers(state: ClusterState) -> tuple[NodeInfo, ...]:
    """The GPU nodes other than the head: the ones to probe."""
    return tuple(n for n in state.gpu_nodes if not n.head)


OK, REFUSED, SILENT = "ok", "refused", "silent"


def judge(serving: ClusterState, now: ClusterState, answers: Mapping[str, str],
          last_ok: Mapping[str, float], t: float, grace: float = GRACE_S) -> Loss | None:
    """Pure. `serving`: the cluster the engine was started on; `now`: Ray's table now;
    `answers`: node_id -> how its raylet port answered just now (OK, REFUSED: nothing
    listens, the node's processes died; SILENT: no answer, the link is down); `last_ok`:
    node_id -> the last time it answered. The first lost node, or None."""
    alive = {n.node_id for n in now.gpu_nodes}
    for n in peers(serving):
        silent = t - last_ok.get(n.node_id, t)
        if n.node_id not in alive:
            gone = next((m for m in now.nodes if m.node_id == n.node_id), None)
            why = f": {gone.death_reason}" if gone and gone.death_reason else ""
            return Loss(n.ip, f"Ray marked it dead{why}", silent)
        answer = answers.get(n.node_id, OK)
        if answer == REFUSED:
            return Loss(n.ip, f"its raylet port {n.raylet_port} refuses connections (its processes died)", silent)
        if answer == SILENT and silent >= grace:
            return Loss(n.ip, f"its raylet port {n.raylet_port} has not answered for {silent:.1f} s "
                              "(link down or machine off)", silent)
    return None


def probe(ip: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> str:
    """How ip:port answers a TCP connect: OK, REFUSED or SILENT."""
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return OK
    except ConnectionRefusedError:
        return REFUSED
    except OSError:
        return SILENT


def is_engine_process(cmdline: list[str]) -> bool:
    """Pure: vLLM's engine core, a `spawn` child of the server process. vLLM titles it
    `VLLM::EngineCore` when setproctitle is installed; a plain spawn child otherwise
    (multiprocessing's resource tracker is not one)."""
    text = " ".join(cmdline)
    return "EngineCore" in text or ("spawn_main" in text and "resource_tracker" not in text)


def kill_engine() -> list[int]:
    """SIGKILL this process's vLLM engine-core children (a graceful stop would wait on
    the lost node). Returns their pids."""
    import psutil

    killed = []
    for child in psutil.Process().children(recursive=False):
        with contextlib.suppress(psutil.Error):
            if is_engine_process(child.cmdline()):
                child.kill()
                killed.append(child.pid)
    return killed


class Watcher:
    """A daemon thread running `_run` until `stop()`, usable as `with`. Subclasses set
    `_stopped` (an Event), `_poll` and `name`."""

    name = "spark-vllm-watcher"
    _thread: threading.Thread | None = None

    def start(self):
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread:
            self._thread.join(timeout=2 * (self._poll + PROBE_TIMEOUT_S))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        raise NotImplementedError


class Supervisor(Watcher):
    """Watches the serving cluster from a daemon thread; on a loss records it in
    `loss`, logs it, and kills the engine (again each poll until `stop`, since a loss
    during the engine's build may come before its process exists).

    `state()` reads Ray's node table; `dead()` names this node's dead Ray processes.
    """

    def __init__(self, state: Callable[[], ClusterState], dead: Callable[[], list[str]] = list,
                 poll: float = POLL_S, grace: float = GRACE_S, stop_engine: Callable[[], list[int]] = kill_engine,
                 prober: Callable[[str, int], str] = probe) -> None:
        self._state, self._dead, self._poll, self._grace = state, dead, poll, grace
        self._stop_engine, self._probe = stop_engine, prober
        self._stopped = threading.Event()
        self.lost = threading.Event()
        self.loss: Loss | None = None
        self.detected_at: float | None = None  # time.monotonic() of the detection
        self.serving: ClusterState | None = None

    name = "spark-vllm-supervisor"

    def start(self) -> "Supervisor":
        self.serving = self._state()
        return super().start()

    def _run(self) -> None:
        start = time.monotonic()
        last_ok = {n.node_id: start for n in peers(self.serving)}
        while not self._stopped.is_set():
            if self.loss is None:
                try:
                    self._look(last_ok)
                except Exception as exc:  # Ray's table unreadable for a moment: look again
                    log.debug("supervisor: %s", exc)
            if self.loss is not None:
                pids = self._stop_engine()
                if pids:
                    log.info("stopped vLLM's engine (pid %s) so that requests fail instead of hanging",
                             ", ".join(map(str, pids)))
            self._stopped.wait(self._poll)

    def _look(self, last_ok: dict[str, float]) -> bool:
        """One look at the nodes; records a loss. True when every node answered."""
        dead = self._dead()
        if dead:
            self._record(Loss("this head", f"its Ray processes died: {', '.join(dead)}", 0.0, fatal=True))
            return False
        now_state = self._state()
        answers = {}
        for n in peers(self.serving):
            answers[n.node_id] = self._probe(n.ip, n.raylet_port) if n.raylet_port else OK
            if answers[n.node_id] == OK:
                last_ok[n.node_id] = time.monotonic()
        loss = judge(self.serving, now_state, answers, last_ok, time.monotonic(), self._grace)
        if loss:
            self._record(loss)
        return all(a == OK for a in answers.values())

    def settle(self) -> Loss | None:
        """After vLLM stopped on its own, with no loss seen yet (its engine may die of a
        killed node a moment before the supervisor looks): look until every node
        answers or one is judged lost. Bounded by the grace period."""
        self.stop()
        last_ok = {n.node_id: time.monotonic() for n in peers(self.serving)}
        deadline = time.monotonic() + self._grace + 2 * (self._poll + PROBE_TIMEOUT_S)
        while self.loss is None and time.monotonic() < deadline:
            try:
                if self._look(last_ok) or self.loss is not None:
                    break
            except Exception as exc:  # Ray's table unreadable: no verdict
                log.debug("supervisor: %s", exc)
                break
            time.sleep(self._poll)
        return self.loss

    def _record(self, loss: Loss) -> None:
        self.loss, self.detected_at = loss, time.monotonic()
        log.warning("%s (detected %.1f s after its last sign of life)", loss.describe(), loss.silent_s)
        self.lost.set()
