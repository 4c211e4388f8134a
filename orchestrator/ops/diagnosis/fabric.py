"""The fabric bandwidth test: a torch.distributed all-reduce between the Sparks.

What Spark owners run by hand with nccl-tests, on the cluster spark-vllm formed: one
Ray actor pinned to each GPU node joins a process group over the planned interface
(the node's NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME, inherited from its raylet;
MASTER_ADDR the head's fabric address), all-reduces a sweep of message sizes and
times them. NCCL where every node has a GPU, Gloo otherwise (the CPU simulation).

Pure parts (sizes, bandwidth arithmetic, the verdict) are plain functions over
values; `run_fabric_test` is the thin Ray part, and `AllReduceRank` runs on the nodes.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass

from ...cluster.nodes import ClusterState, NodeInfo
from ...errors import FabricTestFailed, UsageError

MiB = 1 << 20
DEFAULT_SIZES = tuple(s * MiB for s in (1, 4, 16, 64, 256))
# A Spark's ConnectX-7 port: 200 Gb/s = 25 GB/s. NVIDIA's playbook treats about
# 22 GB/s of all-reduce bus bandwidth between two Sparks as healthy: 88 % of the link.
SPARK_LINK_MBPS = 200000
HEALTHY_FRACTION = 22.0 / 25.0
DEFAULT_PORT = 29511
SIZE_UNITS = {"": 1, "K": 1 << 10, "M": MiB, "G": 1 << 30}


def parse_size(text: str) -> int:
    """'64M' -> bytes (K, M, G are powers of 1024); at least 4 bytes (one fp32)."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)I?B?\s*", text.upper())
    if not m or int(m.group(1)) * SIZE_UNITS[m.group(2)] < 4:
        raise UsageError(f"size {text!r} is not a byte count of at least 4", "e.g. 1M, 64M, 1G")
    return int(m.group(1)) * SIZE_UNITS[m.group(2)]


def size_label(n: int) -> str:
    for unit in ("G", "M", "K"):
        if n >= SIZE_UNITS[unit] and n % SIZE_UNITS[unit] == 0:
            return f"{n // SIZE_UNITS[unit]}{unit}"
    return f"{n}B"


def bus_factor(world: int) -> float:
    """All-reduce bus bandwidth = algorithm bandwidth x 2(n-1)/n (nccl-tests' definition)."""
    return 2 * (world - 1) / world if world > 1 else 0.0


@dataclass(frozen=True)
class Measurement:
    size_bytes: int
    seconds: float  # one all-reduce, the slowest rank's mean

    def algbw(self) -> float:
        """GB/s (10^9 bytes) of the message per all-reduce."""
        return self.size_bytes / self.seconds / 1e9

    def busbw(self, world: int) -> float:
        return self.algbw() * bus_factor(world)


@dataclass(frozen=True)
class Verdict:
    peak_busbw: float  # GB/s
    link_gbps: float | None  # GB/s the link carries, None: unknown
    healthy_busbw: float | None
    status: str  # "healthy", "below", "unknown" (no link speed), "not-comparable" (Gloo)
    note: str

    def to_json(self) -> dict:
        return {"peak_busbw_gbps": round(self.peak_busbw, 3), "link_gbps": self.link_gbps,
                "healthy_busbw_gbps": self.healthy_busbw, "status": self.status, "note": self.note}


def link_gbytes(speed_mbps: int | None) -> float | None:
    return speed_mbps / 8000 if speed_mbps else None


def verdict(rows: tuple[Measurement, ...], world: int, backend: str, speed_mbps: int | None) -> Verdict:
    """The peak bus bandwidth against the link: healthy at >= 88 % of its line rate."""
    peak = max((m.busbw(world) for m in rows), default=0.0)
    link = link_gbytes(speed_mbps)
    healthy = round(link * HEALTHY_FRACTION, 2) if link else None
    if backend != "nccl":
        return Verdict(peak, link, healthy, "not-comparable",
                       f"{backend} moves tensors through the CPU over TCP: a check that the fabric "
                       "carries traffic, not a measure of what NCCL gets from it")
    if link is None:
        return Verdict(peak, None, None, "unknown", "the link speed is unknown (no speed in sysfs)")
    if peak >= healthy:
        return Verdict(peak, link, healthy, "healthy", f"{peak:.1f} GB/s bus bandwidth of {link:g} GB/s line rate")
    return Verdict(peak, link, healthy, "below",
                   f"{peak:.1f} GB/s bus bandwidth, below the {healthy:g} GB/s a healthy {link * 8:g} Gb/s "
                   f"link gives: {BELOW_FIXES}")


# What users found behind a slow Spark fabric (about 3 GB/s before, 23.7 GB/s after).
BELOW_FIXES = ("both twins of the port in NCCL_IB_HCA (e.g. rocep1s0f1,roceP2p1s0f1), MTU 9000 on both Sparks, "
               "the QSFP cable (reseat it; `spark-vllm doctor` shows the negotiated speed), and the NCCL build "
               "(try --nccl-library system, DGX OS's own)")


