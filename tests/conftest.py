"""Shared fixtures: simulated Sparks (real namespaces, real netlink) and the CLI.

Namespace tests skip with the reason when this machine cannot build namespaces
(not root, no iproute2). Every namespace is named `svtest-<pytest's pid>-...`; the
session ends with a check that none of ours is left.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from orchestrator.sim.namespaces import netns
from orchestrator.net.discovery import Interface
from orchestrator.net.roce import Gid

PREFIX = "svtest"
REPO = Path(__file__).resolve().parents[1]

# Planted secrets. Every test process and every spark-vllm, Ray and vLLM process the
# tests start sees the HF token in its environment; the serve tests run vLLM with the
# API key, the cluster tests with the Ray token. The session ends with a scan of every
# output (see `no_secret_in_any_output`) that must find none of them.
HF_TOKEN = "hf_svtestPLANTEDhftoken7Qm2ZkP9"
API_KEY = "sk-svtest-PLANTED-apikey-4Jd8WqLr"
RAY_TOKEN = "svtestPLANTEDraytoken" + "5c1e" * 10
for _var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
    os.environ[_var] = HF_TOKEN
TOKEN_NAMES = ("auth_token", "ray-token")  # token files the tests or spark-vllm write

# Variables the CLI reads or plans: never inherited from the shell running pytest.
COMM_VARS = (
    "VLLM_HOST_IP", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME",
    "UCX_NET_DEVICES", "OMPI_MCA_btl_tcp_if_include", "MASTER_ADDR",
    "RAY_memory_monitor_refresh_ms", "RAY_worker_niceness", "NCCL_IB_HCA", "NCCL_IB_GID_INDEX",
)
# Planned instead of NCCL_IB_GID_INDEX when the devices' GID indexes disagree.
GID_FALLBACK_VARS = ("NCCL_IB_ROCE_VERSION_NUM", "NCCL_IB_ADDR_FAMILY")


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind():
    """Stale leftovers of killed runs go first; ours must all be gone at the end."""
    if netns.available():
        yield
        return
    netns.cleanup_stale(PREFIX)
    yield
    mine = f"{PREFIX}-{os.getpid()}-"
    assert netns.list_namespaces(mine) == [], "tests left network namespaces behind"
    assert list(Path(tempfile.gettempdir()).glob(mine + "*")) == [], "tests left sysfs trees behind"


# --- the secret scan ----------------------------------------------------------------
CAPTURED: list[str] = []  # pytest's captured output of every test phase


def pytest_runtest_logreport(report):
    CAPTURED.extend(t for t in (report.capstdout, report.capstderr, report.caplog, report.longreprtext) if t)


def scan_for_secrets(secrets: set[str], texts: list, files: list[Path]) -> list[str]:
    """Where any of `secrets` shows up: "output #i" or a file path, with the secret's first
    characters. Token files themselves are skipped."""
    found = []
    for i, text in enumerate(texts):
        text = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
        found += [f"output #{i}: {s[:12]}..." for s in secrets if s in text]
    for path in files:
        if path.name in TOKEN_NAMES or not path.is_file() or path.stat().st_size > 50 << 20:
            continue
        text = path.read_bytes().decode(errors="replace")
        found += [f"{path}: {s[:12]}..." for s in secrets if s in text]
    return found


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_output(tmp_path_factory):
    """Records the output of every `subprocess.run` of the session (the CLI runs), then
    scans it, pytest's captured output, every file under the session's temp folder
    (node logs, served logs) and the Ray session logs written meanwhile, for the planted
    secrets and every token file the run wrote."""
    real_run, outputs, start = subprocess.run, [], time.time()

    def recording_run(*args, **kwargs):
        result = real_run(*args, **kwargs)
        outputs.extend(x for x in (result.stdout, result.stderr) if x)
        return result

    subprocess.run = recording_run
    try:
        yield
    finally:
        subprocess.run = real_run
    base = tmp_path_factory.getbasetemp()
    files = [p for p in base.rglob("*") if p.is_file()]
    secrets = {HF_TOKEN, API_KEY, RAY_TOKEN}
    secrets |= {t for p in files if p.name in TOKEN_NAMES and (t := p.read_text().strip())}
    ray_logs = [p for d in Path(tempfile.gettempdir(), "ray").glob("session_*")
                if d.is_dir() and not d.is_symlink() and d.stat().st_mtime >= start
                for p in d.rglob("*") if p.is_file()]
    leaks = scan_for_secrets(secrets, outputs + CAPTURED, files + ray_logs)
    assert not leaks, "planted secrets found in the output:\n" + "\n".join(leaks[:20])


@pytest.fixture(scope="session", autouse=True)
def planted_ray_token(tmp_path_factory):
    """Token auth is on by default: every spark-vllm the tests start finds the planted
    token through RAY_AUTH_TOKEN_PATH, instead of writing this machine's ~/.ray/auth_token."""
    path = tmp_path_factory.getbasetemp() / "ray-token"
    path.write_text(RAY_TOKEN)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_TOKEN_PATH", str(path))
        yield path


