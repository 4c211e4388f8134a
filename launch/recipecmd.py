"""`spark-vllm recipe show|export|lock`, and `serve --recipe`/`--offline`: a recipe of the
community's v1 format is resolved into serve's model, vLLM flags and environment before
anything starts; then serve runs its usual path."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from orchestrator.cluster.versions import local_report
from orchestrator.errors import BadServeFlags, LockDrift, OfflineNotCached, CopyNotVerified, UsageError
from orchestrator.models.matrix import load_matrix
from orchestrator.models.recipes import format as recipe_format
from orchestrator.models.recipes.lock import drift, lock_path, make_lock, parse_lock
from orchestrator.serve import engine
from orchestrator.settings import Settings

from .options import add_json, print_json

log = logging.getLogger("spark_vllm")
OFFLINE = {"HF_HUB_OFFLINE": "1"}
OVERRIDES = (("--port", "port", int), ("--host", "host", str), ("--tp", "tensor_parallel", int),
             ("--gpu-mem", "gpu_memory_utilization", float), ("--max-model-len", "max_model_len", int))


def add_overrides(g) -> None:
    for flag, key, kind in OVERRIDES:
        g.add_argument(flag, dest="recipe_" + key, type=kind, default=None, metavar=key.upper(),
                       help=f"fills the recipe's {{{key}}} (else vLLM's {recipe_format.OVERRIDE_FLAGS[key]})")


def add_recipe_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("recipe (the v1 format of eugr/spark-vllm-docker and sparkrun) and offline serving")
    g.add_argument("--recipe", metavar="FILE", help="serve what this recipe says (its model, flags and env); "
                                                   "FILE.lock, if present, pins the revision and versions")
    add_overrides(g)
    g.add_argument("--allow-drift", action="store_true",
                   help="start even when what runs differs from the recipe's lock (warned)")
    g.add_argument("--offline", action="store_true",
                   help="no Hub request (HF_HUB_OFFLINE=1 on every node); each node's copy is checked "
                        "complete and identical to the head's before vLLM starts")
    g.add_argument("--verify-hashes", action="store_true",
                   help="hash every file of every node's copy again (default: only files changed since recorded)")


def register(sub, settings: Settings) -> None:
    p = sub.add_parser("recipe", help="recipes in the community's v1 format: show what one runs, export a "
                                      "preset as one, lock its revision and versions")
    actions = p.add_subparsers(dest="recipe_action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="what `serve --recipe FILE` would run: model, flags, env, nodes")
    show.add_argument("file")
    add_overrides(show)
    show.add_argument("--nodes", type=int, default=None,
                      help="check cluster_only/solo_only against the --nodes serve would get")
    add_json(show)
    show.set_defaults(func=run_show, accepts_extra=True)
    export = actions.add_parser("export", help="a known model's preset (spark-vllm models) as a recipe, on stdout")
    export.add_argument("model")
    export.set_defaults(func=run_export)
    lock = actions.add_parser("lock", help="write FILE.lock: the model's commit, vLLM, Ray, torch, NCCL, image")
    lock.add_argument("file")
    add_json(lock)
    lock.set_defaults(func=run_lock)


def overrides_of(args: argparse.Namespace) -> dict:
    return {key: getattr(args, "recipe_" + key) for _, key, _ in OVERRIDES
            if getattr(args, "recipe_" + key, None) is not None}


def load(path: str, args: argparse.Namespace) -> recipe_format.Resolved:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read recipe {path}: {exc.strerror}", "check the path") from None
    return recipe_format.resolve(recipe_format.parse_recipe(text, path), overrides_of(args), list(args.extra))


def run_show(args: argparse.Namespace, settings: Settings) -> int:
    resolved = load(args.file, args)
    if args.nodes is not None:
        recipe_format.check_nodes(resolved, args.nodes)
    lock = read_lock(args.file)
    out = {**resolved.to_json(), "lock": None if lock is None else {"file": str(lock_path(args.file)),
                                                                    "revision": lock.revision,
                                                                    "versions": dict(lock.versions),
                                                                    "image": lock.image}}
    if args.json:
        print_json(out)
        return 0
    print(f"recipe:  {resolved.recipe.name} ({args.file})")
    print(f"model:   {resolved.model}")
    print(f"flags:   {' '.join(resolved.flags) or '-'}")
    print("env:     " + (", ".join(f"{k}={v}" for k, v in resolved.env.items()) or "-"))
    print(f"nodes:   {resolved.nodes_rule()}")
    if lock:
        print(f"lock:    revision {lock.revision or '-'}, " + ", ".join(f"{k} {v}" for k, v in lock.versions.items()))
    for line in resolved.not_applied():
        print(f"not applied: {line}")
    return 0


def run_export(args: argparse.Namespace, settings: Settings) -> int:
    entry = load_matrix().find(args.model)
    if entry is None:
        raise UsageError(f"{args.model} is not in the support matrix", "spark-vllm models lists the known ones")
    sys.stdout.write(recipe_format.dump_recipe(recipe_format.preset_recipe(entry)))
    return 0


def run_lock(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.models import source
    from orchestrator.models.hub import HubAccess

    args.extra = []
    resolved = load(args.file, args)
    local = engine.looks_like_path(resolved.model)
    revision = None if local else source.locate(resolved.model, False, HubAccess.from_env(os.environ)).repo.commit
    lock = make_lock(resolved.recipe.name, resolved.model, revision, local_report(), settings.image_digest)
    path = lock_path(args.file)
    path.write_text(lock.to_text())
    if args.json:
        print_json({"file": str(path), "revision": lock.revision, "versions": dict(lock.versions), "image": lock.image})
    else:
        print(f"{path}: {resolved.model} at {lock.revision or '(a local folder)'}; "
              + ", ".join(f"{k} {v}" for k, v in lock.versions.items()) + (f"; image {lock.image}" if lock.image else ""))
    return 0


def read_lock(recipe_file: str):
    path = lock_path(recipe_file)
    return parse_lock(path.read_text(), str(path)) if path.exists() else None


# --- the recipe steps of `serve` ----------------------------------------------------
def apply_recipe(args: argparse.Namespace, settings: Settings) -> None:
    """Before anything starts: the recipe into args.model/args.extra, its env (and
    HF_HUB_OFFLINE with --offline) into this process and, through the Ray job, onto every
    node's vLLM workers (args.job_env); the lock's versions held to this node's."""
    env = dict(OFFLINE) if args.offline else {}
    args.revision, args.resolved = None, None
    if not args.recipe:
        # without a recipe the override spellings are plain vLLM flags
        args.extra = [tok for key, value in overrides_of(args).items()
                      for tok in (recipe_format.OVERRIDE_FLAGS[key], str(value))] + list(args.extra)
    else:
        if args.model and args.model != settings.model:
            raise UsageError(f"give MODEL ({args.model}) or --recipe, not both", "the recipe names its model")
        resolved = load(args.recipe, args)
        recipe_format.check_nodes(resolved, args.nodes)
        for line in resolved.not_applied():
            log.warning("%s", line)
        args.model, args.extra, args.resolved = resolved.model, list(resolved.flags), resolved
        env = {**resolved.env, **env}
        log.info("recipe %s: %s %s%s", resolved.recipe.name, resolved.model, " ".join(resolved.flags),
                 "; env " + ", ".join(f"{k}={v}" for k, v in resolved.env.items()) if resolved.env else "")
        lock = read_lock(args.recipe)
        if lock is not None:
            args.revision = lock.revision
            hold_to_lock(args, drift(lock, resolved.model, lock.revision, local_report(), settings.image_digest))
    os.environ.update(env)
    args.job_env = env