@dataclass(frozen=True)
class FabricReport:
    backend: str
    world: int
    nodes: tuple[str, ...]  # node IPs, rank order
    master: str
    rows: tuple[Measurement, ...]
    verdict: Verdict
    ranks: tuple[dict, ...]  # what each rank saw (interface variables, device, versions)

    def to_json(self) -> dict:
        return {
            "backend": self.backend, "world_size": self.world, "nodes": list(self.nodes), "master": self.master,
            "results": [{"size_bytes": m.size_bytes, "size": size_label(m.size_bytes),
                         "time_us": round(m.seconds * 1e6, 1), "algbw_gbps": round(m.algbw(), 3),
                         "busbw_gbps": round(m.busbw(self.world), 3)} for m in self.rows],
            "verdict": self.verdict.to_json(), "ranks": list(self.ranks),
        }


def combine(per_rank: list[list[float]], sizes: tuple[int, ...]) -> tuple[Measurement, ...]:
    """One row per size: the slowest rank's time (an all-reduce ends when all have it)."""
    return tuple(Measurement(size, max(times[i] for times in per_rank)) for i, size in enumerate(sizes))


def pick_backend(requested: str, cuda_per_node: list[bool]) -> str:
    if requested == "auto":
        return "nccl" if cuda_per_node and all(cuda_per_node) else "gloo"
    if requested == "nccl" and not all(cuda_per_node):
        raise UsageError("--backend nccl, but not every node sees a CUDA GPU", "use --backend gloo, or auto")
    return requested


# --- on each node --------------------------------------------------------------------
# Variables that decide which interface and transport the process group uses.
SHOWN_VARS = ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "NCCL_IB_HCA", "NCCL_IB_DISABLE", "NCCL_P2P_DISABLE",
              "NCCL_SHM_DISABLE", "NCCL_NVLS_ENABLE", "NCCL_IB_GID_INDEX", "NCCL_IB_ROCE_VERSION_NUM",
              "NCCL_IB_ADDR_FAMILY", "VLLM_NCCL_SO_PATH", "LD_PRELOAD", "CUDA_VISIBLE_DEVICES", "MASTER_ADDR")


# NCCL's own account of the transport it chose, written by each rank to a file of its own.
NCCL_REPORT_ENV = {"NCCL_DEBUG": "INFO", "NCCL_DEBUG_SUBSYS": "INIT,NET"}
NCCL_KEPT_LINES = 200


def nccl_lines(text: str) -> list[str]:
    """The lines of NCCL's debug output worth keeping: versions, networks, channels, warnings."""
    keep = ("NCCL version", "NET/", "Using network", "via ", "WARN", "nNodes", "No device")
    return [ln.strip() for ln in text.splitlines() if "NCCL" in ln and any(k in ln for k in keep)][:NCCL_KEPT_LINES]


def transport_of(lines: list[str]) -> str | None:
    """The inter-node transport NCCL chose, from its INFO lines: the channels' `via
    NET/IB/0` (or `NET/Socket/0`), else `Using network IB` -> NET/IB. None: no report."""
    vias = {m.group(1) for ln in lines if (m := re.search(r"\bvia (NET/[A-Za-z]+)", ln))}
    if vias:
        return ",".join(sorted(vias))
    used = [m.group(1) for ln in lines if (m := re.search(r"Using network (\S+)", ln))]
    return f"NET/{used[-1]}" if used else None


