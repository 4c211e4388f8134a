#!/bin/sh
# Prepares what the GPU machine is sent (it reaches no registry) for back-to-back calls
# to one warm machine, each carrying at most 64 MiB (the machine goes back 30 s after a
# call, and what it holds with it):
#   DEST/code  code.tgz (orchestrator, launch, scripts, benchmarks) and the device_*.sh
#              steps: small, carried in every call, so a fix travels with the next one
#   DEST/cNN   one 62 MiB part of one stream: a tar of the wheels, Ray's and step 1's
#              first, then vLLM's, then the model folder (if given)
# The calls (`carry: [".gpu/code", ".gpu/cNN"]`):
#   sh .gpu/code/device_store.sh .gpu/c00          (keeps the part in /root/wh)
#   sh .gpu/code/device_step1.sh .gpu/c01          (Ray is whole: step 1 runs)
#   sh .gpu/code/device_store.sh .gpu/c02 .. (last-1)
#   sh .gpu/code/device_install.sh .gpu/cLAST      (all there: vLLM installed, checked)
#   sh .gpu/code/device_run.sh SCRIPT ARGS         (each scenario, one call each)
#
#   scripts/gpu/pack.sh DEST WHEELHOUSE [MODEL_DIR]   (WHEELHOUSE made by wheelhouse.py
#       with ray==2.60.0 pyroute2==0.9.7 vllm==0.24.0; MODEL_DIR a made SmolLM2 folder)
set -e
DEST=$1; WH=$2; MODEL=$3
REPO=$(cd "$(dirname "$0")/../.." && pwd)
rm -rf "$DEST"/c?? "$DEST/code"; mkdir -p "$DEST/code"
tar czf "$DEST/code/code.tgz" -C "$REPO" --exclude=__pycache__ --exclude=results orchestrator launch scripts \
    benchmarks pyproject.toml
cp "$REPO"/scripts/gpu/device_*.sh "$DEST/code/"
S1="ray-2.60.0 jsonschema-4 jsonschema_specifications referencing rpds_py pyroute2 typing_extensions"
LIST=$(mktemp)
(cd "$WH" && for w in $S1; do ls $w*.whl; done && ls *.whl | grep -v -E "^($(echo $S1 | tr ' ' '|'))") > "$LIST"
{ tar cf - -C "$WH" -T "$LIST"; [ -z "$MODEL" ] || tar cf - -C "$(dirname "$MODEL")" "$(basename "$MODEL")"; } \
    | split -b 62M -d - "$DEST/part-"
rm "$LIST"
for part in "$DEST"/part-*; do n=${part##*-}; mkdir -p "$DEST/c$n"; mv "$part" "$DEST/c$n/"; done
du -sh "$DEST"/code "$DEST"/c??
