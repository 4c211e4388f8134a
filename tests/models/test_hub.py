"""The real huggingface_hub client against a local Hub (tests/fakehub.py) over HTTP:
what is fetched, and every error answered before a byte is written."""

from __future__ import annotations

import shutil

import pytest

import fakehub
from orchestrator.models.fetch import describe_progress, raise_value
from orchestrator.errors import BadToken, GatedModel, NotEnoughDisk, OfflineNotCached, RepoNotFound
from orchestrator.models.hub import (HubAccess, cached_bytes, fetch_here, plan_repo, repo_cache_dir, require_disk,
                                     select_files)
from orchestrator.models.memory import local_weights_bytes
from orchestrator.sim.models.tinymodel import make_tiny_model


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """Two repositories of the tiny model: tiny/llama (with an `original/` copy vLLM never
    reads) and gated/llama; the server runs for the module."""
    root = tmp_path_factory.mktemp("hub")
    model = make_tiny_model(tmp_path_factory.mktemp("m") / "tiny")
    for repo in ("tiny--llama", "gated--llama"):
        shutil.copytree(model, root / repo)
    (root / "tiny--llama" / "original").mkdir()
    (root / "tiny--llama" / "original" / "consolidated.safetensors").write_bytes(b"x" * 4096)
    (root / "gated--llama" / ".gated").touch()
    server, state = fakehub.serve(root)
    yield f"http://127.0.0.1:{server.server_address[1]}", state, model
    server.shutdown()


@pytest.fixture
def access(hub, tmp_path, monkeypatch):
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):  # (conftest plants both, for the secret scan)
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))  # no stored login from this machine
    return HubAccess(endpoint=hub[0], cache_dir=str(tmp_path / "cache"))


def test_select_files_keeps_what_vllm_loads():
    paths = ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
             "model.safetensors.index.json", "tokenizer.json", "original/consolidated.safetensors",
             "metal/model.bin", "README.md", ".gitattributes", "chat_template.jinja"]
    weights, other = select_files(paths)
    assert weights == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert other == ["chat_template.jinja", "config.json", "model.safetensors.index.json", "tokenizer.json"]
    assert select_files(["pytorch_model.bin", "training_args.bin", "config.json"])[0] == ["pytorch_model.bin"]


def test_plan_reads_the_hubs_sizes(hub, access):
    url, state, model = hub
    plan = plan_repo("tiny/llama", access, None)
    assert plan.commit == fakehub.Hub.sha("tiny/llama")
    assert "original/consolidated.safetensors" not in plan.patterns and "config.json" in plan.patterns
    assert plan.weights_bytes == (model / "model.safetensors").stat().st_size
    assert 0 < local_weights_bytes(model) <= plan.weights_bytes  # headers: tensor bytes, the file a bit more


def test_fetch_downloads_only_vllms_files_then_nothing(hub, access):
    first = fetch_here("tiny/llama", access, "node")
    snap = repo_cache_dir("tiny/llama", access) / "snapshots" / fakehub.Hub.sha("tiny/llama")
    assert first["folder"] == str(snap) and (snap / "config.json").exists() and (snap / "model.safetensors").exists()
    assert not (snap / "original").exists()
    assert first["downloaded_bytes"] == first["total_bytes"] > 0
    assert cached_bytes("tiny/llama", access) == first["total_bytes"]
    assert fetch_here("tiny/llama", access, "node")["downloaded_bytes"] == 0


def test_gated_without_access_says_where_to_ask_and_writes_nothing(hub, access):
    with pytest.raises(GatedModel, match="request access at https://huggingface.co/gated/llama.*HF_TOKEN"):
        fetch_here("gated/llama", access, "node")
    assert cached_bytes("gated/llama", access) == 0


def test_gated_with_a_good_token(hub, access, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", fakehub.GOOD_TOKEN)
    assert fetch_here("gated/llama", access, "node")["downloaded_bytes"] > 0


def test_bad_token_is_refused_and_never_shown(hub, access, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_secret_value")
    with pytest.raises(BadToken) as err:
        fetch_here("tiny/llama", access, "node")
    assert "hf_wrong_secret_value" not in str(err.value) and "HF_TOKEN" in str(err.value)
    assert cached_bytes("tiny/llama", access) == 0


def test_unknown_repository(hub, access):
    with pytest.raises(RepoNotFound, match="no model nobody/nothing"):
        fetch_here("nobody/nothing", access, "node")


def test_offline_needs_the_cache(hub, access):
    offline = HubAccess(endpoint=access.endpoint, offline=True, cache_dir=access.cache_dir)
    with pytest.raises(OfflineNotCached, match="spark-vllm download tiny/llama"):
        fetch_here("tiny/llama", offline, "node")
    fetch_here("tiny/llama", access, "node")
    assert fetch_here("tiny/llama", offline, "node")["commit"] == fakehub.Hub.sha("tiny/llama")


def test_unreachable_hub_uses_the_cache_or_says_so(hub, access):
    down = HubAccess(endpoint="http://127.0.0.1:9", cache_dir=access.cache_dir)  # nothing listens on port 9
    with pytest.raises(OfflineNotCached, match="cannot be reached"):
        fetch_here("tiny/llama", down, "node")
    fetch_here("tiny/llama", access, "node")
    assert fetch_here("tiny/llama", down, "node")["downloaded_bytes"] == 0


def test_not_enough_disk_names_the_numbers():
    with pytest.raises(NotEnoughDisk, match=r"needs 200\.0 GB more on spark2 \(/cache\) but 50\.0 GB are free"):
        require_disk("big/model", 200 * 10**9, 50 * 10**9, "spark2 (/cache)")
    assert require_disk("m", 10, 10 * 10**9, "here") == 10
    assert require_disk("m", 0, 0, "here") == 0  # all cached: no space needed


def test_progress_line_and_errors_from_a_node():
    assert describe_progress({"10.0.0.2": (0, 2 << 30), "10.0.0.1": (1 << 30, 2 << 30)}) == (
        "10.0.0.1 50% (1.0 GiB of 2.0 GiB), 10.0.0.2 0% (0.0 KiB of 2.0 GiB)")
    raise_value({"folder": "/x"}, "n")  # a report, not an error
    with pytest.raises(GatedModel, match="^on 10.0.0.2: m is gated"):
        raise_value({"error": "GatedModel", "message": "m is gated", "hint": "ask"}, "10.0.0.2")
