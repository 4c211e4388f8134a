"""The doctor's checks: pure functions from `Facts` to results.

Each check says pass, warn, fail or skip (not applicable, or a fact that cannot be
learned here), what it saw, and the fix in one line. `playbook` names the row of the
DGX Spark vLLM playbook's troubleshooting tables the check stands for, when it does.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Callable

from ...errors import DiscoveryError
from ...net.discovery import Interface
from ...net.selection import Choice, choose_interface, pci_domain
from .facts import RAY_PORTS, SERVER_PORT, TCP_HEADERS, TCP_OPTIONS_SLACK, Facts

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
GIB = 1 << 30
DISK_MARGIN = 20 * GIB  # room for logs, compile caches and a second model
MEMORY_MARGIN = 1.2  # weights plus activations and CUDA context, before the KV cache
DROP_CACHES = "sudo sh -c 'sync; echo 3 > /proc/sys/vm/drop_caches' (or spark-vllm doctor --drop-caches as root)"
ROW_NODE2 = "Node 2 not visible in Ray cluster"
ROW_GATED = "Cannot access gated repo for URL"
ROW_OOM = "CUDA out of memory"
ROW_CUDA = "CUDA version mismatch errors"
ROW_ARM = "Container startup fails (missing ARM64 image)"
ROW_DOCKER = "`docker` reports permission denied"
ROW_API = "The API does not respond on the head Spark"
ROW_DOWNLOAD = "Model download fails"


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""
    playbook: str = ""

    def to_json(self) -> dict:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix,
                "playbook": self.playbook}


def gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def _choice(f: Facts) -> tuple[Choice | None, str | None]:
    if f.discovery is None:
        return None, f.discovery_error or "interfaces could not be read"
    try:
        return choose_interface(f.discovery.interfaces, f.iface, f.head_ip, f.discovery.sysfs_root), None
    except DiscoveryError as exc:
        return None, str(exc)


# --- network ---------------------------------------------------------------------
def fabric_port(f: Facts) -> Check:
    choice, error = _choice(f)
    if choice is None:
        return Check("fabric port", FAIL, error or "?", "cable the ConnectX-7 port, `ip link set IF up`, give it "
                     "an IPv4 address (netplan), or name it with --iface", ROW_NODE2)
    i = choice.interface
    roce = ",".join(i.roce_devices) or "no RoCE device"
    return Check("fabric port", PASS, f"{i.name} up, {choice.address}, {roce} ({choice.reason})")


def link_speed(f: Facts) -> Check:
    choice, _ = _choice(f)
    if choice is None or choice.interface.speed_mbps is None:
        return Check("link speed", SKIP, "no fabric port or no speed reading")
    speed = choice.interface.speed_mbps
    if speed < 200000:
        return Check("link speed", WARN, f"{choice.name} runs at {speed} Mb/s, not 200000",
                     "reseat the QSFP cable (a Spark-to-Spark link runs at 200 Gb/s)")
    return Check("link speed", PASS, f"{choice.name} at {speed} Mb/s")


def _twin_of(name: str) -> str | None:
    """enp1s0f1np1 <-> enP2p1s0f1np1: the same physical port seen from two PCI domains."""
    if name.startswith("enP2p"):
        return "enp" + name[len("enP2p"):]
    if name.startswith("enp") and pci_domain(name) == 0:
        return "enP2p" + name[len("enp"):]
    return None


def _networks(i: Interface) -> set[ipaddress.IPv4Network]:
    return {ipaddress.IPv4Interface(a).network for a in i.ipv4}


def twin_subnets(f: Facts) -> Check:
    """Each port shows twice; one subnet on both halves confuses the routing (replies
    leave by the other half) and which address the peer must use."""
    choice, _ = _choice(f)
    if choice is None or f.discovery is None:
        return Check("twin port", SKIP, "no fabric port")
    twin = f.discovery.by_name(_twin_of(choice.name) or "")
    if twin is None:
        return Check("twin port", SKIP, f"{choice.name} has no twin interface here")
    shared = _networks(twin) & _networks(choice.interface)
    if twin.up and shared:
        net = ", ".join(map(str, sorted(shared)))
        return Check("twin port", FAIL,
                     f"{choice.name} and its twin {twin.name} are both on {net}: the twin-subnet confusion",
                     f"give {twin.name} its own subnet (the playbook uses 192.168.101.x) or no address")
    state = f"{'up' if twin.up else 'down'}, {', '.join(twin.ipv4) or 'no IPv4'}"
    return Check("twin port", PASS, f"twin {twin.name} ({state}) is on another subnet")


def peer(f: Facts) -> Check:
    choice, _ = _choice(f)
    if not f.head_ip:
        return Check("peer", SKIP, "no --head-ip: this machine is the head (give --head-ip to check the link)")
    if choice is None:
        return Check("peer", FAIL, f"no fabric port to reach {f.head_ip}", "fix the fabric port first", ROW_NODE2)
    if f.head_ip in choice.interface.addresses:
        return Check("peer", SKIP, f"{f.head_ip} is this machine's own address (the head)")
    if not choice.interface.subnet_holds(f.head_ip):
        return Check("peer", FAIL, f"{f.head_ip} is not on {choice.name}'s subnet ({', '.join(choice.interface.ipv4)})",
                     "address both Sparks on one subnet (192.168.100.10/24 and .11/24), or check --iface and "
                     "which port the cable is in", ROW_NODE2)
    if f.peer == "unreachable":
        return Check("peer", FAIL, f"{f.head_ip} does not answer over {choice.name}",
                     "check the QSFP cable, that the other Spark's port is up, and its address", ROW_NODE2)
    how = "its Ray port answers" if f.peer == "open" else "it answers (nothing listens on Ray's port yet)"
    return Check("peer", PASS, f"{f.head_ip} reachable over {choice.name}: {how}")


def mtu(f: Facts) -> Check:
    choice, _ = _choice(f)
    if choice is None or choice.interface.mtu is None:
        return Check("MTU", SKIP, "no fabric port")
    here = choice.interface.mtu
    if not f.head_ip or f.peer_mss is None:
        return Check("MTU", SKIP, f"{choice.name} MTU {here}; the peer's cannot be learned here "
                     "(run doctor on the worker with --head-ip while the head runs)")
    # The MSS in use is the smaller side's: a smaller MTU here than there shows on the
    # other Spark's doctor, not on this one.
    theirs = f.peer_mss + TCP_HEADERS
    if theirs + TCP_OPTIONS_SLACK < here:
        return Check("MTU", FAIL, f"MTU {here} here but about {theirs} at {f.head_ip} (TCP MSS {f.peer_mss})",
                     f"set the same MTU on both Sparks' {choice.name} (netplan `mtu:`)")
    return Check("MTU", PASS, f"MTU {here} on both ends")


JUMBO_MTU = 9000


def jumbo_mtu(f: Facts) -> Check:
    """RoCE over MTU 1500 was measured at about 3 GB/s between two Sparks, 23.7 at 9000."""
    choice, _ = _choice(f)
    if choice is None or choice.interface.mtu is None:
        return Check("MTU 9000", SKIP, "no fabric port")
    here = choice.interface.mtu
    if here < JUMBO_MTU:
        return Check("MTU 9000", WARN, f"{choice.name} has MTU {here}: RoCE gets a fraction of the link "
                     "(about 3 GB/s of all-reduce instead of 23.7 at MTU 9000)",
                     f"set `mtu: 9000` for {choice.name} in netplan on both Sparks (and the switch, if any)")
    return Check("MTU 9000", PASS, f"{choice.name} MTU {here}")


def measured_bandwidth(f: Facts) -> Check:
    """The last fabric check `serve` recorded here against the port's negotiated speed."""
    from .fabric import BELOW_FIXES, HEALTHY_FRACTION
    from .fabriccheck import FabricCheck

    choice, _ = _choice(f)
    if not f.fabric_check:
        return Check("fabric bandwidth", SKIP, "no fabric check recorded on this machine "
                     "(serve runs one before vLLM starts; or `spark-vllm fabric-test`)")
    check = FabricCheck.from_json(dict(f.fabric_check))
    speed = (choice.interface.speed_mbps if choice else None) or check.link_speed_mbps
    if check.backend != "nccl":
        return Check("fabric bandwidth", SKIP, f"{check.busbw_gbps:.2f} GB/s measured with {check.backend} "
                     "(the CPU simulation): not comparable with the link")
    if not speed:
        return Check("fabric bandwidth", SKIP, f"{check.busbw_gbps:.2f} GB/s measured; the link speed is unknown")
    line = speed / 8000
    if check.busbw_gbps < line * HEALTHY_FRACTION:
        return Check("fabric bandwidth", WARN,
                     f"the last check measured {check.busbw_gbps:.2f} GB/s of all-reduce bus bandwidth over a "
                     f"link that negotiated {speed / 1000:g} Gb/s ({line:g} GB/s): "
                     f"{check.busbw_gbps / line:.0%} of it, healthy from {HEALTHY_FRACTION:.0%}", f"check {BELOW_FIXES}")
    return Check("fabric bandwidth", PASS, f"{check.busbw_gbps:.2f} GB/s measured over {speed / 1000:g} Gb/s "
                 f"({check.busbw_gbps / line:.0%} of the line rate)")


