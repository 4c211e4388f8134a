#!/bin/sh
# Step 1 on the 2-GPU machine (run from the folder it was carried in, after
# device_prepare.sh put ray's first part in /root/wh): install the wheels outside the
# repo, unpack the code, run the cluster scenario. Results in $OUT.
set -e
cd "$(dirname "$0")"
cat /root/wh/ray.part-* ray.part-* > /root/wh/ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl
# vLLM's dependencies, if they came along, wait in /root/wh/deps for step 2.
if [ -f deps.tar ]; then mkdir -p /root/wh/deps && tar xf deps.tar -C /root/wh/deps; fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /root/site \
    /root/wh/ray-2.60.0-*.whl ./*.whl
mkdir -p /root/code && tar xzf code.tgz -C /root/code
export PYTHONPATH=/root/code:/root/site PATH=/root/site/bin:$PATH PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
cd /root/code && python3 scripts/gpu/cluster_scenario.py "${OUT:-/root/out}"
