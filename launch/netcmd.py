"""`spark-vllm net` and `spark-vllm env`: discovery and the communication plan."""

from __future__ import annotations

import argparse
import logging
import os

from orchestrator.net.commenv import shell_lines
from orchestrator.net.discovery import Discovery
from orchestrator.errors import DiscoveryError
from orchestrator.net.plan import NetworkPlan, check_ipv4, plan_network, with_node_ip
from orchestrator.net.selection import Choice, choose_interface
from orchestrator.settings import Settings

from .options import add_json, add_network_options, discover_here, print_json, table

log = logging.getLogger("spark_vllm")


def register(sub, settings: Settings) -> None:
    p = sub.add_parser("net", help="list interfaces like ibdev2netdev, with addresses, MTU, speed and the choice")
    add_network_options(p, settings)
    add_json(p)
    p.set_defaults(func=run_net)

    p = sub.add_parser("env", help="the NCCL/UCX/Gloo/Ray variables for this node")
    add_network_options(p, settings)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--shell", action="store_true", help="print `export NAME=VALUE` lines for eval")
    out.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=run_env)


def network_plan(args: argparse.Namespace) -> NetworkPlan:
    found = discover_here(args)
    return plan_network(found, os.environ, iface=args.iface, head_ip=args.head_ip, force=args.force,
                        node_ip=args.node_ip)


def run_net(args: argparse.Namespace, settings: Settings) -> int:
    """The table is printed even when no interface can be chosen; the error follows."""
    found = discover_here(args)
    try:
        choice = choose_interface(found.interfaces, args.iface, check_ipv4(args.head_ip), found.sysfs_root)
        choice, failure = with_node_ip(choice, args.node_ip), None
    except DiscoveryError as exc:
        choice, failure = None, exc
    if args.json:
        print_json({
            "interfaces": [i.to_json() for i in found.interfaces],
            "chosen": choice and {"name": choice.name, "ipv4": choice.address, "reason": choice.reason},
            "source": found.source,
        })
    else:
        print_net_table(found, choice)
    if failure:
        raise failure
    return 0


def print_net_table(found: Discovery, choice: Choice | None) -> None:
    rows = []
    for i in found.interfaces:
        if i.name == "lo":
            continue
        rows.append([
            "*" if choice and i.name == choice.name else "",
            ",".join(i.roce_devices) or "-",
            i.name,
            "Up" if i.up else "Down",
            ",".join(i.ipv4) or "-",
            i.mtu or "-",
            f"{i.speed_mbps} Mb/s" if i.speed_mbps else "-",
        ])
    print(table(rows, ["", "ROCE", "INTERFACE", "STATE", "IPV4", "MTU", "SPEED"]))
    if choice:
        print(f"\nchosen: {choice.name} {choice.address} ({choice.reason})")


def run_env(args: argparse.Namespace, settings: Settings) -> int:
    plan = network_plan(args)
    for note in plan.env.notes:
        log.info(note)
    if args.json:
        print_json({"interface": plan.choice.name, "node_ip": plan.node_ip, **plan.env.to_json()})
    elif args.shell:
        print("\n".join(shell_lines(plan.env)))
    else:
        rows = [[v.name, v.value, "kept (already set)" if v.source == "user" else "set", v.why]
                for v in plan.env.variables]
        print(table(rows, ["VARIABLE", "VALUE", "", "WHY"]))
    return 0