@pytest.fixture(scope="session")
def netns_ok():
    reason = netns.available()
    if reason:
        pytest.skip(f"needs network namespaces: {reason}")


@pytest.fixture
def pair(netns_ok):
    """Two simulated Sparks cabled port to port, MTU 9000 (so a default is not mistaken
    for a reading)."""
    with netns.SimNetwork(nodes=2, prefix=PREFIX, mtu=9000) as net:
        yield net


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in COMM_VARS + GID_FALLBACK_VARS and not k.startswith("SPARK_VLLM_")}
    env.update(extra)
    return env


@pytest.fixture
def cli(tmp_path):
    """Run `python -m launch ARGS` inside a node; `--sysfs-root` is the node's unless
    `sysfs=False`. Run records go to the test's own folder: a node another test run left
    on the same simulated address is not "this machine's". Returns the CompletedProcess."""

    def run(node: netns.SimNode, *args: str, env: dict[str, str] | None = None,
            sysfs: bool = True) -> subprocess.CompletedProcess:
        cmd, *rest = args
        flags = ["--sysfs-root", node.sysfs_root] if sysfs else []
        return node.run(sys.executable, "-m", "launch", cmd, *flags, *rest,
                        env=clean_env(SPARK_VLLM_RUN_DIR=str(tmp_path / "run"), **(env or {})),
                        capture_output=True, text=True, timeout=60, cwd=REPO)

    return run


@pytest.fixture
def make_iface():
    """Plain Interface values for the pure tests, with Spark-like defaults."""

    def make(name: str = "enp1s0f1np1", ipv4: tuple[str, ...] | str = ("192.168.100.10/24",),
             up: bool = True, roce: tuple[str, ...] | str = ("rocep1s0f1",),
             speed: int | None = 200000, mtu: int | None = 1500, state: str | None = None,
             gids: tuple | None = None) -> Interface:
        """`gids` None: the table mlx5 fills for a port with these addresses (RoCE v2
        IPv4 GID at index 3), as the simulated Sparks' sysfs has it."""
        ipv4 = (ipv4,) if isinstance(ipv4, str) else tuple(ipv4)
        roce = (roce,) if isinstance(roce, str) else tuple(roce)
        if gids is None:
            gids = tuple(Gid(dev, n, gid, kind, ndev) for dev in roce for n, (gid, kind, ndev)
                         in sorted(netns.spark_gids(name, 0, ipv4[0].split("/")[0] if ipv4 else None).items()))
        return Interface(
            name=name,
            up=up,
            ipv4=ipv4,
            mtu=mtu,
            speed_mbps=speed,
            roce_devices=roce,
            state=state or ("UP" if up else "DOWN"),
            gids=gids,
        )

    return make


# --- fault scenarios: timings shown at the end of the run, and namespace helpers ---------
TIMINGS: list[str] = []  # "scenario: what took how long", printed whatever -q/-s says


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.section("fault detection and recovery times")
        for line in TIMINGS:
            terminalreporter.write_line(line)


def ns_http(node: netns.SimNode, url: str, body: dict | None = None, timeout: float = 10.0) -> dict:
    """One HTTP request sent from inside a simulated Spark: {"status", "headers",
    "body"}; status 0 when nothing answered."""
    import json

    code = (
        "import json, sys, urllib.request, urllib.error\n"
        "url, body, timeout = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])\n"
        "data = json.dumps(body).encode() if body is not None else None\n"
        "req = urllib.request.Request(url, data, {'Content-Type': 'application/json'})\n"
        "try:\n"
        "    r = urllib.request.urlopen(req, timeout=timeout); out = (r.status, dict(r.headers), r.read())\n"
        "except urllib.error.HTTPError as e:\n"
        "    out = (e.code, dict(e.headers), e.read())\n"
        "except Exception as e:\n"
        "    out = (0, {}, repr(e).encode())\n"
        "print(json.dumps({'status': out[0], 'headers': out[1], 'body': out[2].decode(errors='replace')}))\n"
    )
    r = node.run(sys.executable, "-c", code, url, json.dumps(body), str(timeout), capture_output=True, text=True,
                 timeout=timeout + 30, env=clean_env())
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)
