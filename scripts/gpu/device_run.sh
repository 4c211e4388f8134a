#!/bin/sh
# On the GPU machine, after device_install.sh: one scenario (a script and its
# arguments, run from the code's root), results in $OUT. The model is /root/blob/smollm2-*.
set -e
. "$(dirname "$0")/device_common.sh"
cd /root/code
MODEL=$(ls -d /root/blob/smollm2-* 2>/dev/null | head -1)
export MODEL
# The harness's results and logs go to $OUT (they come back even when the call's bound
# kills the command); its compile caches stay in /root/cache between calls, as a Spark
# keeps them between starts. Without that, each call starts on empty caches and a pair
# run with --no-warmup charges the first flow for filling them (seen: 1.57 instead of 0.93).
mkdir -p "$OUT/results" /root/cache && ln -sfn "$OUT/results" benchmarks/results && ln -sfn /root/cache "$OUT/results/cache"
eval "$@"
