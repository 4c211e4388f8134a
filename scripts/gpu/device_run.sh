#!/bin/sh
# On the GPU machine, after device_install.sh: one scenario (a script and its
# arguments, run from the code's root), results in $OUT. The model is /root/blob/smollm2-*.
set -e
. "$(dirname "$0")/device_common.sh"
cd /root/code
MODEL=$(ls -d /root/blob/smollm2-* 2>/dev/null | head -1)
export MODEL
eval "$@"
