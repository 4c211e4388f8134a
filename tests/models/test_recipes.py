"""Recipes of the v1 format (format.py, lock.py, verify.py): pure tests with the recipe
files in tests/models/recipes/ and plain data, vLLM's real parser for the mod-only flag,
and the CLI's one-line errors (no cluster: each fails before anything starts)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, clean_env
from launch import recipecmd
from orchestrator.errors import BadServeFlags, RecipeError
from orchestrator.models.matrix import load_matrix
from orchestrator.models.recipes import format as rf
from orchestrator.models.recipes.lock import Lock, drift, make_lock, parse_lock
from orchestrator.models.recipes.verify import compare, read_copy, record

RECIPES = Path(__file__).parent / "recipes"


def load(name: str, overrides=None, extra=()) -> rf.Resolved:
    path = RECIPES / name
    return rf.resolve(rf.parse_recipe(path.read_text(), str(path)), overrides, extra)


def recipe(command: str, **fields) -> rf.Recipe:
    return rf.Recipe(source="inline.yaml", name="inline", command=command, **fields)


# --- the format ------------------------------------------------------------------
def test_the_tiny_recipe_fills_its_template_from_the_defaults():
    r = load("tiny.yaml")
    assert r.model == "tiny/llama"
    assert list(r.flags) == ["--served-model-name", "tiny", "--host", "0.0.0.0", "--port", "8011",
                             "--tensor-parallel-size", "2", "--max-model-len", "512", "--dtype", "float32",
                             "--enforce-eager"]
    assert r.env == {"SPARK_RECIPE_PROBE": "17", "VLLM_CPU_KVCACHE_SPACE": "1"}  # numbers, as text
    assert r.recipe.cluster_only and r.nodes_rule() == "2 or more (cluster_only)"


def test_braces_escape_and_lines_continue():
    r = load("escaping.yaml")
    assert r.model == "Qwen/Qwen3-0.6B"  # from the command: the recipe has no model key
    flags = list(r.flags)
    assert flags[flags.index("--compilation-config") + 1] == '{"cudagraph_capture_sizes": [1, 2]}'
    assert flags[flags.index("--override-generation-config") + 1] == '{"temperature": 0.6}'
    assert flags[flags.index("--gpu-memory-utilization") + 1] == "0.7"
    assert "\\" not in " ".join(flags) and "\n" not in " ".join(flags)
    assert r.env == {}  # `env:` with nothing under it


def test_numbers_and_booleans_in_env_are_text():
    r = load("mod.yaml")
    assert r.env == {"VLLM_USE_DEEP_GEMM": "0", "NCCL_DEBUG": "WARN", "RATIO": "0.5", "FAST": "1"}
    assert all(isinstance(v, str) for v in r.env.values())


def test_overrides_fill_the_template_or_become_the_vllm_flag_and_extra_comes_last():
    r = load("tiny.yaml", {"port": 9001, "gpu_memory_utilization": 0.5, "host": None}, ["--seed", "3"])
    flags = list(r.flags)
    assert flags[flags.index("--port") + 1] == "9001" and flags.count("--port") == 1  # {port} filled
    assert flags[flags.index("--host") + 1] == "0.0.0.0"  # None: the default stays
    # the template has no {gpu_memory_utilization}: the flag it stands for, after the template's
    assert flags[-4:] == ["--gpu-memory-utilization", "0.5", "--seed", "3"]
    tp = load("tiny.yaml", {"tensor_parallel": 1})
    assert list(tp.flags)[list(tp.flags).index("--tensor-parallel-size") + 1] == "1"


def test_model_given_as_a_flag_or_only_by_the_model_key():
    assert rf.resolve(recipe("vllm serve --model org/m --port 1")).model == "org/m"
    r = rf.resolve(recipe("vllm serve --port {port}", model="org/x", defaults={"port": 5}))
    assert (r.model, list(r.flags)) == ("org/x", ["--port", "5"])
    assert rf.resolve(recipe("vllm serve {model}", model="org/y")).model == "org/y"


@pytest.mark.parametrize("text, what", [
    ("name: x\ndefaults: {port: 1}\n", "has no command"),
    ("name: x\ncommand: python -m vllm.entrypoints.openai.api_server --model m\n", "is not `vllm serve"),
    ("name: x\ncommand: vllm serve m --port {port} --max-num-seqs {seqs}\ndefaults: {port: 1}\n",
     "uses {seqs} but neither"),
    ("name: x\ncommand: [vllm, serve\n", "is not valid YAML at line"),
    ("- vllm serve m\n", "is not a YAML mapping"),
    ("recipe_version: '2'\ncommand: vllm serve m\n", "recipe_version '2'"),
    ("command: |\n  vllm serve m --x '{\"a\": 1}'\n", "a literal brace as {{"),
    ("command: |\n  vllm serve m --x '{'\n", "cannot be filled"),
    ("command: \"vllm serve m --chat-template 'unclosed\"\n", "cannot be split"),
    ("command: vllm serve --port 1\n", "names no model"),
])
def test_a_bad_recipe_says_what(text, what):
    with pytest.raises(RecipeError) as exc:
        rf.resolve(rf.parse_recipe(text, "bad.yaml"))
    assert what in str(exc.value) and "recipe bad.yaml: " in str(exc.value)


def test_cluster_only_and_solo_only_against_nodes():
    with pytest.raises(RecipeError, match="tiny-llama is cluster_only but --nodes is 1"):
        rf.check_nodes(load("tiny.yaml"), 1)
    rf.check_nodes(load("tiny.yaml"), 2)
    with pytest.raises(RecipeError, match="solo_only but --nodes is 2"):
        rf.check_nodes(load("escaping.yaml"), 2)
    rf.check_nodes(load("escaping.yaml"), 1)


def test_mods_build_args_and_container_are_one_line_each():
    lines = load("mod.yaml").not_applied()
    assert len(lines) == 3
    assert "mods not applied (mods/fix-glm-reasoning)" in lines[0]
    assert "build_args not applied (--pre-tf)" in lines[1]
    assert "container vllm-node-mxfp4 not used" in lines[2]
    assert load("escaping.yaml").not_applied() == []


@pytest.fixture(scope="module")
def vllm_api():
    from orchestrator.serve.compat import load_vllm_api

    return load_vllm_api()


def serve_args(resolved: rf.Resolved, revision: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(extra=list(resolved.flags), resolved=resolved, revision=revision, no_preset=False)


def test_a_flag_only_a_mod_adds_names_the_recipe_the_flag_and_the_mod(vllm_api):
    """vLLM's own parser rejects --glm-reasoning-fix; the error says where it comes from."""
    r = load("mod.yaml")
    with pytest.raises(RecipeError) as exc:
        recipecmd.parse_serve_args(vllm_api, r.model, serve_args(r))
    message = str(exc.value)
    assert "recipe glm-with-mod" in message and "--glm-reasoning-fix" in message
    assert "mods/fix-glm-reasoning" in message and "\n" not in message
    # without mods, vLLM's own complaint stands
    plain = rf.resolve(recipe("vllm serve m --glm-reasoning-fix"))
    with pytest.raises(BadServeFlags, match="--glm-reasoning-fix") as exc:
        recipecmd.parse_serve_args(vllm_api, plain.model, serve_args(plain))
    assert not isinstance(exc.value, RecipeError)


