"""Where the CPU goes while a simulated cluster serves: per-process CPU seconds on both
simulated Sparks, grouped by what each process is.

`role` names a process from its command line (pure); `snapshot` reads every process
of the namespaces once (psutil: user + system seconds, its threads, the CPUs it may
run on); `spent` is the difference of two snapshots by node and role. `make bench`
takes one around each serving run at the top concurrency, for both flows, so that a
regression shows where it comes from (see docs/performance.md).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

# First match wins; matched against the whole command line (Ray and vLLM retitle their
# processes: `ray::RayWorkerProc.run`, `VLLM::EngineCore`).
ROLES = (
    ("RayWorkerProc", "vllm-tp-worker"),
    ("RayWorkerWrapper", "vllm-tp-worker"),
    ("EngineCore", "vllm-engine-core"),
    ("launch bench", "bench-client"),
    ("benchmarks.probes", "probe"),
    ("launch serve", "spark-vllm-serve"),
    ("launch head", "spark-vllm-head"),
    ("launch worker", "spark-vllm-worker"),
    ("shell_flow vllm serve", "vllm-serve"),
    ("gcs_server", "ray-gcs"),
    ("raylet", "ray-raylet"),
    ("dashboard/agent.py", "ray-dashboard-agent"),
    ("runtime_env/agent", "ray-runtime-env-agent"),
    ("dashboard.py", "ray-dashboard"),
    ("log_monitor", "ray-log-monitor"),
    ("monitor.py", "ray-monitor"),
    ("ray_process_reaper", "ray-reaper"),
    ("default_worker.py", "ray-idle-worker"),
    ("ray::IDLE", "ray-idle-worker"),
    ("resource_tracker", "mp-resource-tracker"),
    ("spawn_main", "mp-spawned"),
)


def role(cmdline: list[str] | str) -> str:
    """Pure: what a process is, from its command line."""
    text = cmdline if isinstance(cmdline, str) else " ".join(cmdline)
    text = text.replace("-m launch ", "launch ").replace("-m benchmarks.", "benchmarks.")
    return next((name for key, name in ROLES if key in text), "other")


@dataclass(frozen=True)
class ProcSample:
    node: str
    pid: int
    role: str
    cpu_s: float
    threads: int
    cpus: tuple[int, ...]


def snapshot(namespaces: dict[str, str]) -> dict[int, ProcSample]:
    """{pid: sample} for every process of each namespace; `namespaces` maps a node's
    name (its address) to its namespace."""
    import psutil

    from orchestrator.sim.namespaces.nsops import namespace_pids

    out = {}
    for node, ns in namespaces.items():
        for pid in namespace_pids(ns):
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                with p.oneshot():
                    t = p.cpu_times()
                    out[pid] = ProcSample(node, pid, role(p.cmdline()), t.user + t.system, p.num_threads(),
                                          tuple(p.cpu_affinity()))
    return out


def spent(before: dict[int, ProcSample], after: dict[int, ProcSample]) -> dict[str, dict[str, float]]:
    """Pure: CPU seconds spent between two snapshots, {node: {role: seconds}}, with a
    node total. A process born in between counts from zero; one that ended is lost
    (its children's time is not in its parent's own figures)."""
    out: dict[str, dict[str, float]] = {}
    for pid, a in after.items():
        b = before.get(pid)
        d = a.cpu_s - (b.cpu_s if b and b.role == a.role else 0.0)
        node = out.setdefault(a.node, {})
        node[a.role] = round(node.get(a.role, 0.0) + d, 2)
    for node in out.values():
        node["total"] = round(sum(v for k, v in node.items() if k != "total"), 2)
    return out


def children_cpu_s() -> float:
    """CPU seconds of this process's reaped children: a client that ran and exited between
    two snapshots is in neither, but in this."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def with_process(spent_s: dict[str, dict[str, float]], node: str, role_name: str,
                 seconds: float) -> dict[str, dict[str, float]]:
    """Pure: `spent_s` with one more process's seconds added on `node` (and its total)."""
    out = {n: dict(roles) for n, roles in spent_s.items()}
    roles = out.setdefault(node, {"total": 0.0})
    roles[role_name] = round(roles.get(role_name, 0.0) + seconds, 2)
    roles["total"] = round(roles.get("total", 0.0) + seconds, 2)
    return out

