"""Discovery time: spark-vllm in-process against the playbook's shell pipeline.

Both run inside one simulated Spark (a network namespace from `orchestrator.sim.namespaces.netns`,
so the interface and RoCE names are the real ones) in the same run:

- in-process: `discover` (one netlink dump + the sysfs RoCE walk) + `choose_interface`
  + `plan_environment`, what `spark-vllm serve` does before starting Ray;
- shell: what the playbook runs, an ibdev2netdev-like sysfs walk in bash plus
  `ip -4 addr show IF | grep -oP 'inet \\K[\\d.]+'`, one `bash -c` per run;
- cli: `python -m launch env --json`, a whole process, interpreter start included.

Writes benchmarks/results/discovery.json and prints it. Needs root (namespaces).

    .venv/bin/python -m benchmarks.discovery [--runs 200] [--cli-runs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "discovery.json"
IFACE = "enp1s0f1np1"

# ibdev2netdev's walk (device -> netdev through sysfs, state from operstate), then the
# playbook's address grep. `cat`/`basename` subshells as in the original scripts.
SHELL = r"""
for dev in "$SYSFS"/class/infiniband/*; do
  for net in "$dev"/device/net/*; do
    [ -e "$net" ] || continue
    n=$(basename "$net")
    state=$(cat "$SYSFS/class/net/$n/operstate" 2>/dev/null)
    [ "$state" = up ] && s=Up || s=Down
    echo "$(basename "$dev") port 1 ==> $n ($s)"
  done
done >/dev/null
ip -4 addr show "$IF" | grep -oP 'inet \K[\d.]+'
"""


def summary(seconds: list[float]) -> dict:
    ms = sorted(s * 1000 for s in seconds)
    return {
        "runs": len(ms),
        "median_ms": round(statistics.median(ms), 3),
        "p90_ms": round(statistics.quantiles(ms, n=10)[8], 3),
        "min_ms": round(ms[0], 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


def inside(sysfs_root: str, runs: int, cli_runs: int, rounds: int = 0) -> dict:
    """Runs in the simulated Spark's namespace; returns the measurements. With `rounds`,
    also that many pairs of (in-process, shell) medians, the order alternating."""
    from orchestrator.net.discovery import discover
    from orchestrator.net.plan import plan_network

    environ: dict[str, str] = {}
    env = {**os.environ, "SYSFS": sysfs_root, "IF": IFACE}
    answers: dict[str, str] = {}

    def in_process() -> None:
        answers["in_process"] = plan_network(discover(sysfs_root), environ).node_ip

    def shell() -> None:
        r = subprocess.run(["bash", "-c", SHELL], env=env, capture_output=True, text=True, check=True)
        answers["shell_pipeline"] = r.stdout.strip()

    def timed(fn, n: int) -> list[float]:
        times = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return times

    first = timed(in_process, 1)[0]  # first call: imports pyroute2's netlink machinery
    times, shell_times = timed(in_process, runs), timed(shell, runs)
    pairs = []
    for i in range(rounds):
        order = [("ours", in_process), ("theirs", shell)]
        pair = {who: summary(timed(fn, runs)) for who, fn in (order if i % 2 == 0 else order[::-1])}
        pairs.append({"ours": pair["ours"], "theirs": pair["theirs"]})

    cli_times = []
    cli = [sys.executable, "-m", "launch", "env", "--json", "--sysfs-root", sysfs_root]
    for _ in range(cli_runs):
        t = time.perf_counter()
        r = subprocess.run(cli, capture_output=True, text=True, check=True, cwd=REPO)
        cli_times.append(time.perf_counter() - t)
    answers["cli_process"] = json.loads(r.stdout)["node_ip"]

    return {
        "in_process": {**summary(times), "first_call_ms": round(first * 1000, 3)},
        "shell_pipeline": summary(shell_times),
        "cli_process": summary(cli_times),
        "rounds": pairs,
        "answers": answers,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.discovery", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=200, help="runs of the in-process and shell variants")
    p.add_argument("--cli-runs", type=int, default=20, help="runs of the whole CLI process")
    p.add_argument("--rounds", type=int, default=0, help="pairs of (in-process, shell) medians, alternating")
    p.add_argument("--inside", metavar="SYSFS_ROOT", help=argparse.SUPPRESS)  # the namespace side
    args = p.parse_args(argv)
    if args.inside:
        print(json.dumps(inside(args.inside, args.runs, args.cli_runs, args.rounds)))
        return 0

    from orchestrator.sim.namespaces import netns

    reason = netns.available()
    if reason:
        print(f"benchmarks.discovery: {reason}", file=sys.stderr)
        return 1
    netns.cleanup_stale("svbench")
    with netns.SimNetwork(nodes=2, prefix="svbench") as net:
        net.add_twin()
        net.add_management()  # a whole Spark: port, twin, management with the default route
        node = net.nodes[0]
        # Only the variables spark-vllm plans are dropped, so the user's shell cannot
        # change the plan being timed.
        env = {k: v for k, v in os.environ.items() if k not in _COMM_VARS and not k.startswith("SPARK_VLLM_")}
        r = node.run(sys.executable, "-m", "benchmarks.discovery", "--inside", node.sysfs_root,
                     "--runs", str(args.runs), "--cli-runs", str(args.cli_runs), "--rounds", str(args.rounds),
                     capture_output=True, text=True, cwd=REPO, env=env)
    if r.returncode:
        print(f"benchmarks.discovery: the run inside the namespace failed:\n{r.stderr}", file=sys.stderr)
        return 1
    found = json.loads(r.stdout)
    answers = found.pop("answers")
    shell = found["shell_pipeline"]["median_ms"]
    result = {
        "benchmark": "discovery: in-process (discover + choose + plan) vs the playbook's shell pipeline",
        "setup": {
            "where": "simulated DGX Spark (network namespace): enp1s0f1np1 + twin enP2p1s0f1np1 "
                     "(RoCE, fake sysfs) + enP7s7 (management, default route)",
            "python": platform.python_version(),
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
        },
        **found,
        "ratio_shell_over_in_process": round(shell / found["in_process"]["median_ms"], 1),
        "ratio_shell_over_cli_process": round(shell / found["cli_process"]["median_ms"], 2),
        "same_address": len(set(answers.values())) == 1,
        "address": answers["in_process"],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {RESULTS.relative_to(REPO)}", file=sys.stderr)
    return 0 if result["same_address"] else 1


_COMM_VARS = ("VLLM_HOST_IP", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "UCX_NET_DEVICES",
              "OMPI_MCA_btl_tcp_if_include", "MASTER_ADDR", "RAY_memory_monitor_refresh_ms", "RAY_worker_niceness", "NCCL_IB_HCA")

if __name__ == "__main__":
    raise SystemExit(main())