# --- GPU and memory ------------------------------------------------------------------
def gpus(f: Facts) -> Check:
    if f.simulate:
        return Check("GPUs", SKIP, "simulation: one simulated GPU per node")
    if not f.gpus:
        return Check("GPUs", FAIL, "no GPU visible (nvidia-smi missing or failing)",
                     "run the container with --gpus all, or install the NVIDIA driver", ROW_NODE2)
    names = ", ".join(sorted({g.name for g in f.gpus}))
    return Check("GPUs", PASS, f"{len(f.gpus)} x {names}, driver {f.gpus[0].driver}, CUDA {f.driver_cuda or '?'}")


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split(".")[:2])


def cuda_versions(f: Facts) -> Check:
    if f.simulate or not f.gpus:
        return Check("CUDA", SKIP, "no GPU driver to compare with" + (f" (torch built for CUDA {f.torch_cuda})"
                                                                       if f.torch_cuda else ""))
    if not f.torch_cuda or not f.driver_cuda:
        return Check("CUDA", WARN, f"driver CUDA {f.driver_cuda or '?'}, torch CUDA {f.torch_cuda or 'none (CPU build)'}",
                     "use the NGC vLLM image, whose torch matches the Spark's driver", ROW_CUDA)
    if _version(f.torch_cuda) > _version(f.driver_cuda):
        return Check("CUDA", FAIL, f"torch needs CUDA {f.torch_cuda} but the driver supports {f.driver_cuda}",
                     "update the driver (DGX OS updates) or use an image built for this CUDA", ROW_CUDA)
    return Check("CUDA", PASS, f"driver CUDA {f.driver_cuda} runs torch's CUDA {f.torch_cuda}")


