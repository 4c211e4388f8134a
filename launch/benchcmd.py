"""`spark-vllm bench`: vLLM's benchmark client against a server, at several concurrencies.

With `--url` and `--model` it measures that server (two real Sparks: the head's
`http://HEAD:8000`). Without `--url` it starts the simulated two-Spark cluster
(as `spark-vllm demo` does), runs itself inside a simulated Spark against it, and
tears everything down.
"""

from __future__ import annotations

import argparse
import os
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from orchestrator.errors import SimulationError, UsageError
from orchestrator.ops.observation.bench import BenchRequest, parse_concurrencies, run_bench
from orchestrator.settings import Settings

from .clustercmd import sigterm_stops
from .options import add_json, print_json, table


def register(sub, settings: Settings) -> None:
    p = sub.add_parser("bench", help="serving benchmark (vLLM's client): tok/s, TTFT, TPOT, ITL at several concurrencies")
    p.add_argument("--url", default=None,
                   help="the server, e.g. http://192.168.100.10:8000 (default: start the simulated cluster)")
    p.add_argument("--model", default=None, help="the served model name (needed with --url)")
    p.add_argument("--tokenizer", default=None, help="tokenizer path or hub id (default: --model)")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated levels (default 1,4,16)")
    p.add_argument("--num-prompts", type=int, default=None, help="requests per level (default 8 x concurrency, at least 16)")
    p.add_argument("--input-len", type=int, default=64, help="prompt tokens (default 64)")
    p.add_argument("--output-len", type=int, default=32, help="output tokens per request (default 32)")
    add_json(p)
    p.set_defaults(func=run)


def request_from(args: argparse.Namespace, url: str, model: str) -> BenchRequest:
    return BenchRequest(base_url=url, model=model, tokenizer=args.tokenizer,
                        concurrencies=parse_concurrencies(args.concurrency), prompts_per_level=args.num_prompts,
                        input_len=args.input_len, output_len=args.output_len)


def progress(line: str) -> None:
    print(f"spark-vllm: {line}", file=sys.stderr, flush=True)


# vLLM logs to stdout by default, from its import on (its CUDA build says which platform it
# found): this command's stdout is its table or JSON alone, vLLM's lines go to stderr.
QUIET_STDOUT = {"VLLM_LOGGING_STREAM": "ext://sys.stderr"}


def run(args: argparse.Namespace, settings: Settings) -> int:
    for name, value in QUIET_STDOUT.items():
        os.environ.setdefault(name, value)  # before vLLM is first imported (run_level)
    if args.url:
        if not args.model:
            raise UsageError("--url needs --model (the served model name)", "e.g. --model Qwen/Qwen3-8B")
        if os.environ.get("VLLM_API_KEY") and not os.environ.get("OPENAI_API_KEY"):
            # vLLM's benchmark client sends OPENAI_API_KEY; a server's --api-key is VLLM_API_KEY.
            os.environ["OPENAI_API_KEY"] = os.environ["VLLM_API_KEY"]
        req = request_from(args, args.url, args.model)
        results = [r.to_json() for r in run_bench(req, progress)]
    else:
        parse_concurrencies(args.concurrency)  # a bad value fails before the cluster starts
        results = on_simulated_cluster(args)
    if args.json:
        print_json({"url": args.url or "simulated", "levels": results})
        return 0
    rows = [[r["concurrency"], f"{r['output_tok_s']:.1f}", f"{r['ttft_p50_ms']:.1f}", f"{r['ttft_p99_ms']:.1f}",
             f"{r['tpot_p50_ms']:.1f}", f"{r['itl_p50_ms']:.1f}", f"{r['itl_p99_ms']:.1f}", f"{r['completed']}/{r['failed']}"]
            for r in results]
    print(table(rows, ["CONC", "OUT TOK/S", "TTFT P50", "TTFT P99", "TPOT P50", "ITL P50", "ITL P99", "OK/FAILED"]))
    print("(latencies in ms)")
    return 0


def on_simulated_cluster(args: argparse.Namespace) -> list[dict]:
    """The simulated two-Spark cluster, this command run inside its last Spark."""
    from orchestrator.sim.demo.run import serving_cluster
    from orchestrator.sim.models.tinymodel import make_tiny_model

    workdir = Path(tempfile.mkdtemp(prefix="spark-vllm-bench-"))
    try:
        with sigterm_stops():
            model = str(make_tiny_model(workdir / "tiny-llama"))
            with serving_cluster(workdir, model, lambda who, line: progress(f"[{who}] {line}")) as sim:
                inner = [sys.executable, "-m", "launch", "bench", "--url", sim.url, "--model", model, "--json",
                         "--concurrency", args.concurrency, "--input-len", str(args.input_len),
                         "--output-len", str(args.output_len)]
                if args.num_prompts:
                    inner += ["--num-prompts", str(args.num_prompts)]
                out = sim.client().run(*inner, stdout=subprocess.PIPE, text=True, timeout=1800)
                if out.returncode:
                    raise SimulationError(f"the benchmark inside the simulated Spark exited with {out.returncode}",
                                          "its error is above")
                return json.loads(out.stdout)["levels"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
