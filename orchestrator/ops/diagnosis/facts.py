"""What `spark-vllm doctor` looks at, gathered into one plain value.

`Facts` is what the checks (`checks.py`, pure) judge. Each reader here is thin and
never raises: a fact that cannot be read is None ("unknown"), and the check says so.
Nothing here sends traffic beyond the fabric peer and this machine, except the
Hugging Face lookup of a hub model's `gated` flag (one HTTPS request, skipped offline).
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import platform
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from importlib import util as importlib_util
from pathlib import Path
from typing import Mapping

from ...net.discovery import Discovery

# Ray's ports on the head (GCS, dashboard/Jobs API, client server), and vLLM's.
RAY_PORTS = (6379, 8265, 10001)
SERVER_PORT = 8000
# Where an ssh daemon listens on a real Spark: a port that answers without a cluster,
# so the peer's MTU can be learned from the TCP handshake.
PROBE_PORTS = (6379, 22)
TCP_HEADERS = 52  # IPv4 + TCP + timestamps: MTU - MSS as Linux reports it
TCP_OPTIONS_SLACK = 28  # other TCP options the MSS reading may be short by


@dataclass(frozen=True)
class Gpu:
    name: str
    driver: str
    compute_cap: str | None = None


@dataclass(frozen=True)
class Listener:
    """A TCP socket listening on this machine (in this network namespace)."""

    address: str
    port: int
    process: str  # process name, "" when unknown


@dataclass(frozen=True)
class ModelFacts:
    name: str
    local: bool  # a folder on this machine, not a hub id
    exists: bool  # the folder, or the hub id's files in the HF cache
    size_bytes: int | None  # weights, when known
    gated: bool | None  # hub models: None when the hub cannot be asked


@dataclass(frozen=True)
class Facts:
    discovery: Discovery | None
    discovery_error: str | None = None
    iface: str | None = None  # --iface
    head_ip: str | None = None
    nodes: int = 2
    simulate: bool = False
    peer: str | None = None  # "open", "refused" (reachable, nothing listens) or "unreachable"
    peer_mss: int | None = None  # TCP MSS agreed with the peer: its MTU shows through
    machine: str = ""
    gpus: tuple[Gpu, ...] | None = None  # None: nvidia-smi missing or failing
    driver_cuda: str | None = None  # "13.0", what the driver supports
    torch_cuda: str | None = None  # what torch was built for (None: CPU build or no torch)
    meminfo: Mapping[str, int] = field(default_factory=dict)  # kB, /proc/meminfo
    drop_caches_asked: bool = False
    dropped_caches: bool = False
    model: ModelFacts | None = None
    hf_token: bool = False
    disk_free_bytes: int | None = None  # where the model lives or would be downloaded
    ports_busy: Mapping[int, str] = field(default_factory=dict)  # port -> who holds it
    own_node_running: bool = False  # a spark-vllm node of this machine holds the ports
    listeners: tuple[Listener, ...] = ()
    docker_socket: str | None = None  # path; None: no Docker engine here
    docker_access: bool = False
    docker_group_member: bool = False
    is_root: bool = False
    auth_enabled: bool = True
    token_file: str | None = None
    token_present: bool = False
    cluster_up: bool = False  # a Ray GCS answers at the head
    cluster_nodes: int | None = None  # alive GPU nodes
    versions: Mapping[str, Mapping[str, str | None]] | None = None  # node ip -> report
    cluster_error: str | None = None
    server_health: str | None = None
    nccl: Mapping | None = None  # this machine's NcclReport.to_json(); None: not read
    fabric_check: Mapping | None = None  # the last serve fabric check in this machine's run record


# --- readers -----------------------------------------------------------------------
def probe(host: str, port: int, timeout: float = 2.0) -> tuple[str, int | None]:
    """("open", mss) / ("refused", None) / ("unreachable", None). A refusal proves the
    peer is there: its kernel answered."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((host, port))
        except ConnectionRefusedError:
            return "refused", None
        except OSError:
            return "unreachable", None
        return "open", s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def speaks_grpc(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether host:port is an HTTP/2 (gRPC) server, as Ray's GCS is: it answers the
    connection preface with a SETTINGS frame. Anything else on Ray's port must not
    send the doctor into Ray's connection retries."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(HTTP2_PREFACE)
            head = s.recv(9)
    except OSError:
        return False
    return len(head) >= 4 and head[3] == 0x4


def probe_peer(host: str, ports: tuple[int, ...] = PROBE_PORTS) -> tuple[str, int | None]:
    result = ("unreachable", None)
    for port in ports:
        result = probe(host, port)
        if result[0] == "open":
            return result
        if result[0] == "unreachable":
            return result
    return result


def parse_meminfo(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        m = re.match(r"(\w+):\s+(\d+)", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def read_meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    try:
        return parse_meminfo(Path(path).read_text())
    except OSError:
        return {}


def drop_caches() -> bool:
    """The playbook's `sync; echo 3 > /proc/sys/vm/drop_caches` (root only)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def parse_nvidia_smi(query: str, header: str) -> tuple[tuple[Gpu, ...], str | None]:
    """`nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader`
    and the plain `nvidia-smi` banner (for "CUDA Version: 13.0")."""
    gpus = []
    for line in query.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[0]:
            gpus.append(Gpu(parts[0], parts[1], parts[2] if len(parts) > 2 else None))
    m = re.search(r"CUDA Version:\s*([\d.]+)", header)
    return tuple(gpus), m.group(1) if m else None


def read_gpus() -> tuple[tuple[Gpu, ...] | None, str | None]:
    if not shutil.which("nvidia-smi"):
        return None, None
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        h = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None, None
    if q.returncode:
        return None, None
    return parse_nvidia_smi(q.stdout, h.stdout)


def torch_cuda_version() -> str | None:
    """torch's CUDA build, read from its version.py without importing torch (seconds)."""
    spec = importlib_util.find_spec("torch")
    if not spec or not spec.origin:
        return None
    try:
        text = Path(spec.origin).with_name("version.py").read_text()
    except OSError:
        return None
    m = re.search(r"^cuda\b[^=]*=\s*['\"]([\d.]+)['\"]", text, re.M)
    return m.group(1) if m else None


def hf_token_present(environ: Mapping[str, str]) -> bool:
    if environ.get("HF_TOKEN") or environ.get("HUGGING_FACE_HUB_TOKEN"):
        return True
    with contextlib.suppress(Exception):
        from huggingface_hub import get_token

        return bool(get_token())
    return False


WEIGHTS = ("*.safetensors", "*.bin", "*.gguf", "*.pt")


def folder_weights(path: Path) -> int:
    return sum(p.stat().st_size for pattern in WEIGHTS for p in path.glob(pattern) if p.is_file())


def read_model(model: str, environ: Mapping[str, str]) -> tuple[ModelFacts, str]:
    """The model's facts and the folder whose filesystem must hold it."""
    from ...serve.engine import looks_like_path

    if looks_like_path(model):
        path = Path(model).expanduser()
        exists = (path / "config.json").exists()
        return ModelFacts(model, True, exists, folder_weights(path) if exists else None, False), \
            str(path if path.exists() else path.parent)
    from huggingface_hub import constants, scan_cache_dir

    cache = constants.HF_HUB_CACHE
    size = None
    with contextlib.suppress(Exception):
        for repo in scan_cache_dir(cache).repos:
            if repo.repo_id == model and repo.repo_type == "model":
                size = repo.size_on_disk
    gated = None
    offline = (environ.get("HF_HUB_OFFLINE") or "").lower() in ("1", "true", "yes")
    if not offline:
        with contextlib.suppress(Exception):
            from huggingface_hub import model_info

            gated = bool(model_info(model, timeout=5).gated)
    return ModelFacts(model, False, size is not None, size, gated), cache


def disk_free(path: str) -> int | None:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    with contextlib.suppress(OSError):
        return shutil.disk_usage(p).free
    return None


def busy_ports(ip: str, ports: tuple[int, ...]) -> dict[int, str]:
    """Ports that cannot be bound on `ip` (or on every address), with who holds them."""
    owners = {lst.port: lst.process for lst in listeners()}
    busy = {}
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind((ip, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    busy[port] = owners.get(port, "") or "another process"
    return busy


def listeners() -> tuple[Listener, ...]:
    import psutil

    found = []
    with contextlib.suppress(psutil.Error, OSError):
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr:
                name = ""
                with contextlib.suppress(psutil.Error, TypeError, ValueError):
                    name = psutil.Process(c.pid).name() if c.pid else ""
                found.append(Listener(c.laddr.ip, c.laddr.port, name))
    return tuple(sorted(set(found), key=lambda x: (x.port, x.address)))


def docker_facts(environ: Mapping[str, str]) -> tuple[str | None, bool, bool]:
    host = environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return host, True, True  # a remote engine: the socket's access is not ours to judge
    path = host[len("unix://"):]
    if not os.path.exists(path):
        return None, False, False
    access = os.access(path, os.R_OK | os.W_OK)
    member = False
    with contextlib.suppress(KeyError):
        member = grp.getgrnam("docker").gr_gid in os.getgroups()
    return path, access, member


def machine() -> str:
    return platform.machine()
