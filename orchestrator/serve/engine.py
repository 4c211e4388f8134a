"""Serving: vLLM's OpenAI server in this process, tensor parallel over the Ray cluster.

`load_in_background` imports vLLM's server API while the head starts Ray;
`parse_serve_args` runs vLLM's own parser and validation (a bad flag fails in a
second, before the wait for the nodes); `plan_parallelism` is the pure decision of TP/PP and
the executor backend against the cluster's GPUs, and `fill_unset` writes it;
`run_server` hands the args to vLLM under uvloop in the main thread (vLLM installs
its signal handlers there), and tells its caller when a signal starts the server's stop.
Every `vllm serve` flag passes through untouched; only the unset ones are filled.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import re
import signal
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .compat import VllmApi, load_vllm_api
from ..errors import BadServeFlags, EngineFailed, ModelNotFound, NotEnoughGpus


def looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or os.path.exists(model)


def check_model(model: str | None, environ=os.environ) -> str:
    """A local path must exist and hold a config.json; a hub id offline must be cached."""
    if not model:
        raise BadServeFlags("no model given", "spark-vllm serve MODEL [vllm serve flags]")
    if looks_like_path(model):
        path = Path(model).expanduser()
        if not path.exists():
            raise ModelNotFound(f"model path {model} does not exist", "check the path, or give a Hugging Face id")
        if path.is_dir() and not (path / "config.json").exists():
            raise ModelNotFound(f"{model} has no config.json: not a model folder",
                                "point at the folder that holds config.json and the weights")
        return str(path)
    if environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model, "config.json"), str):
            raise ModelNotFound(f"model {model} is not in the Hugging Face cache and HF_HUB_OFFLINE is set",
                                f"download it first: hf download {model}")
    return model


# Flags spark-vllm fills when the user left them unset; parsed with a None default so
# that an explicit value, in any spelling vLLM accepts, is never overridden.
FILLED = ("tensor_parallel_size", "pipeline_parallel_size", "distributed_executor_backend", "shutdown_timeout")
# SIGTERM/Ctrl-C let in-flight requests finish for this long (vLLM's default, 0, aborts them).
DRAIN_SECONDS = 30


def serve_parser(api: VllmApi, unset: tuple[str, ...] | None = FILLED) -> argparse.ArgumentParser:
    """vLLM's `vllm serve` parser, with a None default for the dests in `unset` (None:
    every dest), so that a None in the result means "the user did not give it"."""
    parser = api.make_arg_parser(api.FlexibleArgumentParser(prog="spark-vllm serve"))
    known = {a.dest for a in parser._actions} - {"help"}
    parser.set_defaults(**{dest: None for dest in (known if unset is None else known & set(unset))})
    return parser


def load_in_background() -> "Future[VllmApi]":
    """Import vLLM's server API on a daemon thread. The import is most of the flag
    check's time (5 to 9 s); the head starts Ray meanwhile, and the other Sparks join."""
    future: Future = Future()

    def load() -> None:
        try:
            future.set_result(load_vllm_api())
        except BaseException as exc:  # handed to the caller, raised by result()
            future.set_exception(exc)

    threading.Thread(target=load, name="spark-vllm-import", daemon=True).start()
    return future


def parse_serve_args(api: VllmApi, model: str, flags: list[str]) -> argparse.Namespace:
    """vLLM's parser and validation on `--model MODEL FLAGS`."""
    args = parse_flags(serve_parser(api), model, flags)
    try:
        api.validate_parsed_serve_args(args)
    except (TypeError, ValueError) as exc:
        raise BadServeFlags(f"vLLM rejected the flags: {exc}") from None
    return args


