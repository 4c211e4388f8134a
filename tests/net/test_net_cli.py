"""`spark-vllm net` and `spark-vllm env`, run as a process inside simulated Sparks."""

from __future__ import annotations

import ctypes
import json
import platform
import shlex
import struct
import subprocess
import sys

import pytest

from launch.cli import exit_code_for
from orchestrator import errors

from conftest import COMM_VARS, REPO, clean_env


def assert_cli_error(r, kind: type[errors.SparkVllmError], *words: str) -> str:
    """One line on stderr, no traceback, the exit code EXIT_CODES gives `kind`."""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("spark-vllm: error: ") and "Traceback" not in r.stderr
    assert r.returncode == exit_code_for(kind("")) != 0
    for w in words:
        assert w in lines[0]
    return lines[0]


# --- net ------------------------------------------------------------------------------
def test_net_json_on_a_spark(pair, cli):
    r = cli(pair.nodes[1], "net", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    port = next(i for i in out["interfaces"] if i["name"] == "enp1s0f1np1")
    assert {k: port[k] for k in ("name", "roce_devices", "up", "ipv4", "mtu", "speed_mbps")} == {
        "name": "enp1s0f1np1", "roce_devices": ["rocep1s0f1"], "up": True,
        "ipv4": ["192.168.100.11/24"], "mtu": 9000, "speed_mbps": 200000,
    }
    assert out["chosen"]["name"] == "enp1s0f1np1" and out["chosen"]["ipv4"] == "192.168.100.11"
    assert out["source"] == "netlink"


def test_net_table_marks_the_choice(pair, cli):
    r = cli(pair.nodes[0], "net")
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if "enp1s0f1np1" in line and "rocep1s0f1" in line)
    assert row.startswith("*") and "Up" in row and "192.168.100.10/24" in row and "200000 Mb/s" in row
    assert "chosen: enp1s0f1np1 192.168.100.10" in r.stdout


def test_sysfs_root_and_head_ip_from_the_environment(pair, cli):
    pair.add_twin()
    pair.add_management()
    a = pair.nodes[0]
    env = {"SPARK_VLLM_SYSFS_ROOT": a.sysfs_root, "SPARK_VLLM_HEAD_IP": "192.168.101.11"}
    out = json.loads(cli(a, "net", "--json", sysfs=False, env=env).stdout)
    assert out["chosen"]["name"] == "enP2p1s0f1np1" and out["chosen"]["ipv4"] == "192.168.101.10"
    names = {i["name"]: i["roce_devices"] for i in out["interfaces"]}
    assert names["enP7s7"] == [] and names["enP2p1s0f1np1"] == ["roceP2p1s0f1"]
    # The flag beats the variable.
    out = json.loads(cli(a, "net", "--json", "--head-ip", "192.168.100.11", sysfs=False, env=env).stdout)
    assert out["chosen"]["name"] == "enp1s0f1np1"


def test_iface_from_the_environment(pair, cli):
    pair.add_management()
    r = cli(pair.nodes[0], "net", "--json", env={"SPARK_VLLM_IFACE": "enP7s7"})
    assert json.loads(r.stdout)["chosen"]["name"] == "enP7s7"


def test_management_with_default_route_is_not_chosen(pair, cli):
    pair.add_management()
    out = json.loads(cli(pair.nodes[0], "net", "--json", "--head-ip", "10.20.0.11").stdout)
    assert out["chosen"]["name"] == "enp1s0f1np1"


def test_all_roce_ports_down_still_lists_them(pair, cli):
    a = pair.nodes[0]
    pair.set_link(a, False)
    r = cli(a, "net", "--json")
    out = json.loads(r.stdout)
    assert out["chosen"] is None
    assert next(i for i in out["interfaces"] if i["name"] == "enp1s0f1np1")["up"] is False
    assert_cli_error(r, errors.InterfaceDown, "no RoCE interface is up", "enp1s0f1np1 (rocep1s0f1, Down")


# --- errors -------------------------------------------------------------------------
def test_unknown_iface(pair, cli):
    r = cli(pair.nodes[0], "env", "--iface", "eth9")
    assert_cli_error(r, errors.InterfaceNotFound, "'eth9' does not exist", "candidates: enp1s0f1np1")
    assert r.stdout == ""


def test_down_iface(pair, cli):
    a = pair.nodes[0]
    pair.set_link(a, False)
    assert_cli_error(cli(a, "env", "--iface", "enp1s0f1np1"), errors.InterfaceDown, "enp1s0f1np1 is down")


def test_iface_without_address(pair, cli):
    a = pair.nodes[0]
    pair.remove_address(a)
    assert_cli_error(cli(a, "env", "--iface", "enp1s0f1np1"), errors.InterfaceWithoutAddress, "no IPv4")
    assert_cli_error(cli(a, "env"), errors.InterfaceWithoutAddress, "none has an IPv4 address")


def test_no_roce_device(pair, cli, tmp_path):
    r = cli(pair.nodes[0], "net", "--sysfs-root", str(tmp_path), sysfs=False)
    assert_cli_error(r, errors.NoRdmaInterface, "no RoCE device", "--iface")


def test_bad_head_ip(pair, cli):
    assert_cli_error(cli(pair.nodes[0], "env", "--head-ip", "300.1.1.1"), errors.UsageError, "--head-ip")


