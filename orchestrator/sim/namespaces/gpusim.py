"""The GPU simulation: simulated Sparks on one Linux machine with real GPUs.

The namespaces and the veth are the CPU simulation's; what changes is that nodes run
without `--simulate` (Ray detects the GPU, vLLM runs its CUDA engine) and each gets
the variables below. They are what two real Sparks would NOT need:
- which GPU a simulated Spark sees (CUDA_VISIBLE_DEVICES). With as many GPUs as
  simulated Sparks, one each ("one each"); with fewer, they share ("shared": all on
  GPU 0 on a one-GPU machine). Sharing, each also gets its own NCCL_HOSTID (its
  name), or NCCL stops with "Duplicate GPU detected"; NCCL then sees one host each.
- NCCL kept off the paths one host offers (P2P over NVLink/PCIe, shared memory,
  InfiniBand verbs, NVLink multicast), so that it takes the veth, as it takes the
  cable between two Sparks.
- vLLM's memory: on a shared GPU each engine's profile also counts the other
  Spark's memory, so the KV cache is given in bytes (`--kv-cache-memory-bytes`) and
  the share each engine claims is small (`--gpu-memory-utilization`), leaving room
  for the other Sparks and for a single-process reference run beside them.

`running_nodes` starts `spark-vllm head` and `worker` in the namespaces (the cluster
scenario: status, fabric-test); `demo.serving_cluster(gpu=True)` serves.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ...errors import SimulationError
from . import netns

# NCCL over the veth only. NCCL_NVLS_ENABLE=0 also keeps NVLink multicast off, which
# on shared multi-GPU hosts can take the GPUs out of service.
NCCL_OVER_VETH = {"NCCL_P2P_DISABLE": "1", "NCCL_SHM_DISABLE": "1", "NCCL_IB_DISABLE": "1", "NCCL_NVLS_ENABLE": "0"}
SHARED, ONE_EACH = "shared", "one each"
# vLLM's flags for the demo's models (135M parameters at most) on a GPU. The KV cache
# is given in bytes, so no engine sizes it from a profile that counts another Spark's
# memory: 1 GiB holds 34952 tokens of the padded SmolLM2 in float32 under TP 2 (30 KiB
# a token), far over 16 sequences of 512. --gpu-memory-utilization is the share vLLM
# checks is free at its start: with 0.1 each, both simulated Sparks and the
# single-process reference fit one GPU together. Eager mode: compiling and capturing
# CUDA graphs for a toy model costs more than it saves. vLLM's custom all-reduce takes
# the simulated Sparks for one host (they share /dev/shm) and reaches for the other's
# GPU over P2P: off, as between two real Sparks.
KV_CACHE_BYTES = 1 << 30
GPU_VLLM_FLAGS = ("--max-model-len", "512", "--max-num-seqs", "16", "--gpu-memory-utilization", "0.1",
                  "--kv-cache-memory-bytes", str(KV_CACHE_BYTES), "--enforce-eager", "--disable-custom-all-reduce")


@dataclass(frozen=True)
class GpuLayout:
    """Which GPU each simulated Spark sees, and how NCCL tells them apart."""

    mode: str  # SHARED or ONE_EACH
    devices: tuple[int, ...]  # CUDA_VISIBLE_DEVICES of simulated Spark i
    host_ids: tuple[str | None, ...]  # NCCL_HOSTID of simulated Spark i (None: NCCL's own)

    def env(self, index: int) -> dict[str, str]:
        """What the GPU simulation sets for simulated Spark `index` (and nothing else does)."""
        host = {"NCCL_HOSTID": self.host_ids[index]} if self.host_ids[index] else {}
        return {"CUDA_VISIBLE_DEVICES": str(self.devices[index]), **host, **NCCL_OVER_VETH}

    def describe(self) -> str:
        """The line the GPU simulation prints: what it sets that two real Sparks would not."""
        gpus = ", ".join(f"node {i} CUDA_VISIBLE_DEVICES={d}" + (f" NCCL_HOSTID={h}" if h else "")
                         for i, (d, h) in enumerate(zip(self.devices, self.host_ids)))
        nccl = " ".join(f"{k}={v}" for k, v in NCCL_OVER_VETH.items())
        return (f"GPU simulation (not needed on real Sparks), GPUs {self.mode}: {gpus}; {nccl} so that NCCL "
                f"takes the veth; vLLM's KV cache {KV_CACHE_BYTES >> 20} MiB a Spark")


def plan_gpus(gpus: int, nodes: int, names: tuple[str, ...] | None = None) -> GpuLayout:
    """Pure: the layout for `nodes` simulated Sparks on a machine with `gpus` GPUs. One
    GPU each when there are enough; else they share them in turn, each with its own
    NCCL_HOSTID (`names[i]`, the simulated Spark's name)."""
    if gpus < 1:
        raise SimulationError("the GPU simulation needs a GPU; nvidia-smi lists none",
                              "run it on a machine with an NVIDIA GPU, or use the CPU simulation (--simulate)")
    if nodes < 1:
        raise SimulationError(f"the GPU simulation needs at least one simulated Spark, not {nodes}")
    if gpus >= nodes:
        return GpuLayout(ONE_EACH, tuple(range(nodes)), (None,) * nodes)
    names = names or tuple(f"spark{i}" for i in range(nodes))
    return GpuLayout(SHARED, tuple(i % gpus for i in range(nodes)), tuple(names[:nodes]))


def visible_gpus() -> int:
    """GPUs on this machine, from `nvidia-smi -L` (no CUDA initialised in this process)."""
    if not shutil.which("nvidia-smi"):
        return 0
    r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return sum(line.startswith("GPU ") for line in r.stdout.splitlines()) if r.returncode == 0 else 0


def layout_here(net: netns.SimNetwork | netns.LoopbackNetwork) -> GpuLayout:
    """The layout for this machine's GPUs and these simulated Sparks (named by namespace)."""
    names = tuple(getattr(n, "netns", None) or f"spark{n.index}" for n in net.nodes)
    return plan_gpus(visible_gpus(), len(net.nodes), names)


class NodeProcess:
    """One `spark-vllm ROLE` in a simulated Spark, its output in a file."""

    def __init__(self, node: netns.SimNode, role: str, args: tuple[str, ...], env: dict[str, str],
                 workdir: Path, python: str = sys.executable) -> None:
        self.node, self.role = node, role
        self.log = workdir / f"{role}-{node.index}.log"
        with open(self.log, "w") as out:
            self.proc = node.popen(python, "-m", "launch", role, *node.cli_flags(), *args, env=env,
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    @property
    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, text: str, timeout: float, watch: tuple["NodeProcess", ...] = ()) -> float:
        start = time.monotonic()
        while text not in self.output:
            for p in (self, *watch):
                if p.proc.poll() is not None:
                    raise SimulationError(f"the {p.role} exited {p.proc.returncode} before {text!r}:\n"
                                          + "".join(p.output.splitlines(keepends=True)[-15:]))
            if time.monotonic() - start > timeout:
                raise SimulationError(f"the {self.role}: no {text!r} within {timeout:g} s", f"log: {self.log}")
            time.sleep(0.2)
        return time.monotonic() - start

    def stop(self, timeout: float = 60.0) -> int | None:
        return netns.terminate(self.proc, timeout)


@contextlib.contextmanager
def running_nodes(net: netns.SimNetwork, workdir: Path, env: dict[str, str], on_line: Callable[[str, str], None],
                  gpu: bool = True, timeout: float = 300.0):
    """`spark-vllm head` on the first simulated Spark and `worker` on the others, the
    head ready; stopped by SIGTERM on the way out (head last)."""
    head_node, *others = net.nodes
    n = len(net.nodes)
    layout = layout_here(net) if gpu else None
    if layout:
        on_line("sim", layout.describe())

    def node_env(i: int) -> dict[str, str]:
        return {**env, **(layout.env(i) if layout else {})}

    mode = () if gpu else ("--simulate",)
    head = NodeProcess(head_node, "head", ("--nodes", str(n), "--wait-timeout", str(timeout), *mode), node_env(0), workdir)
    workers = [NodeProcess(node, "worker", ("--head-ip", head_node.ip, "--join-timeout", str(timeout), *mode),
                           node_env(i), workdir) for i, node in enumerate(others, 1)]
    try:
        ready = head.wait_for("head ready", timeout, watch=tuple(workers))
        on_line("sim", f"head ready after {ready:.1f} s")
        yield head, workers
    finally:
        codes = [(p.role, p.stop()) for p in (*workers, head)]
        on_line("sim", "stopped: " + ", ".join(f"{role} exit {code}" for role, code in codes))
