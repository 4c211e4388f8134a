"""The RoCE GID each device in NCCL_IB_HCA should use: read from a GID table, never a
fixed number. Pure cases over plain values, the sysfs reader over a fake tree, and
`spark-vllm env --json` on simulated Sparks whose sysfs has GID tables."""

from __future__ import annotations

import json

import pytest

from orchestrator.net.commenv import plan_environment
from orchestrator.net.roce import Gid, gid_table, pick, plan_gids
from orchestrator.net.selection import choose_interface
from orchestrator.sim.namespaces.netns import spark_gids, write_gids

PRIMARY, TWIN = "enp1s0f1np1", "enP2p1s0f1np1"
MAPPED_100 = "0000:0000:0000:0000:0000:ffff:c0a8:640a"  # ::ffff:192.168.100.10
MAPPED_101 = "0000:0000:0000:0000:0000:ffff:c0a8:650a"  # ::ffff:192.168.101.10


def table(device: str, iface: str, rows: dict[int, tuple[str, str]]) -> tuple[Gid, ...]:
    return tuple(Gid(device, n, gid, kind, iface) for n, (gid, kind) in rows.items())


@pytest.fixture
def twins(make_iface):
    def make(twin_up: bool = True, twin_gids=None, primary_gids=None):
        return (make_iface(PRIMARY, "192.168.100.10/24", roce="rocep1s0f1", gids=primary_gids),
                make_iface(TWIN, "192.168.101.10/24", roce="roceP2p1s0f1", up=twin_up, gids=twin_gids))
    return make


def env_of(ports, environ=None):
    plan = plan_environment(choose_interface(ports), ports, environ or {})
    return plan, plan.as_dict()


def test_ipv4_mapped_gid_reads_as_its_address():
    assert Gid("d", 3, MAPPED_100, "RoCE v2", PRIMARY).ipv4 == "192.168.100.10"
    assert Gid("d", 0, "fe80:0000:0000:0000:0e42:a1ff:fe00:0010", "RoCE v2", PRIMARY).ipv4 is None
    assert Gid("d", 0, "not a gid", "RoCE v2", PRIMARY).ipv4 is None


def test_both_rails_up_each_on_its_own_address(twins):
    plan, env = env_of(twins())
    assert env["NCCL_IB_HCA"] == "rocep1s0f1,roceP2p1s0f1" and env["NCCL_IB_GID_INDEX"] == "3"
    assert "NCCL_IB_ROCE_VERSION_NUM" not in env and plan.notes == ()
    assert [(d.device, d.iface, d.index, d.gid) for d in plan.roce] == [
        ("rocep1s0f1", PRIMARY, 3, "::ffff:192.168.100.10"),
        ("roceP2p1s0f1", TWIN, 3, "::ffff:192.168.101.10")]


def test_one_rail_down_only_the_up_device_counts(twins):
    # The down twin's table would disagree; it is not in NCCL_IB_HCA, so it does not matter.
    odd = table("roceP2p1s0f1", TWIN, {6: (MAPPED_101, "RoCE v2")})
    plan, env = env_of(twins(twin_up=False, twin_gids=odd))
    assert env["NCCL_IB_HCA"] == "rocep1s0f1" and env["NCCL_IB_GID_INDEX"] == "3"
    assert [d.device for d in plan.roce] == ["rocep1s0f1"]


def test_the_index_moved_after_a_reboot_is_followed(twins):
    moved = lambda dev, iface, mapped: table(dev, iface, {  # noqa: E731 - two tables alike
        0: ("fe80:0000:0000:0000:0e42:a1ff:fe00:0010", "IB/RoCE v1"),
        1: ("fe80:0000:0000:0000:0e42:a1ff:fe00:0010", "RoCE v2"),
        2: ("fe80:0000:0000:0000:0000:0000:0000:0077", "RoCE v2"),  # an extra address came first
        3: (mapped, "IB/RoCE v1"), 4: (mapped, "RoCE v2")})
    _, env = env_of(twins(primary_gids=moved("rocep1s0f1", PRIMARY, MAPPED_100),
                          twin_gids=moved("roceP2p1s0f1", TWIN, MAPPED_101)))
    assert env["NCCL_IB_GID_INDEX"] == "4"


def test_differing_indexes_leave_the_choice_to_nccl(twins):
    odd = table("roceP2p1s0f1", TWIN, {3: (MAPPED_101, "IB/RoCE v1"), 5: (MAPPED_101, "RoCE v2")})
    plan, env = env_of(twins(twin_gids=odd))
    assert "NCCL_IB_GID_INDEX" not in env
    assert (env["NCCL_IB_ROCE_VERSION_NUM"], env["NCCL_IB_ADDR_FAMILY"]) == ("2", "AF_INET")
    assert [d.index for d in plan.roce] == [3, 5]
    note, = plan.notes
    assert "NCCL_IB_GID_INDEX not set" in note and "rocep1s0f1 at 3" in note and "roceP2p1s0f1 at 5" in note