def test_a_json_flag_vllm_rejects_is_one_line_with_the_field_and_its_message(vllm_api):
    """pydantic's complaint spans lines; the one line keeps the field and what is wrong."""
    r = rf.resolve(recipe("vllm serve m \\\n  --compilation-config '{{\"cudagraph_sizes\": [1]}}'"))
    with pytest.raises(BadServeFlags) as exc:
        recipecmd.parse_serve_args(vllm_api, r.model, serve_args(r))
    message = exc.value.message
    assert "\n" not in message and "errors.pydantic.dev" not in message and "[type=" not in message
    assert message == ("vLLM rejected the flags: argument --compilation-config/-cc: 1 validation error for "
                       "CompilationConfig: cudagraph_sizes: Unexpected keyword argument"), message


def test_the_recipe_flags_reach_vllm_untouched_and_a_lock_pins_the_revision(vllm_api):
    r = load("escaping.yaml")
    vargs = recipecmd.parse_serve_args(vllm_api, r.model, serve_args(r, revision="a" * 40))
    assert vargs.port == 8000 and vargs.max_num_seqs == 8 and vargs.gpu_memory_utilization == 0.7
    assert vargs.revision == vargs.tokenizer_revision == "a" * 40
    assert vargs.compilation_config.cudagraph_capture_sizes == [1, 2]
    given = rf.resolve(recipe("vllm serve m --revision v1"))
    assert recipecmd.parse_serve_args(vllm_api, "m", serve_args(given, revision="b" * 40)).revision == "v1"


