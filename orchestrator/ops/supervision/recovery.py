"""Recovery after a lost node: keep Ray up, wait for the node to rejoin, restart vLLM.

`serve_supervised` runs vLLM's server under a `Supervisor`. When a node is lost
(see `supervisor`), vLLM's engine is stopped and its server ends; then, by default:
1. the server's port answers 503 with a JSON error and `Retry-After` (`Unavailable`),
   so that clients and load balancers see a clear status instead of a refused port;
2. the head waits for the cluster to be whole again, at most `rejoin_timeout`
   seconds: every GPU node alive in Ray's table and answering on its raylet port
   (the lost one must be gone from the table first, or vLLM's placement group could
   pick its GPU). The worker's side: its `spark-vllm serve --head-ip` exits when it
   loses the head, and its restart policy starts it again; it joins once the head
   answers;
3. the engine starts again, in this process, with the same arguments (the Ray
   driver stays connected; vLLM's own engine process and Ray actors are new, and Ray
   removed the old ones with their placement group when the engine process died).
With `exit_on_node_loss`, or once `rejoin_timeout` has passed, it raises `NodeLost`
instead: the command exits non-zero and the container's restart policy takes over.

A wedged engine (`watchdog`: alive, generating nothing) takes the same path with other
steps in the middle: while the port answers 503 naming the wedge, what is left of the
engine is ended on every node (`reaper`), then the restart budget (`budget`) says
whether to start it again after a pause, or to raise `EngineWedged` (exit 18).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from ...cluster.membership import log_changes
from ...cluster.nodes import ClusterState
from ...errors import EngineFailed, EngineWedged, NodeLost
from . import reaper
from .budget import RestartBudget, Verdict, decide
from .supervisor import OK, Loss, Supervisor, peers, probe
from .watchdog import Watchdog, Wedge

log = logging.getLogger("spark_vllm")

DEFAULT_REJOIN_TIMEOUT = 600.0
RETRY_AFTER_S = 10


@dataclass(frozen=True)
class RecoveryPolicy:
    exit_on_node_loss: bool = False
    rejoin_timeout: float = DEFAULT_REJOIN_TIMEOUT
    budget: RestartBudget = RestartBudget()  # for wedges (a lost node has its rejoin timeout)


@dataclass(frozen=True)
class Attempt:
    """One start of the engine: 0 the first, then one per recovery."""

    number: int
    cause: Loss | Wedge | None = None  # what this restart recovers from
    detected_at: float | None = None  # time.monotonic() of the detection


def whole(state: ClusterState, answers: Callable[[str, int], str]) -> bool:
    """The cluster can take the engine again: enough GPU nodes, and every GPU node
    Ray counts as alive answers (a lost node Ray has not yet declared dead does not)."""
    return state.complete and all(not n.raylet_port or answers(n.ip, n.raylet_port) == OK for n in peers(state))


def wait_for_rejoin(state: Callable[[], ClusterState], loss: Loss, timeout: float,
                    dead: Callable[[], list[str]] = list, reachable: Callable[[str, int], str] = probe,
                    poll: float = 1.0) -> float:
    """Until the cluster is whole again (logging each join and leave); returns the
    seconds waited. Raises NodeLost after `timeout`, or at once if our own Ray dies."""
    start, before, last_log = time.monotonic(), None, 0.0
    while True:
        now = state()
        log_changes(before, now)
        before = now
        if whole(now, reachable):
            return time.monotonic() - start
        died = dead()
        if died:
            raise NodeLost(f"the head's Ray processes died while waiting for {loss.ip}: {', '.join(died)}",
                           "see /tmp/ray/session_latest/logs; the restart policy restarts this head")
        waited = time.monotonic() - start
        if waited >= timeout:
            raise NodeLost(f"{loss.describe()}; it did not rejoin within {timeout:g} s ({now.summary()})",
                           "check that Spark and the cable; the restart policy restarts this head, "
                           "which then waits for the nodes again")
        if waited - last_log >= 15:
            log.info("still waiting for %s to rejoin (%.0f s of %g s): %s", loss.ip, waited, timeout, now.summary())
            last_log = waited
        time.sleep(poll)


class Unavailable:
    """While the engine is down: the server's port answers every request with 503, a
    JSON error in OpenAI's shape naming the reason, and `Retry-After`."""

    def __init__(self, host: str | None, port: int, reason: str) -> None:
        body = json.dumps({"error": {"message": f"spark-vllm is recovering: {reason}", "type": "ServiceUnavailable",
                                     "code": 503}}).encode()

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                self.send_response(503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Retry-After", str(RETRY_AFTER_S))
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _answer

            def log_message(self, *args) -> None:  # not one line per request
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer((host or "0.0.0.0", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="spark-vllm-503", daemon=True)

    def __enter__(self) -> "Unavailable":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_supervised(run_engine: Callable[[Attempt], None], state: Callable[[], ClusterState],
                     policy: RecoveryPolicy, host: str | None, port: int,
                     dead: Callable[[], list[str]] = list,
                     on_recovering: Callable[[Loss | Wedge], None] = lambda cause: None,
                     supervisor: Callable[..., Supervisor] = Supervisor,
                     reachable: Callable[[str, int], str] = probe,
                     watchdog: Callable[[], Watchdog] | None = None,
                     end_engine: Callable[[reaper.Remains | None], reaper.Ended] = reaper.end,
                     on_restarting: Callable[[Wedge, Verdict], None] = lambda wedge, verdict: None,
                     stopping: Callable[[], bool] = lambda: False) -> None:
    """Run the engine (`run_engine(attempt)` blocks while vLLM serves), restarting it
    after each lost node or wedge as `policy` says. Returns when vLLM stopped on its own
    (SIGTERM, Ctrl-C) with every node in place. `supervisor`, `watchdog` (None: none),
    `reachable` and `end_engine` are the watchers, the probe and the reaper (the real ones
    unless a test swaps them); `on_recovering` and `on_restarting` tell the status and
    the metrics. `stopping()` says a stop signal came (SIGTERM, Ctrl-C): a node lost
    during the drain that follows ends the loop instead of restarting the engine."""
    attempt, restarts = Attempt(0), []
    while True:
        failure = None
        with supervisor(state, dead) as sup, (watchdog() if watchdog else contextlib.nullcontext()) as dog:
            try:
                run_engine(attempt)
            except EngineFailed as exc:
                failure = exc
        cause = sup.loss or (dog.wedge if dog else None) or sup.settle()
        if cause is None or stopping():
            if cause is not None:
                log.warning("%s while the server was stopping: not restarting vLLM", cause.describe())
            if failure is not None:
                raise failure
            return
        detected_at = dog.detected_at if isinstance(cause, Wedge) else sup.detected_at
        stopped_after = time.monotonic() - detected_at
        if isinstance(cause, Wedge):
            on_recovering(cause)
            after_wedge(cause, stopped_after, decide(policy.budget, tuple(restarts), time.monotonic()), host, port,
                        lambda: end_engine(dog.remains), on_restarting)
            restarts.append(time.monotonic())
            attempt = Attempt(attempt.number + 1, cause, detected_at)
            log.info("restart %d after the wedge: starting vLLM with the same arguments", attempt.number)
            continue
        if cause.fatal:
            raise NodeLost(cause.describe(), "see /tmp/ray/session_latest/logs; the restart policy restarts this head")
        if policy.exit_on_node_loss:
            raise NodeLost(f"{cause.describe()}; vLLM stopped {stopped_after:.1f} s later and "
                           "--exit-on-node-loss is set", "the restart policy restarts this head, which then "
                           "waits for the nodes again")
        log.info("vLLM stopped %.1f s after the loss; answering 503 on port %d while waiting up to %g s for "
                 "%s to rejoin (its `spark-vllm serve --head-ip` rejoins when restarted)",
                 stopped_after, port, policy.rejoin_timeout, cause.ip)
        on_recovering(cause)
        with Unavailable(host, port, cause.describe()):
            waited = wait_for_rejoin(state, cause, policy.rejoin_timeout, dead, reachable)
        attempt = Attempt(attempt.number + 1, cause, detected_at)
        log.info("restart %d: the cluster is whole again after %.1f s; starting vLLM with the same arguments",
                 attempt.number, waited)


def after_wedge(wedge: Wedge, stopped_after: float, verdict: Verdict, host: str | None, port: int,
                end_engine: Callable[[], reaper.Ended], on_restarting: Callable[[Wedge, Verdict], None]) -> None:
    """While the port answers 503 naming the wedge: end the old engine on every node,
    then pause before the restart, or raise EngineWedged when the budget is spent
    (after the ending: the head leaves nothing running)."""
    log.info("vLLM's server stopped %.1f s after the wedge was seen; answering 503 on port %d while the old "
             "engine is ended on every node", stopped_after, port)
    with Unavailable(host, port, wedge.describe()):
        ended = end_engine()
        log.info("old engine ended: %s", ended.describe())
        if ended.left:
            log.warning("still in Ray's tables after the wait: %s", "; ".join(ended.left))
        if not verdict.restart:
            raise EngineWedged(f"{wedge.describe()}; {verdict.describe()}",
                               "the head exits so that the container's restart policy starts it afresh; "
                               "the log above says what was killed where")
        log.info("next: %s", verdict.describe())
        on_restarting(wedge, verdict)
        time.sleep(verdict.pause)
