#!/bin/sh
# Build the Containerfile for real on a machine without a Docker engine: buildah with
# chroot isolation, against a stand-in base made locally from Debian's packages
# (debootstrap minbase bookworm + python3), since NVIDIA's base is not reachable here.
# Usage (root): benchmarks/container_build.sh [IMAGE]; then benchmarks/container_pid1.py.
set -eu
IMAGE=${1:-localhost/spark-vllm:standin}
BASE=localhost/spark-vllm-standin-base
ROOTFS=${ROOTFS:-/tmp/spark-vllm-standin-rootfs}
cd "$(dirname "$0")/.."
command -v buildah >/dev/null && command -v debootstrap >/dev/null || {
    echo "installing buildah and debootstrap"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah debootstrap >/dev/null; }
if ! buildah inspect --type image "$BASE" >/dev/null 2>&1; then
    [ -x "$ROOTFS/usr/bin/python3" ] || debootstrap --variant=minbase \
        --include=python3,python3-venv,python3-pip bookworm "$ROOTFS" http://deb.debian.org/debian
    ctr=$(buildah from scratch)
    mnt=$(buildah mount "$ctr")
    cp -a "$ROOTFS"/. "$mnt"/
    # This machine's trust store (a TLS-intercepting proxy's CA may be in it), for pip.
    mkdir -p "$mnt/etc/ssl/certs" && cp /etc/ssl/certs/ca-certificates.crt "$mnt/etc/ssl/certs/"
    buildah umount "$ctr"
    buildah commit -q "$ctr" "$BASE"
    buildah rm "$ctr" >/dev/null
fi
start=$(date +%s)
buildah bud --isolation chroot --format docker --layers=false --build-arg BASE="$BASE" -t "$IMAGE" -f Containerfile .
echo "built $IMAGE in $(( $(date +%s) - start )) s"
buildah inspect --type image --format '{{.Docker.Config.Healthcheck}} {{.OCIv1.Config.Entrypoint}} {{.OCIv1.Config.Cmd}}' "$IMAGE"
