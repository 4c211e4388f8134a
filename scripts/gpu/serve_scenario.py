"""Step 2 of the GPU run: `spark-vllm serve` with TP 2 over Ray across two simulated
Sparks on the machine's GPUs (one each, or one shared: see gpusim), then load and a
lost worker, on one served cluster.

The playbook's two requests, vLLM's benchmark client (bench_client.py) at concurrency
1, 4 and 16 from the worker's namespace (4 x concurrency requests of 64
tokens in and out; on a shared GPU a token takes about 0.28 s, so a level may take
minutes), then the worker lost while
serving (everything in its namespace SIGKILLed, benchmarks.recovery's `kill` round)
and started again: the time to detect and until the head serves again in the same
process. Then SIGTERM to both and a check that nothing is left. Writes JSON and logs
to OUT_DIR. `--cpu`: the same on the CPU simulation; `--model PATH`: that model
(default: a tiny random Llama made here).

    PYTHONPATH=. python3 scripts/gpu/serve_scenario.py OUT_DIR [--cpu] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil

from benchmarks.recovery import Lines, one_round
from orchestrator.sim.demo.run import serving_cluster
from orchestrator.sim.models.tinymodel import make_tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster_scenario import say, versions  # noqa: E402

CONCURRENCIES = "1,4,16"
BENCH = Path(__file__).resolve().parent / "bench_client.py"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--model", default=None)
    args = p.parse_args(argv)
    gpu = not args.cpu
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"versions": versions()}
    say("gpu", json.dumps(result["versions"]))
    work = Path(tempfile.mkdtemp(prefix="svgpu-serve-"))
    t0 = time.monotonic()
    model = args.model or str(make_tiny_model(work / "tiny-llama"))
    result["model"] = model
    lines, shown = Lines(), []

    def show(who: str, line: str) -> None:
        lines(who, line)
        shown.append(line)
        say(who, line)
    runs: list = []
    try:
        with serving_cluster(work, model, show, gpu=gpu, timeout=480, prefix="svgpu",
                             flags=("--rejoin-timeout", "300")) as sim:
            result["ready_s"] = round(sim.ready_s, 1)
            result["gpus"] = sim.gpus.describe() if sim.gpus else None
            node = sim.client()
            r = node.run(sys.executable, "-m", "orchestrator.sim.demo.client", sim.url, model,
                         capture_output=True, text=True, timeout=180)
            result["requests"] = json.loads(r.stdout) if r.returncode == 0 else {"error": r.stderr[-2000:]}
            say("client", json.dumps(result["requests"])[:2000])
            levels = []
            for c in CONCURRENCIES.split(","):
                flags = ["--backend", "vllm", "--base-url", sim.url, "--model", model, "--tokenizer", model,
                         "--dataset-name", "random", "--random-input-len", "64", "--random-output-len", "64",
                         "--num-prompts", str(4 * int(c)), "--max-concurrency", c, "--ignore-eos"]
                try:
                    r = node.run(sys.executable, str(BENCH), *flags, capture_output=True, text=True, timeout=240)
                    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
                    levels.append({"concurrency": int(c), **(json.loads(line.split(" ", 1)[1]) if line else
                                                             {"error": (r.stdout + r.stderr)[-1500:]})})
                except Exception as exc:
                    levels.append({"concurrency": int(c), "error": str(exc)[-500:]})
                say("bench", json.dumps(levels[-1])[:600])
            result["bench"] = {"levels": levels}
            say("bench", json.dumps(result["bench"])[:3000])
            try:
                result["recovery"] = one_round("kill", sim, model, lines, work, 2, runs)
            except Exception as exc:  # a failed round is a result too
                result["recovery"] = {"error": str(exc)[-2000:]}
            say("recovery", json.dumps(result["recovery"]))
            t_stop = time.monotonic()
        result["stop_s"] = round(time.monotonic() - t_stop, 1)
        result["exits"] = {run.label: run.proc.returncode for run in (sim.head, *sim.workers)}
        result["left"] = next((ln for ln in shown if "left" in ln and "simulated Sparks" in ln), None)
    finally:
        for run in runs:
            run.proc.kill()
        for log in work.glob("*.log"):
            shutil.copy(log, out / log.name)
        if gpu:  # the device runs nothing else: no Ray daemon may be left anywhere
            result["ray_daemons_left"] = [p.info["name"] for p in psutil.process_iter(["name"])
                                          if p.info["name"] in ("raylet", "gcs_server")]
        result["total_s"] = round(time.monotonic() - t0, 1)
        (out / "step2.json").write_text(json.dumps(result, indent=2))
    levels = result.get("bench", {}).get("levels", [])
    ok = (len(levels) == 3 and all(lv.get("failed", 0) == 0 for lv in levels) and "chat" in result.get("requests", {})
          and "recovery_s" in result.get("recovery", {})
          and result.get("left") == "nothing left running in the simulated Sparks"
          and not result.get("ray_daemons_left"))
    say("gpu", f"step 2 {'OK' if ok else 'FAILED'} in {result['total_s']} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
