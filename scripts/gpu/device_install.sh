#!/bin/sh
# On the GPU machine, with every part there: the whole stream unpacked (the wheels, the
# model folder), vLLM and its dependencies installed beside Ray, and vLLM imported once.
set -e
. "$(dirname "$0")/device_common.sh"
store "$@"
rm -rf /root/blob && mkdir -p /root/blob && cat /root/wh/part-* | tar xif - -C /root/blob && rm -f /root/wh/part-*
cd /root/blob
# Every wheel, Ray's too unless step 1 installed them.
[ -d /root/site/ray ] && SKIP="^(ray-2.60.0|jsonschema-4|jsonschema_specifications|referencing|rpds_py|pyroute2|typing_extensions)" \
    || SKIP="^$"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /root/site $(ls *.whl | grep -v -E "$SKIP")
ls -d /root/blob/*/ || true; df -h /root | tail -1
cd /root/code && timeout 120 python3 -c "import vllm, ray; print('vllm', vllm.__version__, 'ray', ray.__version__)"
# issue 20's report: the libnccl torch maps against what the version check and doctor see.
timeout 120 python3 scripts/gpu/nccl_report.py > "$OUT/nccl.json" || echo "nccl_report failed: $?"
