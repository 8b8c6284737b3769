"""Layout rules of shared/DESIGN.md that code review alone would let drift."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

SHIMS = ["run_pretraining.py", "run_squad.py", "run_glue.py", "create_pretraining_data.py", "inference.py"]


@pytest.mark.parametrize("name", SHIMS)
def test_entry_points_are_thin_shims(name):
    lines = [ln for ln in (REPO / name).read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert len(lines) <= 4, f"{name} has grown past a shim: {lines}"
    assert any("from bertforge.cli." in ln for ln in lines)


def test_repo_root_shadows_no_third_party_package():
    """A top-level folder named like an installed-or-optional package (``triton/`` did) is
    imported instead of it whenever a repo-root script runs; torch.optim then crashed."""
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); import torch; "
            "torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1); print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-500:]
    for name in ("triton", "torch", "transformers", "tokenizers", "onnx", "dllogger", "apex"):
        assert not (REPO / name).exists(), f"top-level {name}/ shadows the package of that name"


def test_no_module_shadows_the_standard_library():
    """A ``bertforge/io.py`` or ``logging.py`` reads as the standard library's module at every
    ``import io`` written inside its package by a tool or a newcomer; names stay distinct."""
    clash = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "bertforge").rglob("*.py")
                   if p.stem in sys.stdlib_module_names)
    assert not clash, f"rename these modules: {clash}"
