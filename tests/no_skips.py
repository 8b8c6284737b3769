"""pytest plugin: ``--no-skips`` turns every skip into a failure.

`make test-acceptance` and the Slurm tests (tests/slurm/run_tests.sh) run with it, so a check
that cannot run (no real data, no cluster, a missing tool) fails instead of passing as "skipped". tests/conftest.py registers these hooks for the whole suite; a test can load the
module alone with ``-p tests.no_skips``.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--no-skips", action="store_true",
                     help="a skipped test (or module) is a failure: for runs where every check must run")


def _reason(longrepr) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (file, line, "Skipped: reason")
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and not hasattr(rep, "wasxfail") and item.config.getoption("--no-skips"):
        rep.outcome = "failed"
        rep.longrepr = f"skipped under --no-skips (this run must not skip): {_reason(rep.longrepr)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and collector.config.getoption("--no-skips"):  # a module-level pytest.skip()
        rep.outcome = "failed"
        rep.longrepr = f"skipped under --no-skips (this run must not skip): {_reason(rep.longrepr)}"
