#!/bin/sh
# Step 2 on the 2-GPU machine, after step 1 in the same warm machine (ray installed in
# /root/site, vLLM's other parts in /root/wh): install vLLM and its dependencies, run
# the serve scenario. Results in $OUT.
set -e
cd "$(dirname "$0")"
cat /root/wh/vllm.part-* vllm.part-* > /root/wh/vllm-0.24.0-cp38-abi3-manylinux_2_28_x86_64.whl
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /root/site \
    /root/wh/vllm-0.24.0-*.whl /root/wh/deps/*.whl
mkdir -p /root/code && tar xzf code.tgz -C /root/code
export PYTHONPATH=/root/code:/root/site PATH=/root/site/bin:$PATH PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# flashinfer is not carried (wheelhouse.py): keep vLLM's sampler off it.
export VLLM_USE_FLASHINFER_SAMPLER=0
cd /root/code && python3 scripts/gpu/serve_scenario.py "${OUT:-/root/out}"