class AllReduceRank:
    """One rank, as a Ray actor on its node (its environment is the raylet's). NCCL is
    told to write its INFO lines to a file of this rank before anything loads it."""

    def __init__(self) -> None:
        import tempfile

        self.report_dir = tempfile.mkdtemp(prefix="spark-vllm-nccl-")
        os.environ.update(NCCL_REPORT_ENV, NCCL_DEBUG_FILE=os.path.join(self.report_dir, "nccl.%p.log"))

    def probe(self) -> dict:
        import torch

        cuda = torch.cuda.is_available()
        return {"cuda": cuda, "device": torch.cuda.get_device_name(0) if cuda else "cpu",
                "torch": torch.__version__,
                "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
                "env": {k: os.environ[k] for k in SHOWN_VARS if k in os.environ}}

    def run(self, rank: int, world: int, master: str, port: int, backend: str, sizes: tuple[int, ...],
            iters: int, warmup: int, timeout_s: float) -> dict:
        """{"times": mean seconds of one all-reduce per size, "nccl": NCCL's report lines};
        checks the sum once."""
        try:
            times = self._run(rank, world, master, port, backend, sizes, iters, warmup, timeout_s)
        except Exception as exc:  # NCCL's own words say why (no device, a refused connection)
            said = self._read_report()[-3:]
            raise RuntimeError(f"{exc}" + (f" | NCCL: {' | '.join(said)}" if said else "")) from exc
        return {"times": times, "nccl": self._read_report()}

    def _read_report(self) -> list[str]:
        import shutil

        text = ""
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(self.report_dir)):
                with open(os.path.join(self.report_dir, name), errors="replace") as f:
                    text += f.read()
        shutil.rmtree(self.report_dir, ignore_errors=True)
        return nccl_lines(text)

    def _run(self, rank: int, world: int, master: str, port: int, backend: str, sizes: tuple[int, ...],
             iters: int, warmup: int, timeout_s: float) -> list[float]:
        from datetime import timedelta

        import torch
        import torch.distributed as dist

        device = torch.device("cuda", 0) if backend == "nccl" else torch.device("cpu")
        if backend == "nccl":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, init_method=f"tcp://{master}:{port}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s))
        try:
            check = torch.ones(1024, device=device)
            dist.all_reduce(check)
            if not bool((check == world).all()):
                raise RuntimeError(f"all-reduce of ones gave {check[0].item()}, not {world}")
            times = []
            for size in sizes:
                x = torch.ones(size // 4, dtype=torch.float32, device=device)
                for _ in range(warmup):
                    dist.all_reduce(x)
                self._sync(device)
                dist.barrier()
                start = time.perf_counter()
                for _ in range(iters):
                    dist.all_reduce(x)
                self._sync(device)
                times.append((time.perf_counter() - start) / iters)
                del x
            return times
        finally:
            dist.destroy_process_group()

    @staticmethod
    def _sync(device) -> None:
        if device.type == "cuda":
            import torch

            torch.cuda.synchronize(device)


# --- the driver ----------------------------------------------------------------------
@dataclass(frozen=True)
class FabricOptions:
    sizes: tuple[int, ...] = DEFAULT_SIZES
    iters: int = 20
    warmup: int = 5
    backend: str = "auto"  # auto, nccl, gloo
    port: int = DEFAULT_PORT
    timeout_s: float = 300.0
    gloo_sizes: tuple[int, ...] | None = None  # where Gloo runs instead (the CPU simulation); None: sizes

    def sizes_for(self, backend: str) -> tuple[int, ...]:
        return self.gloo_sizes if backend == "gloo" and self.gloo_sizes else self.sizes


def ranks_of(state: ClusterState) -> tuple[NodeInfo, ...]:
    """Every alive GPU node, the head first (rank 0 on the head, where MASTER_ADDR is)."""
    nodes = state.gpu_nodes
    if len(nodes) < 2:
        raise FabricTestFailed(f"the fabric test needs two GPU nodes; the cluster has {state.summary()}",
                               "start the other Spark with `spark-vllm worker --head-ip HEAD`")
    return tuple(sorted(nodes, key=lambda n: (not n.head, n.ip)))


def run_fabric_test(state: ClusterState, master: str, opts: FabricOptions,
                    speed_mbps: int | None) -> FabricReport:
    """On a connected Ray driver: one actor per GPU node, pinned, each with that node's GPU."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = ranks_of(state)
    cls = ray.remote(AllReduceRank)
    actors = [cls.options(num_cpus=0, num_gpus=1,
                          scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False)).remote()
              for n in nodes]
    try:
        try:
            probes = ray.get([a.probe.remote() for a in actors], timeout=120)
        except ray.exceptions.GetTimeoutError:
            raise FabricTestFailed("the test actors did not start within 120 s",
                                   "are the GPUs busy? a running `spark-vllm serve` holds them") from None
        backend = pick_backend(opts.backend, [p["cuda"] for p in probes])
        sizes = opts.sizes_for(backend)
        refs = [a.run.remote(rank, len(nodes), master, opts.port, backend, sizes, opts.iters, opts.warmup,
                             opts.timeout_s) for rank, a in enumerate(actors)]
        try:
            per_rank = ray.get(refs, timeout=opts.timeout_s + 60)
        except ray.exceptions.GetTimeoutError:
            raise FabricTestFailed(f"the all-reduce did not finish within {opts.timeout_s + 60:g} s",
                                   "check that the nodes reach each other on the fabric port") from None
        except ray.exceptions.RayTaskError as exc:
            last = str(exc.cause if exc.cause is not None else exc).strip().splitlines()[-1:]
            raise FabricTestFailed(f"the all-reduce failed: {' '.join(last)}",
                                   "run with NCCL_DEBUG=INFO set on every node for NCCL's own account") from None
    finally:
        for a in actors:
            ray.kill(a)
    rows = combine([r["times"] for r in per_rank], sizes)
    ranks = tuple({"rank": r, "ip": n.ip, **p, "transport": transport_of(out["nccl"]) if backend == "nccl"
                   else f"{backend}/TCP", "nccl_report": out["nccl"]}
                  for r, (n, p, out) in enumerate(zip(nodes, probes, per_rank)))
    return FabricReport(backend, len(nodes), tuple(n.ip for n in nodes), master, rows,
                        verdict(rows, len(nodes), backend, speed_mbps), ranks)