def nccl_library(f: Facts) -> Check:
    from ...cluster.nccl import NcclReport

    if f.nccl is None:
        return Check("NCCL library", SKIP, "not read")
    report = NcclReport.from_json(f.nccl)
    if report.torch_cuda is None:
        return Check("NCCL library", SKIP, report.summary())
    others = "; ".join(b.describe() for b in report.others)
    also = f"; this machine also has {others}" if others else "; no other NCCL build found on this machine"
    if report.torch is None and report.linkage != "static":
        return Check("NCCL library", WARN, report.summary() + also,
                     "install the NCCL torch was built with, or name one with --nccl-library")
    fix = "if TP hangs inside NCCL, try the other build on every Spark (--nccl-library system|bundled)" \
        if others else ""
    return Check("NCCL library", PASS, report.summary() + also, fix)


def architecture(f: Facts) -> Check:
    if f.machine in ("aarch64", "arm64"):
        return Check("architecture", PASS, f"{f.machine} (the Spark's ARM64)")
    return Check("architecture", SKIP if f.simulate else WARN, f"{f.machine or '?'}, not aarch64: not a DGX Spark",
                 "on a Spark, build and run the arm64 image", ROW_ARM)


def memory(f: Facts) -> Check:
    """Unified memory: the weights must fit beside the page cache, which CUDA does not
    reclaim well (the playbook flushes it)."""
    total, avail, free = (f.meminfo.get(k) for k in ("MemTotal", "MemAvailable", "MemFree"))
    if not avail:
        return Check("memory", SKIP, "/proc/meminfo unreadable")
    avail, free = avail * 1024, (free or 0) * 1024
    flushed = " (page cache flushed)" if f.dropped_caches else \
        " (--drop-caches needs root: not flushed)" if f.drop_caches_asked else ""
    if f.model is None or not f.model.size_bytes:
        return Check("memory", PASS, f"{gib(avail)} available, {gib(free)} free{flushed} (no model size to compare)")
    need = f.model.size_bytes * MEMORY_MARGIN / max(1, f.nodes)
    if avail < need:
        return Check("memory", FAIL, f"{f.model.name} needs about {gib(need)} a node, {gib(avail)} available",
                     "stop what else runs here, lower --max-model-len, or serve a smaller model", ROW_OOM)
    if free < need:
        return Check("memory", WARN, f"{gib(need)} needed a node: {gib(free)} free, the rest held by the page cache",
                     f"flush the page cache: {DROP_CACHES}", ROW_OOM)
    return Check("memory", PASS, f"{gib(need)} needed a node, {gib(free)} free{flushed}")


