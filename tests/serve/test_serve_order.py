"""`serve` sets the plan's environment (Ray's token settings) before vLLM starts to load.

vLLM's CUDA build imports Ray at its own import, and Ray's core takes RAY_AUTH_MODE
once, as it loads: loaded before the plan was applied, the head's own GCS client went
without the token its GCS required (seen on a GPU machine: InvalidAuthToken, exit 4).
tests/cluster/test_auth_order.py starts Ray that way; this holds the order in `serve`.
"""

from __future__ import annotations

import os

import pytest

from launch import servecmd
from launch.cli import build_parser
from orchestrator.cluster.bootstrap import NodeRequest, plan_node
from orchestrator.cluster.ray_node import ClusterOptions
from orchestrator.net.discovery import Discovery
from orchestrator.settings import Settings


class Loaded(Exception):
    """Stops `serve` where vLLM would start to load."""


def test_serve_applies_the_token_settings_before_vllm_loads(monkeypatch, make_iface, tmp_path):
    spark = Discovery((make_iface("enp1s0f1np1", "192.168.100.10/24"),), "netlink")
    token = tmp_path / "ray-token"
    plan = plan_node(NodeRequest(token_file=str(token), cluster=ClusterOptions("", "", num_gpus=1)), spark, {})
    for var in plan.environment():  # whatever serve sets is put back after the test
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    seen = {}

    def load():
        seen.update(mode=os.environ.get("RAY_AUTH_MODE"), path=os.environ.get("RAY_AUTH_TOKEN_PATH"),
                    token=token.is_file())
        raise Loaded

    monkeypatch.setattr(servecmd, "make_plan", lambda args, settings, **kw: plan)
    monkeypatch.setattr(servecmd.engine, "check_model", lambda model: model)
    monkeypatch.setattr(servecmd.engine, "load_in_background", load)
    settings = Settings.from_env({})
    args, args.extra = build_parser(settings).parse_known_args(["serve", "m"])  # every serve option, as parsed
    with pytest.raises(Loaded):
        servecmd.run_serve(args, settings)
    assert seen == {"mode": "token", "path": str(token), "token": True}
