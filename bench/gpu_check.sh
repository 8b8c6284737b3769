#!/usr/bin/env bash
# One command that checks, on a machine with an NVIDIA GPU, every claim of bertforge that only a
# GPU can check, in under 10 minutes, and prints one table of pass/fail and figures:
# fp16 with the dynamic loss scale (a skipped step included), bf16, TF32 really on, apex
# FusedLAMB (else bertforge's LAMB) equal to the CPU reference, nccl on 1 and (when present)
# 2 GPUs, exact resume on the GPU, phase 1 -> phase 2 through scripts/run_pretraining.sh with an
# NVIDIA GPU preset shrunk to a few steps, SQuAD fine-tuning and the ONNX export from that
# GPU-trained checkpoint, and bench_train.py's BERT-large cases beside NVIDIA's published
# single-GPU figures. The checks themselves are in bench/gpu_check.py; see docs/benchmarks.md.
#
#   bash bench/gpu_check.sh [--only fp16,tf32,...] [--work DIR --keep] [--data SAMPLE_DIR] [--json FILE]
#
# Environment: PYTHON (default .venv/bin/python, else python3); BERTFORGE_REAL_DATA, the shared
# data folder with the SQuAD sample (default ../shared/data beside the repository, when there).
# The working directory (default: a new one under $TMPDIR, removed when every check passed) needs
# about 10 GB free: two BERT-large checkpoints with their LAMB moments are written there.
# Exit status: 0 every check passed (or does not apply to this GPU), 1 a check failed,
# 2 no GPU on this machine (one line says so) or bad arguments.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $repo/.venv/bin/python ]]; then PYTHON=$repo/.venv/bin/python; else PYTHON=python3; fi
fi
if [[ -z ${BERTFORGE_REAL_DATA:-} && -d $repo/../shared/data ]]; then
    BERTFORGE_REAL_DATA="$(cd "$repo/../shared/data" && pwd)"
    export BERTFORGE_REAL_DATA
fi

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no NVIDIA GPU is visible to torch ($PYTHON) on this machine: nothing to check" >&2
    exit 2
fi
cd "$repo"
exec "$PYTHON" "$here/gpu_check.py" "$@"
