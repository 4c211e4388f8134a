#!/bin/sh
# Prepares what the 2-GPU machine is sent (it reaches no registry), in folders that
# each fit one call's 64 MiB, sent in back-to-back calls to one warm machine:
#   s1a  ray's first 60 MiB                       (run: sh .gpu/s1a/device_chunk.sh)
#   s1b  the rest of ray, step 1's other wheels, vLLM's dependencies (deps.tar), the
#        code and device_step1.sh                 (step 1 runs)
#   s2a.. vLLM's wheel in 60 MiB parts, each with device_chunk.sh; the last one with the
#        code and device_step2.sh instead          (run: sh .gpu/s2e/device_step2.sh)
# Each call carries one folder (`carry: [".gpu/s1a"]`), back to back: the machine goes
# back 30 s after a call ends, and /root/wh with it.
#
#   scripts/gpu/pack.sh DEST WHEELHOUSE   (WHEELHOUSE made by wheelhouse.py with
#       ray==2.60.0 pyroute2==0.9.7 vllm==0.24.0)
set -e
DEST=$1; WH=$2
REPO=$(cd "$(dirname "$0")/../.." && pwd)
rm -rf "$DEST"/s1a "$DEST"/s1b "$DEST"/s2?; mkdir -p "$DEST/s1a" "$DEST/s1b"
split -b 60M "$WH"/ray-2.60.0-cp312-*.whl "$DEST/s1a/ray.part-"
mv "$DEST"/s1a/ray.part-a[b-z] "$DEST/s1b/"
cp "$REPO/scripts/gpu/device_chunk.sh" "$DEST/s1a/"
S1="jsonschema-4 jsonschema_specifications referencing rpds_py pyroute2 typing_extensions"
for w in $S1; do cp "$WH"/$w*.whl "$DEST/s1b/"; done
(cd "$WH" && ls *.whl | grep -v -E "^(ray|vllm)-" | grep -v -E "^($(echo $S1 | tr ' ' '|'))" \
    | tar cf "$DEST/s1b/deps.tar" -T -)
tar czf "$DEST/code.tgz" -C "$REPO" --exclude=__pycache__ orchestrator launch scripts pyproject.toml
cp "$DEST/code.tgz" "$REPO/scripts/gpu/device_step1.sh" "$DEST/s1b/"
split -b 60M "$WH"/vllm-0.24.0-*.whl "$DEST/vllm.part-"
i=0
for part in "$DEST"/vllm.part-*; do
    d="$DEST/s2$(echo abcdefgh | cut -c$((i + 1)))"; mkdir -p "$d"; mv "$part" "$d/"; i=$((i + 1))
    cp "$REPO/scripts/gpu/device_chunk.sh" "$d/"
done
rm "$d/device_chunk.sh"
cp "$DEST/code.tgz" "$REPO/scripts/gpu/device_step2.sh" "$d/"
rm "$DEST/code.tgz"
du -sh "$DEST"/s*