def hold_to_lock(args: argparse.Namespace, found: list[str]) -> None:
    if not found:
        return
    what = f"what would run differs from {lock_path(args.recipe)}: " + "; ".join(found)
    if args.allow_drift:
        log.warning("%s (allowed by --allow-drift)", what)
        return
    raise LockDrift(what, "lock it again (spark-vllm recipe lock), or pass --allow-drift")


def model_source(model: str, args: argparse.Namespace):
    """modelscmd.model_source at the lock's revision; the commit the Hub (or, offline, the
    cache) gives is held to the lock."""
    from . import modelscmd

    try:
        found = modelscmd.model_source(model, args.revision)
    except OfflineNotCached as exc:
        if not args.offline:
            raise
        raise CopyNotVerified(f"--offline: the head holds no copy: {exc.message}", exc.hint) from None
    if found.repo is not None and args.revision and found.repo.commit != args.revision:
        hold_to_lock(args, [f"revision: {args.revision[:12]} -> {found.repo.commit[:12]} (the Hub's answer)"])
    return found


def parse_serve_args(api, model: str, args: argparse.Namespace):
    """vLLM's parser on serve's flags, with `--revision` (and the tokenizer's) pinned by a
    lock unless given; a flag vLLM rejects in a recipe with mods names the recipe and mods."""
    from orchestrator.models.presets import given_dests

    from . import modelscmd

    flags = modelscmd.serve_flags(api, model, args)
    try:
        if args.revision:
            given = given_dests(engine.serve_parser(api, unset=None), flags)
            flags += [tok for dest in ("revision", "tokenizer_revision") if dest not in given
                      for tok in ("--" + dest.replace("_", "-"), args.revision)]
        return engine.parse_serve_args(api, model, flags)
    except BadServeFlags as exc:
        better = args.resolved and recipe_format.mod_only_error(args.resolved, exc.message)
        if better:
            raise better from None
        raise
