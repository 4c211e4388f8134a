"""Which spark-vllm node process runs on this machine, for `spark-vllm stop` and
`status`: they find the node from its record, as `ray status` finds Ray, with no
options.

One small JSON file per node, keyed by the node's fabric address (two simulated
Sparks share one /tmp), in SPARK_VLLM_RUN_DIR or /tmp/spark-vllm. A record holds
where things are (addresses, interface, the token file's path), never a secret.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Iterable, Mapping

DEFAULT_RUN_DIR = "/tmp/spark-vllm"


@dataclass(frozen=True)
class RunRecord:
    pid: int
    role: str
    node_ip: str
    gcs_address: str
    # "running"; on a serving head "engine-starting" until vLLM answers /health, when
    # vLLM (0.32) loses a SIGTERM, then "serving"; "recovering" after a lost node,
    # "wedged" then "restarting" after a wedged engine (then "engine-starting" again).
    state: str = "running"
    iface: str = ""
    token_file: str | None = None  # the path only
    server_url: str | None = None  # a serving head's http://IP:PORT
    fabric: dict | None = None  # a serving head's fabric check before vLLM started (FabricCheck.to_json)

    @classmethod
    def from_json(cls, data: dict) -> "RunRecord":
        """Fields this version does not know (a newer writer) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def run_dir(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("SPARK_VLLM_RUN_DIR") or DEFAULT_RUN_DIR)


def record_path(directory: Path, node_ip: str) -> Path:
    return directory / f"node-{node_ip}.json"


def write_record(directory: Path, record: RunRecord) -> Path:
    """Atomically (`stop` may read it at any moment). The fabric check stays with the
    record of its process across state changes (a record without one keeps the last)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = record_path(directory, record.node_ip)
    if record.fabric is None:
        previous = read_record(directory, record.node_ip)
        if previous is not None and previous.pid == record.pid and previous.fabric:
            record = replace(record, fabric=previous.fabric)
    tmp = path.with_suffix(f".{record.pid}.tmp")
    tmp.write_text(json.dumps(asdict(record)))
    tmp.replace(path)
    return path


def read_record(directory: Path, node_ip: str) -> RunRecord | None:
    try:
        return RunRecord.from_json(json.loads(record_path(directory, node_ip).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def record_fabric(directory: Path, node_ip: str, fabric: dict) -> None:
    """Add the fabric check to this node's record (none when attached: no record)."""
    record = read_record(directory, node_ip)
    if record is not None:
        write_record(directory, replace(record, fabric=fabric))


def remove_record(directory: Path, node_ip: str, pid: int) -> None:
    path = record_path(directory, node_ip)
    try:
        if json.loads(path.read_text()).get("pid") == pid:
            path.unlink()
    except (OSError, ValueError):
        pass


def records_for(directory: Path, addresses: Iterable[str]) -> list[RunRecord]:
    """Records of nodes on these addresses whose process still runs."""
    records = (read_record(directory, ip) for ip in addresses)
    return [rec for rec in records if rec is not None and pid_alive(rec.pid)]


def local_node(records: list[RunRecord]) -> RunRecord | None:
    """The record `status` reads: this machine's head if it runs one, else its worker."""
    return min(records, key=lambda r: r.role != "head", default=None)


def wait_while_starting(directory: Path, record: RunRecord, timeout: float, poll: float = 0.5) -> RunRecord:
    """Until the record leaves "engine-starting" (or its process ends, or `timeout`)."""
    deadline = time.monotonic() + timeout
    while record.state == "engine-starting" and pid_alive(record.pid) and time.monotonic() < deadline:
        time.sleep(poll)
        record = read_record(directory, record.node_ip) or record
    return record


def pid_alive(pid: int) -> bool:
    import psutil

    return psutil.pid_exists(pid)


def terminate(pid: int, timeout: float = 60.0) -> bool:
    """SIGTERM, wait up to `timeout`, then SIGKILL it and every process under it (vLLM
    0.32 does not act on SIGTERM while its engine builds). True when it stopped
    gracefully."""
    import psutil

    try:
        tree = [psutil.Process(pid)]
        tree += tree[0].children(recursive=True)
        tree[0].terminate()
    except psutil.NoSuchProcess:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid) or _is_zombie(pid):
            return True
        time.sleep(0.2)
    for proc in tree:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(tree, timeout=10)
    return False


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return False
