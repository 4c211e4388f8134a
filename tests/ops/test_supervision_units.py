"""Supervision's decisions over plain values, and its loop with the cluster and the
engine swapped for stand-ins through its parameters (the real run is
test_supervision.py): when a node counts as lost, when the cluster is whole again,
what the port answers meanwhile, and what the policy does."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from launch.exitcodes import exit_code_for
from orchestrator.cluster.nodes import ClusterState, NodeInfo
from orchestrator.errors import EngineFailed, NodeLost
from orchestrator.ops.supervision import recovery
from orchestrator.ops.supervision.recovery import Attempt, RecoveryPolicy, Unavailable, serve_supervised, wait_for_rejoin, whole
from orchestrator.ops.supervision.supervisor import OK, REFUSED, SILENT, Loss, Supervisor, is_engine_process, judge, probe

HEAD, WORKER = "192.168.100.10", "192.168.100.11"


def node(node_id: str, ip: str, alive: bool = True, head: bool = False, port: int = 40000, reason: str = ""):
    return NodeInfo(node_id, ip, alive, 1.0 if alive else 0.0, head, reason, port)


SERVING = ClusterState((node("h", HEAD, head=True), node("w", WORKER)), 2)


def test_a_refused_raylet_port_is_a_loss_at_once():
    loss = judge(SERVING, SERVING, {"w": REFUSED}, {"w": 10.0}, t=10.5)
    assert loss.ip == WORKER and "refuses connections" in loss.reason and not loss.fatal


def test_a_silent_node_is_lost_only_after_the_grace_period():
    assert judge(SERVING, SERVING, {"w": SILENT}, {"w": 10.0}, t=12.9, grace=3.0) is None
    loss = judge(SERVING, SERVING, {"w": SILENT}, {"w": 10.0}, t=13.0, grace=3.0)
    assert loss.ip == WORKER and loss.silent_s == pytest.approx(3.0) and "not answered for 3.0 s" in loss.reason


def test_ray_marking_the_node_dead_is_a_loss_with_its_reason():
    now = ClusterState((node("h", HEAD, head=True), node("w", WORKER, alive=False, reason="health check failed")), 2)
    loss = judge(SERVING, now, {"w": OK}, {"w": 10.0}, t=11.0)
    assert loss.reason == "Ray marked it dead: health check failed"
    assert judge(SERVING, SERVING, {"w": OK}, {"w": 10.0}, t=99.0) is None  # answering: fine however long


def test_only_the_serving_nodes_count():
    """A node that joined later (not in the engine) is not watched; the head is not probed."""
    now = ClusterState(SERVING.nodes + (node("x", "192.168.100.12", alive=False),), 2)
    assert judge(SERVING, now, {"w": OK, "h": REFUSED}, {"w": 10.0}, t=11.0) is None


@pytest.mark.parametrize("cmdline, engine", [
    (["VLLM::EngineCore"], True),
    (["/usr/bin/python3", "-c", "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5)",
      "--multiprocessing-fork"], True),
    (["/usr/bin/python3", "-c", "from multiprocessing.resource_tracker import main;main(4)"], False),
    (["/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet", "--node_ip_address=1"], False),
    (["/venv/bin/python", "-u", "/venv/lib/python3.11/site-packages/ray/dashboard/dashboard.py"], False),
])
def test_engine_process_is_told_from_rays(cmdline, engine):
    assert is_engine_process(cmdline) is engine


def test_whole_needs_every_alive_gpu_node_answering():
    """A rejoined worker is a new node; the lost one stays 'alive' in Ray's table until
    its health checks fail, and vLLM's placement group could pick its GPU meanwhile."""
    rejoined = ClusterState((node("h", HEAD, head=True), node("w2", WORKER, port=40001)), 2)
    both = ClusterState(rejoined.nodes + (node("w", WORKER, port=40000),), 2)
    answers = {40001: OK, 40000: SILENT}
    assert whole(rejoined, lambda ip, port: answers[port])
    assert not whole(both, lambda ip, port: answers[port])
    assert not whole(ClusterState((node("h", HEAD, head=True),), 2), lambda ip, port: OK)


def test_wait_for_rejoin_is_bounded():
    alone = ClusterState((node("h", HEAD, head=True),), 2)
    start = time.monotonic()
    with pytest.raises(NodeLost) as err:
        wait_for_rejoin(lambda: alone, Loss(WORKER, "gone", 1.0), timeout=0.3, poll=0.05)
    assert time.monotonic() - start < 5
    assert f"node {WORKER} lost: gone; it did not rejoin within 0.3 s (1 of 2 GPU nodes" in str(err.value)
    assert exit_code_for(err.value) == 7
    states = iter([alone, alone, SERVING])
    assert wait_for_rejoin(lambda: next(states), Loss(WORKER, "gone", 1.0), 10, reachable=lambda ip, p: OK,
                           poll=0.01) < 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, body: dict | None = None):
    req = urllib.request.Request(url, json.dumps(body).encode() if body else None)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_unavailable_answers_503_naming_the_reason():
    port = free_port()
    with Unavailable("127.0.0.1", port, f"node {WORKER} lost: gone"):
        status, _, _ = get(f"http://127.0.0.1:{port}/health")
        assert status == 503
        status, headers, body = get(f"http://127.0.0.1:{port}/v1/completions", {"model": "m", "prompt": "x"})
        assert status == 503 and headers["Retry-After"] == str(recovery.RETRY_AFTER_S)
        error = json.loads(body)["error"]
        assert error["code"] == 503 and f"node {WORKER} lost" in error["message"]
    with pytest.raises(OSError):  # closed: the engine can take the port again
        socket.create_connection(("127.0.0.1", port), timeout=1)


