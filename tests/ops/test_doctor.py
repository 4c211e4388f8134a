"""`spark-vllm doctor` in simulated Sparks: each failure built for real (a link down,
an address gone, the twin on the same subnet, another MTU at the peer, a port
taken, no RoCE device in sysfs, a slow link), read through netlink and sysfs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO, clean_env

HEAD_IP = "192.168.100.10"


def doctor(cli, node, *args):
    r = cli(node, "doctor", "--simulate", "--json", *args, env={"HF_HUB_OFFLINE": "1"})
    assert "Traceback" not in r.stderr, r.stderr
    out = json.loads(r.stdout)
    failed = [c["name"] for c in out["checks"] if c["status"] == "fail"]
    if failed:
        assert r.returncode == 14 and f"doctor check(s) failed: {', '.join(failed)}" in r.stderr, r.stderr
    else:
        assert r.returncode == 0, r.stderr
    return {c["name"]: c for c in out["checks"]}


def listen(node, port: int) -> subprocess.Popen:
    """A process listening on `port` in the node (what a Ray GCS or sshd would be)."""
    code = (f"import socket, sys, time; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
            f"s.bind(('0.0.0.0', {port})); s.listen(); print('up', flush=True); time.sleep(300)")
    p = node.popen(sys.executable, "-c", code, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "up"
    return p


def test_healthy_pair_and_the_mtu_learned_from_the_peer(pair, cli):
    head, worker = pair.nodes
    got = doctor(cli, worker, "--head-ip", HEAD_IP)
    assert got["fabric port"]["status"] == "pass" and "rocep1s0f1" in got["fabric port"]["detail"]
    assert got["peer"]["status"] == "pass" and "nothing listens" in got["peer"]["detail"]  # a refusal answers
    assert got["MTU"]["status"] == "skip"
    assert got["link speed"]["status"] == "pass"
    sshd = listen(head, 22)  # a port that answers on a real Spark without a cluster
    try:
        got = doctor(cli, worker, "--head-ip", HEAD_IP)
        assert got["MTU"] == {**got["MTU"], "status": "pass", "detail": "MTU 9000 on both ends"}
        subprocess.run(["ip", "-n", head.netns, "link", "set", head.iface, "mtu", "1500"], check=True)
        got = doctor(cli, worker, "--head-ip", HEAD_IP)
        assert got["MTU"]["status"] == "fail" and "MTU 9000 here but about 1500" in got["MTU"]["detail"]
    finally:
        sshd.kill()
        sshd.wait()


def test_link_down(pair, cli):
    pair.set_link(pair.nodes[1], False)
    got = doctor(cli, pair.nodes[1], "--head-ip", HEAD_IP)
    assert got["fabric port"]["status"] == "fail" and "down" in got["fabric port"]["detail"]
    assert got["fabric port"]["playbook"] == "Node 2 not visible in Ray cluster"


def test_no_address_on_the_port(pair, cli):
    pair.remove_address(pair.nodes[1])
    got = doctor(cli, pair.nodes[1], "--head-ip", HEAD_IP)
    assert got["fabric port"]["status"] == "fail" and "IPv4" in got["fabric port"]["detail"]


def test_peer_gone_silent(pair, cli):
    pair.remove_address(pair.nodes[0])  # the head's port is up but nobody answers for .10
    got = doctor(cli, pair.nodes[1], "--head-ip", HEAD_IP)
    assert got["peer"]["status"] == "fail" and f"{HEAD_IP} does not answer" in got["peer"]["detail"]


def test_head_on_another_subnet(pair, cli):
    got = doctor(cli, pair.nodes[1], "--head-ip", "192.168.101.10")
    assert got["peer"]["status"] == "fail" and "not on enp1s0f1np1's subnet" in got["peer"]["detail"]


def test_twin_on_the_same_subnet(pair, cli):
    twins = pair.add_twin(address=False)
    pair.add_address(twins[1], "192.168.100.21/24")
    got = doctor(cli, pair.nodes[1], "--head-ip", HEAD_IP)
    assert got["twin port"]["status"] == "fail" and "twin-subnet confusion" in got["twin port"]["detail"]
    assert "enP2p1s0f1np1" in got["twin port"]["detail"]


def test_twin_on_its_own_subnet_passes(pair, cli):
    pair.add_twin()
    got = doctor(cli, pair.nodes[1], "--head-ip", HEAD_IP)
    assert got["twin port"]["status"] == "pass" and "192.168.101.11/24" in got["twin port"]["detail"]


def test_ray_port_taken(pair, cli):
    head = pair.nodes[0]
    squatter = listen(head, 6379)
    try:
        got = doctor(cli, head)
        assert got["Ray ports"]["status"] == "fail" and "6379 (python" in got["Ray ports"]["detail"]
    finally:
        squatter.kill()
        squatter.wait()


def test_no_roce_device_in_sysfs(pair, cli, tmp_path):
    head = pair.nodes[0]
    empty = tmp_path / "sys"
    (empty / "class" / "infiniband").mkdir(parents=True)
    r = head.run(sys.executable, "-m", "launch", "doctor", "--simulate", "--json", "--sysfs-root", str(empty),
                 capture_output=True, text=True, timeout=60, cwd=REPO, env=clean_env(HF_HUB_OFFLINE="1"))
    got = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert r.returncode == 14 and got["fabric port"]["status"] == "fail"
    assert "no RoCE device" in got["fabric port"]["detail"]


def test_slow_link_from_sysfs(pair, cli):
    head = pair.nodes[0]
    Path(head.sysfs_root, "class", "net", head.iface, "speed").write_text("100000\n")
    got = doctor(cli, head)
    assert got["link speed"]["status"] == "warn" and "100000 Mb/s" in got["link speed"]["detail"]


def test_model_folder_checks(pair, cli, tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    got = doctor(cli, pair.nodes[0], "--model", str(model))
    assert got["model"]["status"] == "fail" and "config.json" in got["model"]["detail"]
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"\0" * 4096)
    got = doctor(cli, pair.nodes[0], "--model", str(model))
    assert got["model"]["status"] == "pass" and got["disk"]["status"] in ("pass", "warn")
    assert got["memory"]["status"] == "pass" and "needed a node" in got["memory"]["detail"]


def test_table_output_names_each_fix(pair, cli):
    pair.set_link(pair.nodes[1], False)
    r = cli(pair.nodes[1], "doctor", "--simulate", "--head-ip", HEAD_IP, env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 14
    lines = r.stdout.splitlines()
    assert any(line.startswith("FAIL  fabric port") for line in lines)
    assert any(line.startswith("FAIL fabric port: ") and "--iface" in line for line in lines)
    assert r.stderr.strip().splitlines()[-1].startswith("spark-vllm: error: ")
