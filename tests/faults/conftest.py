"""Fixtures of the fault-injection suite: one tiny world, one fork server, one reference run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.faults.helpers import ForkServer, World, check, make_world, pretrain_args


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    return make_world(tmp_path_factory.mktemp("faults_world"))


@pytest.fixture(scope="session")
def cli():
    """Runs the real CLIs, each in a fresh forked process of an interpreter that has torch
    imported already (tests/faults/forkrun.py), optionally with an injected fault."""
    server = ForkServer(["bertforge.cli.pretrain", "bertforge.train.pretrain", "bertforge.model.bert",
                         "bertforge.cli.create_pretraining_data", "bertforge.data.create",
                         "bertforge.convert", "tests.faults.inject"])
    yield server
    server.close()


@pytest.fixture(scope="session")
def reference(world, cli, tmp_path_factory) -> Path:
    """The uninterrupted run every resumed run must reproduce bit for bit (its ckpt_8.pt)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    check(cli.run("run_pretraining.py", pretrain_args(world, out)))
    assert sorted(p.name for p in out.glob("ckpt_*.pt")) == ["ckpt_4.pt", "ckpt_8.pt"]
    return out


@pytest.fixture(scope="session")
def tmpfs_mounts(tmp_path_factory) -> str | None:
    """``unshare`` arguments that can mount a size-limited tmpfs in a private mount namespace
    (root: -m; else a user namespace: -rm), or None when neither works here."""
    probe = tmp_path_factory.mktemp("tmpfs_probe")
    for flags in (["-m"], ["-rm"]):
        try:
            r = subprocess.run(["unshare", *flags, "sh", "-c",
                                f"mount -t tmpfs -o size=64k tmpfs {probe}"],
                               capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            r = None
        if r is not None and r.returncode == 0:
            return " ".join(flags)
    return None
