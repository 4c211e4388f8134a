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
from pathlib import Path

import pytest

from orchestrator.sim import netns
from orchestrator.net.discovery import Interface

PREFIX = "svtest"
REPO = Path(__file__).resolve().parents[1]

# Variables the CLI reads or plans: never inherited from the shell running pytest.
COMM_VARS = (
    "VLLM_HOST_IP", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME",
    "UCX_NET_DEVICES", "OMPI_MCA_btl_tcp_if_include", "MASTER_ADDR",
    "RAY_memory_monitor_refresh_ms", "NCCL_IB_HCA",
)


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
           if k not in COMM_VARS and not k.startswith("SPARK_VLLM_")}
    env.update(extra)
    return env


@pytest.fixture
def cli():
    """Run `python -m launch ARGS` inside a node; `--sysfs-root` is the node's unless
    `sysfs=False`. Returns the CompletedProcess (text)."""

    def run(node: netns.SimNode, *args: str, env: dict[str, str] | None = None,
            sysfs: bool = True) -> subprocess.CompletedProcess:
        cmd, *rest = args
        flags = ["--sysfs-root", node.sysfs_root] if sysfs else []
        return node.run(sys.executable, "-m", "launch", cmd, *flags, *rest,
                        env=clean_env(**(env or {})), capture_output=True, text=True,
                        timeout=60, cwd=REPO)

    return run


@pytest.fixture
def make_iface():
    """Plain Interface values for the pure tests, with Spark-like defaults."""

    def make(name: str = "enp1s0f1np1", ipv4: tuple[str, ...] | str = ("192.168.100.10/24",),
             up: bool = True, roce: tuple[str, ...] | str = ("rocep1s0f1",),
             speed: int | None = 200000, mtu: int | None = 1500, state: str | None = None) -> Interface:
        return Interface(
            name=name,
            up=up,
            ipv4=(ipv4,) if isinstance(ipv4, str) else tuple(ipv4),
            mtu=mtu,
            speed_mbps=speed,
            roce_devices=(roce,) if isinstance(roce, str) else tuple(roce),
            state=state or ("UP" if up else "DOWN"),
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