def test_no_roce_v2_gid_leaves_the_choice_to_nccl(twins):
    v1_only = lambda dev, iface, mapped: table(dev, iface, {0: (mapped, "IB/RoCE v1")})  # noqa: E731
    plan, env = env_of(twins(primary_gids=v1_only("rocep1s0f1", PRIMARY, MAPPED_100),
                             twin_gids=v1_only("roceP2p1s0f1", TWIN, MAPPED_101)))
    assert "NCCL_IB_GID_INDEX" not in env and env["NCCL_IB_ROCE_VERSION_NUM"] == "2"
    assert "rocep1s0f1 has no RoCE v2 GID on enp1s0f1np1" in plan.notes[0]


def test_a_gid_of_the_twin_interface_is_not_taken(twins):
    """The twin's address, or a GID whose ndev is the other interface, is not this one's."""
    crossed = table("rocep1s0f1", TWIN, {3: (MAPPED_100, "RoCE v2")})  # right address, wrong interface
    plan, env = env_of(twins(primary_gids=crossed))
    assert "NCCL_IB_GID_INDEX" not in env
    assert plan.roce[0].reason == "no GID of rocep1s0f1 belongs to enp1s0f1np1"
    wrong_ip = table("rocep1s0f1", PRIMARY, {3: (MAPPED_101, "RoCE v2")})
    assert pick("rocep1s0f1", PRIMARY, ("192.168.100.10",), wrong_ip).index is None


def test_an_up_port_without_ipv4_has_no_gid(make_iface):
    ports = (make_iface(), make_iface(TWIN, (), roce="roceP2p1s0f1"))
    plan, env = env_of(ports)
    assert "NCCL_IB_GID_INDEX" not in env and "enP2p1s0f1np1 has no IPv4 address" in plan.notes[0]


def test_the_users_gid_index_wins(twins):
    plan, env = env_of(twins(), {"NCCL_IB_GID_INDEX": "1"})
    assert env["NCCL_IB_GID_INDEX"] == "1" and any("NCCL_IB_GID_INDEX=1 was already set" in n for n in plan.notes)


def test_no_device_no_gid_plan():
    assert plan_gids(()).rows() == [] and plan_gids(()).note is None


def test_sysfs_table_skips_unused_slots(tmp_path):
    write_gids(str(tmp_path), "rocep1s0f1", spark_gids(PRIMARY, 0, "192.168.100.10"))
    got = gid_table(tmp_path, "rocep1s0f1")
    assert [(g.index, g.type, g.ndev, g.ipv4) for g in got] == [
        (0, "IB/RoCE v1", PRIMARY, None), (1, "RoCE v2", PRIMARY, None),
        (2, "IB/RoCE v1", PRIMARY, "192.168.100.10"), (3, "RoCE v2", PRIMARY, "192.168.100.10")]
    assert (tmp_path / "class/infiniband/rocep1s0f1/ports/1/gids/7").read_text().startswith("0000:")
    assert gid_table(tmp_path, "nonexistent") == ()


# --- the CLI on simulated Sparks (namespaces) -------------------------------------------
def env_json(cli, node, *args):
    r = cli(node, "env", "--json", *args)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    return {v["name"]: v["value"] for v in out["variables"]}, out


def test_env_json_on_twin_ports_shows_the_gid_index(pair, cli):
    pair.add_twin()
    a = pair.nodes[0]
    env, out = env_json(cli, a)
    assert set(env["NCCL_IB_HCA"].split(",")) == {"rocep1s0f1", "roceP2p1s0f1"} and env["NCCL_IB_GID_INDEX"] == "3"
    assert [(d["device"], d["gid_index"], d["gid"]) for d in out["roce_gids"]] == [
        ("roceP2p1s0f1", 3, "::ffff:192.168.101.10"), ("rocep1s0f1", 3, "::ffff:192.168.100.10")]

    # The twin's table changes (its address came back later): its index differs now.
    write_gids(a.sysfs_root, "roceP2p1s0f1", {**spark_gids(TWIN, 0, None),
                                              5: (MAPPED_101, "RoCE v2", TWIN)})
    env, out = env_json(cli, a)
    assert "NCCL_IB_GID_INDEX" not in env and env["NCCL_IB_ADDR_FAMILY"] == "AF_INET"
    assert any("different indexes" in n for n in out["notes"])
