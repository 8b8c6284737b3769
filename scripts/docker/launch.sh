#!/usr/bin/env bash
# Start an interactive bertforge container (NVIDIA's scripts/docker/launch.sh interface).
#
#   bash scripts/docker/launch.sh [CMD] [NV_VISIBLE_DEVICES] [EXTRA_MOUNTS] [IMAGE] [DOCKER_BRIDGE]
#     CMD                 command to run                     (default: /bin/bash)
#     NV_VISIBLE_DEVICES  GPUs: 'all', '0,1', or 'none' for CPU (default: all)
#     EXTRA_MOUNTS        extra `docker run` options, e.g. "-v /data:/data" (default: none)
#     IMAGE               image built by build.sh            (default: bertforge:latest)
#     DOCKER_BRIDGE       network                            (default: host)
# The working copy is mounted over /workspace/bert (the image installs it editable, so
# edits need no rebuild) and ./results over /results. The container runs as the calling
# user so files it writes into the mounts stay yours.
set -euo pipefail

CMD=${1:-/bin/bash}
NV_VISIBLE_DEVICES=${2:-"all"}
EXTRA_MOUNTS=${3:-""}
IMAGE=${4:-"bertforge:latest"}
DOCKER_BRIDGE=${5:-"host"}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
mkdir -p "$repo/results"

gpus=()
if [[ $NV_VISIBLE_DEVICES != none ]]; then
    gpus=(--gpus "\"device=${NV_VISIBLE_DEVICES}\"")
fi
mounts=()
if [[ -n $EXTRA_MOUNTS ]]; then
    read -r -a mounts <<<"$EXTRA_MOUNTS"
fi
tty=()
[[ -t 0 ]] && tty=(-it)
read -r -a cmd <<<"$CMD"

docker run "${tty[@]}" --rm \
    "${gpus[@]}" \
    --net="$DOCKER_BRIDGE" \
    --shm-size=1g \
    --ulimit memlock=-1 \
    --ulimit stack=67108864 \
    --user "$(id -u):$(id -g)" \
    -e HOME=/tmp \
    -v "$repo":/workspace/bert \
    -v "$repo/results":/results \
    "${mounts[@]}" \
    "$IMAGE" "${cmd[@]}"