def test_every_preset_exports_as_a_recipe_that_resolves_to_it():
    for entry in load_matrix().models:
        text = rf.dump_recipe(rf.preset_recipe(entry))
        r = rf.resolve(rf.parse_recipe(text, "export.yaml"))
        assert r.model == entry.handle
        assert list(r.flags) == ["--host", "0.0.0.0", "--port", "8000", *entry.preset]
        assert r.recipe.cluster_only == (entry.nodes > 1) and r.env == {}


def test_without_a_recipe_the_override_spellings_are_vllm_flags(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    args = argparse.Namespace(recipe=None, offline=False, extra=["--seed", "1"], recipe_port=9000, recipe_host=None,
                              recipe_tensor_parallel=2, recipe_gpu_memory_utilization=None,
                              recipe_max_model_len=None)
    recipecmd.apply_recipe(args, None)
    assert args.extra == ["--port", "9000", "--tensor-parallel-size", "2", "--seed", "1"]
    assert args.job_env == {} and args.revision is None


# --- the lock ----------------------------------------------------------------------
REPORT = {"python": "3.11", "ray": "2.60.0", "vllm": "0.32.0", "torch": "2.13.0", "nccl": None}


def test_a_lock_reads_back_and_drift_names_each_difference():
    lock = make_lock("tiny", "tiny/llama", "c" * 40, REPORT, None)
    assert parse_lock(lock.to_text()) == lock
    assert set(lock.versions) == {"vllm", "ray", "torch", "nccl"}
    assert drift(lock, "tiny/llama", "c" * 40, REPORT, None) == []
    found = drift(lock, "tiny/llama", "d" * 40, {**REPORT, "vllm": "0.33.0"}, "sha256:1234")
    assert found == ["revision: cccccccccccc -> dddddddddddd", "vllm: 0.32.0 -> 0.33.0",
                     "image: none -> sha256:1234"]
    assert drift(Lock("t", "a/b", None, {}), "a/c", None, REPORT, None) == ["model: a/b -> a/c"]
    with pytest.raises(RecipeError, match="cannot be read"):
        parse_lock('{"lock_version": 7}', "x.lock")


# --- the copies ----------------------------------------------------------------------
def model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "m"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "model.safetensors").write_bytes(os.urandom(4096))
    (folder / "sub" / "tokenizer.json").write_text("{}")
    return folder


def test_a_recorded_copy_is_not_hashed_again_until_a_file_changes(tmp_path):
    folder = model_folder(tmp_path)
    record(folder)
    first = read_copy(folder)
    assert first["problems"] == [] and first["hashed"] == 0 and set(first["files"]) == {
        "config.json", "model.safetensors", "sub/tokenizer.json"}
    assert read_copy(folder, verify_hashes=True)["hashed"] == 3
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[100] ^= 0xFF  # same size, other bytes
    (folder / "model.safetensors").write_bytes(bytes(data))
    after = read_copy(folder)
    assert after["hashed"] == 1 and after["files"]["model.safetensors"] != first["files"]["model.safetensors"]
    problems = compare({"head": first, "worker": {**after, "folder": "x"}}, "head")
    assert problems == ["worker: model.safetensors differs from the head's (SHA-256)"]