# --- env ------------------------------------------------------------------------------
def test_env_shell_evaluated_by_bash(pair, cli):
    b = pair.nodes[1]
    # A value the user set is kept, through the shell's quoting intact.
    odd = "it's $HOME"
    cmd = shlex.join([sys.executable, "-m", "launch", "env", "--shell", "--sysfs-root", b.sysfs_root,
                      "--head-ip", "192.168.100.10"])
    show = " ".join(f'"${v}"' for v in COMM_VARS)
    r = b.run("bash", "-c", f'eval "$({cmd})" && printf "%s\\n" {show}', capture_output=True, text=True,
              env=clean_env(UCX_NET_DEVICES=odd), cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    assert dict(zip(COMM_VARS, r.stdout.splitlines())) == {
        "VLLM_HOST_IP": "192.168.100.11",
        "NCCL_SOCKET_IFNAME": "enp1s0f1np1",
        "GLOO_SOCKET_IFNAME": "enp1s0f1np1",
        "TP_SOCKET_IFNAME": "enp1s0f1np1",
        "UCX_NET_DEVICES": odd,
        "OMPI_MCA_btl_tcp_if_include": "enp1s0f1np1",
        "MASTER_ADDR": "192.168.100.10",
        "RAY_memory_monitor_refresh_ms": "0",
        "RAY_worker_niceness": "0",
        "NCCL_IB_HCA": "rocep1s0f1",
        "NCCL_IB_GID_INDEX": "3",
    }
    assert "UCX_NET_DEVICES" in r.stderr and "--force" in r.stderr  # the kept value is reported


def test_env_json_keeps_user_values_unless_forced(pair, cli):
    a = pair.nodes[0]
    r = cli(a, "env", "--json", env={"GLOO_SOCKET_IFNAME": "eth0"})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    gloo = next(v for v in out["variables"] if v["name"] == "GLOO_SOCKET_IFNAME")
    assert (gloo["value"], gloo["planned"], gloo["source"]) == ("eth0", "enp1s0f1np1", "user")
    assert (out["interface"], out["node_ip"]) == ("enp1s0f1np1", "192.168.100.10")
    assert "GLOO_SOCKET_IFNAME=eth0 was already set" in r.stderr

    r = cli(a, "env", "--json", "--force", env={"GLOO_SOCKET_IFNAME": "eth0"})
    gloo = next(v for v in json.loads(r.stdout)["variables"] if v["name"] == "GLOO_SOCKET_IFNAME")
    assert (gloo["value"], gloo["source"]) == ("enp1s0f1np1", "spark-vllm")
    assert "already set" not in r.stderr


def test_env_table(pair, cli):
    r = cli(pair.nodes[0], "env", env={"MASTER_ADDR": "192.168.100.99"})
    assert r.returncode == 0, r.stderr
    master = next(line for line in r.stdout.splitlines() if line.startswith("MASTER_ADDR"))
    assert "192.168.100.99" in master and "kept (already set)" in master
    assert any(line.startswith("NCCL_IB_HCA") and "rocep1s0f1" in line for line in r.stdout.splitlines())


# --- a sandbox that forbids netlink ------------------------------------------------
SOCKET_SYSCALL = {"x86_64": 41, "aarch64": 198}.get(platform.machine())


def forbid_netlink() -> None:
    """preexec_fn: a seccomp filter refusing socket(AF_NETLINK, ...) with EPERM, as a
    container's seccomp profile can. Inherited across exec by the CLI."""
    ld_nr, ld_arg0 = (0x20, 0, 0, 0), (0x20, 0, 0, 16)  # BPF_LD|W|ABS: seccomp_data.nr, args[0]
    insns = [ld_nr, (0x15, 0, 3, SOCKET_SYSCALL), ld_arg0, (0x15, 0, 1, 16),  # JEQ socket, AF_NETLINK
             (0x06, 0, 0, 0x00050000 | 1), (0x06, 0, 0, 0x7FFF0000)]  # RET ERRNO(EPERM), ALLOW
    code = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *i) for i in insns))

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    prog = Prog(len(insns), ctypes.cast(code, ctypes.c_void_p))
    if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(prog), 0, 0):  # NO_NEW_PRIVS, SECCOMP
        raise OSError(ctypes.get_errno(), "seccomp filter refused")


@pytest.mark.skipif(SOCKET_SYSCALL is None, reason=f"no socket() syscall number for {platform.machine()}")
def test_sandbox_without_netlink_is_a_clean_error(tmp_path):
    """glibc's getifaddrs() opens netlink too, so netifaces cannot stand in under such a
    ban: the CLI must still end with one line and the discovery exit code. (No namespace:
    `ip netns exec` itself needs netlink.)"""
    r = subprocess.run([sys.executable, "-m", "launch", "net", "--json", "--sysfs-root", str(tmp_path)],
                       env=clean_env(), capture_output=True, text=True, timeout=60, cwd=REPO,
                       preexec_fn=forbid_netlink)
    assert_cli_error(r, errors.DiscoveryError, "netlink cannot be opened", "netifaces cannot list interfaces")


@pytest.mark.parametrize("argv", [["env", "--shell", "--json"], ["net", "--bogus"]])
def test_argv_mistakes_exit_2_without_traceback(argv):
    r = subprocess.run([sys.executable, "-m", "launch", *argv], env=clean_env(), capture_output=True,
                       text=True, timeout=60, cwd=REPO)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "error:" in r.stderr.strip().splitlines()[-1]  # argparse puts its usage line first
