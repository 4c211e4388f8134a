"""`spark-vllm serve MODEL [vllm serve flags]`: the whole playbook in one command.

Without --head-ip (or on the machine that owns it) this Spark is the head: it
starts or attaches to the Ray cluster, waits for the GPU nodes, then runs vLLM's
OpenAI server in this process. On the other Spark the same command joins as a
worker and stays.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import threading
import time

from orchestrator.cluster import ray_node
from orchestrator.net.discovery import discover
from orchestrator.ops.observation import logs, metrics
from orchestrator.ops.supervision import budget, reaper, recovery, supervisor, watchdog
from orchestrator.serve import compat, engine, health, vllm_plugin
from orchestrator.cluster.bootstrap import SIMULATE_VAR, NodePlan, apply_environment, prepare
from orchestrator.errors import UsageError
from orchestrator.settings import Settings

from . import fabriccmd, modelscmd, recipecmd
from .clustercmd import (add_cluster_options, form_cluster, make_plan, mark, run_worker_plan, running_node,
                         sigterm_stops)
from .options import add_network_options

log = logging.getLogger("spark_vllm")


def register(sub, settings: Settings) -> None:
    p = sub.add_parser(
        "serve", help="form the cluster and serve MODEL with vLLM (any `vllm serve` flag passes through)",
        usage="spark-vllm serve [MODEL] [spark-vllm options] [vllm serve flags]",
    )
    p.add_argument("model", nargs="?", default=settings.model,
                   help="model path or Hugging Face id (env SPARK_VLLM_MODEL; not used on a worker)")
    add_network_options(p, settings)
    add_cluster_options(p, settings)
    modelscmd.add_model_options(p, settings)
    fabriccmd.add_serve_check_options(p)
    recipecmd.add_recipe_options(p)
    g = p.add_argument_group("supervision (head)")
    g.add_argument("--exit-on-node-loss", action="store_true",
                   help="when a node is lost while serving, exit (code 7) instead of waiting for it "
                        "and restarting vLLM in this process")
    g.add_argument("--rejoin-timeout", type=float, default=recovery.DEFAULT_REJOIN_TIMEOUT, metavar="S",
                   help="seconds a lost node has to rejoin before the head exits with code 7 "
                        f"(default {recovery.DEFAULT_REJOIN_TIMEOUT:g})")
    for flag, kind, default, metavar, what in wedge_flags():
        g.add_argument(flag, type=kind, default=default, metavar=metavar, help=f"{what} (default {default:g})")
    p.set_defaults(func=run_serve, accepts_extra=True, needs_ray=True)


def wedge_flags() -> tuple:
    """The wedged-engine flags: (flag, type, default, metavar, help)."""
    b = budget.RestartBudget()
    return (
        ("--stall-timeout", positive, watchdog.DEFAULT_STALL_TIMEOUT, "S", "the engine is wedged when requests "
         "run and no token comes for this long, or an idle probe does not finish within it"),
        ("--probe-interval", non_negative, watchdog.DEFAULT_PROBE_INTERVAL, "S",
         "while idle, a one-token probe request this often; 0 turns it off"),
        ("--max-restarts", int, b.max_restarts, "N", "restarts of a wedged engine allowed within "
         "--restart-window; one more wedge and the head exits with code 18"),
        ("--restart-window", positive, b.window, "S", "the window --max-restarts counts in"),
    )


def positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def restart_budget(args: argparse.Namespace) -> budget.RestartBudget:
    if args.max_restarts < 0:
        raise UsageError(f"--max-restarts must be 0 or more, got {args.max_restarts}")
    return budget.RestartBudget(args.max_restarts, args.restart_window)


def make_watchdog(args: argparse.Namespace, vargs: argparse.Namespace, model: str,
                  serving: metrics.ServingState, stopping: threading.Event):
    """A factory of the generation watchdog for each start of the engine; each stands
    down once `stopping` is set."""
    health_url = health.local_health_url(vargs.host, vargs.port)
    prober = watchdog.Prober(health_url.rsplit("/", 1)[0], (vargs.served_model_name or [model])[0],
                             compat.server_api_key(vargs, os.environ))
    return lambda: watchdog.Watchdog(health_url, prober, supervisor.kill_engine, reaper.snapshot,
                                     stall=args.stall_timeout, probe_interval=args.probe_interval,
                                     on_probe=serving.probed, stopping=stopping)


@contextlib.contextmanager
def head_cluster(plan: NodePlan):
    """Attach to an existing cluster (RAY_ADDRESS, `ray job submit`) or start the head;
    the plan's environment is applied already (`plan_first`)."""
    address = ray_node.attach_address(os.environ)
    if address:
        log.info("attaching to the Ray cluster at %s (RAY_ADDRESS / ray job submit): starting no node", address)
        with sigterm_stops():
            yield None, address
        return
    with running_node(plan, prepared=True) as node:
        yield node, node.address


def plan_first(plan: NodePlan, environ=os.environ) -> None:
    """The plan's environment, Ray's token settings included, before anything imports
    Ray or vLLM: vLLM's CUDA build imports Ray (whose core reads RAY_AUTH_MODE once, as
    it loads) at its own import, which runs beside the head's start."""
    if ray_node.attach_address(environ):
        apply_environment(plan, environ)  # the cluster exists: no token to make, no node to start
    else:
        prepare(plan, environ)


