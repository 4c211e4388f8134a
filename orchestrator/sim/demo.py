"""The demo: the whole two-Spark path on one machine, no GPU and no network.

Makes a tiny random Llama locally, builds two simulated Sparks (network
namespaces cabled by a veth pair named `enp1s0f1np1`, 192.168.100.10 and .11 as
in the playbook), runs `spark-vllm serve MODEL` on one and `spark-vllm serve
--head-ip` on the other (TP 2 over Ray, vLLM's CPU engine), sends the playbook's
two requests from the second Spark, and removes everything it made, on success,
failure or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import gpusim, netns
from ..errors import SimulationError
from .tinymodel import make_tiny_model

log = logging.getLogger("spark_vllm")

# What lets the CPU engine fit one 2-core machine beside another: a short context and
# a fixed 64 MiB KV cache. (A --gpu-memory-utilization fraction of RAM fails here:
# both simulated Sparks count the same memory node, and the sum goes negative.)
SIM_VLLM_FLAGS = ("--max-model-len", "512", "--max-num-seqs", "16", "--kv-cache-memory-bytes", str(64 << 20))
# The GPU simulation (one real GPU per simulated Spark): a small KV cache, and eager
# mode, since compiling and capturing CUDA graphs for a toy model costs more than it saves.
# vLLM's custom all-reduce takes both simulated Sparks for one host (they share its
# /dev/shm) and reaches for the other GPU over P2P: off, as between two real Sparks.
GPU_VLLM_FLAGS = ("--max-model-len", "512", "--max-num-seqs", "16", "--gpu-memory-utilization", "0.2",
                  "--enforce-eager", "--disable-custom-all-reduce")
PORT = 8000


@dataclass(frozen=True)
class DemoResult:
    url: str
    model: str
    answers: dict
    timings: dict[str, float]
    logs: str

    def to_json(self) -> dict:
        return {"url": self.url, "model": self.model, "answers": self.answers,
                "timings_s": self.timings, "logs": self.logs}


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


def stop_run(run: NodeRun, timeout: float = 60.0) -> int | None:
    """SIGTERM (what `spark-vllm stop` sends), bounded; the namespace teardown kills the rest."""
    if run.proc.poll() is None:
        run.proc.terminate()
        try:
            run.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            run.proc.kill()
    return run.proc.returncode


@dataclass(frozen=True)
class SimCluster:
    net: netns.SimNetwork | netns.LoopbackNetwork
    head: NodeRun
    workers: tuple[NodeRun, ...]
    url: str  # http://HEAD:PORT, reachable from inside the simulated Sparks
    ready_s: float

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
                    prefix: str = "sparkdemo", loopback: bool = False, gpu: bool = False):
    """`spark-vllm serve` on N simulated Sparks, ready; torn down on exit whatever happens.
    `gpu`: the GPU simulation (one real GPU each, vLLM's CUDA engine) instead of the CPU one."""
    if gpu:
        gpusim.check_gpus(nodes)
    with simulated_sparks(nodes, prefix, loopback, on_line) as net:
        head_node, *worker_nodes = net.nodes
        on_line("demo", f"{nodes} simulated Sparks: {', '.join(n.ip for n in net.nodes)} on {head_node.iface}")
        if gpu:
            on_line("demo", gpusim.describe(nodes))
        mode = () if gpu else ("--simulate",)

        def start(label, index, node, *args):
            env = {**os.environ, **(gpusim.gpu_env(index) if gpu else {})}
            proc = node.popen(python, "-m", "launch", "serve", *args, *mode, "--nodes", str(nodes),
                              *node.cli_flags(), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
            return NodeRun(label, proc, workdir / f"{label}.log", on_line)

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
            yield SimCluster(net, head, tuple(workers), f"http://{head_node.ip}:{PORT}", ready)
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


def run_demo(workdir: Path, on_line: Callable[[str, str], None], timeout: float = 420.0,
             python: str = sys.executable, loopback: bool = False, gpu: bool = False) -> DemoResult:
    """The demo; raises SimulationError (with the relevant log lines) on any failure."""
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    model = str(make_tiny_model(workdir / "tiny-llama"))
    timings["model"] = time.monotonic() - t0
    on_line("demo", f"tiny random Llama ready at {model} ({timings['model']:.1f} s)")
    t1 = time.monotonic()
    with serving_cluster(workdir, model, on_line, timeout=timeout, python=python, loopback=loopback, gpu=gpu) as sim:
        timings["cluster_and_engine"] = time.monotonic() - t1
        t2 = time.monotonic()
        out = sim.client().run(python, "-m", "orchestrator.sim.client", sim.url, model,
                               capture_output=True, text=True, timeout=180)
        if out.returncode != 0:
            raise SimulationError(f"the requests failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
        answers = json.loads(out.stdout)
        timings["requests"] = time.monotonic() - t2
        t3 = time.monotonic()
    timings["stop"] = time.monotonic() - t3
    timings["total"] = time.monotonic() - t0
    return DemoResult(sim.url + "/v1", model, answers, {k: round(v, 2) for k, v in timings.items()}, str(workdir))
