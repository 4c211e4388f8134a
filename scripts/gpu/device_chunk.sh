#!/bin/sh
# On the 2-GPU machine: keep this call's part of a split wheel in /root/wh (outside the
# repository, kept while the machine stays warm) for device_step1.sh / device_step2.sh.
set -e
mkdir -p /root/wh && cp "$(dirname "$0")"/*.part-* /root/wh/ && ls /root/wh
