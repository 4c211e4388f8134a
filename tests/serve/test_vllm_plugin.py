"""The general vLLM plugin: with it, Ray's `ray.init` leaves vLLM's SIGTERM handler in
place (its engine process drains through it); without SPARK_VLLM_SERVING it does
nothing. Real Ray module, real signal handlers (restored afterwards)."""

from __future__ import annotations

import signal
from importlib import metadata

import pytest

import ray._private.utils as ray_utils
from orchestrator.serve import vllm_plugin


@pytest.fixture
def restore():
    original, handler = ray_utils.set_sigterm_handler, signal.getsignal(signal.SIGTERM)
    yield
    ray_utils.set_sigterm_handler = original
    signal.signal(signal.SIGTERM, handler)


def vllms_drain(signum, frame):  # stands for vLLM's engine-core handler
    pass


def rays_exit(signum, frame):
    pass


def test_rays_handler_does_not_replace_an_installed_one(restore, monkeypatch):
    monkeypatch.setenv(vllm_plugin.SERVING_VAR, "1")
    vllm_plugin.general_plugin()
    vllm_plugin.general_plugin()  # loaded twice in one process: still one wrapper
    assert ray_utils.set_sigterm_handler.keeps_existing
    signal.signal(signal.SIGTERM, vllms_drain)
    ray_utils.set_sigterm_handler(rays_exit)
    assert signal.getsignal(signal.SIGTERM) is vllms_drain
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # nobody handles it: Ray's goes in as before
    ray_utils.set_sigterm_handler(rays_exit)
    assert signal.getsignal(signal.SIGTERM) is rays_exit


def test_inert_unless_serving(restore, monkeypatch):
    monkeypatch.delenv(vllm_plugin.SERVING_VAR, raising=False)
    before = ray_utils.set_sigterm_handler
    vllm_plugin.general_plugin()
    assert ray_utils.set_sigterm_handler is before


def test_registered_for_vllm():
    eps = [e for e in metadata.entry_points(group="vllm.general_plugins") if e.name == "spark_vllm"]
    assert [e.value for e in eps] == ["orchestrator.serve.vllm_plugin:general_plugin"]
