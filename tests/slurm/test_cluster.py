"""The test cluster itself works: 2 srun tasks with Slurm ranks join a gloo group."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

HERE = Path(__file__).resolve().parent


def test_two_tasks_allreduce_over_gloo(slurm, tmp_path: Path) -> None:
    script = tmp_path / "smoke.sbatch"
    script.write_text(
        "#!/bin/bash\n"
        "#SBATCH --ntasks=2\n"
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | awk "NR == 1")\n'
        "export MASTER_ADDR MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))\n"
        'srun -l bash -c \'echo "rank=$SLURM_PROCID local=$SLURM_LOCALID ntasks=$SLURM_NTASKS"\'\n'
        f"srun {sys.executable} {HERE / 'allreduce.py'}\n"
    )
    job = slurm.sbatch(script, tmp_path / "smoke.out")
    assert job.wait(timeout=120) == "COMPLETED", job.log()
    log = job.log()
    assert "allreduce world=2 sum=1" in log          # 0 + 1 from the two ranks
    for r in (0, 1):
        assert f"rank={r} local={r} ntasks=2" in log
