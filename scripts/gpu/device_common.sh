# Sourced by the device_*.sh steps: the carried code unpacked afresh, the environment.
mkdir -p /root/wh /root/blob /root/site
rm -rf /root/code && mkdir -p /root/code && tar xzf "$(dirname "$0")/code.tgz" -C /root/code
export PYTHONPATH=/root/code:/root/site PATH=/root/site/bin:$PATH PYTHONUNBUFFERED=1
# NVLink multicast stays off (the lender's rule for these machines).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# flashinfer is not carried (wheelhouse.py): keep vLLM's sampler off it.
export VLLM_USE_FLASHINFER_SAMPLER=0
OUT=${OUT:-/root/out}; mkdir -p "$OUT"
store() { for d in "$@"; do cp "$d"/part-* /root/wh/; done; }
