"""`serve --exit-on-node-loss`: a lost worker makes the head exit with code 7 and one
clear line (for the container's restart policy), after the requests in flight
failed, leaving nothing running. Its own cluster, since the flag is the head's."""

from __future__ import annotations

import time

from orchestrator.sim.namespaces import netns
from orchestrator.sim.demo.run import serving_cluster
from orchestrator.sim.demo.load import Background
from orchestrator.sim.models.tinymodel import make_tiny_model

from conftest import PREFIX, REPO, TIMINGS, clean_env


def test_exit_on_node_loss_exits_7_with_one_line(netns_ok, tmp_path):
    model = str(make_tiny_model(tmp_path / "tiny-llama"))
    lines: list[tuple[str, str]] = []
    with serving_cluster(tmp_path, model, lambda who, line: lines.append((who, line)), prefix=PREFIX,
                         flags=("--exit-on-node-loss",)) as sim:
        head_node, worker_node = sim.net.nodes
        with Background(head_node, sim.url, model, "--requests", "1", "--max-tokens", "480",
                        env=clean_env(), cwd=str(REPO)) as load:
            load.wait(lambda e: e["event"] == "first", 120, "first token")
            t0 = time.monotonic()
            netns.kill_processes(worker_node.netns)
            end = load.wait(lambda e: e["event"] == "end", 60, "the request's end")
            code = sim.head.proc.wait(90)
        exited_s = time.monotonic() - t0
        assert not end["ok"] and end["error"], end
        assert code == 7, sim.head.tail(30)
        deadline = time.monotonic() + 10  # the last lines may still be in the pipe
        while not any(line.startswith("error:") for _, line in lines) and time.monotonic() < deadline:
            time.sleep(0.2)
        errors = [line for who, line in lines if who == "head" and line.startswith("error:")]
        assert len(errors) == 1 and f"node {worker_node.ip} lost" in errors[0], errors
        assert "--exit-on-node-loss is set" in errors[0] and "restart policy" in errors[0]
        deadline = time.monotonic() + 20
        while netns.pids(head_node.netns) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert netns.pids(head_node.netns) == []  # Ray and vLLM went with the head
    TIMINGS.append(f"--exit-on-node-loss: head exited 7 {exited_s:.1f} s after the worker was killed")
