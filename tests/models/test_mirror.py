"""The copy from the head's cache (mirror.py), in one process over loopback: layout,
checksum, resume. The cluster path (Ray tasks on two namespace nodes) is in test_prefetch."""

from __future__ import annotations

import shutil

import pytest

import fakehub
from orchestrator.errors import HubError
from orchestrator.models.hub import HubAccess, fetch_here
from orchestrator.models.mirror import SnapshotServer, copy_from_head
from orchestrator.sim.models.tinymodel import make_tiny_model


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    shutil.copytree(make_tiny_model(tmp_path_factory.mktemp("m") / "tiny"), root / "tiny--llama")
    server, _ = fakehub.serve(root)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def head_server(hub, tmp_path, monkeypatch):
    """The head's cache holds tiny/llama (from the Hub); its SnapshotServer serves it."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):  # (conftest plants both, for the secret scan)
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "head"))
    report = fetch_here("tiny/llama", HubAccess.from_env({"HF_HOME": str(tmp_path / "head"), "HF_ENDPOINT": hub}),
                        "head")
    server = SnapshotServer("tiny/llama", "127.0.0.1", report)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "worker"))  # from here on, this process is the worker
    yield server
    server.close()


def worker_access(tmp_path) -> HubAccess:
    return HubAccess.from_env({"HF_HOME": str(tmp_path / "worker")})


def test_copy_lands_in_the_hub_cache_layout(head_server, tmp_path):
    from huggingface_hub import try_to_load_from_cache

    manifest = head_server.manifest()
    report = copy_from_head(manifest, "tiny/llama", "worker")
    assert report["downloaded_bytes"] == report["total_bytes"] == sum(f["size"] for f in manifest["files"])
    cached = try_to_load_from_cache("tiny/llama", "model.safetensors", cache_dir=worker_access(tmp_path).cache_root())
    assert isinstance(cached, str) and cached.startswith(str(tmp_path / "worker"))
    # offline, the worker now resolves the repository id as huggingface_hub would
    offline = HubAccess(offline=True, cache_dir=str(worker_access(tmp_path).cache_root()))
    assert fetch_here("tiny/llama", offline, "worker")["commit"] == manifest["commit"]
    assert copy_from_head(manifest, "tiny/llama", "worker")["downloaded_bytes"] == 0  # nothing twice


def test_copy_resumes_a_partial_blob(head_server, tmp_path):
    manifest = head_server.manifest()
    big = max(manifest["files"], key=lambda f: f["size"])
    blobs = worker_access(tmp_path).cache_root() / "models--tiny--llama" / "blobs"
    blobs.mkdir(parents=True)
    source = (tmp_path / "head" / "hub" / "models--tiny--llama" / "blobs" / big["blob"]).read_bytes()
    (blobs / (big["blob"] + ".copying")).write_bytes(source[:1000])
    report = copy_from_head(manifest, "tiny/llama", "worker")
    assert report["downloaded_bytes"] == report["total_bytes"] - 1000
    assert (blobs / big["blob"]).read_bytes() == source


def test_a_corrupt_copy_is_refused(head_server, tmp_path):
    manifest = head_server.manifest()
    bad = {**manifest, "files": [{**f, "sha256": "0" * 64} for f in manifest["files"]]}
    with pytest.raises(HubError, match="does not match its SHA-256"):
        copy_from_head(bad, "tiny/llama", "worker")
    assert not list((worker_access(tmp_path).cache_root() / "models--tiny--llama" / "blobs").glob("*"))


def test_the_heads_failure_travels(tmp_path):
    failed = {"error": "GatedModel", "message": "m is gated", "hint": "ask"}
    assert SnapshotServer("m", "127.0.0.1", failed).manifest() == failed


def test_a_pinned_commit_is_fetched_copied_and_recorded_by_commit(hub, tmp_path, monkeypatch):
    """A recipe's lock: the Hub's commit, asked for by hash; `refs/main` is written where the
    cache had none, and left alone where it had one; each copy gets its manifest."""
    import json

    from orchestrator.models.recipes.verify import read_copy, record

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    commit = fakehub.Hub.sha("tiny/llama")
    head = HubAccess.from_env({"HF_HOME": str(tmp_path / "head"), "HF_ENDPOINT": hub})
    report = fetch_here("tiny/llama", head, "head", revision=commit)
    assert report["pinned"] and report["folder"].endswith(f"snapshots/{commit}")
    base = tmp_path / "head" / "hub" / "models--tiny--llama"
    assert (base / "refs" / "main").read_text() == commit
    record(report["folder"])
    manifest = json.loads((base / "spark-vllm" / f"{commit}.json").read_text())
    assert {f["path"] for f in manifest["files"]} >= {"config.json", "model.safetensors"}

    monkeypatch.setenv("HF_HOME", str(tmp_path / "head"))
    server = SnapshotServer("tiny/llama", "127.0.0.1", report)
    try:
        shared = server.manifest()
        assert shared["pinned"] and shared["commit"] == commit
        monkeypatch.setenv("HF_HOME", str(tmp_path / "worker"))
        worker = tmp_path / "worker" / "hub" / "models--tiny--llama"
        (worker / "refs").mkdir(parents=True)
        (worker / "refs" / "main").write_text("0" * 40)  # this node's main: another commit
        copied = copy_from_head(shared, "tiny/llama", "worker")
        assert (worker / "refs" / "main").read_text() == "0" * 40  # left as it was
        record(copied["folder"])
        assert read_copy(worker / "snapshots" / commit)["files"] == read_copy(base / "snapshots" / commit)["files"]
    finally:
        server.close()
    # offline, the pinned commit alone is found in the cache
    offline = HubAccess(offline=True, cache_dir=str(tmp_path / "worker" / "hub"))
    assert fetch_here("tiny/llama", offline, "worker", revision=commit)["folder"].endswith(commit)


def test_a_local_model_folder_is_copied_to_a_node_that_lacks_it(tmp_path):
    """MODEL given as a folder on the head: a node without it (here: another path) gets
    every file, checksummed; with all files at the head's sizes nothing moves and nothing
    is hashed on the head."""
    from orchestrator.models.mirror import FolderServer, copy_folder_from_head

    source = make_tiny_model(tmp_path / "head" / "tiny")
    (source / "sub").mkdir()
    (source / "sub" / "extra.json").write_text("{}")
    server = FolderServer(str(source), "127.0.0.1")
    target = tmp_path / "worker" / "tiny"
    try:
        report = copy_folder_from_head(str(target), server.listing(), server.manifest, "worker")
        assert report["downloaded_bytes"] == report["total_bytes"] > 0
        for path in server.listing():
            assert (target / path).read_bytes() == (source / path).read_bytes()
        fresh = FolderServer(str(source), "127.0.0.1")  # a new serve: its manifest is never asked for
        again = copy_folder_from_head(str(target), fresh.listing(), lambda: pytest.fail("hashed"), "worker")
        assert again["downloaded_bytes"] == 0 and fresh.value is None
        (target / "sub" / "extra.json").unlink()
        assert copy_folder_from_head(str(target), server.listing(), server.manifest, "worker")["downloaded_bytes"] == 2
    finally:
        server.close()