def parse_flags(parser: argparse.ArgumentParser, model: str, flags: list[str]) -> argparse.Namespace:
    """`parser` on `--model MODEL FLAGS`; its complaint becomes one BadServeFlags line."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = parser.parse_args(["--model", model, *flags])
    except SystemExit as exc:
        message = parser_complaint(err.getvalue()) or f"vLLM's parser exited with {exc.code}"
        raise BadServeFlags(f"vLLM rejected the flags: {message}", "see `vllm serve --help` for the flags") from None
    return args


# argparse's "PROG: error: ..." line, after its usage block (whose lines are indented)
_ERROR_LINE = re.compile(r"^\S.*?: error: (.*)$")
# pydantic's tail of a message: "[type=..., input_value=..., input_type=...]"
_PYDANTIC_TAIL = re.compile(r"\s*\[type=.*\]$")


def parser_complaint(stderr: str) -> str:
    """Pure: argparse's complaint as one line. A JSON flag's pydantic error spans lines
    ("1 validation error for CompilationConfig", then each field and its message, then a
    link): each field is kept with its message, the link and the type tags dropped."""
    lines = [ln.rstrip() for ln in stderr.splitlines() if ln.strip()]
    at = max((i for i, ln in enumerate(lines) if _ERROR_LINE.match(ln)), default=None)
    if at is None:
        return lines[-1].strip() if lines else ""
    head, items = _ERROR_LINE.match(lines[at]).group(1).strip(), []
    for ln in lines[at + 1:]:
        text = _PYDANTIC_TAIL.sub("", ln.strip())
        if text.startswith("For further information visit"):
            continue
        if ln.startswith(" ") and items:  # a field's message, under its field
            items[-1] = f"{items[-1]}: {text}" if items[-1] else text
        else:
            items.append(text)
    return f"{head}: {'; '.join(items)}" if items else head


@dataclass(frozen=True)
class Parallelism:
    tensor: int
    pipeline: int
    backend: str
    gpus: int

    def describe(self) -> str:
        return f"TP {self.tensor} x PP {self.pipeline} over {self.gpus} GPU(s), executor {self.backend}"


def plan_parallelism(tp: int | None, pp: int | None, backend: str | None, gpus: int) -> Parallelism:
    """Pure. Default: TP over every GPU of the cluster, PP 1, Ray executor (vLLM 0.33
    no longer picks Ray by itself across nodes). A size larger than the cluster fails
    here, at once, instead of in vLLM's 30-minute placement-group wait."""
    pipeline = pp or 1
    tensor = tp or max(1, gpus // pipeline)
    if tensor < 1 or pipeline < 1:
        raise BadServeFlags(f"tensor ({tensor}) and pipeline ({pipeline}) parallel sizes must be at least 1")
    if tensor * pipeline > gpus:
        raise NotEnoughGpus(
            f"TP {tensor} x PP {pipeline} needs {tensor * pipeline} GPUs but the cluster has {gpus}",
            "lower --tensor-parallel-size/--pipeline-parallel-size, or add nodes (--nodes)",
        )
    return Parallelism(tensor, pipeline, backend or "ray", gpus)


def explicit_parallel_sizes(flags: list[str]) -> tuple[int | None, int | None]:
    """Pure: the TP and PP sizes the user gave, in any spelling `vllm serve` takes
    (`--tensor-parallel-size 4`, `-tp=4`, `--tensor_parallel_size 4`), read before vLLM
    is imported so that an impossible size fails before Ray starts. vLLM's own parser
    still reads every flag afterwards; a spelling missed here is caught by the check
    against the joined cluster."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for dest, short in (("tensor_parallel_size", "-tp"), ("pipeline_parallel_size", "-pp")):
        long = "--" + dest.replace("_", "-")
        parser.add_argument(long, "--" + dest, short, dest=dest, type=int, default=None)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            known, _ = parser.parse_known_args(flags)
    except SystemExit:  # a malformed value: vLLM's parser says so with its own message
        return None, None
    return known.tensor_parallel_size, known.pipeline_parallel_size


def check_planned_size(tp: int | None, pp: int | None, nodes: int, gpus_per_node: int) -> None:
    """Pure, before the wait for the nodes: an explicit TP x PP that `nodes` Sparks can never hold
    fails now, not after the whole wait for nodes. Sparks are alike, so the cluster is
    assumed to have `nodes` x this node's GPUs (the joined cluster is checked again)."""
    if not tp or gpus_per_node < 1:
        return  # TP defaults to what the cluster has; no GPU here is for the wait to report
    pipeline = pp or 1
    need, have = tp * pipeline, nodes * gpus_per_node
    if need > have:
        each = f"{gpus_per_node} GPU{'s' if gpus_per_node > 1 else ''}"
        raise NotEnoughGpus(
            f"TP {tp} x PP {pipeline} needs {need} GPUs but --nodes {nodes} Sparks of {each} each "
            f"have {have} (assuming every Spark has this one's GPUs)",
            f"pass --nodes {-(-need // gpus_per_node)}, or a --tensor-parallel-size of at most "
            f"{max(1, have // pipeline)}",
        )


def fill_unset(args: argparse.Namespace, par: Parallelism) -> argparse.Namespace:
    """Write the parallelism, and a drain on shutdown unless the user chose one
    (versions without `--shutdown-timeout` lack the attribute and are left alone)."""
    args.tensor_parallel_size = par.tensor
    args.pipeline_parallel_size = par.pipeline
    args.distributed_executor_backend = par.backend
    if hasattr(args, "shutdown_timeout") and args.shutdown_timeout is None:
        args.shutdown_timeout = DRAIN_SECONDS
    return args


# This process is a Ray driver when vLLM starts. On CUDA, vLLM forks its engine-core
# process unless CUDA is already initialised; a forked child inherits the driver's Ray
# connection half-alive and hangs in its first Ray call (creating the placement group),
# as seen on a 2-GPU machine with vLLM 0.24. Spawned, it connects afresh.
ENGINE_START_METHOD = ("VLLM_WORKER_MULTIPROC_METHOD", "spawn")


def signal_telling_loop(on_signal: Callable[[int], None]) -> type:
    """A uvloop event loop class whose `add_signal_handler` runs `on_signal(signum)`
    before the handler it is given. vLLM's server stops on SIGTERM and SIGINT through
    handlers on its event loop (`serve_http`, every release from 0.10.2 to 0.33: see
    compat.NEEDS): that handler starts vLLM's shutdown, so this is the moment to know of
    the stop before it begins. `on_signal` must be quick and not raise; an error in it is
    logged by the loop, and vLLM's handler runs all the same."""
    import uvloop

    class SignalTellingLoop(uvloop.Loop):
        def add_signal_handler(self, sig, callback, *args):
            def tell_first(*cb_args):
                try:
                    on_signal(sig)
                finally:
                    callback(*cb_args)

            super().add_signal_handler(sig, tell_first, *args)

    return SignalTellingLoop


def run_server(api: VllmApi, args: argparse.Namespace, environ=os.environ,
               on_signal: Callable[[int], None] = lambda signum: None) -> None:
    """vLLM's OpenAI server, in this thread, until SIGTERM/SIGINT or an engine failure;
    `on_signal(signum)` when such a signal starts the server's stop (see
    `signal_telling_loop`), before vLLM's own handler runs.

    vLLM replaces the SIGTERM handler (and its event loop resets it to the default
    on the way out): the caller's is put back, so a SIGTERM after the server stopped
    (during a recovery) still stops this process cleanly. `args` is not changed
    (vLLM writes into it), so the same arguments can start the engine again."""
    import uvloop

    environ.setdefault(*ENGINE_START_METHOD)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        uvloop.run(api.run_server(copy.deepcopy(args)), loop_factory=signal_telling_loop(on_signal))
    except KeyboardInterrupt:
        raise
    except SystemExit:
        raise
    except Exception as exc:  # vLLM raises bare RuntimeErrors when the engine dies
        raise EngineFailed(f"vLLM stopped: {type(exc).__name__}: {exc}",
                           "see the log above; `spark-vllm status` shows the cluster") from exc
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