def serving_metrics(plan: NodePlan, t_cluster: float) -> metrics.ServingState:
    """Our gauges in vLLM's /metrics (same process, prometheus_client's default registry)."""
    state = metrics.ServingState(want=plan.cluster.nodes)
    state.phase("cluster", t_cluster)
    iface, sysfs = plan.network.choice.name, plan.network.discovery.sysfs_root
    nodes = metrics.Poller(lambda: ray_node.cluster_state(plan.cluster.nodes)).start()
    metrics.register(metrics.SparkCollector(state, nodes.latest, lambda: discover(sysfs).by_name(iface)))
    return state


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    if args.simulate:
        # Before vLLM is imported: it chooses its platform (the simulation's plugin) once.
        os.environ[SIMULATE_VAR] = "1"
    recipecmd.apply_recipe(args, settings)  # a recipe -> model, flags, env; --offline: HF_HUB_OFFLINE
    plan = make_plan(args, settings, attached=bool(ray_node.attach_address(os.environ)))
    if plan.role == "worker":
        if args.extra:
            log.info("on a worker the vLLM flags are not used (the head runs the server)")
        return run_worker_plan(plan)

    model = engine.check_model(args.model)
    wedge_budget = restart_budget(args)
    # Before Ray starts: an explicit TP x PP the --nodes Sparks can never hold (vLLM's own
    # parser checks the same flags again below).
    if not ray_node.attach_address(os.environ):  # attached, the real cluster is checked at once
        tp, pp = engine.explicit_parallel_sizes(args.extra)
        engine.check_planned_size(tp, pp, plan.cluster.nodes, ray_node.this_node_gpus(plan.cluster))
    plan_first(plan)
    # vLLM imports while Ray starts and the other Sparks join; a bad flag still fails
    # in seconds, and the Ray node started meanwhile is stopped on the way out.
    loading = engine.load_in_background()
    found = recipecmd.model_source(model, args)  # the Hub's answer (gated, unknown, ...) before Ray starts
    t0 = time.monotonic()
    with head_cluster(plan) as (node, address):
        api = loading.result()
        logs.capture()  # vLLM's and Ray's Python loggers into --log-dir too (vLLM set its own up at import)
        vargs = recipecmd.parse_serve_args(api, model, args)
        log.info("vLLM %s accepted the flags; forming the cluster", api.version)
        with modelscmd.prefetching(found, args, plan.cluster.nodes) as prefetched:
            state = form_cluster(plan, node, address)
            prefetched(state)
        par = engine.plan_parallelism(vargs.tensor_parallel_size, vargs.pipeline_parallel_size,
                                       vargs.distributed_executor_backend, state.gpus)
        engine.fill_unset(vargs, par)
        modelscmd.check_memory(found, vargs, par, state, args)
        t_cluster = time.monotonic() - t0
        checked = fabriccmd.check_before_serving(args, plan, node, state)  # exit 19 when refused
        log.info("cluster ready in %.1f s; starting vLLM with %s", t_cluster, par.describe())
        server_url = f"http://{plan.cluster.node_ip}:{vargs.port}"
        public = server_url + "/v1"
        serving = serving_metrics(plan, t_cluster)
        serving.fabric_checked(checked)
        stopping = threading.Event()  # set when a signal starts vLLM's stop: the watchdog stands down

        def on_signal(signum: int) -> None:
            stopping.set()
            log.debug("signal %d: vLLM's server is stopping; the watchdog stands down", signum)

        def run_engine(attempt: recovery.Attempt) -> None:
            def on_ready(seconds: float) -> None:
                mark(plan, node, "serving", server_url)
                serving.phase("engine", seconds)
                if attempt.number == 0:
                    log.info("ready: %s serves %s (cluster %.1f s, engine %.1f s)",
                             public, vargs.served_model_name or [model], t_cluster, seconds)
                else:
                    log.info("ready again: %s serves %s (restart %d: engine %.1f s, %.1f s after the %s "
                             "was detected)", public, vargs.served_model_name or [model], attempt.number,
                             seconds, time.monotonic() - attempt.detected_at,
                             "wedge" if isinstance(attempt.cause, watchdog.Wedge) else "loss")

            if attempt.number:
                serving.engine_restarted(metrics.WEDGED if isinstance(attempt.cause, watchdog.Wedge)
                                         else metrics.NODE_LOST)
            stop = threading.Event()
            mark(plan, node, "engine-starting", server_url)
            health.announce_when_ready(health.local_health_url(vargs.host, vargs.port), on_ready, stop)
            try:
                engine.run_server(api, vargs, on_signal=on_signal)
            finally:
                stop.set()

        def on_recovering(cause: recovery.Loss | watchdog.Wedge) -> None:
            if isinstance(cause, watchdog.Wedge):
                mark(plan, node, "wedged", server_url)
                serving.wedged(cause.cause)
            else:
                mark(plan, node, "recovering", server_url)
                serving.node_lost(cause.silent_s)

        def on_restarting(wedge: watchdog.Wedge, verdict: budget.Verdict) -> None:
            mark(plan, node, "restarting", server_url)

        os.environ[vllm_plugin.SERVING_VAR] = "1"  # vLLM's engine process keeps its SIGTERM drain
        recovery.serve_supervised(
            run_engine, lambda: ray_node.cluster_state(plan.cluster.nodes),
            recovery.RecoveryPolicy(args.exit_on_node_loss, args.rejoin_timeout, wedge_budget),
            vargs.host, vargs.port, dead=node.dead_processes if node else list,
            on_recovering=on_recovering, on_restarting=on_restarting,
            watchdog=make_watchdog(args, vargs, model, serving, stopping), stopping=stopping.is_set)
        log.info("vLLM's server stopped")  # it drained on SIGTERM itself; the node goes next
    return 0
