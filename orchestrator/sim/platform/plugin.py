"""The vLLM platform plugin of the CPU simulation.

vLLM's CPU platform declares no Ray device (`ray_device_key = ""`), so its Ray
executor refuses to run (`current platform cpu does not support ray`). The
simulation gives every Ray node `num_gpus=1` and, through this plugin, tells
vLLM to place one worker per Ray "GPU": tensor parallelism then spans the
simulated Sparks exactly as it spans real ones, with vLLM itself untouched.

vLLM calls `platform_plugin` in every process that imports it (the API
server, the engine core, each Ray worker), so the switch must be in the
environment of all of them: the driver's and each raylet's. The plugin is
inert unless `SPARK_VLLM_SIMULATE=1`, and it never imports vLLM itself: vLLM
imports the returned class when it resolves its platform.
"""

from __future__ import annotations

import os

from ...settings import Settings

SIM_PLATFORM = "orchestrator.sim.platform.vllm_platform.SimulatedSparkPlatform"


def platform_plugin() -> str | None:
    """Entry point `vllm.platform_plugins:spark_vllm_sim`.

    Returns the dotted path of the simulated platform when the simulation is
    on, `None` otherwise (vLLM then detects its platform as usual). vLLM skips
    every platform plugin when `VLLM_TARGET_DEVICE=cpu` is set, and loads only
    the named ones when `VLLM_PLUGINS` is set.
    """
    return SIM_PLATFORM if Settings.from_env(os.environ).simulate else None