# --- the loop, with the engine and the cluster stood in for -----------------------------
class Cluster:
    """Ray's table as a value the test changes; the raylet ports' answers likewise."""

    def __init__(self) -> None:
        self.state, self.answer, self.engine_stops = SERVING, OK, 0

    def probe(self, ip: str, port: int) -> str:
        return self.answer

    def supervisor(self, state, dead):
        return Supervisor(state, dead, poll=0.05, grace=0.2, prober=self.probe, stop_engine=self.stop_engine)

    def stop_engine(self) -> list[int]:
        self.engine_stops += 1
        return []


def engine_until_stopped(cluster: Cluster, attempts: list, lose_on=(0,)):
    """An 'engine' that serves until the supervisor stops it; the link of the worker
    goes silent during the attempts in `lose_on`."""
    def run(attempt: Attempt) -> None:
        attempts.append(attempt)
        if attempt.number not in lose_on:
            return  # a stop (SIGTERM) while every node is in place
        cluster.answer = SILENT
        deadline = time.monotonic() + 5
        while cluster.engine_stops == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        cluster.state = ClusterState((node("h", HEAD, head=True), node("w2", WORKER, port=40001)), 2)
        cluster.answer = OK  # the worker restarted and rejoined
    return run


def test_a_loss_restarts_the_engine_once_the_node_rejoined():
    cluster, attempts = Cluster(), []
    serve_supervised(engine_until_stopped(cluster, attempts), lambda: cluster.state, RecoveryPolicy(),
                     "127.0.0.1", free_port(), supervisor=cluster.supervisor, reachable=cluster.probe)
    assert [a.number for a in attempts] == [0, 1]
    assert attempts[1].cause.ip == WORKER and "not answered" in attempts[1].cause.reason
    assert cluster.engine_stops >= 1


def test_a_loss_during_the_stop_ends_the_loop_without_a_restart():
    """SIGTERM came, vLLM drains, and a node goes meanwhile: the head stops as asked."""
    cluster, attempts = Cluster(), []
    serve_supervised(engine_until_stopped(cluster, attempts), lambda: cluster.state, RecoveryPolicy(),
                     "127.0.0.1", free_port(), supervisor=cluster.supervisor, reachable=cluster.probe,
                     stopping=lambda: True)
    assert [a.number for a in attempts] == [0] and cluster.engine_stops >= 1


def test_exit_on_node_loss_raises_node_lost():
    cluster, attempts = Cluster(), []
    with pytest.raises(NodeLost) as err:
        serve_supervised(engine_until_stopped(cluster, attempts), lambda: cluster.state,
                         RecoveryPolicy(exit_on_node_loss=True), "127.0.0.1", free_port(),
                         supervisor=cluster.supervisor, reachable=cluster.probe)
    assert "--exit-on-node-loss is set" in str(err.value) and f"node {WORKER} lost" in str(err.value)
    assert len(attempts) == 1 and exit_code_for(err.value) == 7


def test_an_engine_failure_with_every_node_in_place_is_not_a_loss():
    cluster = Cluster()

    def fails(attempt):
        raise EngineFailed("vLLM stopped: RuntimeError: boom")

    with pytest.raises(EngineFailed):
        serve_supervised(fails, lambda: cluster.state, RecoveryPolicy(), "127.0.0.1", free_port(),
                         supervisor=cluster.supervisor, reachable=cluster.probe)


def test_a_loss_seen_just_after_the_engine_ended_still_counts():
    """vLLM's engine dies of a killed worker and its server ends before the supervisor's
    next look: `settle` looks once more."""
    cluster, attempts = Cluster(), []

    def dies_first(attempt):
        attempts.append(attempt)
        if attempt.number == 0:
            cluster.answer = REFUSED

            def rejoin():
                time.sleep(0.5)
                cluster.state = ClusterState((node("h", HEAD, head=True), node("w2", WORKER, port=40001)), 2)
                cluster.answer = OK
            threading.Thread(target=rejoin, daemon=True).start()

    serve_supervised(dies_first, lambda: cluster.state, RecoveryPolicy(), "127.0.0.1", free_port(),
                     supervisor=lambda s, d: Supervisor(s, d, poll=10, grace=0.2, prober=cluster.probe,
                                                        stop_engine=cluster.stop_engine),
                     reachable=cluster.probe)
    assert [a.number for a in attempts] == [0, 1] and "refuses" in attempts[1].cause.reason


def test_probe_tells_refused_from_ok():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert probe("127.0.0.1", port) == OK
    assert probe("127.0.0.1", port) == REFUSED