# --- model ---------------------------------------------------------------------------
def hf_token(f: Facts) -> Check:
    if f.model is None or f.model.local:
        return Check("Hugging Face token", SKIP, "no hub model given (--model)")
    if f.model.gated and not f.hf_token:
        return Check("Hugging Face token", FAIL, f"{f.model.name} is gated and no token is set",
                     "request access on the model's page, then `hf auth login` or set HF_TOKEN", ROW_GATED)
    if f.model.gated is None and not f.model.exists:
        state = "a token is set" if f.hf_token else "no token is set"
        return Check("Hugging Face token", WARN, f"cannot ask the hub whether {f.model.name} is gated; {state}",
                     "check internet access and `hf auth whoami`", ROW_DOWNLOAD)
    return Check("Hugging Face token", PASS, f"{f.model.name}: {'gated, token set' if f.model.gated else 'not gated'}"
                 if f.model.gated is not None else f"{f.model.name} is in the cache")


def model_present(f: Facts) -> Check:
    if f.model is None:
        return Check("model", SKIP, "no --model given")
    if f.model.local and not f.model.exists:
        return Check("model", FAIL, f"{f.model.name} holds no config.json", "point at the model folder")
    if f.model.exists:
        size = f" ({gib(f.model.size_bytes)})" if f.model.size_bytes else ""
        return Check("model", PASS, f"{f.model.name} is here{size}")
    return Check("model", WARN, f"{f.model.name} is not in the Hugging Face cache: vLLM downloads it at start",
                 f"download it first (`hf download {f.model.name}`) on both Sparks")


def disk(f: Facts) -> Check:
    if f.disk_free_bytes is None:
        return Check("disk", SKIP, "no model folder or cache to measure")
    free = f.disk_free_bytes
    if f.model is not None and not f.model.exists and f.model.size_bytes:
        need = f.model.size_bytes
        if free < need:
            return Check("disk", FAIL, f"{gib(free)} free, {f.model.name} needs {gib(need)}",
                         "free space or point HF_HOME at a larger disk", ROW_DOWNLOAD)
    if free < DISK_MARGIN:
        return Check("disk", WARN, f"only {gib(free)} free where models are kept",
                     "free space or point HF_HOME at a larger disk", ROW_DOWNLOAD)
    return Check("disk", PASS, f"{gib(free)} free")


# --- this machine --------------------------------------------------------------------
def ray_ports(f: Facts) -> Check:
    if f.cluster_up or f.own_node_running:
        return Check("Ray ports", SKIP, "a spark-vllm/Ray node already runs here")
    busy = {p: who for p, who in f.ports_busy.items() if p in (*RAY_PORTS, SERVER_PORT)}
    if busy:
        held = ", ".join(f"{p} ({who})" for p, who in sorted(busy.items()))
        return Check("Ray ports", FAIL, f"in use: {held}",
                     "stop what holds them (`spark-vllm stop`, `ray stop`, an old container), or pick --ray-port/--port")
    return Check("Ray ports", PASS, f"{', '.join(map(str, (*RAY_PORTS, SERVER_PORT)))} free")


def docker(f: Facts) -> Check:
    if f.docker_socket is None:
        return Check("Docker", SKIP, "no Docker engine here (needed only to run the container)")
    if f.docker_access or f.is_root:
        return Check("Docker", PASS, f"{f.docker_socket} usable")
    fix = ("`sudo usermod -aG docker $USER`, then log in again (or `newgrp docker`)" if not f.docker_group_member
           else "log in again so the docker group applies")
    return Check("Docker", FAIL, f"permission denied on {f.docker_socket}", fix, ROW_DOCKER)


