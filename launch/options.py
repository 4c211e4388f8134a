"""Option groups shared by several commands; defaults fall back to SPARK_VLLM_*."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from orchestrator.net.discovery import Discovery, discover
from orchestrator.settings import Settings

log = logging.getLogger("spark_vllm")


def add_network_options(p: argparse.ArgumentParser, settings: Settings) -> None:
    g = p.add_argument_group("network")
    g.add_argument("--iface", default=settings.iface, metavar="NAME",
                   help="fabric interface to use (env SPARK_VLLM_IFACE); default: the up RoCE interface")
    g.add_argument("--head-ip", default=settings.head_ip, metavar="IP",
                   help="the head node's fabric address (env SPARK_VLLM_HEAD_IP)")
    g.add_argument("--node-ip", default=settings.node_ip, metavar="IP",
                   help="this node's address on the interface, when it has several (env SPARK_VLLM_NODE_IP)")
    g.add_argument("--sysfs-root", default=settings.sysfs_root, metavar="DIR",
                   help="sysfs root to read RoCE devices from (env SPARK_VLLM_SYSFS_ROOT; default /sys)")
    g.add_argument("--force", action="store_true",
                   help="override communication variables already set in the environment")


def discover_here(args: argparse.Namespace) -> Discovery:
    """This machine's interfaces, with a warning for each note (e.g. the netifaces fallback)."""
    found = discover(args.sysfs_root)
    for note in found.notes:
        log.warning(note)
    return found


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*map(str, r)).rstrip() for r in [header] + rows)
