#!/usr/bin/env bash
# Build the bertforge image (NVIDIA's scripts/docker/build.sh interface).
#
#   bash scripts/docker/build.sh [URL] [PUSH] [DOCKERFILE]
#     URL         image name and tag              (default: bertforge:latest)
#     PUSH        'push' to push after building, 'none' to keep it local (default: none)
#     DOCKERFILE  Dockerfile (GPU, NGC base) or Dockerfile.cpu (default: Dockerfile)
# Extra `docker build` options go in DOCKER_BUILD_ARGS, e.g.
#   DOCKER_BUILD_ARGS="--build-arg FROM_IMAGE_NAME=nvcr.io/nvidia/pytorch:25.01-py3"
# Run from anywhere: the build context is the repository root.
set -euo pipefail

URL=${1:-"bertforge:latest"}
PUSH=${2:-"none"}
DOCKERFILE=${3:-"Dockerfile"}

case "$PUSH" in
    push|none) ;;
    *) echo "error: PUSH must be 'push' or 'none', got '$PUSH'" >&2; exit 2 ;;
esac

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
[[ -f "$repo/$DOCKERFILE" ]] || { echo "error: no Dockerfile at $repo/$DOCKERFILE" >&2; exit 2; }

extra=()
if [[ -n ${DOCKER_BUILD_ARGS:-} ]]; then
    read -r -a extra <<<"$DOCKER_BUILD_ARGS"
fi

docker build --network=host --pull -f "$repo/$DOCKERFILE" -t "$URL" "${extra[@]}" "$repo"

if [[ $PUSH == push ]]; then
    docker push "$URL"
else
    echo "Kept $URL locally (PUSH=none)."
fi
