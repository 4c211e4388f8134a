"""`spark-vllm doctor`: gather this machine's facts, run the checks, report.

Gathering is the only effectful part (netlink, sysfs, /proc, a TCP probe of the
peer, nvidia-smi, port binds, the Docker socket and, when a cluster already runs,
Ray); the judgement is `checks.run_checks`, pure.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping

from ...cluster import nccl, runstate
from ...cluster.auth import plan_auth
from ...errors import SparkVllmError
from ...net.discovery import discover
from ...net.plan import check_ipv4
from ...net.selection import choose_interface
from . import facts as fx
from .checks import FAIL, Check, run_checks


@dataclass(frozen=True)
class DoctorRequest:
    sysfs_root: str = "/sys"
    iface: str | None = None
    head_ip: str | None = None
    model: str | None = None
    nodes: int = 2
    ray_port: int = 6379
    simulate: bool = False
    drop_caches: bool = False
    token_file: str | None = None
    no_auth: bool = False


@dataclass(frozen=True)
class Report:
    checks: tuple[Check, ...]

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == FAIL)

    def to_json(self) -> dict:
        return {"ok": not self.failed, "checks": [c.to_json() for c in self.checks]}


def gather(req: DoctorRequest, environ: Mapping[str, str] = os.environ) -> fx.Facts:
    head_ip = check_ipv4(req.head_ip)
    f = fx.Facts(discovery=None, iface=req.iface, head_ip=head_ip, nodes=req.nodes, simulate=req.simulate,
                 machine=fx.machine(), is_root=os.geteuid() == 0, torch_cuda=fx.torch_cuda_version(),
                 hf_token=fx.hf_token_present(environ))
    node_ip = None
    try:
        found = discover(req.sysfs_root)
        f = replace(f, discovery=found)
        node_ip = choose_interface(found.interfaces, req.iface, head_ip, found.sysfs_root).address
    except SparkVllmError as exc:
        f = f if f.discovery else replace(f, discovery_error=str(exc))  # a choice error: the checks say it
    if head_ip and head_ip != node_ip:
        state, mss = fx.probe_peer(head_ip, (req.ray_port, 22))
        f = replace(f, peer=state, peer_mss=mss)
    dropped = fx.drop_caches() if req.drop_caches else False
    gpus, driver_cuda = (None, None) if req.simulate else fx.read_gpus()
    f = replace(f, gpus=gpus, driver_cuda=driver_cuda, meminfo=fx.read_meminfo(), dropped_caches=dropped,
                drop_caches_asked=req.drop_caches)
    if req.model:
        model, where = fx.read_model(req.model, environ)
        f = replace(f, model=model, disk_free_bytes=fx.disk_free(where))
    addresses = [a for i in (f.discovery.interfaces if f.discovery else ()) for a in i.addresses]
    records = runstate.records_for(runstate.run_dir(environ), addresses)
    own = bool(records)
    f = replace(f, nccl=nccl.node_report(environ).to_json(),
                fabric_check=next((r.fabric for r in records if r.fabric), None))
    bind_ip = node_ip or "0.0.0.0"
    docker_socket, access, member = fx.docker_facts(environ)
    auth = plan_auth(environ, req.token_file, req.no_auth)
    f = replace(f, own_node_running=own, ports_busy=fx.busy_ports(bind_ip, (*fx.RAY_PORTS, fx.SERVER_PORT)),
                listeners=fx.listeners(), docker_socket=docker_socket, docker_access=access,
                docker_group_member=member, auth_enabled=auth.enabled, token_file=auth.token_file,
                token_present=token_present(auth.token_file))
    gcs_host = head_ip or node_ip
    if gcs_host and fx.speaks_grpc(gcs_host, req.ray_port):
        f = replace(f, **cluster_facts(gcs_host, req, node_ip, auth))
    return f


def token_present(path: str | None) -> bool:
    try:
        return bool(path and Path(path).read_text().strip())
    except OSError:
        return False


def cluster_facts(host: str, req: DoctorRequest, node_ip: str | None, auth) -> dict:
    """Nodes and versions from the running cluster, as a Ray driver (needs the token)."""
    from ...cluster import ray_node, versions
    from ...serve.health import health_state

    out: dict = {"cluster_up": True, "server_health": health_state(f"http://{host}:{fx.SERVER_PORT}/health")}
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "10")  # bounded, should the GCS die meanwhile
    try:
        os.environ.update(auth.env)
        ray_node.connect_driver(f"{host}:{req.ray_port}", node_ip, quiet=True)
        state = ray_node.cluster_state(req.nodes)
        out["cluster_nodes"] = len(state.gpu_nodes)
        out["versions"] = versions.collect_reports(state, timeout=60)
    except SparkVllmError as exc:
        out["cluster_error"] = exc.message
    finally:
        with contextlib.suppress(Exception):
            import ray

            ray.shutdown()
    return out


def run_doctor(req: DoctorRequest, environ: Mapping[str, str] = os.environ) -> Report:
    return Report(tuple(run_checks(gather(req, environ))))
