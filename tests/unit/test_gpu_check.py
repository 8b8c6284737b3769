"""bench/gpu_check.sh: refuses a machine without a GPU in one line (exit 2); its harness runs
on the CPU (--device cpu, the self-test: CUDA-only checks report n/a)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conftest import PYTHON, REPO


def test_without_a_gpu_it_says_so_in_one_line_and_exits_2():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": PYTHON}
    p = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2, p.stderr
    assert p.stdout == "" and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith("gpu_check: no NVIDIA GPU is visible to torch"), p.stderr


def test_unknown_check_is_a_one_line_error():
    p = subprocess.run([PYTHON, "bench/gpu_check.py", "--device", "cpu", "--only", "fp16,warp"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stderr.strip() == \
        "error: --only: unknown check(s) warp (choose from gpu, fp16, bf16, tf32, lamb, nccl, resume, phases, " \
        "squad-onnx, bench-large)", p.stderr


def test_harness_self_test_prints_one_table(tmp_path):
    out = tmp_path / "r.json"
    p = subprocess.run([PYTHON, "bench/gpu_check.py", "--device", "cpu", "--only", "gpu,fp16,tf32,lamb",
                        "--work", str(tmp_path / "w"), "--json", str(out)], cwd=REPO, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = {r["check"]: r for r in json.loads(out.read_text())["rows"]}
    assert [rows[c]["result"] for c in ("gpu", "fp16", "tf32", "lamb")] == ["PASS", "n/a", "n/a", "PASS"]
    assert "bertforge.optim.lamb.LAMB on cpu" in rows["lamb"]["figures"]
    table = p.stdout.split("\ncheck")[1]
    assert all(c in table for c in ("gpu", "fp16", "tf32", "lamb")) and "4 of 4 checks did not fail" in p.stdout


@pytest.mark.slow
def test_every_check_runs_on_the_cpu(tmp_path, real_data):
    """The whole harness on the CPU (fp32, gloo, the cpu_smoke preset, small-p1): it shows the
    checks run end to end, not that a GPU works."""
    real_data("squad/dev-v1.1-sample.json")
    out = tmp_path / "r.json"
    p = subprocess.run([PYTHON, "bench/gpu_check.py", "--device", "cpu", "--work", str(tmp_path / "w"), "--json",
                        str(out)], cwd=REPO, capture_output=True, text=True, timeout=3600)
    rows = {r["check"]: r["result"] for r in json.loads(out.read_text())["rows"]}
    assert p.returncode == 0 and rows == {"gpu": "PASS", "fp16": "n/a", "bf16": "PASS", "tf32": "n/a", "lamb": "PASS",
                                          "nccl": "PASS", "resume": "PASS", "phases": "PASS", "squad-onnx": "PASS",
                                          "bench-large": "PASS"}, p.stdout[-3000:]
