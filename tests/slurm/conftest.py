"""Fixtures for the tests that run on a real one-node Slurm cluster (`make test-slurm`).

Every test module here sets `pytestmark = pytest.mark.slurm`, so `make test` (-m "not slurm") leaves them out.
`tests/slurm/run_tests.sh` starts the cluster and exports BERTFORGE_SLURM_RUNDIR; when
pytest is run on this folder directly, the `slurm` fixture starts (and stops) one itself.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@dataclass
class Job:
    """A submitted batch job; `wait()` polls squeue (sbatch --wait polls slowly)."""

    cluster: Cluster
    job_id: str
    output: Path

    def state(self) -> str:
        out = self.cluster.run(["scontrol", "show", "job", self.job_id]).stdout
        for word in out.split():
            if word.startswith("JobState="):
                return word.split("=", 1)[1]
        return "UNKNOWN"

    def field(self, name: str) -> str:
        out = self.cluster.run(["scontrol", "show", "job", self.job_id]).stdout
        for word in out.split():
            if word.startswith(name + "="):
                return word.split("=", 1)[1]
        raise KeyError(name)

    def wait(self, timeout: float = 240) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.cluster.run(["squeue", "-h", "-j", self.job_id]).stdout.strip():
                return self.state()
            time.sleep(0.5)
        self.cluster.run(["scancel", self.job_id])
        raise TimeoutError(f"job {self.job_id} still queued/running after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.output.read_text() if self.output.exists() else "(no output file)"


@dataclass
class Cluster:
    rundir: Path
    env: dict = field(default_factory=dict)

    def run(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60, **kw)

    def sbatch(self, script: Path, output: Path, *opts: str, env: dict | None = None,
               cwd: Path = REPO) -> Job:
        """Submit `script` with sbatch options `opts`; extra environment in `env`."""
        argv = ["sbatch", "--parsable", f"--output={output}", "--open-mode=append", *opts, str(script)]
        proc = subprocess.run(argv, env={**self.env, **(env or {})}, cwd=cwd,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"sbatch failed: {proc.stderr}"
        return Job(self, proc.stdout.strip().split(";")[0], output)


def _start(rundir: Path) -> None:
    proc = subprocess.run(["bash", str(HERE / "start_cluster.sh"), str(rundir)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode == 3:
        reason = proc.stderr.strip().splitlines()[-1]
        if os.environ.get("CI") or os.environ.get("BERTFORGE_REQUIRE_SLURM"):
            pytest.fail(f"Slurm required here but unavailable: {reason}")
        pytest.skip(reason)
    assert proc.returncode == 0, f"start_cluster.sh failed:\n{proc.stderr}"


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory):
    """The running cluster: a `Cluster` whose env points every client at its slurm.conf."""
    given = os.environ.get("BERTFORGE_SLURM_RUNDIR")
    rundir = Path(given) if given else tmp_path_factory.mktemp("slurm")
    if not given:
        _start(rundir)
    env = dict(os.environ, SLURM_CONF=str(rundir / "slurm.conf"))
    try:
        yield Cluster(rundir, env)
    finally:
        if not given:
            subprocess.run(["bash", str(HERE / "stop_cluster.sh"), str(rundir)], timeout=120)
