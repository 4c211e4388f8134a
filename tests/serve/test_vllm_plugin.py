"""The general vLLM plugin: with it, Ray's `ray.init` leaves vLLM's SIGTERM handler in
place (its engine process drains through it); without SPARK_VLLM_SERVING it does
nothing. Real Ray module, real signal handlers (restored afterwards)."""

from __future__ import annotations

import signal
from importlib import metadata

import pytest

import ray._private.utils as ray_utils
from ray._private import ray_constants
from orchestrator.serve import vllm_plugin

SWITCH = "RAY_DISABLE_FAILURE_SIGNAL_HANDLER"


@pytest.fixture
def restore(monkeypatch):
    original, handler = ray_utils.set_sigterm_handler, signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(ray_constants, SWITCH, False)
    monkeypatch.delenv(SWITCH, raising=False)
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
    assert getattr(ray_constants, SWITCH) is False


def test_no_crash_dump_on_sigterm_in_a_driver_not_yet_connected(restore, monkeypatch):
    """The engine core (Ray not initialized here either): Ray's C++ handler, which dumps
    a stack on every SIGTERM, will not be installed by its `ray.init`."""
    monkeypatch.setenv(vllm_plugin.SERVING_VAR, "1")
    vllm_plugin.general_plugin()
    assert getattr(ray_constants, SWITCH) is True


def test_a_users_choice_of_rays_crash_handler_wins(restore, monkeypatch):
    monkeypatch.setenv(vllm_plugin.SERVING_VAR, "1")
    monkeypatch.setenv(SWITCH, "0")
    vllm_plugin.general_plugin()
    assert getattr(ray_constants, SWITCH) is False


def test_registered_for_vllm():
    eps = [e for e in metadata.entry_points(group="vllm.general_plugins") if e.name == "spark_vllm"]
    assert [e.value for e in eps] == ["orchestrator.serve.vllm_plugin:general_plugin"]
