"""`spark-vllm fabric-test`: all-reduce bandwidth between the nodes of a formed cluster;
and the same test, short, that `serve` runs before vLLM starts."""

from __future__ import annotations

import argparse
import logging

import os

from orchestrator.cluster import ray_node, runstate
from orchestrator.cluster.bootstrap import NodePlan
from orchestrator.cluster.nodes import ClusterState
from orchestrator.errors import FabricTestFailed, UsageError
from orchestrator.ops.diagnosis import fabric, fabriccheck
from orchestrator.settings import Settings

from .clustercmd import add_auth_options, attached
from .options import add_json, add_network_options, discover_here, print_json, table

log = logging.getLogger("spark_vllm")


def register(sub, settings: Settings) -> None:
    p = sub.add_parser("fabric-test", help="all-reduce bandwidth between the Sparks over the fabric (NCCL, or Gloo)")
    add_network_options(p, settings)
    p.add_argument("--ray-port", type=int, default=ray_node.DEFAULT_PORT)
    add_auth_options(p, settings)
    p.add_argument("--sizes", default=",".join(fabric.size_label(s) for s in fabric.DEFAULT_SIZES),
                   help="message sizes, comma-separated (default %(default)s)")
    p.add_argument("--iters", type=int, default=20, help="timed all-reduces per size (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed all-reduces per size first (default 5)")
    p.add_argument("--backend", choices=("auto", "nccl", "gloo"), default="auto",
                   help="auto: NCCL where every node has a CUDA GPU, else Gloo")
    p.add_argument("--port", type=int, default=fabric.DEFAULT_PORT,
                   help=f"rendezvous port on the head (default {fabric.DEFAULT_PORT})")
    p.add_argument("--timeout", type=float, default=300, help="seconds before the test is given up (default 300)")
    add_json(p)
    p.set_defaults(func=run, server_url=None, needs_ray=True)  # attach() reads it; no server is looked at here


def options(args: argparse.Namespace) -> fabric.FabricOptions:
    if args.iters < 1 or args.warmup < 0:
        raise UsageError(f"--iters {args.iters} / --warmup {args.warmup}: need iters >= 1, warmup >= 0")
    sizes = tuple(fabric.parse_size(s) for s in args.sizes.split(",") if s.strip())
    if not sizes:
        raise UsageError(f"--sizes {args.sizes!r} names no size", "e.g. --sizes 1M,64M,256M")
    return fabric.FabricOptions(sizes=sizes, iters=args.iters, warmup=args.warmup, backend=args.backend,
                                port=args.port, timeout_s=args.timeout)


def link_speed(args: argparse.Namespace, node_ip: str | None) -> int | None:
    """This node's fabric port speed (Mb/s), as discovery reads it."""
    for iface in discover_here(args).interfaces:
        if node_ip and any(a.split("/")[0] == node_ip for a in iface.ipv4):
            return iface.speed_mbps
    return None


def run(args: argparse.Namespace, settings: Settings) -> int:
    opts = options(args)
    with attached(args) as (target, _):
        state = ray_node.cluster_state(2)
        speed = link_speed(args, target.node_ip)
        log.info("all-reduce between %s over the planned interface (rendezvous %s:%d)",
                 ", ".join(n.ip for n in fabric.ranks_of(state)), target.head_ip, opts.port)
        report = fabric.run_fabric_test(state, target.head_ip, opts, speed)
    if args.json:
        print_json(report.to_json())
        return 0
    out = report.to_json()
    iface = {r["ip"]: r["env"].get("NCCL_SOCKET_IFNAME" if report.backend == "nccl" else "GLOO_SOCKET_IFNAME", "?")
             for r in report.ranks}
    print(f"backend {report.backend}, {report.world} ranks: "
          + ", ".join(f"{r['ip']} ({r['device']}, {iface[r['ip']]}, {r['transport'] or 'transport unknown'})"
                      for r in report.ranks))
    print(table([[r["size"], f"{r['time_us']:.0f}", f"{r['algbw_gbps']:.2f}", f"{r['busbw_gbps']:.2f}"]
                 for r in out["results"]], ["SIZE", "TIME_US", "ALGBW_GB/s", "BUSBW_GB/s"]))
    v = report.verdict
    link = f"link {v.link_gbps:g} GB/s, healthy from {v.healthy_busbw:g} GB/s" if v.link_gbps else "link speed unknown"
    print(f"\npeak bus bandwidth {v.peak_busbw:.2f} GB/s ({link}): {v.status.upper()}\n{v.note}")
    return 0


# --- serve's check before vLLM starts ---------------------------------------------------
def gbps(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a bandwidth in GB/s (a number, at least 0)")
    return value


def add_serve_check_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("fabric check (head, before vLLM starts)")
    g.add_argument("--min-fabric-gbps", type=gbps, default=None, metavar="X",
                   help="refuse to serve (exit 19) when the all-reduce bus bandwidth between the Sparks is below "
                        "X GB/s (default: only warn below the health line, 22 GB/s on a 200 Gb/s port)")
    g.add_argument("--no-fabric-check", action="store_true",
                   help="skip the few-second all-reduce check of the fabric before vLLM starts")


def check_before_serving(args: argparse.Namespace, plan: NodePlan, node, state: ClusterState):
    """Run the check on the formed cluster, log it, record it for `status`; raise
    FabricRefused (exit 19) on NCCL-on-sockets over RoCE or below --min-fabric-gbps.
    Returns the FabricCheck, or None when skipped."""
    if args.no_fabric_check:
        log.info("fabric check skipped (--no-fabric-check)")
        return None
    if len(state.gpu_nodes) < 2:
        log.info("fabric check skipped: one GPU node, no fabric between nodes")
        return None
    choice = plan.network.choice
    log.info("fabric check: all-reduce between %s over %s before vLLM starts",
             ", ".join(n.ip for n in fabric.ranks_of(state)), choice.name)
    try:
        check = fabriccheck.run_check(state, plan.cluster.head_ip, choice.interface.speed_mbps,
                                      args.min_fabric_gbps, choice.name)
    except FabricTestFailed as exc:  # a hang here is the hang vLLM's TP handshake would have
        raise FabricTestFailed(exc.message, f"{exc.hint}; to serve without the check: --no-fabric-check") from None
    if node is not None:
        runstate.record_fabric(runstate.run_dir(os.environ), plan.cluster.node_ip, check.to_json())
    level = {"info": logging.INFO, "warn": logging.WARNING}.get(check.level, logging.ERROR)
    log.log(level, "fabric check (%.1f s): %s", check.seconds, check.line())
    if check.level == "warn":
        log.warning("fabric below its health line: %s", check.message)
    elif check.status == "not-comparable":
        log.info("fabric check: no verdict (%s)", check.message)
    fabriccheck.enforce(check)
    return check

