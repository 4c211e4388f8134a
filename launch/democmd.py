"""`spark-vllm demo`: the simulated two-Spark cluster serving a small real model (or the tiny random one)."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from orchestrator.errors import SimulationError
from orchestrator.sim.demo.run import MODELS, run_demo
from orchestrator.sim.demo.greedy import NEAR_TIE
from orchestrator.settings import Settings

from .clustercmd import sigterm_stops
from .options import print_json


def register(sub, settings: Settings) -> None:
    p = sub.add_parser("demo", help="two simulated Sparks on this machine serve a small model (no GPU)")
    p.add_argument("--model", choices=MODELS, default=MODELS[0],
                   help="smollm2: SmolLM2-135M-Instruct from PyPI, padded for TP 2, made once (default); "
                        "tiny: a random Llama made in seconds, which answers noise")
    p.add_argument("--models-dir", type=Path, default=Path.home() / ".cache" / "spark-vllm" / "models",
                   help="where the real model is kept once made (default ~/.cache/spark-vllm/models)")
    p.add_argument("--timeout", type=float, default=420, help="seconds to wait for the server (default 420)")
    p.add_argument("--keep", metavar="DIR", default=None,
                   help="keep the model and logs in DIR (default: a temporary folder, removed)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--loopback", action="store_true",
                   help="use loopback addresses 127.0.0.2/.3 instead of network namespaces "
                        "(the default where namespaces cannot be built, i.e. without root)")
    p.add_argument("--gpu", action="store_true",
                   help="the GPU simulation: this machine's GPUs, one per simulated Spark with two or more, "
                        "shared with one; vLLM's CUDA engine, NCCL over the veth")
    p.set_defaults(func=run, needs_ray=True)


def run(args: argparse.Namespace, settings: Settings) -> int:
    workdir = Path(args.keep or tempfile.mkdtemp(prefix="spark-vllm-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)

    def show(label: str, line: str) -> None:
        print(f"[{label:>6}] {line}", file=sys.stderr, flush=True)

    keep = bool(args.keep)
    try:
        with sigterm_stops():
            result = run_demo(workdir, show, args.models_dir, model_kind=args.model, timeout=args.timeout,
                              loopback=args.loopback, gpu=args.gpu)
    except SimulationError:
        keep = True  # its message points at the node logs in workdir
        raise
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print_json(result.to_json())
        return 0
    a, t, g = result.answers, result.timings, result.agreement
    where = "two simulated Sparks on this machine's GPUs" if args.gpu else "two simulated Sparks"
    print(f"\nserved {result.model} at {result.url}, tensor parallel 2 over Ray across {where}")
    print(f"\nchat  > {a['chat']['prompt']}\n      < {a['chat']['answer']!r}  ({a['chat']['tokens']} tokens, {a['chat']['seconds']:.2f} s)")
    print(f"\ncompl > {a['completion']['prompt']}\n      < {a['completion']['answer']!r}  "
          f"({a['completion']['tokens']} tokens, {a['completion']['seconds']:.2f} s)")
    if g.identical:
        print(f"\nsame {g.tokens} tokens as vLLM in one process without tensor parallelism "
              f"(greedy, float32; smallest top-2 margin {g.min_margin:.3f})")
    else:
        print(f"\nsame tokens as vLLM in one process up to a near tie, where either token is right: "
              f"{len(g.divergences)} of {g.prompts} answers part at a top-2 margin under {NEAR_TIE:g}")
    if args.model == "tiny":
        print("\n(the tiny model is random, so its words are noise)")
    print(f"\nauth: Ray token {result.auth['ray_token']} between the Sparks, API key {result.auth['api_key']} "
          "(random for this run, never shown)")
    print("\ntimings: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()))
    return 0
