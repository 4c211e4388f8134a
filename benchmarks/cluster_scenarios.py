"""Serving scenarios on simulated Sparks, timed end to end, written as JSON.

- `two`: two Sparks, TP 2 over Ray (the demo's shape);
- `four`: four Sparks through a switch (a bridge namespace), TP 2 x PP 2, the
  more-than-two-Sparks path (too slow for CI on 2 cores, so measured here).

For each: seconds until `/health` answered (cluster + engine), then the playbook's
two requests sent from the last Spark, and the stop. Needs root.

    .venv/bin/python -m benchmarks.cluster_scenarios [two] [four]
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from orchestrator.sim.demo.run import serving_cluster
from orchestrator.sim.models.tinymodel import make_tiny_model

RESULTS = Path(__file__).resolve().parent / "results" / "cluster_scenarios.json"
SCENARIOS = {
    "two": (2, ()),
    "four": (4, ("--tensor-parallel-size", "2", "--pipeline-parallel-size", "2")),
}


def run(name: str, workdir: Path, model: str) -> dict:
    nodes, flags = SCENARIOS[name]
    lines: list[str] = []
    t0 = time.monotonic()
    result = {"scenario": name, "nodes": nodes, "flags": list(flags)}
    try:
        with serving_cluster(workdir, model, lambda who, line: lines.append(f"[{who}] {line}"),
                             nodes=nodes, flags=flags, timeout=900) as sim:
            result["ready_s"] = round(time.monotonic() - t0, 1)
            t1 = time.monotonic()
            out = sim.client().run(sys.executable, "-m", "orchestrator.sim.demo.client", sim.url, model,
                                   capture_output=True, text=True, timeout=300)
            result["requests_ok"] = out.returncode == 0
            result["requests_s"] = round(time.monotonic() - t1, 2)
            if out.returncode == 0:
                answers = json.loads(out.stdout)
                result["tokens"] = {k: v["tokens"] for k, v in answers.items()}
            t2 = time.monotonic()
        result["stop_s"] = round(time.monotonic() - t2, 1)
        result["ok"] = result["requests_ok"]
    except Exception as exc:  # a scenario failing is a result too
        result["ok"] = False
        result["error"] = str(exc)[-2000:]
    result["parallelism"] = next((ln.split("with ", 1)[1] for ln in lines if "starting vLLM with" in ln), None)
    return result


def main(argv: list[str]) -> int:
    names = argv or list(SCENARIOS)
    with tempfile.TemporaryDirectory(prefix="spark-vllm-bench-") as tmp:
        model = str(make_tiny_model(Path(tmp) / "tiny-llama"))
        results = [run(n, Path(tmp), model) for n in names]
    report = {"machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
              "scenarios": results}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
