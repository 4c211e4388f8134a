"""The GPU simulation's plan: which GPU each simulated Spark sees, and what it says."""

import pytest

from orchestrator.errors import SimulationError
from orchestrator.sim.namespaces import gpusim


def test_one_gpu_is_shared_with_a_host_id_each():
    layout = gpusim.plan_gpus(1, 2, ("svgpu-0", "svgpu-1"))
    assert layout.mode == gpusim.SHARED
    assert layout.env(0)["CUDA_VISIBLE_DEVICES"] == layout.env(1)["CUDA_VISIBLE_DEVICES"] == "0"
    # Without distinct host ids NCCL stops: "Duplicate GPU detected : rank 0 and rank 1 both on CUDA device".
    assert (layout.env(0)["NCCL_HOSTID"], layout.env(1)["NCCL_HOSTID"]) == ("svgpu-0", "svgpu-1")
    assert "GPUs shared" in layout.describe() and "NCCL_HOSTID=svgpu-1" in layout.describe()


@pytest.mark.parametrize("gpus", [2, 8])
def test_two_or_more_gpus_give_one_each(gpus):
    layout = gpusim.plan_gpus(gpus, 2, ("a", "b"))
    assert layout.mode == gpusim.ONE_EACH
    assert [layout.env(i)["CUDA_VISIBLE_DEVICES"] for i in (0, 1)] == ["0", "1"]
    assert "NCCL_HOSTID" not in layout.env(0) and "GPUs one each" in layout.describe()


def test_fewer_gpus_than_sparks_are_shared_in_turn():
    layout = gpusim.plan_gpus(2, 3)
    assert layout.mode == gpusim.SHARED and layout.devices == (0, 1, 0)
    assert len(set(layout.host_ids)) == 3


def test_nccl_kept_on_the_veth_in_both_modes():
    for layout in (gpusim.plan_gpus(1, 2), gpusim.plan_gpus(2, 2)):
        env = layout.env(1)
        assert {k: env[k] for k in gpusim.NCCL_OVER_VETH} == gpusim.NCCL_OVER_VETH


def test_no_gpu_is_a_clear_error():
    with pytest.raises(SimulationError, match="needs a GPU"):
        gpusim.plan_gpus(0, 2)


def test_vllm_flags_fix_the_kv_cache_so_a_shared_gpu_fits():
    flags = gpusim.GPU_VLLM_FLAGS
    assert int(flags[flags.index("--kv-cache-memory-bytes") + 1]) == gpusim.KV_CACHE_BYTES
    share = float(flags[flags.index("--gpu-memory-utilization") + 1])
    assert share * 3 <= 0.5  # two simulated Sparks and the single-process reference, with room to spare
