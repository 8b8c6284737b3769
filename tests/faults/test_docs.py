"""docs/reliability.md lists every fault test of this folder; its counts are current."""

from __future__ import annotations

import re

from tests.faults.helpers import REPO


def test_every_fault_test_is_in_the_reliability_doc():
    doc = (REPO / "docs/reliability.md").read_text(encoding="utf-8")
    names = [m for f in sorted((REPO / "tests/faults").glob("test_*.py")) if f.name != "test_docs.py"
             for m in re.findall(r"^def (test_\w+)\(", f.read_text(), re.M)]
    assert len(names) >= 10
    missing = [n for n in names if n not in doc]
    assert not missing, f"add these faults to docs/reliability.md: {missing}"


def test_reliability_doc_counts_and_bad_input_rows_are_current():
    """The counts and the bad-input table are written by tests/reliability_doc.py --write;
    a new test, case or fuzz setting without a rerun of it fails here."""
    from tests.reliability_doc import check

    assert check() == [], "run: python tests/reliability_doc.py --write"