def test_missing_broken_and_extra_files_are_named(tmp_path):
    folder = model_folder(tmp_path)
    record(folder)
    head = {**read_copy(folder), "folder": str(folder)}
    (folder / "sub" / "tokenizer.json").unlink()
    (folder / "extra.bin").symlink_to(tmp_path / "nowhere")
    worker = {**read_copy(folder), "folder": str(folder)}
    assert worker["problems"] == ["extra.bin is a broken symlink", "sub/tokenizer.json is missing"]
    assert compare({"h": head, "w": worker}, "h") == [
        "w: extra.bin is a broken symlink", "w: sub/tokenizer.json is missing",
        "w: sub/tokenizer.json is missing (the head has it)"]


def test_a_hub_blob_is_held_to_the_sha256_its_name_is(tmp_path):
    """The Hugging Face cache layout: snapshots/<commit>/file -> ../../blobs/<sha256>."""
    import hashlib

    base = tmp_path / "models--a--b"
    (base / "blobs").mkdir(parents=True)
    snap = base / "snapshots" / ("e" * 40)
    snap.mkdir(parents=True)
    data = os.urandom(2048)
    blob = base / "blobs" / hashlib.sha256(data).hexdigest()
    blob.write_bytes(data)
    (snap / "model.safetensors").symlink_to(os.path.relpath(blob, snap))
    record(snap)
    assert (base / "spark-vllm" / f"{'e' * 40}.json").exists()  # beside the snapshot, not in it
    assert read_copy(snap) == {"files": {"model.safetensors": {"size": 2048, "sha256": blob.name}},
                               "problems": [], "hashed": 0}
    blob.write_bytes(b"x" * 2048)
    for _ in range(2):  # found bad, and found bad again: the bad digest is never recorded
        assert read_copy(snap)["problems"] == [f"model.safetensors does not match its SHA-256 "
                                               f"(the Hub's blob {blob.name[:12]})"]


# --- the CLI: one line, exit 2, nothing started ---------------------------------------
def cli(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env=clean_env())


def one_error(out: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("spark-vllm: error:")]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    return lines[0]


@pytest.mark.parametrize("text, what", [
    ("name: x\n", "has no command"),
    ("command: bash -c 'vllm serve m'\n", "is not `vllm serve"),
    ("command: vllm serve m --port {prot}\n", "uses {prot}"),
    ("command: 'vllm serve\n", "is not valid YAML"),
])
def test_recipe_show_of_a_bad_recipe_is_one_line_and_exit_2(tmp_path, text, what):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    out = cli("recipe", "show", str(path))
    assert out.returncode == 2 and what in one_error(out)


def test_recipe_show_json_reports_what_the_template_says():
    out = cli("recipe", "show", str(RECIPES / "tiny.yaml"), "--json", "--max-model-len", "256", "--",
              "--seed", "7")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["model"] == "tiny/llama" and got["env"] == {"SPARK_RECIPE_PROBE": "17", "VLLM_CPU_KVCACHE_SPACE": "1"}
    assert got["flags"][got["flags"].index("--max-model-len") + 1] == "256" and got["flags"][-2:] == ["--seed", "7"]
    assert got["nodes"] == "2 or more (cluster_only)" and got["lock"] is None


