"""`spark-vllm container run|stop|logs|status`: the host side, instead of `run_cluster.sh`.

`run` plans the `docker run` of this Spark (`orchestrator.ops.deployment.container.plan_run`),
prints it with `--dry-run`, runs it otherwise.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess

from orchestrator.ops.deployment import container
from orchestrator.settings import Settings

from .options import add_json, print_json


def register(sub, settings: Settings) -> None:
    p = sub.add_parser("container", help="run spark-vllm's container on this host (replaces run_cluster.sh)")
    csub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    r = csub.add_parser("run", help="start this Spark's container (head, or worker with --worker HEAD_IP)",
                        usage="spark-vllm container run [--head | --worker HEAD_IP] [--image IMAGE] "
                              "[--no-cache-dirs] [--dry-run] [MODEL and vllm serve flags]")
    role = r.add_mutually_exclusive_group()
    role.add_argument("--head", action="store_true", help="this Spark is the head (default)")
    role.add_argument("--worker", metavar="HEAD_IP", help="join the head at HEAD_IP")
    r.add_argument("--image", default=container.DEFAULT_IMAGE, help=f"image (default {container.DEFAULT_IMAGE})")
    r.add_argument("--name", default=container.DEFAULT_NAME, help="container name")
    r.add_argument("--shm-size", default="16g", help="shared memory for NCCL (default 16g)")
    r.add_argument("--no-cache-dirs", dest="cache_dirs", action="store_false",
                   help="do not mount the compile caches (vLLM, Triton, inductor, FlashInfer) from "
                        "~/.cache/spark-vllm/container: every start compiles again")
    r.add_argument("--dry-run", action="store_true", help="print the docker command, run nothing")
    r.set_defaults(func=run_container, accepts_extra=True)
    for action, text in (("stop", "stop the container (SIGTERM: spark-vllm drains, then exits)"),
                         ("logs", "the container's log (follows with -f)"),
                         ("status", "whether the container runs, and its health")):
        a = csub.add_parser(action, help=text)
        a.add_argument("--name", default=container.DEFAULT_NAME, help="container name")
        if action == "logs":
            a.add_argument("-f", "--follow", action="store_true")
        if action == "status":
            add_json(a)
        a.set_defaults(func=globals()[f"{action}_container"])


def passed_env(settings: Settings, digest: str | None = None) -> tuple[tuple[str, str], ...]:
    """This host's SPARK_VLLM_* settings that the container should see too, and the
    image's digest (which `recipe lock` records) when known."""
    pairs = [("SPARK_VLLM_IFACE", settings.iface), ("SPARK_VLLM_NODE_IP", settings.node_ip),
             ("SPARK_VLLM_SIMULATE", "1" if settings.simulate else None),
             ("SPARK_VLLM_TOKEN_FILE", settings.token_file),
             (container.DIGEST_VAR, settings.image_digest or digest)]
    return tuple((k, v) for k, v in pairs if v)


def run_container(args: argparse.Namespace, settings: Settings) -> int:
    # A dry run asks Docker nothing: the digest only when set by hand.
    docker = None if args.dry_run else container.check_docker()
    digest = None if docker is None or settings.image_digest else container.image_digest(docker, args.image)
    req = container.RunRequest(head_ip=args.worker or settings.head_ip, worker=bool(args.worker),
                               image=args.image, name=args.name, serve_args=tuple(args.extra),
                               env=passed_env(settings, digest), shm_size=args.shm_size, cache_dirs=args.cache_dirs)
    host = container.host_facts(os.environ)
    plan = container.plan_run(req, host)
    if args.dry_run:
        print(shlex.join(plan.argv()))
        return 0
    if req.cache_dirs and host.cache_dir:
        # Ours, not one Docker would create as root for a missing mount source.
        os.makedirs(host.cache_dir, exist_ok=True)
    return subprocess.run([docker, *plan.argv()[1:]]).returncode


def stop_container(args: argparse.Namespace, settings: Settings) -> int:
    # 90 s: serve's drain (30 s) and Ray's teardown fit before docker's SIGKILL.
    return subprocess.run([container.check_docker(), "stop", "-t", "90", args.name]).returncode


def logs_container(args: argparse.Namespace, settings: Settings) -> int:
    return subprocess.run([container.check_docker(), "logs", *(["-f"] if args.follow else []), args.name]).returncode


def status_container(args: argparse.Namespace, settings: Settings) -> int:
    r = subprocess.run([container.check_docker(), "inspect", "--format",
                        "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}", args.name],
                       capture_output=True, text=True)
    state, _, health = (r.stdout.strip() if r.returncode == 0 else "absent").partition(" ")
    if args.json:
        print_json({"name": args.name, "state": state, "health": health or None})
    else:
        print(f"{args.name}: {state}{' (' + health + ')' if health else ''}")
    return 0 if state == "running" else 5
