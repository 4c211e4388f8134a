"""`spark-vllm health`: 0 when this machine's node is healthy, 1 otherwise (Docker's
HEALTHCHECK contract), healthy on a worker too (its Ray node, not a server)."""

from __future__ import annotations

import argparse
import os

from orchestrator.cluster import runstate
from orchestrator.ops.supervision.nodehealth import judge
from orchestrator.serve.health import health_state
from orchestrator.settings import Settings

from .options import add_json, add_network_options, discover_here, print_json


def register(sub, settings: Settings) -> None:
    p = sub.add_parser("health", help="exit 0 when this machine's node is healthy (worker: Ray node; head: /health)")
    add_network_options(p, settings)
    p.add_argument("--server-url", default="http://127.0.0.1:8000", help="the local server (default port 8000)")
    add_json(p)
    p.set_defaults(func=run_health)


def run_health(args: argparse.Namespace, settings: Settings) -> int:
    found = discover_here(args)
    addresses = [a for i in found.interfaces for a in i.addresses] + ([args.node_ip] if args.node_ip else [])
    records = runstate.records_for(runstate.run_dir(os.environ), addresses)
    serving = any(r.state == "serving" for r in records)
    server = health_state(args.server_url.rstrip("/") + "/health") if serving else None
    result = judge(records, server)
    if args.json:
        print_json({"healthy": result.healthy, "reason": result.reason})
    else:
        print(f"{'healthy' if result.healthy else 'unhealthy'}: {result.reason}")
    return 0 if result.healthy else 1
