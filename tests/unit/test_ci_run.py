"""CI's entry point lets no check pass by not running: .ci/run calls make test, make
test-nvidia, make test-slurm (a Slurm cluster required), the resume stress rounds and make
test-acceptance; tests/slurm/run_tests.sh fails instead of skipping
when one is required; make test-acceptance runs the slow checks with --no-skips."""

from __future__ import annotations

import os
import shutil
import subprocess

from tests.conftest import REPO


def _env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "BERTFORGE_REQUIRE_SLURM", "MAKEFLAGS")}
    return dict(env, **extra)


def test_ci_run_calls_every_suite_with_slurm_required(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    fake = bin_dir / "make"  # records each call and the environment it got
    fake.write_text(f'#!/usr/bin/env bash\necho "$*|${{BERTFORGE_REQUIRE_SLURM:-}}|${{BERTFORGE_REAL_DATA:-}}" >> {calls}\n')
    fake.chmod(0o755)
    env = _env(tmp_path, PATH=f"{bin_dir}:{os.environ['PATH']}")
    env.pop("BERTFORGE_REAL_DATA", None)
    r = subprocess.run(["bash", str(REPO / ".ci/run")], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = [line.split("|") for line in calls.read_text().splitlines()]
    targets = [row[0] for row in rows]
    order = [targets.index(t) for t in ("test", "test-nvidia", "test-slurm", "test-resume-stress", "test-acceptance")]
    assert order == sorted(order), targets
    assert all(row[1] == "1" and row[2] == "../shared/data" for row in rows), rows


def test_make_test_acceptance_runs_the_slow_checks_without_skips():
    r = subprocess.run(["make", "-n", "test-acceptance"], cwd=REPO, capture_output=True, text=True, timeout=60,
                       env=_env(None))
    assert r.returncode == 0, r.stderr
    cmd = [line for line in r.stdout.splitlines() if "pytest" in line]
    assert len(cmd) == 1 and '-m "slow and not slurm"' in cmd[0] and "--no-skips" in cmd[0], r.stdout
    # NVIDIA's command lines run once per CI run, in make test-nvidia
    assert "--ignore=tests/integration/test_nvidia_commands.py" in cmd[0], cmd[0]


def _stub_slurm_dir(tmp_path):
    """run_tests.sh beside a start_cluster.sh that cannot start a cluster (exit 3, as when
    Slurm is missing and cannot be installed)."""
    d = tmp_path / "slurm"
    d.mkdir()
    shutil.copy(REPO / "tests/slurm/run_tests.sh", d / "run_tests.sh")
    (d / "start_cluster.sh").write_text('echo "start_cluster: Slurm is not installed and apt-get is unavailable" >&2\n'
                                        "exit 3\n")
    (d / "stop_cluster.sh").write_text("exit 0\n")
    return d


def test_slurm_tests_fail_when_required_and_unavailable(tmp_path):
    d = _stub_slurm_dir(tmp_path)
    run = lambda **extra: subprocess.run(["bash", str(d / "run_tests.sh")], env=_env(tmp_path, **extra),  # noqa: E731
                                         capture_output=True, text=True, timeout=60)
    r = run()
    assert r.returncode == 0 and "test-slurm: SKIPPED: Slurm is not installed" in r.stderr, r.stderr
    for extra in ({"BERTFORGE_REQUIRE_SLURM": "1"}, {"CI": "true"}):
        r = run(**extra)
        assert r.returncode == 1 and "test-slurm: FAILED: a Slurm cluster is required" in r.stderr, r.stderr


def test_slurm_tests_run_with_no_skips():
    text = (REPO / "tests/slurm/run_tests.sh").read_text()
    pytest_lines = [ln for ln in text.splitlines() if "-m pytest" in ln]
    assert len(pytest_lines) == 1 and "--no-skips" in pytest_lines[0]
