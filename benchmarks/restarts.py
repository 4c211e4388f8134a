"""Restarts on two simulated Sparks: a second start on warm caches against the first,
and the in-process recovery against a cold start, as JSON.

- warm_restart: in each pair, `spark-vllm serve` on both Sparks with empty compile
  caches (each simulated Spark its own, `sim.namespaces.caches`) until the head is
  ready ("first"); stopped; then started again on the same caches ("second": what a
  container restart finds with `container run`'s cache mounts). Ratio second / first
  per pair (goal: at most 0.6).
- recovery: on the last pair's (warm) caches, a served cluster loses its worker
  (everything in its namespace SIGKILLed, `benchmarks.recovery.one_round`), which is
  started again at once; the worker's start to the head's "ready again", over the
  median first start (goal: at most 0.5; also shown against the second start).

Each start's phases come from the logs: the cluster (spark-vllm's "cluster ready in"),
the engine (its "ready: ... engine X s"), the flags checked (vLLM imported), vLLM's
compile window (from its "Warming up model for the compilation" to its "Warming up
done": compiled or loaded, and saved; vLLM's own timestamps, to the second), whether vLLM loaded its compile
cache or compiled again ("load failure"), and vLLM's "init engine ... took".
Needs root. `side_by_side` runs it as its `restarts` scenario.

    .venv/bin/python -m benchmarks.restarts [--pairs 2] [--recoveries 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import shutil
import time
from datetime import datetime
from pathlib import Path

from orchestrator.sim.demo.run import serving_cluster, stop_run
from orchestrator.sim.models.tinymodel import make_tiny_model

from .recovery import Lines, one_round

RESULTS = Path(__file__).resolve().parent / "results"
PREFIX = "svrestart"
WORK = RESULTS / "logs-restarts"  # each pair's caches and logs (pair<i>/first-head.log, ...)
# vLLM's log lines: "(Worker pid=1) INFO 12-02 04:46:34 [file.py:87] message"
STAMP = re.compile(r"(\d\d-\d\d \d\d:\d\d:\d\d)")
COMPILE_START = "Warming up model for the compilation"
COMPILE_END = ("Warming up done",)  # after the compile, or the load, and the saving


def stamp(line: str) -> datetime | None:
    m = STAMP.search(line)
    return datetime.strptime(m.group(1), "%m-%d %H:%M:%S") if m else None


def vllm_phases(log: str) -> dict:
    """What vLLM's own lines say about one start (every rank's lines are in the head's
    log: Ray forwards the workers' output to the engine). Pure."""
    lines = log.splitlines()
    starts = [t for line in lines if COMPILE_START in line and (t := stamp(line))]
    ends = [t for line in lines if any(e in line for e in COMPILE_END) and (t := stamp(line))]
    init = [float(m.group(1)) for line in lines if (m := re.search(r"init engine \(profile.*?took ([\d.]+)", line))]
    return {"compile_s": (max(ends) - min(starts)).total_seconds() if starts and ends else None,
            "init_engine_s": max(init) if init else None,
            "cache_loaded": sum("Directly load AOT compilation" in line for line in lines),
            "load_failures": sum("Compiling model again due to a load failure" in line for line in lines),
            "load_failure_reason": next((line.split("reason: ", 1)[1] for line in lines
                                         if "load failure" in line and "reason: " in line), None)}


def our_phases(lines: Lines, t0: float) -> dict:
    """spark-vllm's own lines of one start, in seconds from `t0`."""
    def first(text: str) -> tuple[float, str] | None:
        return next(((t - t0, line) for t, who, line in lines.seen if who == "head" and text in line), None)

    out: dict = {"flags_checked_s": None, "cluster_s": None, "engine_s": None}
    if got := first("accepted the flags"):
        out["flags_checked_s"] = round(got[0], 1)
    if (got := first("cluster ready in")) and (m := re.search(r"cluster ready in ([\d.]+) s", got[1])):
        out["cluster_s"] = float(m.group(1))
    if (got := first("ready:")) and (m := re.search(r"engine ([\d.]+) s", got[1])):
        out["engine_s"] = float(m.group(1))
    return out


def start_once(pair_dir: Path, model: str, label: str) -> dict:
    """Both Sparks' `spark-vllm serve` until the head is ready, then stopped; the
    caches are `pair_dir/caches/node<i>` (serving_cluster's default)."""
    lines = Lines()
    t0 = time.monotonic()
    with serving_cluster(pair_dir, model, lines, prefix=PREFIX, timeout=900) as sim:
        ready = sim.ready_s  # from both processes started (the namespaces already built)
        head_log = sim.head.log_path
    log = head_log.read_text()
    head_log.rename(pair_dir / f"{label}-head.log")
    return {"ready_s": round(ready, 1), **our_phases(lines, t0), **vllm_phases(log)}


def spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "n": len(values), "values": [round(v, 3) for v in values]}


def recoveries(pair_dir: Path, model: str, rounds: int) -> list[dict]:
    lines, runs, out = Lines(), [], []
    try:
        with serving_cluster(pair_dir, model, lines, flags=("--rejoin-timeout", "600"), prefix=PREFIX,
                             timeout=900) as sim:
            for n in range(rounds):
                out.append(one_round("kill", sim, model, lines, pair_dir, n + 2, runs))
    finally:
        for run in runs:
            stop_run(run, timeout=30)
    return out


def measure(pairs: int = 2, rounds: int = 2, say=print) -> dict:
    """The two scenarios, as side_by_side's report holds them."""
    # Emptied first: each pair's first start must find no cache. Kept after: the logs.
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)

    model = str(make_tiny_model(WORK / "tiny-llama"))
    starts = []
    for i in range(pairs):
        pair_dir = WORK / f"pair{i}"
        pair_dir.mkdir()
        first = start_once(pair_dir, model, "first")
        say(f"restarts pair {i + 1}/{pairs}: first start ready in {first['ready_s']} s")
        second = start_once(pair_dir, model, "second")
        say(f"restarts pair {i + 1}/{pairs}: second start ready in {second['ready_s']} s")
        starts.append({"first": first, "second": second})
    rec = recoveries(pair_dir, model, rounds) if rounds else []
    for r in rec:
        say(f"recovery: worker restart to ready again in {r['recovery_s']} s")
    first_med = statistics.median(p["first"]["ready_s"] for p in starts)
    second_med = statistics.median(p["second"]["ready_s"] for p in starts)
    out = {"warm_restart": {"pairs": starts, "ratio": spread([p["second"]["ready_s"] / p["first"]["ready_s"]
                                                              for p in starts]),
                            "first_s": spread([p["first"]["ready_s"] for p in starts]),
                            "second_s": spread([p["second"]["ready_s"] for p in starts])}}
    if rec:
        out["recovery"] = {"rounds": rec, "ratio": spread([r["recovery_s"] / first_med for r in rec]),
                           "ratio_vs_warm_start": spread([r["recovery_s"] / second_med for r in rec]),
                           "recovery_s": spread([r["recovery_s"] for r in rec])}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.restarts", description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=2, help="first/second start pairs (default 2)")
    p.add_argument("--recoveries", type=int, default=2, help="worker losses recovered (default 2; 0: none)")
    p.add_argument("--out", default=str(RESULTS / "restarts.json"))
    args = p.parse_args(argv)
    report = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "scenarios": measure(args.pairs, args.recoveries)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v["ratio"] for k, v in report["scenarios"].items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
