"""Step 1 of the GPU run: two simulated Sparks on a 2-GPU machine, one GPU each.

`spark-vllm head` and `worker` in two network namespaces joined by a veth named
enp1s0f1np1 (the GPU simulation: CUDA_VISIBLE_DEVICES per namespace, NCCL kept on
the veth), then `status` and `fabric-test` (NCCL, then Gloo) from the worker's
namespace, then SIGTERM and a check that nothing is left. Writes JSON and logs to
OUT_DIR. Needs root, 2 GPUs, torch with CUDA, ray, and `ip` or pyroute2.

    PYTHONPATH=. python3 scripts/gpu/cluster_scenario.py OUT_DIR [--cpu]
"""

from __future__ import annotations

import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import psutil

from orchestrator.sim.namespaces import gpusim, netns

HEAD_IP = "192.168.100.10"
NCCL_WORDS = ("NCCL version", "nNodes", "via NET", "Using network", "NET/Socket", "Channel 00")


def say(who: str, line: str) -> None:
    print(f"[{who:>6}] {line}", flush=True)


def versions() -> dict:
    import torch

    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip().splitlines() if shutil.which("nvidia-smi") else []
    out = {"python": platform.python_version(), "kernel": platform.release(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "gpus": smi,
           "nccl": ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else None}
    for dist in ("ray", "pyroute2", "vllm"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def cli(node: netns.SimNode, env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd, *rest = args
    t = time.monotonic()
    r = node.run(sys.executable, "-m", "launch", cmd, *node.cli_flags(), *rest, env=env,
                 capture_output=True, text=True, timeout=timeout)
    say("cli", f"spark-vllm {' '.join(args)}  -> exit {r.returncode} in {time.monotonic() - t:.1f} s")
    return r


def nccl_lines() -> list[str]:
    """NCCL's own INFO lines from the Ray workers' logs (the test's actors)."""
    lines = []
    for path in sorted(glob.glob("/tmp/ray/session_*/logs/worker-*")):
        with open(path, errors="replace") as f:
            lines += [ln.rstrip() for ln in f if "NCCL INFO" in ln and any(w in ln for w in NCCL_WORDS)]
    return lines


def main(out_dir: str, gpu: bool = True) -> int:
    """`gpu=False`: the same on the CPU simulation (--simulate, Gloo), to try the script anywhere."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"versions": versions()}
    say("gpu", json.dumps(result["versions"]))
    if gpu:
        gpusim.plan_gpus(gpusim.visible_gpus(), 2)  # no GPU: said at once
    work = Path(tempfile.mkdtemp(prefix="svgpu-"))
    env = {**os.environ, "SPARK_VLLM_RUN_DIR": str(work / "run"), "RAY_USAGE_STATS_ENABLED": "0",
           "NCCL_DEBUG": "INFO", "NCCL_DEBUG_SUBSYS": "INIT,NET"}
    t0 = time.monotonic()
    try:
        run(result, work, env, out, gpu)
    finally:
        result["total_s"] = round(time.monotonic() - t0, 1)
        (out / "step1.json").write_text(json.dumps(result, indent=2))
    nccl = result.get("fabric_nccl", {})
    ok = (nccl.get("backend") == ("nccl" if gpu else "gloo") and result["status"].get("gpu_nodes") == 2
          and not any(result["left_in_namespaces"].values()) and set(result["exits"].values()) == {0}
          and not result.get("ray_daemons_left"))
    say("gpu", f"step 1 {'OK' if ok else 'FAILED'} in {result['total_s']} s; "
               f"peak busbw {nccl.get('verdict', {}).get('peak_busbw_gbps')} GB/s")
    return 0 if ok else 1


def run(result: dict, work: Path, env: dict, out: Path, gpu: bool) -> None:
    t0 = time.monotonic()
    with netns.SimNetwork(nodes=2, prefix="svgpu") as net:
        say("sim", f"2 simulated Sparks, namespaces built with {net.ops.name}: "
                   + ", ".join(f"{n.netns} {n.cidr} on {n.iface}" for n in net.nodes))
        head_node, worker_node = net.nodes
        procs = []
        try:
            with gpusim.running_nodes(net, work, env, say, gpu=gpu, timeout=240) as (head, workers):
                procs = [head, *workers]
                workers[0].wait_for("joined the cluster", 60)
                result["cluster_ready_s"] = round(time.monotonic() - t0, 1)
                r = cli(worker_node, env, "status", "--head-ip", HEAD_IP)
                print(r.stdout + r.stderr, flush=True)
                r = cli(worker_node, env, "status", "--head-ip", HEAD_IP, "--json")
                result["status"] = {"exit": r.returncode, **(json.loads(r.stdout) if r.stdout.strip() else {})}
                r = cli(worker_node, env, "fabric-test", "--head-ip", HEAD_IP)
                print(r.stdout + r.stderr, flush=True)
                result["fabric_table"] = r.stdout
                r = cli(worker_node, env, "fabric-test", "--head-ip", HEAD_IP, "--json",
                        "--sizes", "1M,4M,16M,64M,256M,1G")
                result["fabric_nccl"] = {"exit": r.returncode, **(json.loads(r.stdout) if r.stdout.strip() else
                                                                   {"stderr": r.stderr[-3000:]})}
                r = cli(worker_node, env, "fabric-test", "--head-ip", HEAD_IP, "--json", "--backend", "gloo",
                        "--sizes", "1M,16M,64M", "--iters", "5", "--warmup", "1")
                result["fabric_gloo"] = {"exit": r.returncode, **(json.loads(r.stdout) if r.stdout.strip() else
                                                                   {"stderr": r.stderr[-3000:]})}
                result["nccl_info"] = nccl_lines()[:60] if gpu else []
                print("\n".join(result["nccl_info"][:30]), flush=True)
        finally:
            for log in work.glob("*.log"):
                shutil.copy(log, out / log.name)
        result["exits"] = {p.role: p.proc.returncode for p in procs}
        result["left_in_namespaces"] = netns.wait_empty(net.namespaces)
    if gpu:  # the device runs nothing else: no Ray daemon may be left anywhere
        result["ray_daemons_left"] = [p.info["name"] for p in psutil.process_iter(["name"])
                                      if p.info["name"] in ("raylet", "gcs_server")]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], gpu="--cpu" not in sys.argv[2:]))
