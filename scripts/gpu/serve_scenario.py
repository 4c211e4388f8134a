"""Step 2 of the GPU run: `spark-vllm serve` with TP 2 over Ray across two simulated
Sparks, one GPU each (the GPU simulation), on a tiny Llama made here.

The playbook's two requests and vLLM's benchmark client at concurrency 16 from the
worker's namespace, then SIGTERM to both and a check that nothing is left. Writes
JSON and logs to OUT_DIR. `--cpu`: the same on the CPU simulation.

    PYTHONPATH=. python3 scripts/gpu/serve_scenario.py OUT_DIR [--cpu]
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil

from orchestrator.sim.demo.run import serving_cluster
from orchestrator.sim.models.tinymodel import make_tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster_scenario import say, versions  # noqa: E402

BENCH = Path(__file__).resolve().parent / "bench_client.py"


def bench_flags(url: str, model: str) -> list[str]:
    return ["--backend", "vllm", "--base-url", url, "--model", model, "--tokenizer", model,
            "--dataset-name", "random", "--random-input-len", "64", "--random-output-len", "32",
            "--num-prompts", "64", "--max-concurrency", "16", "--ignore-eos"]


def main(out_dir: str, gpu: bool = True) -> int:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"versions": versions()}
    say("gpu", json.dumps(result["versions"]))
    work = Path(tempfile.mkdtemp(prefix="svgpu-serve-"))
    t0 = time.monotonic()
    model = str(make_tiny_model(work / "tiny-llama"))
    result["model_s"] = round(time.monotonic() - t0, 1)
    lines: list[str] = []

    def show(who: str, line: str) -> None:
        lines.append(line)
        say(who, line)
    try:
        with serving_cluster(work, model, show, gpu=gpu, timeout=480, prefix="svgpu") as sim:
            result["ready_s"] = round(sim.ready_s, 1)
            node = sim.client()
            r = node.run(sys.executable, "-m", "orchestrator.sim.demo.client", sim.url, model,
                         capture_output=True, text=True, timeout=180)
            result["requests"] = json.loads(r.stdout) if r.returncode == 0 else {"error": r.stderr[-2000:]}
            say("client", json.dumps(result["requests"]))
            r = node.run(sys.executable, str(BENCH), *bench_flags(sim.url, model), capture_output=True, text=True,
                         timeout=300)
            line = next((ln for ln in r.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
            result["bench"] = json.loads(line.split(" ", 1)[1]) if line else {"error": (r.stdout + r.stderr)[-3000:]}
            say("bench", json.dumps(result["bench"]))
            t_stop = time.monotonic()
        result["stop_s"] = round(time.monotonic() - t_stop, 1)
        result["exits"] = {run.label: run.proc.returncode for run in (sim.head, *sim.workers)}
        result["left"] = next((ln for ln in lines if "left" in ln and "simulated Sparks" in ln), None)
    finally:
        for log in work.glob("*.log"):
            shutil.copy(log, out / log.name)
        if gpu:  # the device runs nothing else: no Ray daemon may be left anywhere
            result["ray_daemons_left"] = [p.info["name"] for p in psutil.process_iter(["name"])
                                          if p.info["name"] in ("raylet", "gcs_server")]
        result["total_s"] = round(time.monotonic() - t0, 1)
        (out / "step2.json").write_text(json.dumps(result, indent=2))
    ok = (result.get("bench", {}).get("completed") == 64 and "chat" in result.get("requests", {})
          and result.get("left") == "nothing left running in the simulated Sparks"
          and not result.get("ray_daemons_left"))
    say("gpu", f"step 2 {'OK' if ok else 'FAILED'} in {result['total_s']} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], gpu="--cpu" not in sys.argv[2:]))
