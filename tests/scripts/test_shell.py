"""shellcheck over every shell script in the repository (Debian's `shellcheck` package).

"Every script" = every file git would track (tracked or untracked, .gitignore respected,
virtual environments skipped) that is named *.sh / *.sub or starts with a sh/bash shebang. Installs shellcheck with
apt-get when it is missing and we are root; skips (with the reason) otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHEBANGS = ("#!/bin/bash", "#!/bin/sh", "#!/usr/bin/env bash", "#!/usr/bin/env sh")


def shell_scripts() -> list[Path]:
    """All shell scripts in the working tree (see module docstring)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode()
    # virtual environments that .gitignore does not cover (e.g. a second venv) are not ours
    venvs = {p.parent.name for p in REPO.glob("*/pyvenv.cfg")}
    found = []
    for rel in sorted(set(filter(None, out.split("\0")))):
        path = REPO / rel
        if rel.split("/")[0] in venvs or not path.is_file():
            continue
        if path.suffix in {".sh", ".sub"}:
            found.append(path)
            continue
        if path.suffix in {"", ".bash"}:
            with path.open("rb") as fh:
                first = fh.readline(64).decode("utf-8", "replace").strip()
            if first.startswith(SHEBANGS):
                found.append(path)
    return found


def find_shellcheck() -> str:
    exe = shutil.which("shellcheck")
    if exe:
        return exe
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("shellcheck missing and cannot apt-get install it (not root or no apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "shellcheck"]):
        subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=300)
    exe = shutil.which("shellcheck")
    assert exe, "apt-get installed shellcheck but it is not on PATH"
    return exe


def test_the_scripts_we_ship_are_found() -> None:
    names = {p.relative_to(REPO).as_posix() for p in shell_scripts()}
    for required in ["run.sub", "scripts/docker/build.sh", "scripts/docker/launch.sh",
                     "tests/slurm/start_cluster.sh", "tests/slurm/stop_cluster.sh"]:
        assert required in names


def test_shellcheck_every_script() -> None:
    exe = find_shellcheck()
    scripts = shell_scripts()
    # -x follows `source`d files; -S style reports everything down to style notes
    proc = subprocess.run(
        [exe, "-x", "-S", "style", "--format=gcc", *[str(p) for p in scripts]],
        cwd=REPO, capture_output=True, text=True,
    )
    assert proc.returncode == 0, f"shellcheck findings in {len(scripts)} scripts:\n{proc.stdout}{proc.stderr}"


def test_shellcheck_is_not_a_no_op(tmp_path: Path) -> None:
    exe = find_shellcheck()
    bad = tmp_path / "bad.sh"
    bad.write_text('#!/bin/bash\nrm -rf $1/*\n')  # SC2086: unquoted expansion
    proc = subprocess.run([exe, str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0 and "SC2086" in proc.stdout
