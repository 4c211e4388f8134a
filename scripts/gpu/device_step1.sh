#!/bin/sh
# Step 1 on the GPU machine, once the parts that hold Ray are there (the stream starts
# with Ray's and step 1's wheels; the part cut short at the end is left for later):
# install them outside the repository, then the cluster scenario (head, worker, status,
# fabric-test over NCCL and Gloo) and the NCCL library report. Results in $OUT.
set -e
. "$(dirname "$0")/device_common.sh"
store "$@"
cat /root/wh/part-* | tar xif - -C /root/blob 2>/dev/null || true
cd /root/blob
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /root/site \
    ray-2.60.0-*.whl jsonschema-4*.whl jsonschema_specifications*.whl referencing*.whl rpds_py*.whl \
    pyroute2*.whl typing_extensions*.whl
cd /root/code
timeout 120 python3 scripts/gpu/nccl_report.py > "$OUT/nccl.json" || true
timeout 300 python3 scripts/gpu/cluster_scenario.py "$OUT"