def test_recipe_show_json_of_the_demo_recipe_is_the_demos_model_flags_and_env():
    """demo.yaml serves what `spark-vllm demo` serves: its flags (SIM_VLLM_FLAGS and
    EXACT_FLAGS, held here so that the recipe cannot drift from the demo) and served name."""
    from orchestrator.sim.demo.greedy import EXACT_FLAGS
    from orchestrator.sim.demo.run import PORT, SIM_VLLM_FLAGS
    from orchestrator.sim.models.smollm import SERVED_NAME, TP

    out = cli("recipe", "show", str(RECIPES / "demo.yaml"), "--json", "--nodes", "2")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["recipe"] == "smollm2-demo" and got["model"] == "demo/smollm2"
    assert got["flags"] == ["--served-model-name", SERVED_NAME, "--host", "0.0.0.0", "--port", str(PORT),
                            "--tensor-parallel-size", str(TP), "--max-model-len", "512", "--max-num-seqs", "16",
                            "--kv-cache-memory-bytes", str(64 << 20), "--dtype", "float32"]
    pairs = set(zip(got["flags"], got["flags"][1:]))
    demo = [*SIM_VLLM_FLAGS, *EXACT_FLAGS]
    assert set(zip(demo[::2], demo[1::2])) <= pairs
    assert got["env"] == {"VLLM_USE_AOT_COMPILE": "0"}
    assert got["nodes"] == "2 or more (cluster_only)" and got["params"]["kv_cache_bytes"] == 64 << 20
    assert got["not_applied"] == ["recipe smollm2-demo: container vllm-node not used: spark-vllm serves with the "
                                  "vLLM installed where it runs (its container, if any)"]


def test_recipe_show_checks_the_nodes_only_when_given():
    solo = str(RECIPES / "escaping.yaml")
    assert cli("recipe", "show", solo).returncode == 0
    out = cli("recipe", "show", solo, "--nodes", "2")
    assert out.returncode == 2 and "qwen3-escaping is solo_only but --nodes is 2" in one_error(out)


def test_serve_of_a_cluster_only_recipe_on_one_node_stops_before_anything(tmp_path):
    out = cli("serve", "--recipe", str(RECIPES / "tiny.yaml"), "--nodes", "1", "--simulate", cwd=tmp_path)
    assert out.returncode == 2
    assert "tiny-llama is cluster_only but --nodes is 1" in one_error(out)
    assert "Ray" not in out.stderr


def test_export_writes_a_recipe_serve_reads(tmp_path):
    out = cli("recipe", "export", "nvidia/Phi-4-multimodal-instruct-FP8")
    assert out.returncode == 0, out.stderr
    path = tmp_path / "phi.yaml"
    path.write_text(out.stdout)
    got = json.loads(cli("recipe", "show", str(path), "--json", "--nodes", "1").stdout)
    assert got["model"] == "nvidia/Phi-4-multimodal-instruct-FP8"
    assert got["flags"] == ["--host", "0.0.0.0", "--port", "8000", "--trust-remote-code"]
    assert cli("recipe", "export", "nobody/nothing").returncode == 2


def test_offline_without_the_heads_copy_is_exit_21(tmp_path, monkeypatch):
    from launch.exitcodes import exit_code_for
    from orchestrator.errors import CopyNotVerified, LockDrift, OfflineNotCached

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = argparse.Namespace(revision="c" * 40, offline=True, allow_drift=False, recipe="r.yaml")
    with pytest.raises(CopyNotVerified, match="the head holds no copy: tiny/llama at cccccccccccc") as exc:
        recipecmd.model_source("tiny/llama", args)
    assert exit_code_for(exc.value) == 21
    with pytest.raises(OfflineNotCached):  # without --offline (HF_HUB_OFFLINE set by hand): as before
        recipecmd.model_source("tiny/llama", argparse.Namespace(**{**vars(args), "offline": False}))
    # without a lock, offline: the commit `main` names in this node's cache
    snap = tmp_path / "hf" / "hub" / "models--tiny--llama" / "snapshots" / ("d" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("d" * 40)
    args.revision = None
    assert recipecmd.model_source("tiny/llama", args).repo.commit == "d" * 40
    assert exit_code_for(LockDrift("x")) == 20
