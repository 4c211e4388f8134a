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
from orchestrator.serve import engine, health
from orchestrator.cluster.bootstrap import SIMULATE_VAR, NodePlan, apply_environment
from orchestrator.settings import Settings

from .clustercmd import (add_cluster_options, form_cluster, make_plan, mark, run_worker_plan, running_node,
                         sigterm_stops)
from .options import add_network_options

log = logging.getLogger("spark_vllm")


def register(sub, settings: Settings) -> None:
    p = sub.add_parser(
        "serve", help="form the cluster and serve MODEL with vLLM (any `vllm serve` flag passes through)",
        usage="spark-vllm serve [MODEL] [spark-vllm options] [vllm serve flags]",
    )
    p.add_argument("model", nargs="?", help="model path or Hugging Face id (optional on a worker)")
    add_network_options(p, settings)
    add_cluster_options(p, settings)
    p.set_defaults(func=run_serve, accepts_extra=True)


@contextlib.contextmanager
def head_cluster(plan: NodePlan):
    """Attach to an existing cluster (RAY_ADDRESS, `ray job submit`) or start the head."""
    address = ray_node.attach_address(os.environ)
    if address:
        log.info("attaching to the Ray cluster at %s (RAY_ADDRESS / ray job submit): starting no node", address)
        apply_environment(plan, os.environ)
        with sigterm_stops():
            yield None, address
        return
    with running_node(plan) as node:
        yield node, node.address


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    if args.simulate:
        # Before vLLM is imported: it chooses its platform (the simulation's plugin) once.
        os.environ[SIMULATE_VAR] = "1"
    plan = make_plan(args)
    if plan.role == "worker":
        if args.extra:
            log.info("on a worker the vLLM flags are not used (the head runs the server)")
        return run_worker_plan(plan)

    model = engine.check_model(args.model)
    # vLLM imports while Ray starts and the other Sparks join; a bad flag still fails
    # in seconds, and the Ray node started meanwhile is stopped on the way out.
    loading = engine.load_in_background()
    t0 = time.monotonic()
    with head_cluster(plan) as (node, address):
        api = loading.result()
        vargs = engine.parse_serve_args(api, model, args.extra)
        log.info("vLLM %s accepted the flags; forming the cluster", api.version)
        if node is not None:  # attached, the real cluster is checked at once
            engine.check_planned_size(vargs.tensor_parallel_size, vargs.pipeline_parallel_size,
                                      plan.cluster.nodes, ray_node.this_node_gpus(plan.cluster))
        state = form_cluster(plan, node, address)
        par = engine.plan_parallelism(vargs.tensor_parallel_size, vargs.pipeline_parallel_size,
                                       vargs.distributed_executor_backend, state.gpus)
        engine.fill_unset(vargs, par)
        t_cluster = time.monotonic() - t0
        log.info("cluster ready in %.1f s; starting vLLM with %s", t_cluster, par.describe())
        server_url = f"http://{plan.cluster.node_ip}:{vargs.port}"
        public = server_url + "/v1"

        def on_ready(seconds: float) -> None:
            mark(plan, node, "serving", server_url)
            log.info("ready: %s serves %s (cluster %.1f s, engine %.1f s)",
                     public, vargs.served_model_name or [model], t_cluster, seconds)

        stop = threading.Event()
        mark(plan, node, "engine-starting", server_url)
        health.announce_when_ready(health.local_health_url(vargs.host, vargs.port), on_ready, stop)
        try:
            engine.run_server(api, vargs)
        finally:
            stop.set()
    return 0
