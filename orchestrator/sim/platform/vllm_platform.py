"""vLLM's CPU platform, made schedulable by vLLM's Ray executor.

Imported by vLLM (never by spark-vllm's own code) after
`orchestrator.sim.platform.plugin.platform_plugin` named it, so importing vLLM here is
fine. Only the Ray device key changes:

- `"GPU"`: vLLM asks Ray for one GPU per worker and the simulated nodes each
  declare `num_gpus=1`. `"CPU"` cannot be used: Ray refuses `CPU` inside
  custom `resources`.
- `device_control_env_var` stays the CPU one (`CPU_VISIBLE_MEMORY_NODES`,
  NUMA nodes). The `CUDA_VISIBLE_DEVICES` Ray sets on GPU actors is ignored by
  the CPU build of torch; pointing vLLM at it would make the second worker's
  "GPU 1" read as NUMA node 1, which does not exist.
"""

from __future__ import annotations

from vllm.platforms.cpu import CpuPlatform


class SimulatedSparkPlatform(CpuPlatform):
    ray_device_key: str = "GPU"
