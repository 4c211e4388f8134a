"""A node lost while serving, for real: two simulated Sparks serving TP 2 over Ray, then
the worker's link cut, the worker killed, and the head stopped under load, one after
the other on the same cluster (each recovery gives the next scenario a whole cluster).

What is asserted is the behaviour: `/health` not 200 after the loss, requests in
flight end with an error within a bound instead of hanging, new ones get a 503 that
names the lost node, the worker's restart brings serving back without restarting the
head, and a SIGTERM lets accepted requests finish. The times (detection, failure of
requests in flight, recovery) are printed at the end of the run, not asserted.
"""

from __future__ import annotations

import time

import pytest

from orchestrator.sim.namespaces import netns
from orchestrator.sim.demo.run import serving_cluster, start_serve, stop_run
from orchestrator.sim.demo.load import Background
from orchestrator.sim.models.tinymodel import make_tiny_model

from conftest import PREFIX, REPO, TIMINGS, clean_env, ns_http

REJOIN_S = 240  # the head's --rejoin-timeout here: ample for a worker restart on 2 busy cores
HANG_BOUND_S = 45  # vLLM alone: a request in flight at a link cut failed after 63.7 s
RECOVERY_S = 300


def background(node, *args: str) -> Background:
    return Background(node, *args, env=clean_env(), cwd=str(REPO))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(make_tiny_model(tmp_path_factory.mktemp("model") / "tiny-llama"))


@pytest.fixture(scope="module")
def served(netns_ok, model, tmp_path_factory):
    lines: list[tuple[str, str]] = []
    logs = tmp_path_factory.mktemp("logs")
    with serving_cluster(logs, model, lambda who, line: lines.append((who, line)), prefix=PREFIX,
                         flags=("--rejoin-timeout", str(REJOIN_S))) as sim:
        state = {"sim": sim, "lines": lines, "logs": logs, "model": model, "workers": []}
        health = background(sim.net.nodes[0], sim.url, "--watch-health")
        state["health"] = health
        try:
            yield state
        finally:
            health.close()
            for run in state["workers"]:
                stop_run(run, timeout=30)


def head_lines(state) -> list[str]:
    return [line for who, line in state["lines"] if who == "head"]


def lose_worker_then_recover(state, name: str, lose, restore=lambda: None) -> None:
    """The shared scenario: requests in flight, `lose()` the worker, check what clients
    see, `restore()`, start the worker again (as its restart policy would), check that
    the same head serves again."""
    sim, model = state["sim"], state["model"]
    head_node, worker_node = sim.net.nodes
    restarts_before = sum("ready again" in line for line in head_lines(state))
    load = background(head_node, sim.url, model, "--requests", "2", "--max-tokens", "480")
    try:
        load.wait(lambda e: e["event"] == "first", 120, "first token")
        t_loss = time.time()
        lose()
        health = state["health"].wait(lambda e: e["t"] >= t_loss and e["status"] != 200, 90, "/health not 200")
        ends = [load.wait(lambda e, i=i: e["event"] == "end" and e["i"] == i, HANG_BOUND_S + 30, "request end")
                for i in range(2)]
    finally:
        load.close()
    detect_s = health["t"] - t_loss
    fail_s = max(e["t"] for e in ends) - t_loss
    assert all(not e["ok"] for e in ends), ends  # cut short, not completed
    assert all(e["error"] for e in ends), ends
    assert fail_s < HANG_BOUND_S, f"requests in flight hung for {fail_s:.1f} s: {ends}"

    # New requests: vLLM's own error for a few seconds, then our 503 naming the node.
    deadline, ask = time.monotonic() + 60, {"model": model, "prompt": "x", "max_tokens": 1}
    while (r := ns_http(head_node, sim.url + "/v1/completions", ask))["status"] != 503 and \
            time.monotonic() < deadline:
        assert r["status"] != 200, r
        time.sleep(1)
    assert r["status"] == 503 and worker_node.ip in r["body"] and r["headers"].get("Retry-After"), r
    assert ns_http(head_node, sim.url + "/health")["status"] == 503
    assert any(f"node {worker_node.ip} lost" in line for line in head_lines(state)), head_lines(state)[-10:]

    old = state["workers"][-1] if state["workers"] else sim.workers[0]
    assert old.proc.wait(90) in (7, -9), old.tail()  # it left (7) when it lost the head, or was killed
    restore()
    t_back = time.monotonic()
    new = start_serve(worker_node, f"worker-{len(state['workers']) + 2}", state["logs"], _collect(state),
                      "--head-ip", head_node.ip, "--nodes", "2", env=sim.env())
    state["workers"].append(new)
    deadline = time.monotonic() + RECOVERY_S
    while sum("ready again" in line for line in head_lines(state)) == restarts_before:
        assert sim.head.proc.poll() is None, sim.head.tail(30)
        assert time.monotonic() < deadline, sim.head.tail(30)
        time.sleep(0.5)
    recover_s = time.monotonic() - t_back
    done = background(head_node, sim.url, model, "--requests", "1", "--max-tokens", "16")
    try:
        end = done.wait(lambda e: e["event"] == "end", 120, "a request after the recovery")
    finally:
        done.close()
    assert end["ok"] and end["tokens"] == 16, end
    restart = [line for line in head_lines(state) if line.startswith("restart ")]
    assert restart and "the cluster is whole again" in restart[-1]
    TIMINGS.append(f"{name}: /health not 200 after {detect_s:.1f} s; requests in flight failed after "
                   f"{fail_s:.1f} s; ready again {recover_s:.1f} s after the worker was started again")


def _collect(state):
    return lambda who, line: state["lines"].append((who, line))


def test_link_cut_detected_requests_fail_and_the_engine_restarts(served):
    sim = served["sim"]
    worker_node = sim.net.nodes[1]
    lose_worker_then_recover(served, "link cut", lambda: sim.net.set_link(worker_node, up=False),
                             restore=lambda: sim.net.set_link(worker_node, up=True))


def test_killed_worker_detected_requests_fail_and_the_engine_restarts(served):
    sim = served["sim"]
    lose_worker_then_recover(served, "worker killed", lambda: netns.kill_processes(sim.net.nodes[1].netns))


def test_sigterm_under_load_lets_accepted_requests_finish(served):
    """Last: the head's SIGTERM (docker stop, `spark-vllm stop`) drains: requests
    already accepted complete, within vLLM's --shutdown-timeout (30 s by default)."""
    sim, model = served["sim"], served["model"]
    head_node = sim.net.nodes[0]
    load = background(head_node, sim.url, model, "--requests", "4", "--max-tokens", "48")
    try:
        load.wait(lambda e: e["event"] == "first", 120, "first token")
        t0, before = time.monotonic(), len(head_lines(served))
        sim.head.proc.terminate()
        ends = [load.wait(lambda e, i=i: e["event"] == "end" and e["i"] == i, 60, "request end") for i in range(4)]
    finally:
        load.close()
    assert [(e["ok"], e["tokens"]) for e in ends] == [(True, 48)] * 4, ends
    assert sim.head.proc.wait(60) == 0, sim.head.tail(30)
    TIMINGS.append(f"SIGTERM under load: 4 requests finished, head exited 0 after {time.monotonic() - t0:.1f} s")
    deadline = time.monotonic() + 10  # the head's last lines, still in the pipe
    stopping = "stopping this Spark's Ray node"
    while stopping not in (after := head_lines(served)[before:]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stopping in after and not any("lost" in line or "restart" in line for line in after), after
