"""vLLM's own multi-node `mp` executor against its Ray executor, on the same two
simulated Sparks (CPU, or the GPU simulation with `--gpu`), as JSON (benchmarks/results/executors.json).

Both through `vllm serve` (vLLM's CLI entry point, `benchmarks.shell_flow`), the same
model, flags and variables (`spark-vllm env`'s plan, as the harness gives the shell
flow), TP 2 across the two Sparks, each Spark its own compile caches:
- ray: `ray start --head`, `ray start --address`, then `vllm serve ...
  --distributed-executor-backend ray` on the head (the harness's shell flow);
- mp: `vllm serve ... --distributed-executor-backend mp --nnodes 2 --node-rank 0
  --master-addr HEAD --master-port P` on the head and the same with `--node-rank 1
  --headless` on the worker, started together (no Ray at all).
After one untimed start of each (the compile caches filled, as the harness does),
measured per run: the cold start (first command to the first token), then vLLM's
benchmark client from the worker Spark at concurrency 1, 4 and 16 (each level's best of
two runs): output tokens/s, TPOT (decode: 1000 / TPOT tokens/s a sequence), TTFT.
A run that fails keeps its error and the last lines of its log. Needs root.

    .venv/bin/python -m benchmarks.executors [--pairs 2] [--no-serving] [--gpu --model DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from orchestrator.sim.namespaces import gpusim, netns
from orchestrator.sim.models.tinymodel import make_tiny_model

from . import shell_flow
from .side_by_side import PORT, PY, RESULTS, Bench, add_setup_args, clear, paired, say

MP_PORT = 29600  # vLLM's master port for the mp executor's cross-node setup
# The mp executor binds each node's CPU worker to "its" cores (VLLM_CPU_OMP_THREADS_BIND=auto:
# local rank 0 gets core 0 on every node), so both simulated Sparks would share core 0 of
# this one machine, which two Sparks never do; unbound (`nobind`), each worker's OpenMP
# threads spin on both cores against the other's (TPOT 86 ms against Ray's 4.5 ms, seen).
# Each simulated Spark gets a core of its own instead, as two machines would: node i, core i.
def mp_env(node_index: int, gpus: bool) -> dict[str, str]:
    return {} if gpus else {"VLLM_CPU_OMP_THREADS_BIND": str(node_index % (os.cpu_count() or 1))}


LOGS = RESULTS / "logs-executors"  # every process's log, this run's only


def cold_mp(bench: Bench, serve: bool) -> dict:
    """Both Sparks' `vllm serve` with the mp executor, to the first token (then the sweep)."""
    try:
        t0 = time.time()
        probe = bench.first_token_probe()
        common = (*bench.flags, "--tensor-parallel-size", "2", "--distributed-executor-backend", "mp",
                  "--nnodes", "2", "--master-addr", bench.head.ip, "--master-port", str(MP_PORT))
        head = bench.proc(bench.head, shell_flow.vllm_serve(PY, bench.model, "--port", str(PORT), *common,
                                                            "--node-rank", "0"),
                          {**bench.env[bench.head.ip], **mp_env(0, bool(bench.gpus))}, "mp-head")
        worker = bench.proc(bench.worker, shell_flow.vllm_serve(PY, bench.model, *common, "--node-rank", "1",
                                                                "--headless"),
                            {**bench.env[bench.worker.ip], **mp_env(1, bool(bench.gpus))}, "mp-worker")
        got = bench.probe_result(probe, [head, worker])
        marks = {"vllm_flags_checked": head.when(r"non-default args"), "healthy": got["health"],
                 "first_token": got["first_token"]}
        return bench.outcome(t0, got, marks, serve)
    finally:
        clear(bench.net)


def guarded(fn, label: str):
    """`fn`'s result, or its failure with the last lines of the run's log (a result too)."""
    def run() -> dict:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 (the failure is what is reported)
            logs = sorted(LOGS.glob(f"*-{label}*.log"))
            tail = logs[-1].read_text().splitlines()[-40:] if logs else []
            return {"error": str(exc), "log_tail": tail}
    return run


