"""serve_demo.py writes under the caller's directory and hands absolute paths to the
run_squad.py subprocess (which runs with the repository as its cwd), whichever copy of
bertforge is imported."""

from __future__ import annotations

import os

import pytest

from bertforge.serving import demo


class _Stop(Exception):
    pass


def test_work_dir_and_data_are_resolved_against_the_callers_cwd(tmp_path, monkeypatch, real_data):
    sample = real_data("squad/dev-v1.1-sample.json").resolve()  # before the chdir below
    root = sample.parents[1]
    caller = tmp_path / "second_clone"
    caller.mkdir()
    monkeypatch.chdir(caller)
    monkeypatch.setenv("BERTFORGE_REAL_DATA", os.path.relpath(root, caller))  # relative, as in the Makefile
    seen = {}

    def fake_finetune(work, data, steps, max_seq_length):
        seen.update(work=work, data=data)
        raise _Stop

    monkeypatch.setattr(demo, "_finetune", fake_finetune)
    with pytest.raises(_Stop):
        demo.main([])
    assert seen["work"] == caller / "results" / "serve_demo"  # not under the package's repository
    assert seen["data"].is_absolute() and seen["data"] == root.resolve()
