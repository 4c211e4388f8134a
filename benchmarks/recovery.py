"""Recovery after a lost node against a cold start, on two simulated Sparks, as JSON.

Cold start: both `spark-vllm serve` processes started at once, until the head's
/health answers (what a restart of both containers costs). Then, for each round,
the worker is lost while two requests are in flight (`kill`: everything in its
namespace SIGKILLed; `link`: its `enp1s0f1np1` set down, then up again once the head
saw the loss), and started again at once, as a restart policy would. Measured:
- `detect_s`: the fault to `/health` no longer 200 (polled every 0.2 s from the head);
- `inflight_failed_s`: the fault to the last request in flight ending (with an error);
- `recovery_s`: the worker started again to /health 200 again (the same start line
  as the cold start's), split into `rejoin_s` (to the head's "whole again") and
  `engine_s` (the engine's restart);
- `ratio`: recovery_s / cold_start_s (goal: at most 0.5).
Needs root.

    .venv/bin/python -m benchmarks.recovery [kill|link ...]   (default: kill link kill link)
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from orchestrator.sim.namespaces import netns
from orchestrator.sim.demo.run import serving_cluster, start_serve, stop_run
from orchestrator.sim.demo.load import Background
from orchestrator.sim.models.tinymodel import make_tiny_model

RESULTS = Path(__file__).resolve().parent / "results" / "recovery.json"


class Lines:
    """Every `spark-vllm:` line of every node, with the time it arrived."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, str, str]] = []

    def __call__(self, who: str, line: str) -> None:
        self.seen.append((time.monotonic(), who, line))

    def wait(self, who: str, text: str, after: float, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, w, line in list(self.seen):
                if t >= after and w == who and text in line:
                    return t
            time.sleep(0.2)
        raise TimeoutError(f"no {text!r} from the {who} within {timeout:g} s")


def one_round(kind: str, sim, model: str, lines: Lines, workdir: Path, n: int, runs: list) -> dict:
    head_node, worker_node = sim.net.nodes
    with Background(head_node, sim.url, "--watch-health") as health, \
            Background(head_node, sim.url, model, "--requests", "2", "--max-tokens", "480") as load:
        load.wait(lambda e: e["event"] == "first", 120, "first token")
        wall, mono = time.time(), time.monotonic()
        if kind == "kill":
            netns.kill_processes(worker_node.netns)
        else:
            sim.net.set_link(worker_node, up=False)
        not_200 = health.wait(lambda e: e["t"] >= wall and e["status"] != 200, 120, "/health not 200")
        ends = [load.wait(lambda e, i=i: e["event"] == "end" and e["i"] == i, 120, "end") for i in range(2)]
        lines.wait("head", "lost", mono, 60)
        if kind == "link":
            (runs[-1] if runs else sim.workers[0]).proc.wait(60)  # it leaves once the head is gone (exit 7)
            sim.net.set_link(worker_node, up=True)
        restart = time.monotonic()
        runs.append(start_serve(worker_node, f"worker-{n}", workdir, lines, "--head-ip", head_node.ip,
                                "--nodes", "2", env=sim.env(1), mode=sim.mode))
        whole = lines.wait("head", "whole again", restart, 600)
        ready = lines.wait("head", "ready again", restart, 600)
    return {"kind": kind, "detect_s": round(not_200["t"] - wall, 2),
            "inflight_failed_s": round(max(e["t"] for e in ends) - wall, 2),
            "inflight_errors": [e["error"] for e in ends],
            "rejoin_s": round(whole - restart, 1), "engine_s": round(ready - whole, 1),
            "recovery_s": round(ready - restart, 1)}


def main(argv: list[str]) -> int:
    kinds = argv or ["kill", "link", "kill", "link"]
    result: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "rounds": []}
    with tempfile.TemporaryDirectory(prefix="spark-vllm-bench-") as tmp:
        workdir = Path(tmp)
        model = str(make_tiny_model(workdir / "tiny-llama"))
        lines, runs = Lines(), []
        t0 = time.monotonic()
        try:
            with serving_cluster(workdir, model, lines, flags=("--rejoin-timeout", "600"), timeout=900) as sim:
                result["cold_start_s"] = round(time.monotonic() - t0, 1)
                for n, kind in enumerate(kinds, 2):
                    result["rounds"].append(one_round(kind, sim, model, lines, workdir, n, runs))
                    print(json.dumps(result["rounds"][-1]), flush=True)
        except Exception as exc:  # a failed round is a result too
            result["error"] = str(exc)[-2000:]
        finally:
            for run in runs:
                stop_run(run, timeout=30)
    rounds = result["rounds"]
    if rounds:
        for key in ("detect_s", "inflight_failed_s", "rejoin_s", "engine_s", "recovery_s"):
            for kind in sorted({r["kind"] for r in rounds}):
                result[f"median_{kind}_{key}"] = statistics.median(r[key] for r in rounds if r["kind"] == kind)
        result["median_recovery_s"] = statistics.median(r["recovery_s"] for r in rounds)
        result["ratio"] = round(result["median_recovery_s"] / result["cold_start_s"], 2)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0 if rounds and "error" not in result else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