def level(side: dict, c: int) -> dict | None:
    return next((lv for lv in side.get("serving", []) if lv["concurrency"] == c), None)


def summary(pairs: list[dict], who: str) -> dict:
    """Medians over the runs that worked."""
    ok = [p[who] for p in pairs if "error" not in p[who]]
    out: dict = {"runs_ok": len(ok), "runs": len(pairs)}
    if not ok:
        out["error"] = pairs[0][who]["error"]
        return out
    out["cold_start_s"] = round(statistics.median(s["total_s"] for s in ok), 1)
    for c in (1, 16):
        lvs = [lv for s in ok if (lv := level(s, c))]
        if lvs:
            tpot = statistics.median(lv["tpot_p50_ms"] for lv in lvs)
            out[f"c{c}"] = {"output_tok_s": round(statistics.median(lv["output_tok_s"] for lv in lvs), 1),
                            "tpot_p50_ms": round(tpot, 1), "decode_tok_s_per_seq": round(1000 / tpot, 1),
                            "ttft_p50_ms": round(statistics.median(lv["ttft_p50_ms"] for lv in lvs), 1)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.executors", description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=2, help="(ray, mp) pairs, the order alternating (default 2)")
    p.add_argument("--no-serving", action="store_true", help="cold starts only")
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="skip the untimed start of each executor that fills the compile caches first (fair only on "
                        "caches already warm: on empty ones the first of a pair pays for filling them)")
    add_setup_args(p)
    p.add_argument("--out", default=str(RESULTS / "executors.json"))
    args = p.parse_args(argv)
    if netns.available():
        raise SystemExit(f"bench: {netns.available()}")
    workdir = LOGS
    workdir.mkdir(parents=True, exist_ok=True)
    for old in workdir.glob("*.log"):
        old.unlink()
    netns.cleanup_stale("svexec")
    serve = not args.no_serving
    with netns.SimNetwork(nodes=2, prefix="svexec") as net:
        model_dir = RESULTS / "model" / "tiny-llama"  # the harness's: its compile caches stay warm
        model = args.model or str(model_dir if (model_dir / "config.json").exists() else make_tiny_model(model_dir))
        gpus = gpusim.layout_here(net) if args.gpu else None
        if gpus:
            say(gpus.describe())
        bench = Bench(net, workdir, model, gpus, args.serving_repeats, args.output_len, args.prompts_per_level,
                      args.levels)
        try:
            if args.warmup:  # untimed: each executor's first start fills the nodes' compile caches
                for label, fn in (("ray", lambda: bench.cold_theirs(False)), ("mp", lambda: cold_mp(bench, False))):
                    t = time.monotonic()
                    got = guarded(fn, "theirs-vllm-serve" if label == "ray" else "mp-head")()
                    say(f"warm-up {label}: {'failed: ' + got['error'] if 'error' in got else 'done'} "
                        f"in {time.monotonic() - t:.1f} s")
            pairs = paired(args.pairs, guarded(lambda: bench.cold_theirs(serve), "theirs-vllm-serve"),
                           guarded(lambda: cold_mp(bench, serve), "mp-head"), "executors (ray, mp)")
        finally:
            clear(net)
    pairs = [{"ray": p["ours"], "mp": p["theirs"]} for p in pairs]  # paired() names the sides ours/theirs
    report = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "simulation": gpus.describe() if gpus else "CPU: two network-namespace Sparks on this machine's cores",
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "pairs": pairs, "ray": summary(pairs, "ray"), "mp": summary(pairs, "mp")}
    if "c1" in report["mp"] and "c1" in report["ray"]:
        report["mp_over_ray"] = {f"c{c}_output_tok_s": round(report["mp"][f"c{c}"]["output_tok_s"]
                                                             / report["ray"][f"c{c}"]["output_tok_s"], 3)
                                 for c in (1, 16) if f"c{c}" in report["mp"] and f"c{c}" in report["ray"]}
        report["mp_over_ray"]["cold_start"] = round(report["mp"]["cold_start_s"] / report["ray"]["cold_start_s"], 3)
    out = Path(args.out)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("ray", "mp", "mp_over_ray") if k in report}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
