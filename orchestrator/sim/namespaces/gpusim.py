"""The GPU simulation: simulated Sparks on one multi-GPU Linux machine, one real GPU each.

The namespaces and the veth are the CPU simulation's; what changes is that nodes run
without `--simulate` (Ray detects the GPU, vLLM runs its CUDA engine) and each gets
the variables below. They are what two real Sparks would NOT need: one GPU per
"Spark" (CUDA_VISIBLE_DEVICES), and NCCL kept off the paths that two GPUs of one
host offer (P2P over NVLink/PCIe, shared memory, InfiniBand verbs, NVLink multicast)
so that it takes the veth, as it takes the cable between two Sparks.

`running_nodes` starts `spark-vllm head` and `worker` in the namespaces (the cluster
scenario: status, fabric-test); `demo.serving_cluster(gpu=True)` serves.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from ...errors import SimulationError
from . import netns

# NCCL over the veth only. NCCL_NVLS_ENABLE=0 also keeps NVLink multicast off, which
# on shared multi-GPU hosts can take the GPUs out of service.
NCCL_OVER_VETH = {"NCCL_P2P_DISABLE": "1", "NCCL_SHM_DISABLE": "1", "NCCL_IB_DISABLE": "1", "NCCL_NVLS_ENABLE": "0"}


def gpu_env(index: int) -> dict[str, str]:
    """What the GPU simulation sets for simulated Spark `index` (and nothing else does)."""
    return {"CUDA_VISIBLE_DEVICES": str(index), **NCCL_OVER_VETH}


def describe(nodes: int) -> str:
    """The line the GPU simulation prints: what it sets that two real Sparks would not."""
    gpus = ", ".join(f"node {i} CUDA_VISIBLE_DEVICES={i}" for i in range(nodes))
    nccl = " ".join(f"{k}={v}" for k, v in NCCL_OVER_VETH.items())
    return f"GPU simulation (not needed on real Sparks): {gpus}; {nccl} so that NCCL takes the veth"


def visible_gpus() -> int:
    """GPUs on this machine, from `nvidia-smi -L` (no CUDA initialised in this process)."""
    if not shutil.which("nvidia-smi"):
        return 0
    r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return sum(line.startswith("GPU ") for line in r.stdout.splitlines()) if r.returncode == 0 else 0


def check_gpus(nodes: int) -> None:
    found = visible_gpus()
    if found < nodes:
        raise SimulationError(f"the GPU simulation needs {nodes} GPUs, one a simulated Spark; nvidia-smi lists {found}",
                              "run it on a machine with that many GPUs, or use the CPU simulation (--simulate)")


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
    if gpu:
        on_line("sim", describe(n))

    def node_env(i: int) -> dict[str, str]:
        return {**env, **(gpu_env(i) if gpu else {})}

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
