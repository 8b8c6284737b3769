# bertforge on NVIDIA's NGC PyTorch image (GPU). Build with scripts/docker/build.sh.
#
# Base: nvcr.io/nvidia/pytorch:24.12-py3 (PyTorch 2.6 CUDA build, CUDA 12.6, Python 3.12).
# The tag is pinned so a rebuild gives the same stack; override with
#   docker build --build-arg FROM_IMAGE_NAME=nvcr.io/nvidia/pytorch:25.01-py3 .
# NGC's own torch and numpy are kept: bertforge is installed with --no-deps on top of
# the pinned requirements in docker/requirements.txt (everything except torch/numpy).
ARG FROM_IMAGE_NAME=nvcr.io/nvidia/pytorch:24.12-py3
FROM ${FROM_IMAGE_NAME}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Tools used by the data scripts (dump decompression, progress on pipes). Versions come
# from the base image's Ubuntu release, which the pinned tag already fixes.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends pbzip2 pv bzip2 \
 && rm -rf /var/lib/apt/lists/*

ENV BERT_PREP_WORKING_DIR=/workspace/bert/data \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Non-root user `bert` owning the workspace and /results (where launch.sh mounts outputs);
# created before the source is copied so that COPY --chown avoids a second copy of it.
ARG USER_UID=10001
RUN groupadd --gid "${USER_UID}" bert \
 && useradd --create-home --uid "${USER_UID}" --gid "${USER_UID}" --shell /bin/bash bert \
 && mkdir -p /workspace/bert /results \
 && chown bert:bert /workspace/bert /results

WORKDIR /workspace/bert

# Dependencies first: this layer is rebuilt only when the pins change, not on every
# source edit.
COPY docker/requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt

# Then the source. Editable install, so `launch.sh` can mount a working copy over
# /workspace/bert and run it without rebuilding (as NVIDIA's launch.sh does).
COPY --chown=bert:bert . .
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e . \
 && python -c "import bertforge"

USER ${USER_UID}:${USER_UID}
