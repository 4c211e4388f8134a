"""`spark-vllm doctor`: preflight checks, each pass/warn/fail/skip with its fix."""

from __future__ import annotations

import argparse

from orchestrator.errors import PreflightFailed
from orchestrator.ops.diagnosis.doctor import DoctorRequest, run_doctor
from orchestrator.settings import Settings

from .clustercmd import add_auth_options
from .options import add_json, print_json, table

MARK = {"pass": "ok", "warn": "WARN", "fail": "FAIL", "skip": "-"}


def register(sub, settings: Settings) -> None:
    p = sub.add_parser("doctor", help="preflight checks of this Spark (fabric, peer, GPUs, memory, model, ports, "
                                      "Docker, and the running cluster), each with its fix")
    p.add_argument("--iface", default=settings.iface, metavar="NAME", help="fabric interface (env SPARK_VLLM_IFACE)")
    p.add_argument("--head-ip", default=settings.head_ip, metavar="IP",
                   help="the head's fabric address, to check the link to it (env SPARK_VLLM_HEAD_IP)")
    p.add_argument("--sysfs-root", default=settings.sysfs_root, metavar="DIR", help="sysfs root (default /sys)")
    p.add_argument("--model", default=None, help="the model to serve: memory, disk and Hugging Face token checks")
    p.add_argument("--nodes", type=int, default=2, help="GPU nodes the cluster should have (default 2)")
    p.add_argument("--ray-port", type=int, default=6379)
    p.add_argument("--simulate", action="store_true", default=settings.simulate, help="CPU simulation: no GPU checks")
    p.add_argument("--drop-caches", action="store_true",
                   help="flush the page cache first, as the playbook does (root only)")
    add_auth_options(p, settings)
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    report = run_doctor(DoctorRequest(
        sysfs_root=args.sysfs_root, iface=args.iface, head_ip=args.head_ip, model=args.model, nodes=args.nodes,
        ray_port=args.ray_port, simulate=args.simulate, drop_caches=args.drop_caches, token_file=args.token_file,
        no_auth=args.no_auth))
    if args.json:
        print_json(report.to_json())
    else:
        print(table([[MARK[c.status], c.name, c.detail] for c in report.checks], ["", "CHECK", "SEEN"]))
        for c in report.checks:
            if c.status in ("warn", "fail") and c.fix:
                print(f"{MARK[c.status]} {c.name}: {c.fix}")
    if report.failed:
        names = ", ".join(c.name for c in report.failed)
        raise PreflightFailed(f"{len(report.failed)} doctor check(s) failed: {names}", "fix each as the report says")
    return 0
