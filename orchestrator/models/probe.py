"""Each node's GPU memory, read on the node (a Ray task pinned there).

A DGX Spark's GPU has no memory of its own: nvidia-smi reports its memory as
`[N/A]`, and CUDA reports the whole unified pool, which is the host's MemTotal.
So: nvidia-smi's figure where it has one (a discrete GPU), else MemTotal, marked
unified (the OS and CPU side share it; memory.HOST_RESERVE keeps their part).
"""

from __future__ import annotations

import subprocess

from ..cluster.nodes import ClusterState


def parse_nvidia_smi(text: str) -> int | None:
    """Pure: `memory.total` in MiB (first GPU) -> bytes; None for `[N/A]` (unified memory)."""
    first = (text.strip().splitlines() or [""])[0].strip()
    return int(float(first)) << 20 if first.replace(".", "", 1).isdigit() else None


def parse_meminfo(text: str) -> int | None:
    """Pure: /proc/meminfo's MemTotal -> bytes."""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


def gpu_memory_here() -> dict:
    """{"gpu_memory": bytes or None (no NVIDIA GPU), "unified": bool} for this node."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {"gpu_memory": None, "unified": False}
    discrete = parse_nvidia_smi(out)
    if discrete is not None:
        return {"gpu_memory": discrete, "unified": False}
    with open("/proc/meminfo") as f:
        return {"gpu_memory": parse_meminfo(f.read()), "unified": True}


def gpu_memory_of(state: ClusterState, timeout: float = 60.0) -> tuple[int | None, bool]:
    """The smallest GPU memory over the cluster's GPU nodes (None if any cannot say),
    and whether any of them is unified."""
    import ray

    from .fetch import on_node

    reports = ray.get([on_node(gpu_memory_here, n) for n in state.gpu_nodes], timeout=timeout)
    sizes = [r["gpu_memory"] for r in reports]
    return (None if None in sizes or not sizes else min(sizes)), any(r["unified"] for r in reports)
