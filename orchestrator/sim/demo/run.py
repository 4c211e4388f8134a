"""The demo: the whole two-Spark path on one machine, no GPU and no network.

Gets a model (by default SmolLM2-135M-Instruct, padded for TP 2 and cached; or the
tiny random Llama), builds two simulated Sparks (network namespaces cabled by a
veth pair named `enp1s0f1np1`, 192.168.100.10 and .11 as in the playbook), runs
`spark-vllm serve MODEL` on one and `spark-vllm serve --head-ip` on the other
(TP 2 over Ray, vLLM's CPU engine), sends the playbook's two requests from the
second Spark, holds the greedy answers against single-process generation of the
same prompts, and removes everything it made (but the cached model), on success,
failure or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..namespaces import caches, gpusim, netns
from ..models import smollm
from ...errors import SimulationError
from .greedy import EXACT_FLAGS, NEAR_TIE, Agreement, hold_against_reference
from ..models.tinymodel import make_tiny_model

log = logging.getLogger("spark_vllm")

# What lets the CPU engine fit one 2-core machine beside another: a short context and
# a fixed 64 MiB KV cache. (A --gpu-memory-utilization fraction of RAM fails here:
# both simulated Sparks count the same memory node, and the sum goes negative.)
# The KV cache holds 2 (K, V) x layers x KV heads per rank x head_dim x dtype bytes a
# token: the padded SmolLM2 in float32 under TP 2, 2 x 30 x 2 x 64 x 4 = 30 KiB, so
# 64 MiB hold 2184 tokens a rank; in one process (4 KV heads) 1092: both over 512.
SIM_VLLM_FLAGS = ("--max-model-len", "512", "--max-num-seqs", "16", "--kv-cache-memory-bytes", str(64 << 20))
GPU_VLLM_FLAGS = gpusim.GPU_VLLM_FLAGS  # the GPU simulation's (see gpusim)
PORT = 8000
MAX_TOKENS = 32
MODELS = ("smollm2", "tiny")  # the first is the default
TOKEN_VAR = "SPARK_VLLM_TOKEN_FILE"
# What the demo turns on (shown, never the secrets): Ray's token between the Sparks,
# and an API key on the OpenAI server, random for each run.
DEMO_AUTH = {"ray_token": "on", "api_key": "on"}


@dataclass(frozen=True)
class DemoResult:
    url: str
    model: str
    path: str
    answers: dict
    agreement: Agreement
    timings: dict[str, float]
    logs: str
    auth: dict[str, str] = field(default_factory=lambda: dict(DEMO_AUTH))

    def to_json(self) -> dict:
        return {"url": self.url, "model": self.model, "path": self.path, "answers": self.answers,
                "tp2_vs_single_process": self.agreement.to_json(), "timings_s": self.timings, "logs": self.logs,
                "auth": self.auth}


# vLLM's CUDA build prefixes what its processes print, ours included once vLLM runs:
# "(APIServer pid=7549) spark-vllm: ready: ..." (seen with vLLM 0.24 on a 2-GPU machine).
OWN_LINE = re.compile(r"^(?:\([\w.]+ pid=\d+\) )?spark-vllm: (.*)$")


def own_line(line: str) -> str | None:
    """The message of a spark-vllm log line (vLLM's process prefix removed), else None."""
    m = OWN_LINE.match(line.rstrip())
    return m.group(1) if m else None


@dataclass
class NodeRun:
    """One simulated Spark's `spark-vllm serve`, its log teed to a file."""

    label: str
    proc: subprocess.Popen
    log_path: Path
    on_line: Callable[[str, str], None]
    ready: threading.Event = field(default_factory=threading.Event)
    joined: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        threading.Thread(target=self._pump, name=f"demo-{self.label}", daemon=True).start()

    def _pump(self) -> None:
        with open(self.log_path, "w") as out:
            for line in self.proc.stdout:
                out.write(line)
                out.flush()
                ours = own_line(line)
                if ours is not None:
                    self.on_line(self.label, ours)
                    if ours.startswith("ready:"):
                        self.ready.set()
                    elif ours.startswith("joined the cluster"):
                        self.joined.set()

    def tail(self, n: int = 15) -> str:
        try:
            return "".join(self.log_path.read_text().splitlines(keepends=True)[-n:])
        except OSError:
            return ""


def wait_ready(head: NodeRun, others: list[NodeRun], timeout: float, event: str = "ready") -> float:
    """Until `head` announces `event` (ready, or joined); fails at once when any node's
    process ends."""
    start = time.monotonic()
    while not getattr(head, event).wait(0.5):
        for run in [head, *others]:
            if run.proc.poll() is not None:
                raise SimulationError(
                    f"the {run.label} exited with code {run.proc.returncode} before the server was ready; "
                    f"last lines:\n{run.tail()}", f"full log: {run.log_path}")
        if time.monotonic() - start > timeout:
            raise SimulationError(f"the {head.label} was not {event} after {timeout:g} s; last lines:\n{head.tail()}",
                                  f"full log: {head.log_path}")
    return time.monotonic() - start


def start_serve(node: netns.SimNode, label: str, workdir: Path, on_line: Callable[[str, str], None],
                *args: str, python: str = sys.executable, env: dict[str, str] | None = None,
                mode: tuple[str, ...] = ("--simulate",), cache_base: Path | None = None) -> NodeRun:
    """`spark-vllm serve ARGS --simulate` in a simulated Spark (also: a worker started
    again, as a restart policy would, with `SimCluster.env()`), its log in `workdir/LABEL.log`.
    `mode` () is the GPU simulation: real GPUs, no --simulate. The node's compile caches
    are its own, under `cache_base` (default `workdir/caches`: a restart finds them)."""
    env = caches.node_env(os.environ if env is None else env, cache_base or workdir / "caches", node.index,
                          cpu="--simulate" in mode)
    proc = node.popen(python, "-m", "launch", "serve", *args, *mode, *node.cli_flags(), env=env,
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    return NodeRun(label, proc, workdir / f"{label}.log", on_line)


def stop_run(run: NodeRun, timeout: float = 60.0) -> int | None:
    """SIGTERM, bounded; the namespace teardown kills the rest."""
    return netns.terminate(run.proc, timeout)


@dataclass(frozen=True)
class SimCluster:
    net: netns.SimNetwork | netns.LoopbackNetwork
    head: NodeRun
    workers: tuple[NodeRun, ...]
    url: str  # http://HEAD:PORT, reachable from inside the simulated Sparks
    ready_s: float
    token_file: str  # the Ray auth token the simulated Sparks share
    gpus: gpusim.GpuLayout | None = None  # the GPU simulation's layout; None: the CPU simulation

    @property
    def mode(self) -> tuple[str, ...]:
        """The flag that picks the simulation: none for real GPUs, else --simulate."""
        return () if self.gpus else ("--simulate",)

    def env(self, index: int = -1) -> dict[str, str]:
        """The environment simulated Spark `index` starts with (also when started
        again): the Ray token it shares, and its GPU when the GPUs are real."""
        gpu = self.gpus.env(index % len(self.net.nodes)) if self.gpus else {}
        return {**os.environ, TOKEN_VAR: self.token_file, **gpu}

    def client(self, index: int = -1) -> netns.SimNode:
        """A simulated Spark to send requests from (the last worker by default)."""
        return self.net.nodes[index]


def simulated_sparks(nodes: int, prefix: str, loopback: bool, on_line: Callable[[str, str], None]):
    """Network namespaces when this machine allows them (root), else loopback addresses."""
    reason = "asked for" if loopback else netns.available()
    if reason:
        on_line("demo", f"loopback addresses stand in for the Sparks ({reason}): no namespaces, no RoCE")
        return netns.LoopbackNetwork(nodes)
    netns.cleanup_stale(prefix)
    return netns.SimNetwork(nodes=nodes, prefix=prefix)


@contextlib.contextmanager
def serving_cluster(workdir: Path, model: str, on_line: Callable[[str, str], None], nodes: int = 2,
                    flags: tuple[str, ...] = (), timeout: float = 420.0, python: str = sys.executable,
                    prefix: str = "sparkdemo", loopback: bool = False, api_key: str | None = None,
                    gpu: bool = False, cache_base: Path | None = None):
    """`spark-vllm serve` on N simulated Sparks, ready; torn down on exit whatever happens.

    Ray token authentication is on (spark-vllm's default) with the token in `workdir`:
    the simulated Sparks share one filesystem, so the head's file is already "copied".
    `api_key` reaches vLLM as VLLM_API_KEY (not on the command line, where `ps` shows it).
    `gpu`: the GPU simulation (one real GPU each, vLLM's CUDA engine) instead of the CPU one.
    Each node compiles into its own caches under `cache_base` (default `workdir/caches`)."""
    if gpu:
        gpusim.plan_gpus(gpusim.visible_gpus(), nodes)  # no GPU: said before any namespace is made
    env = {**os.environ, TOKEN_VAR: str(workdir / "ray-token")}
    with simulated_sparks(nodes, prefix, loopback, on_line) as net:
        head_node, *worker_nodes = net.nodes
        on_line("demo", f"{nodes} simulated Sparks: {', '.join(n.ip for n in net.nodes)} on {head_node.iface}")
        layout = gpusim.layout_here(net) if gpu else None
        if layout:
            on_line("demo", layout.describe())
        mode = () if gpu else ("--simulate",)

        def start(label, index, node, *args):
            extra = {"VLLM_API_KEY": api_key} if api_key and label == "head" else {}
            extra.update(layout.env(index) if layout else {})
            return start_serve(node, label, workdir, on_line, *args, "--nodes", str(nodes), python=python,
                               env={**env, **extra}, mode=mode, cache_base=cache_base)

        head = start("head", 0, head_node, model, "--port", str(PORT), "--wait-timeout", "180",
                     *(GPU_VLLM_FLAGS if gpu else SIM_VLLM_FLAGS), *flags)
        workers: list[NodeRun] = []
        try:
            for i, node in enumerate(worker_nodes, 1):
                workers.append(start(f"worker{i}" if nodes > 2 else "worker", i, node, "--head-ip", head_node.ip))
                if nodes > 2:
                    # One at a time: several raylets registering at once on 2 cores overrun
                    # Ray's fixed 30 s startup wait (a simulation limit, not a Spark one).
                    wait_ready(workers[-1], [head, *workers[:-1]], timeout, event="joined")
            ready = wait_ready(head, workers, timeout)
            yield SimCluster(net, head, tuple(workers), f"http://{head_node.ip}:{PORT}", ready, env[TOKEN_VAR],
                             layout)
        finally:
            runs = (head, *workers)
            t = time.monotonic()
            codes = [stop_run(r) for r in runs]
            # Workers leave on their own when the head goes (exit 7, what a restart policy sees).
            on_line("demo", f"stopped in {time.monotonic() - t:.1f} s: "
                            + ", ".join(f"{r.label} exit {c}" for r, c in zip(runs, codes)))
            if isinstance(net, netns.SimNetwork):  # before the teardown kills what is left
                left = sum(len(p) for p in netns.wait_empty(net.namespaces).values())
                on_line("demo", f"{left} process(es) left in the simulated Sparks" if left
                        else "nothing left running in the simulated Sparks")


def demo_model(kind: str, workdir: Path, models_dir: Path) -> tuple[str, str]:
    """(path, served name) of the demo's model: the real one is cached in `models_dir`,
    the tiny one made in `workdir`."""
    if kind == "smollm2":
        return str(smollm.make_smollm(models_dir)), smollm.SERVED_NAME
    if kind == "tiny":
        return str(make_tiny_model(workdir / "tiny-llama")), "tiny-llama"
    raise SimulationError(f"unknown demo model {kind!r}", hint=f"choose one of {', '.join(MODELS)}")


def run_demo(workdir: Path, on_line: Callable[[str, str], None], models_dir: Path, model_kind: str = MODELS[0],
             timeout: float = 420.0, python: str = sys.executable, loopback: bool = False, gpu: bool = False) -> DemoResult:
    """The demo; raises SimulationError (with the relevant log lines) on any failure,
    including a TP 2 answer that single-process generation contradicts."""
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    path, name = demo_model(model_kind, workdir, models_dir)
    timings["model"] = time.monotonic() - t0
    on_line("demo", f"model {name} ready at {path} ({timings['model']:.1f} s)")
    t1 = time.monotonic()
    flags = (*EXACT_FLAGS, "--served-model-name", name)
    api_key = secrets.token_urlsafe(24)  # this run's own; never shown
    # The nodes' compile caches next to the cached model: a second demo loads what the first compiled.
    with serving_cluster(workdir, path, on_line, flags=flags, timeout=timeout, python=python,
                         loopback=loopback, api_key=api_key, gpu=gpu,
                         cache_base=models_dir.parent / "sim-caches") as sim:
        timings["cluster_and_engine"] = time.monotonic() - t1
        t2 = time.monotonic()
        out = sim.client().run(python, "-m", "orchestrator.sim.demo.client", sim.url, name,
                               "--max-tokens", str(MAX_TOKENS), capture_output=True, text=True, timeout=180,
                               env={**os.environ, "VLLM_API_KEY": api_key})
        if out.returncode != 0:
            raise SimulationError(f"the requests failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
        answers = json.loads(out.stdout)
        timings["requests"] = time.monotonic() - t2
        t3 = time.monotonic()
    timings["stop"] = time.monotonic() - t3
    # After the cluster is gone: the reference engine then has the machine to itself.
    on_line("demo", "the same prompts through vLLM in one process (no Ray, no TP), to compare")
    t4 = time.monotonic()
    agreement = hold_against_reference(path, answers, MAX_TOKENS, (*(GPU_VLLM_FLAGS if gpu else SIM_VLLM_FLAGS), *EXACT_FLAGS), workdir,
                                       python=python)
    timings["single_process"] = time.monotonic() - t4
    if not agreement.only_near_ties(NEAR_TIE):
        d = next(d for d in agreement.divergences if d.margin is None or d.margin > NEAR_TIE)
        raise SimulationError(
            f"TP 2 over Ray answered token {d.served} where single-process generation answers {d.reference} "
            f"(prompt {d.prompt}, token {d.position}, top-2 margin {d.margin})",
            hint=f"tensor parallelism computed something else; logs in {workdir}")
    timings["total"] = time.monotonic() - t0
    return DemoResult(sim.url + "/v1", name, path, answers, agreement,
                      {k: round(v, 2) for k, v in timings.items()}, str(workdir))
