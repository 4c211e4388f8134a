#!/bin/sh
# On the GPU machine: keep this call's parts (folders cNN) in /root/wh for the later steps.
set -e
. "$(dirname "$0")/device_common.sh"
store "$@"; ls -l /root/wh
