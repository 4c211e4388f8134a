"""`spark-vllm models` and `download`, and the model steps of `serve`: presets,
the Hub checks, the prefetch on every node, and the memory fit."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import threading

from orchestrator.cluster import ray_node
from orchestrator.errors import ClusterError, DiscoveryError
from orchestrator.models import memory, source
from orchestrator.models.fetch import Prefetch, check_copies
from orchestrator.models.hub import HubAccess, fetch_here
from orchestrator.models.matrix import load_matrix
from orchestrator.models.presets import plan_preset, with_preset
from orchestrator.models.probe import gpu_memory_of
from orchestrator.serve import engine
from orchestrator.settings import Settings

from .clustercmd import add_auth_options, connect_existing, shutdown_driver
from .options import add_json, add_network_options, print_json, table

log = logging.getLogger("spark_vllm")


def register(sub, settings: Settings) -> None:
    p = sub.add_parser("models", help="the models known to run on DGX Spark, their size, Sparks needed and presets")
    add_json(p)
    p.set_defaults(func=run_models)

    p = sub.add_parser("download", help="fetch a model from the Hugging Face Hub on every node of the cluster "
                                        "(on this machine alone when no cluster runs)")
    p.add_argument("model", help="Hugging Face id, e.g. nvidia/Qwen3-8B-FP4")
    add_network_options(p, settings)
    p.add_argument("--ray-port", type=int, default=ray_node.DEFAULT_PORT)
    add_auth_options(p, settings)
    p.add_argument("--timeout", type=float, default=24 * 3600, metavar="S", help="give up after S seconds")
    p.add_argument("--hub-on-every-node", action="store_true",
                   help="download from the Hub on every node, instead of once on the head and copying over the fabric")
    add_json(p)
    p.set_defaults(func=run_download)


def run_models(args: argparse.Namespace, settings: Settings) -> int:
    matrix = load_matrix()
    if args.json:
        print_json({"models": [m.to_json() for m in matrix.models]})
        return 0
    rows = [[m.handle, m.quantization, f"{m.size_gb:g} GB", str(m.nodes), " ".join(m.preset) or "-"]
            for m in matrix.models]
    print(table(rows, ["MODEL", "QUANT", "SIZE", "SPARKS", "PRESET"]))
    print("\nsizes are approximate; serve checks the real file sizes against the cluster's memory")
    return 0


def run_download(args: argparse.Namespace, settings: Settings) -> int:
    access = HubAccess.from_env(os.environ)
    try:
        connect_existing(args)
    except (ClusterError, DiscoveryError) as exc:  # no cluster (or no fabric) here: this machine alone
        log.info("%s: fetching on this machine only", exc.message)
        report = fetch_here(args.model, access, "this machine")
        reports = {report["node"]: report}
    else:
        try:
            found = model_source(args.model)  # the Hub's answer before any node writes a byte
            state = ray_node.cluster_state(1)
            pf = Prefetch(found.model, on_progress=lambda line: log.info("fetching %s: %s", found.model, line),
                          via_head=not args.hub_on_every_node)
            reports = pf.finish(state, timeout=args.timeout)
        finally:
            shutdown_driver()
    if args.json:
        print_json({"model": args.model, "nodes": reports})
    else:
        for node, r in sorted(reports.items()):
            print(f"{node}: {r['folder']} ({memory.fmt(r['downloaded_bytes'])} of {memory.fmt(r['total_bytes'])} fetched)")
    return 0


# --- the model steps of `serve` ---------------------------------------------------
def add_model_options(p: argparse.ArgumentParser, settings: Settings) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--no-preset", action="store_true",
                   help="do not add the support matrix's flags for a known model (spark-vllm models)")
    g.add_argument("--no-prefetch", action="store_true",
                   help="do not fetch the model on every node while waiting for them (vLLM then downloads it)")
    g.add_argument("--gpu-memory", default=settings.gpu_memory, metavar="SIZE",
                   help="memory of each GPU for the fit check, e.g. 128G (env SPARK_VLLM_GPU_MEMORY; default: read "
                        "on each node; with --simulate, 128G, one Spark)")


def serve_flags(api, model: str, args: argparse.Namespace) -> list[str]:
    """The user's flags, after the preset's for a known model (each unless the user set it)."""
    entry = load_matrix().find(model)
    if entry is None or not entry.preset or getattr(args, "resolved", None):  # a recipe runs as it is
        return list(args.extra)
    if args.no_preset:
        log.info("--no-preset: leaving out %s's preset (%s)", model, " ".join(entry.preset))
        return list(args.extra)
    plan = plan_preset(model, entry.preset, list(args.extra), engine.serve_parser(api, unset=None))
    if plan.describe():
        log.info("%s", plan.describe())
    return with_preset(plan, list(args.extra))


def model_source(model: str, revision: str | None = None) -> source.ModelSource:
    """A local folder, or the Hub's plan (gated, unknown, bad token fail here, before Ray);
    `revision`: that commit (a recipe's lock), else `main`."""
    found = source.locate(model, engine.looks_like_path(model), HubAccess.from_env(os.environ), revision)
    if found.repo:
        log.info("%s: %d files, %s at %s%s", model, len(found.repo.files), memory.fmt(found.repo.total_bytes),
                 found.repo.commit[:12], " (from the cache)" if found.repo.from_cache else "")
    return found


@contextlib.contextmanager
def prefetching(found: source.ModelSource, args: argparse.Namespace, want: int):
    """While the head waits for the nodes: fetch the model on each node as it joins.
    Yields `finish(state)`, which waits for every node (a no-op without a Hub model), then,
    with --offline or --verify-hashes, checks every node's copy against the head's."""
    stop = threading.Event()
    pf = None
    if not args.no_prefetch and (found.repo is not None or want > 1):  # a local folder: to the nodes lacking it
        model = found.model if found.repo is not None else str(found.folder.resolve())
        pf = Prefetch(model, on_progress=lambda line: log.info("fetching %s: %s", model, line),
                      revision=found.revision, local=found.repo is None)
        thread = pf.follow_joins(want, stop)

    def finish(state):
        if pf is not None:
            stop.set()
            thread.join()
            reports = pf.finish(state, timeout=args.wait_timeout + 3600)
            log.info("%s is on every node: %s", found.model, ", ".join(
                f"{ip} ({memory.fmt(r['downloaded_bytes'])} fetched)" for ip, r in sorted(reports.items())))
        if getattr(args, "offline", False) or getattr(args, "verify_hashes", False):
            verify_copies(found, state, args)
    try:
        yield finish
    finally:
        stop.set()


def verify_copies(found: source.ModelSource, state, args: argparse.Namespace) -> None:
    """Every node's copy complete, readable and identical to the head's (CopyNotVerified)."""
    reports = check_copies(state, found.model, found.revision, found.folder is not None, args.verify_hashes,
                           timeout=args.wait_timeout + 3600)
    some = next(iter(reports.values()))
    log.info("%s: the copies on %s are complete and identical (%d files, %s; %d hashed now)", found.model,
             ", ".join(sorted(reports)), len(some["files"]), memory.fmt(sum(f["size"] for f in some["files"].values())),
             sum(r["hashed"] for r in reports.values()))


def check_memory(found: source.ModelSource, vargs, par, state, args: argparse.Namespace) -> None:
    """Refuse (ModelDoesNotFit) before the engine starts; warn when it is tight."""
    if args.gpu_memory or args.simulate:
        gpu_memory, unified = memory.parse_size(args.gpu_memory or str(memory.SPARK_MEMORY)), True
    else:
        gpu_memory, unified = gpu_memory_of(state)
    if gpu_memory is None:
        log.warning("could not read the GPUs' memory; skipping the fit check (set --gpu-memory)")
        return
    config = source.load_config(found, HubAccess.from_env(os.environ))
    request = memory.fit_request(found.weights_bytes, config, vargs, par.tensor, par.pipeline, gpu_memory, unified)
    report = memory.check_fit(memory.plan_fit(request), found.model)
    (log.warning if report.tight else log.info)("memory fit%s: %s (usable: %s)", " is TIGHT" if report.tight else "",
                                                report.describe(), memory.budget_basis(request))