def is_head(f: Facts) -> bool:
    own = {a for i in (f.discovery.interfaces if f.discovery else ()) for a in i.addresses}
    return not f.head_ip or f.head_ip in own


def ray_token(f: Facts) -> Check:
    if not f.auth_enabled:
        return Check("Ray token", WARN, "token authentication off (--no-auth): anyone on the LAN can join",
                     "drop --no-auth on every Spark")
    if f.token_file is None:
        return Check("Ray token", PASS, "token from RAY_AUTH_TOKEN")
    if f.token_present:
        return Check("Ray token", PASS, f"token file {f.token_file} present")
    if is_head(f):
        return Check("Ray token", PASS, f"no token file at {f.token_file} yet: the head creates it at start (0600)")
    return Check("Ray token", FAIL, f"no token file at {f.token_file}",
                 f"copy the head's token file: scp HEAD:{f.token_file} {f.token_file}")


def exposure(f: Facts) -> Check:
    """What listens where: the dashboard (Jobs API: code execution) only on the fabric
    address; Ray's wildcard listeners (it ignores the address) acceptable only with the token."""
    choice, _ = _choice(f)
    fabric = set(choice.interface.addresses) if choice else set()
    dash = [x for x in f.listeners if x.port == 8265]
    if not f.listeners or not f.cluster_up:
        return Check("Ray exposure", SKIP, "no Ray node listens here")
    wrong = [x for x in dash if x.address not in fabric | {"127.0.0.1"}]
    if wrong:
        return Check("Ray exposure", FAIL, f"Ray's dashboard and Jobs API listen on {wrong[0].address}:8265",
                     "leave --dashboard-host at its default (the fabric address)")
    wild = sorted({x.port for x in f.listeners if x.address in ("0.0.0.0", "::")
                   and x.process in ("gcs_server", "raylet")})
    if wild and not f.auth_enabled:
        return Check("Ray exposure", FAIL, f"Ray listens on every interface (ports {wild}) without a token",
                     "drop --no-auth: Ray 2.60 ignores the address, so the token is what keeps the LAN out")
    where = ", ".join(sorted({x.address for x in dash})) or "not running"
    return Check("Ray exposure", PASS, f"dashboard on {where}; Ray's wildcard ports {wild or 'none'} need the token")


# --- the running cluster --------------------------------------------------------------
def cluster_nodes(f: Facts) -> Check:
    if not f.cluster_up:
        return Check("cluster", SKIP, "no Ray cluster answers at the head yet")
    if f.cluster_error:
        return Check("cluster", FAIL, f.cluster_error, "see `spark-vllm status`", ROW_NODE2)
    if f.cluster_nodes is not None and f.cluster_nodes < f.nodes:
        return Check("cluster", FAIL, f"{f.cluster_nodes} of {f.nodes} GPU nodes joined",
                     "on the other Spark run `spark-vllm serve --head-ip HEAD` (or worker); check the cable", ROW_NODE2)
    return Check("cluster", PASS, f"{f.cluster_nodes} of {f.nodes} GPU nodes joined")


def versions_equal(f: Facts) -> Check:
    from ...cluster.versions import compare, skew_table

    if not f.cluster_up or f.versions is None:
        return Check("versions", SKIP, "no running cluster to compare")
    skews = compare(dict(f.versions))
    if skews:
        return Check("versions", FAIL, "differ between nodes: " + skew_table(skews).replace("\n", "; "),
                     "run the same image on every Spark")
    return Check("versions", PASS, f"equal on {len(f.versions)} node(s)")


def server(f: Facts) -> Check:
    if f.server_health is None:
        return Check("server", SKIP, "no server to ask")
    if f.server_health == "healthy":
        return Check("server", PASS, "/health answers 200")
    return Check("server", WARN, f"/health: {f.server_health}",
                 "the engine may still be loading: watch the head's log, then retry", ROW_API)


CHECKS: tuple[Callable[[Facts], Check], ...] = (
    fabric_port, link_speed, twin_subnets, peer, mtu, jumbo_mtu, measured_bandwidth, gpus, cuda_versions,
    nccl_library, architecture, memory,
    model_present, hf_token, disk, ray_ports, docker, ray_token, exposure, cluster_nodes, versions_equal, server,
)


def run_checks(f: Facts) -> list[Check]:
    return [check(f) for check in CHECKS]
