"""The fabric check `serve` runs on the formed cluster before vLLM starts.

The most common slow or hanging two-Spark cluster has a fabric NCCL does not use
fully: one twin missing from NCCL_IB_HCA, MTU 1500 (about 3 GB/s instead of 23.7),
a link that negotiated 200 Gb/s but carries a fraction, or NCCL quietly on sockets.
A few seconds of `fabric-test`'s all-reduce (sizes up to 256 MB) shows each of them
before the model loads: the bus bandwidth, and the transport NCCL chose on each rank,
as NCCL itself reports it (its INFO lines, captured in the test's ranks).

`judge` is the verdict, a pure function of the report; `run_check` the thin Ray part.
"""

from __future__ import annotations

import socket
import time
from dataclasses import asdict, dataclass, fields

from ...cluster.nodes import ClusterState
from ...errors import FabricRefused
from . import fabric
from .fabric import MiB, FabricOptions, FabricReport

# NCCL: 16 to 256 MB, five timed rounds each (about a second at 22 GB/s, a few over
# sockets); Gloo (the CPU simulation, two processes on two shared cores): small sizes,
# a figure that shows the path works, in well under a second.
SERVE_CHECK = FabricOptions(sizes=(16 * MiB, 64 * MiB, 256 * MiB), iters=5, warmup=2, timeout_s=60.0,
                            gloo_sizes=(256 << 10, 1 * MiB))
SOCKETS_HINT = ("give NCCL the RDMA devices: in a container --device=/dev/infiniband (or --privileged) and "
                "rdma-core's libibverbs, `ibv_devices` listing the RoCE devices, NCCL_IB_DISABLE unset; "
                "or serve anyway with --no-fabric-check")


@dataclass(frozen=True)
class FabricCheck:
    """What `status`, `/metrics` and `doctor` know of the last check."""

    backend: str  # "nccl" or "gloo"
    busbw_gbps: float  # peak all-reduce bus bandwidth, GB/s
    peak_size: int  # the message size it was reached at, bytes
    transports: tuple[tuple[str, str], ...]  # (node ip, transport: NET/IB, NET/Socket, gloo/TCP, unknown)
    status: str  # healthy, below, unknown, not-comparable, sockets, refused
    level: str  # info, warn, error
    message: str
    hint: str = ""
    link_speed_mbps: int | None = None
    healthy_gbps: float | None = None
    iface: str = ""
    seconds: float = 0.0
    at: float = 0.0  # time.time() of the check

    def to_json(self) -> dict:
        out = asdict(self)
        out["transports"] = {ip: t for ip, t in self.transports}
        return out

    @classmethod
    def from_json(cls, data: dict) -> "FabricCheck":
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["transports"] = tuple((data.get("transports") or {}).items())
        return cls(**data)

    def line(self) -> str:
        """One line for logs and `status`."""
        paths = ", ".join(f"{ip} {t}" for ip, t in self.transports)
        return (f"{self.busbw_gbps:.2f} GB/s all-reduce bus bandwidth ({fabric.size_label(self.peak_size)}, "
                f"{self.backend}: {paths}): {self.status}")


def status_line(recorded: dict | None) -> str:
    """`status`'s line for the check recorded on the head (its run record)."""
    if not recorded:
        return "not checked here (serve checks it before vLLM starts on the head; or `spark-vllm fabric-test`)"
    return FabricCheck.from_json(recorded).line()


def _ib_cause(lines: list[str]) -> str:
    """NCCL's own reason for not using IB, when it gave one."""
    hits = [ln.split("NCCL ", 1)[-1] for ln in lines
            if "NET/IB" in ln or "ibv" in ln.lower() or "No device" in ln or "WARN" in ln]
    return hits[0] if hits else "NCCL found no usable RoCE device"


def judge(report: FabricReport, min_gbps: float | None, iface: str = "", seconds: float = 0.0,
          at: float = 0.0) -> FabricCheck:
    """The verdict. Error: NCCL on sockets where the plan names RoCE devices
    (NCCL_IB_HCA, and NCCL_IB_DISABLE not 1), or the figure below `min_gbps`. Warning:
    NCCL below the health line of the link. Gloo: the figure, no verdict."""
    v = report.verdict
    best = max(report.rows, key=lambda m: m.busbw(report.world), default=None)
    transports = tuple((r["ip"], r.get("transport") or "unknown") for r in report.ranks)
    base = dict(backend=report.backend, busbw_gbps=round(v.peak_busbw, 3), peak_size=best.size_bytes if best else 0,
                transports=transports, link_speed_mbps=int(v.link_gbps * 8000) if v.link_gbps else None,
                healthy_gbps=v.healthy_busbw, iface=iface, seconds=round(seconds, 2), at=at)
    env = [r.get("env", {}) for r in report.ranks]
    roce = any(e.get("NCCL_IB_HCA") for e in env) and not any(e.get("NCCL_IB_DISABLE") == "1" for e in env)
    on_sockets = [ip for ip, t in transports if "NET/Socket" in t]
    if report.backend == "nccl" and roce and on_sockets:
        hca = next(e["NCCL_IB_HCA"] for e in env if e.get("NCCL_IB_HCA"))
        cause = _ib_cause([ln for r in report.ranks for ln in r.get("nccl_report", ())])
        return FabricCheck(**base, status="sockets", level="error",
                           message=f"NCCL runs on sockets (NET/Socket on {', '.join(on_sockets)}) although "
                                   f"NCCL_IB_HCA names RoCE devices ({hca}): {cause}", hint=SOCKETS_HINT)
    if min_gbps is not None and v.peak_busbw < min_gbps:
        fixes = fabric.BELOW_FIXES if report.backend == "nccl" else \
            f"{report.backend} over TCP is what the CPU simulation measures"
        return FabricCheck(**base, status="refused", level="error",
                           message=f"fabric check: {v.peak_busbw:.2f} GB/s all-reduce bus bandwidth, below "
                                   f"--min-fabric-gbps {min_gbps:g}",
                           hint=f"check {fixes}; or lower --min-fabric-gbps")
    level = "warn" if v.status == "below" else "info"
    return FabricCheck(**base, status=v.status, level=level, message=v.note,
                       hint=fabric.BELOW_FIXES if v.status == "below" else "")


def enforce(check: FabricCheck) -> None:
    if check.level == "error":
        raise FabricRefused(check.message, check.hint)


def free_port(host: str = "") -> int:
    """A TCP port free on this machine (the head, where rank 0 listens)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def run_check(state: ClusterState, master: str, speed_mbps: int | None, min_gbps: float | None,
              iface: str = "", options: FabricOptions = SERVE_CHECK) -> FabricCheck:
    """On a connected Ray driver on the head, before vLLM holds the GPUs."""
    from dataclasses import replace

    start = time.monotonic()
    report = fabric.run_fabric_test(state, master, replace(options, port=free_port()), speed_mbps)
    return judge(report, min_gbps, iface, time.monotonic() - start, time.time())
