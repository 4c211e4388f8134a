"""`spark-vllm head|worker|status|stop`: the Ray cluster, without `run_cluster.sh`."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
from dataclasses import dataclass

from orchestrator.cluster import membership, nccl, ray_node, runstate, versions
from orchestrator.cluster.auth import AuthPlan, ensure_token, plan_auth
from orchestrator.cluster.bootstrap import NodePlan, NodeRequest, attached_request, bring_up, plan_node
from orchestrator.cluster.ray_node import ClusterOptions
from orchestrator.errors import ClusterError, ClusterIncomplete, Stopped, UsageError
from orchestrator.ops.diagnosis.fabriccheck import status_line
from orchestrator.serve.health import api_key_state, health_state
from orchestrator.net.plan import plan_network
from orchestrator.cluster.nodes import ClusterState
from orchestrator.settings import Settings

from .exitcodes import exit_code_for
from .options import add_json, add_network_options, discover_here, print_json, table

log = logging.getLogger("spark_vllm")


def add_cluster_options(p: argparse.ArgumentParser, settings: Settings) -> None:
    g = p.add_argument_group("cluster")
    g.add_argument("--nodes", type=int, default=2, help="GPU nodes to wait for (default 2)")
    g.add_argument("--wait-timeout", type=float, default=600, metavar="S",
                   help="head: seconds to wait for the nodes (default 600)")
    g.add_argument("--join-timeout", type=float, default=120, metavar="S",
                   help="worker: seconds to wait for the head to answer (default 120)")
    g.add_argument("--num-gpus", type=int, default=None, help="GPUs of this node (default: detected)")
    g.add_argument("--num-cpus", type=int, default=None, help="CPUs of this node for Ray (default: detected)")
    g.add_argument("--ray-port", type=int, default=ray_node.DEFAULT_PORT, help="Ray GCS port (default 6379)")
    g.add_argument("--dashboard-host", default=None,
                   help="address for Ray's dashboard (default: the head's fabric address)")
    g.add_argument("--simulate", action="store_true", default=settings.simulate,
                   help="CPU simulation: one GPU per node, vLLM's CPU engine (env SPARK_VLLM_SIMULATE=1)")
    g.add_argument("--allow-version-skew", action="store_true",
                   help="start even when Python/Ray/vLLM/torch/NCCL versions differ between nodes")
    g.add_argument("--nccl-library", default=None, metavar="bundled|system|PATH",
                   help="the libnccl every process of this node loads: the pip wheel's (bundled), the system's "
                        "(DGX OS's), or a file; sets VLLM_NCCL_SO_PATH and LD_PRELOAD (give it on every Spark)")
    add_auth_options(g, settings)


def add_auth_options(g, settings: Settings) -> None:
    g.add_argument("--token-file", default=settings.token_file, metavar="PATH",
                   help="Ray auth token file (default ~/.ray/auth_token): the head creates it if missing, "
                        "the other Sparks need a copy (env SPARK_VLLM_TOKEN_FILE)")
    g.add_argument("--no-auth", action="store_true", default=settings.no_auth,
                   help="turn Ray token authentication off on this node (not recommended; every node "
                        "must agree; env SPARK_VLLM_NO_AUTH=1)")


def register(sub, settings: Settings) -> None:
    p = sub.add_parser("head", help="start this Spark as the Ray head and wait for the GPU nodes")
    add_network_options(p, settings)
    add_cluster_options(p, settings)
    p.set_defaults(func=run_head, needs_ray=True)

    p = sub.add_parser("worker", help="join the head's Ray cluster and stay joined")
    add_network_options(p, settings)
    add_cluster_options(p, settings)
    p.set_defaults(func=run_worker, needs_ray=True)

    p = sub.add_parser("status", help="nodes in the cluster, completeness, and the server's health")
    add_network_options(p, settings)
    p.add_argument("--nodes", type=int, default=2, help="GPU nodes a complete cluster has (default 2)")
    p.add_argument("--ray-port", type=int, default=ray_node.DEFAULT_PORT)
    p.add_argument("--server-url", default=None, help="vLLM server to check (default http://HEAD:8000)")
    add_auth_options(p, settings)
    add_json(p)
    p.set_defaults(func=run_status, needs_ray=True)

    p = sub.add_parser("stop", help="stop this machine's spark-vllm node (Ray, and vLLM if serving)")
    add_network_options(p, settings)
    p.add_argument("--timeout", type=float, default=60, help="seconds before a forced stop (default 60)")
    p.set_defaults(func=run_stop)


def nccl_library_env(args: argparse.Namespace) -> dict[str, str]:
    if not getattr(args, "nccl_library", None):
        return {}
    env = nccl.chosen_library_env(args.nccl_library, os.environ)
    log.info("NCCL: every process of this node loads %s (--nccl-library %s)", env["VLLM_NCCL_SO_PATH"],
             args.nccl_library)
    return env


def node_request(args: argparse.Namespace) -> NodeRequest:
    return NodeRequest(
        head_ip=args.head_ip, iface=args.iface, node_ip=args.node_ip, force=args.force, simulate=args.simulate,
        token_file=args.token_file, no_auth=args.no_auth,
        ray_env={**args.log_options.ray_environment(), **nccl_library_env(args)},
        cluster=ClusterOptions(
            node_ip="", head_ip="", port=args.ray_port, num_gpus=args.num_gpus, num_cpus=args.num_cpus,
            dashboard_host=args.dashboard_host, nodes=args.nodes, wait_timeout=args.wait_timeout,
            join_timeout=args.join_timeout, allow_version_skew=args.allow_version_skew,
            job_env=tuple(sorted(getattr(args, "job_env", {}).items())),
        ),
    )


def log_start_summary(args: argparse.Namespace, settings: Settings) -> None:
    """One line: what this run uses and where each value came from (flag, env or default)."""
    names = ("model", "head_ip", "iface", "node_ip", "token_file", "simulate")
    chosen = {n: getattr(args, n) for n in names if hasattr(args, n)}
    log.info("settings: %s", ", ".join(f"{n.replace('_', '-')}={'yes' if v is True else v or '-'} ({src})"
                                         for n, v, src in settings.sources(chosen)))


def make_plan(args: argparse.Namespace, settings: Settings, attached: bool = False) -> NodePlan:
    """`attached` (serve inside `ray job submit`): the network of the node running here."""
    log_start_summary(args, settings)
    found = discover_here(args)
    req = node_request(args)
    if attached and (rec := runstate.local_node(this_machines_nodes(args, found))):
        if (from_record := attached_request(req, rec)) != req:
            log.info("network of the %s running here: %s on %s (its run record)", rec.role, rec.node_ip, rec.iface)
        req = from_record
    return plan_node(req, found, os.environ)


@contextlib.contextmanager
def sigterm_stops():
    """SIGTERM (docker stop, `spark-vllm stop`) ends the command like Ctrl-C, cleanly."""
    def handler(signum, frame):
        raise Stopped("stopped by SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def running_node(plan: NodePlan, prepared: bool = False):
    """This machine's Ray node, recorded for `stop`, always torn down on the way out
    (`prepared`: the plan's environment is applied already, see bootstrap.prepare)."""
    with sigterm_stops():
        node = bring_up(plan, prepared=prepared)
        directory = runstate.run_dir(os.environ)
        mark(plan, node, "running")
        try:
            yield node
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the teardown
            log.info("stopping this Spark's Ray node")
            shutdown_driver()
            node.stop()
            runstate.remove_record(directory, plan.cluster.node_ip, os.getpid())


def mark(plan: NodePlan, node, state: str, server_url: str | None = None) -> None:
    """Record this node's process, state and whereabouts for `stop` and `status` (no
    record when attached)."""
    if node is not None:
        runstate.write_record(runstate.run_dir(os.environ), runstate.RunRecord(
            os.getpid(), plan.role, plan.cluster.node_ip, node.address, state,
            iface=plan.network.choice.name, token_file=plan.auth.token_file, server_url=server_url))


def shutdown_driver() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def form_cluster(plan: NodePlan, node, address: str) -> ClusterState:
    """On the head: connect, wait for the nodes, check versions. `node` is None when
    attached to a cluster this process did not start."""
    c = plan.cluster
    ray_node.connect_driver(address, c.node_ip, env=c.job_env)
    log.info("waiting for %d GPU node(s) (up to %g s)", c.nodes, c.wait_timeout)
    state = membership.wait_for_nodes(c.nodes, c.wait_timeout, alive=node.dead_processes if node else list)
    reports = versions.check_versions(state, c.allow_version_skew)
    log.info("cluster complete: %s; versions match", state.summary())
    for ip, report in reports.items():
        log.info("node %s: %s", ip, versions.describe(report))
    return state


def run_head(args: argparse.Namespace, settings: Settings) -> int:
    plan = make_plan(args, settings)
    if plan.role != "head":
        raise UsageError(f"this machine is not the head: --head-ip {plan.cluster.head_ip} is another machine's address",
                         "run `spark-vllm worker` here, or leave --head-ip out")
    with running_node(plan) as node:
        form_cluster(plan, node, node.address)
        log.info("head ready; Ctrl-C or `spark-vllm stop` stops it")
        membership.watch_head(node, plan.cluster.nodes)
    return 0


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    if not args.head_ip:
        raise UsageError("`worker` needs --head-ip (or SPARK_VLLM_HEAD_IP)", "e.g. --head-ip 192.168.100.10")
    plan = make_plan(args, settings)
    if plan.role != "worker":
        raise UsageError(f"--head-ip {args.head_ip} is this machine's own address", "run `spark-vllm head` here")
    return run_worker_plan(plan)


def run_worker_plan(plan: NodePlan) -> int:
    with running_node(plan) as node:
        log.info("joined the cluster at %s; staying joined (Ctrl-C or `spark-vllm stop` to leave)", plan.cluster.gcs_address)
        membership.watch_worker(node, plan.cluster.head_ip, plan.cluster.port)
    return 0


def this_machines_nodes(args: argparse.Namespace, found=None) -> list[runstate.RunRecord]:
    """The live run records of spark-vllm nodes on this machine's addresses."""
    found = found or discover_here(args)
    addresses = [a for i in found.interfaces for a in i.addresses] + ([args.node_ip] if args.node_ip else [])
    return runstate.records_for(runstate.run_dir(os.environ), addresses)


@dataclass(frozen=True)
class StatusTarget:
    head_ip: str
    gcs_address: str
    node_ip: str | None
    token_file: str | None
    server_url: str  # the vLLM server whose /health is shown
    engine: str | None = None  # a serving head's run-record state (serving, wedged, restarting, ...), when local


def status_target(args: argparse.Namespace) -> StatusTarget:
    """Where `status` (and `download`) look: this machine's run record when a node runs
    here and no network option was given (as `ray status` finds its cluster), else
    discovery."""
    server_url = getattr(args, "server_url", None)
    rec = None if (args.iface or args.head_ip) else runstate.local_node(this_machines_nodes(args))
    if rec is not None:
        log.debug("reading the cluster of the %s on %s (%s)", rec.role, rec.node_ip, rec.iface)
        head_ip = rec.gcs_address.rsplit(":", 1)[0]
        return StatusTarget(head_ip, rec.gcs_address, rec.node_ip, args.token_file or rec.token_file,
                            server_url or rec.server_url or f"http://{head_ip}:8000",
                            rec.state if rec.server_url else None)
    net = plan_network(discover_here(args), os.environ, iface=args.iface, head_ip=args.head_ip,
                       node_ip=args.node_ip)
    head_ip = net.head_ip or net.node_ip
    return StatusTarget(head_ip, f"{head_ip}:{args.ray_port}", net.node_ip, args.token_file,
                        server_url or f"http://{head_ip}:8000")


def connect_existing(args: argparse.Namespace) -> tuple[StatusTarget, AuthPlan]:
    """Connect this process as a driver to the running cluster (RAY_ADDRESS, this
    machine's node, or the head at --head-ip). ClusterError if none answers."""
    target = status_target(args)
    address = ray_node.attach_address(os.environ) or target.gcs_address
    host, port = target.gcs_address.rsplit(":", 1)
    if not membership.port_open(host, int(port)) and not os.environ.get("RAY_ADDRESS"):
        raise ClusterError(f"no Ray cluster answers at {target.gcs_address}",
                           "start it with `spark-vllm head` (or serve), or pass --head-ip")
    auth = plan_auth(os.environ, target.token_file, args.no_auth)  # a token cluster refuses a driver without it
    ensure_token(auth, create=False, environ=os.environ)
    os.environ.update(auth.env)
    ray_node.connect_driver(address, target.node_ip, quiet=True)
    return target, auth


@contextlib.contextmanager
def attached(args: argparse.Namespace):
    """This process as a driver of the cluster `status` would read (its run record, or
    discovery): yields the target and the auth plan, disconnects on the way out."""
    target, auth = connect_existing(args)
    try:
        yield target, auth
    finally:
        shutdown_driver()


# A serving head's run-record states, as `status` says them.
ENGINE_STATES = {"engine-starting": "starting", "serving": "serving",
                 "recovering": "recovering (a node was lost; waiting for it to rejoin)",
                 "wedged": "WEDGED (generating nothing; being ended on every node)",
                 "restarting": "restarting (after a wedge)"}


def run_status(args: argparse.Namespace, settings: Settings) -> int:
    with attached(args) as (target, auth):
        state = ray_node.cluster_state(args.nodes)
        reports = node_versions(state)
    url = target.server_url.rstrip("/")
    health = health_state(url + "/health")
    api_key = api_key_state(url) if health == "healthy" else "unknown"
    head = runstate.read_record(runstate.run_dir(os.environ), target.head_ip)  # its fabric check, if here
    fabric = head.fabric if head else None
    if args.json:
        print_json({"nodes": [{**n.to_json(), "versions": reports.get(n.ip) if n.alive else None}
                              for n in state.nodes], "complete": state.complete,
                    "gpu_nodes": len(state.gpu_nodes), "want": args.nodes, "gpus": state.gpus,
                    "server": {"url": url, "health": health, "engine": target.engine},
                    "auth": {"ray_token": "on" if auth.enabled else "off", "api_key": api_key},
                    "fabric": fabric})
    else:
        # A restarted node shows twice, dead then alive: versions on the alive row only.
        shown = [(n, (reports.get(n.ip) if n.alive else None) or {}) for n in state.nodes]
        rows = [[n.ip, "head" if n.head else "worker", "alive" if n.alive else "dead", f"{n.gpus:g}",
                 *[v.get(key) or "-" for key, _ in versions.SHOWN]] for n, v in shown]
        print(table(rows, ["NODE", "ROLE", "STATE", "GPUS", *[name.upper() for _, name in versions.SHOWN]]))
        print(f"\ncluster: {'complete' if state.complete else 'INCOMPLETE'} ({state.summary()})")
        print(f"server:  {url} {health}" + (f", engine {ENGINE_STATES.get(target.engine, target.engine)}"
                                             if target.engine else ""))
        print(f"auth:    Ray token {'on' if auth.enabled else 'off'}, API key {api_key}")
        print(f"fabric:  {status_line(fabric)}")
    return 0 if state.complete else exit_code_for(ClusterIncomplete(state.summary()))


def node_versions(state: ClusterState) -> dict[str, dict]:
    """Each alive node's Ray, vLLM, torch and NCCL versions; {} (and a warning) when a node
    does not answer, so `status` still shows the rest."""
    try:
        return versions.collect_reports(state, timeout=30)
    except ClusterError as exc:
        log.warning("%s", exc)
        return {}


def run_stop(args: argparse.Namespace, settings: Settings) -> int:
    directory = runstate.run_dir(os.environ)
    records = this_machines_nodes(args)
    if not records:
        log.info("no spark-vllm node runs on this machine")
        return 0
    for rec in records:
        if rec.state == "engine-starting":
            log.info("vLLM's engine on %s is still starting and would miss a stop signal now; "
                     "stopping it once it is up (at most %g s)", rec.node_ip, args.timeout)
            rec = runstate.wait_while_starting(directory, rec, args.timeout)
        log.info("stopping the %s on %s (pid %d)", rec.role, rec.node_ip, rec.pid)
        if not runstate.terminate(rec.pid, args.timeout):
            log.warning("pid %d did not stop within %g s and was killed", rec.pid, args.timeout)
    return 0
