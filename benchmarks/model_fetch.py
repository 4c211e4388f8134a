"""Weights on two simulated Sparks: one Hub download copied over the fabric, against a
Hub download on every node. Written as JSON to benchmarks/results/model_fetch.json.

The Hub is tests/fakehub.py inside the head's namespace, with one shared uplink rate
(default 50 MB/s, the site's internet link both Sparks sit behind); the fabric is the
namespaces' veth. The model is one random 200 MB weights file plus a config. For each
mode, `spark-vllm download MODEL` runs on a running two-node cluster (`head` +
`worker`) with empty caches, `--repeat` times; medians are reported, with the bytes the
Hub sent. Needs root (namespaces).

    .venv/bin/python -m benchmarks.model_fetch [--size-mb 200] [--rate-mbs 50] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orchestrator.sim.namespaces import netns

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "model_fetch.json"
PORT = 8765
MODEL = "bench/model"


def hub_bytes(head) -> int:
    out = head.run(sys.executable, "-c", "import urllib.request, sys; sys.stdout.write(urllib.request.urlopen("
                   f"'http://{head.ip}:{PORT}/_stats').read().decode())", capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout)["file_bytes"]


def wait_for(path: Path, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in (path.read_text() if path.exists() else ""):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {text!r} in {path}")
        time.sleep(0.5)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--rate-mbs", type=float, default=50.0)
    ap.add_argument("--repeat", type=int, default=3)
    opts = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="spark-vllm-bench-") as tmp_s:
        tmp = Path(tmp_s)
        repo = tmp / "hub" / MODEL.replace("/", "--")
        repo.mkdir(parents=True)
        (repo / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 1}))
        with open(repo / "model.safetensors", "wb") as f:
            for _ in range(opts.size_mb):
                f.write(os.urandom(1 << 20))
        envs = [{**{k: v for k, v in os.environ.items() if not k.startswith(("SPARK_VLLM_", "HF_"))},
                 "HF_ENDPOINT": f"http://192.168.100.10:{PORT}", "HF_HOME": str(tmp / f"hf{i}"),
                 "SPARK_VLLM_RUN_DIR": str(tmp / f"run{i}"), "HF_HUB_DISABLE_PROGRESS_BARS": "1"} for i in range(2)]
        results: dict[str, list[dict]] = {"via_head": [], "hub_on_every_node": []}
        with netns.SimNetwork(nodes=2, prefix="svbench") as net:
            head, worker = net.nodes
            hub = head.popen(sys.executable, str(REPO / "tests" / "fakehub.py"), str(tmp / "hub"), head.ip, str(PORT),
                             str(opts.rate_mbs * 1e6), stdout=subprocess.PIPE, text=True)
            hub.stdout.readline()
            procs = [head.popen(sys.executable, "-m", "launch", "head", "--simulate", *head.cli_flags(), env=envs[0],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(tmp / "head.log", "w")),
                     worker.popen(sys.executable, "-m", "launch", "worker", "--head-ip", head.ip, "--simulate",
                                  *worker.cli_flags(), env=envs[1], cwd=REPO, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)]
            try:
                wait_for(tmp / "head.log", "cluster complete")
                for _ in range(opts.repeat):
                    for mode, flags in (("via_head", ()), ("hub_on_every_node", ("--hub-on-every-node",))):
                        for env in envs:
                            shutil.rmtree(Path(env["HF_HOME"]) / "hub", ignore_errors=True)
                        before, t0 = hub_bytes(head), time.monotonic()
                        out = head.run(sys.executable, "-m", "launch", "download", MODEL, "--json", *flags,
                                       *head.cli_flags(), env=envs[0], cwd=REPO, capture_output=True, text=True,
                                       timeout=1800)
                        took = time.monotonic() - t0
                        if out.returncode != 0:
                            raise RuntimeError(out.stderr[-2000:])
                        results[mode].append({"seconds": round(took, 2), "hub_bytes": hub_bytes(head) - before})
            finally:
                for p in procs:
                    p.terminate()
                for p in procs:
                    p.wait(60)
                hub.terminate()
    summary = {mode: {"median_s": statistics.median(r["seconds"] for r in runs),
                      "hub_bytes": runs[0]["hub_bytes"], "runs": runs} for mode, runs in results.items()}
    report = {"what": "spark-vllm download on two simulated Sparks (a running cluster), empty caches",
              "model_bytes": opts.size_mb << 20, "hub_rate_mb_s": opts.rate_mbs, "repeat": opts.repeat,
              "machine": {"cpus": os.cpu_count()}, "modes": summary}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
