#!/bin/sh
# Build the Containerfile for real on a machine without a Docker engine: buildah with
# chroot isolation, against a stand-in base made locally from Debian's packages
# (debootstrap minbase bookworm + python3), since NVIDIA's base is not reachable here.
# Usage (root): [RAY_IN_BASE=2.51.1] benchmarks/container_build.sh [IMAGE]; then
# benchmarks/container_pid1.py.
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
# RAY_IN_BASE=2.51.1: a base that also holds that Ray (plain `ray`, no dashboard) and, as
# package metadata only, a vLLM and a torch, as NVIDIA's 25.x images do. Made once, kept.
if [ -n "${RAY_IN_BASE:-}" ]; then
    OLD="$BASE-ray$RAY_IN_BASE"
    if ! buildah inspect --type image "$OLD" >/dev/null 2>&1; then
        ctr=$(buildah from "$BASE")
        buildah run --isolation chroot "$ctr" python3 -m pip install -q --break-system-packages "ray==$RAY_IN_BASE"
        buildah run --isolation chroot "$ctr" python3 -c '
import pathlib, site
for name, version in (("torch", "2.10.0a0+b558c986e8.nv25.11"), ("vllm", "0.11.0+nv25.11")):
    info = pathlib.Path(site.getsitepackages()[0], f"{name}-{version}.dist-info")
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "INSTALLER").write_text("nvidia\n")'
        buildah commit -q "$ctr" "$OLD"
        buildah rm "$ctr" >/dev/null
    fi
    BASE=$OLD
fi
start=$(date +%s)
buildah bud --isolation chroot --format docker --layers=false --build-arg BASE="$BASE" -t "$IMAGE" -f Containerfile .
echo "built $IMAGE in $(( $(date +%s) - start )) s"
buildah inspect --type image --format '{{.Docker.Config.Healthcheck}} {{.OCIv1.Config.Entrypoint}} {{.OCIv1.Config.Cmd}}' "$IMAGE"
