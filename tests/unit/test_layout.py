"""Layout rules of docs/architecture.md that code review alone would let drift."""

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


# The floors of docs/architecture.md: a module imports from its own floor or the ones below.
FLOORS = {
    "errors": 0, "files": 0, "config": 0, "memory": 0, "outputs": 0,
    "model": 1, "data": 1, "optim": 1, "checkpoint": 1, "distributed": 1, "precision": 1,
    "rng": 1, "runlog": 1, "nvidia_checkpoint": 1, "profiling": 1,
    "train": 2, "tasks": 2,
    "cli": 3, "serving": 3, "convert": 3, "evaluate_squad": 3, "plot": 3,
}


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "bertforge" else None


def _imports_between_rooms() -> set[tuple[str, str, str]]:
    import ast

    edges = set()
    for p in (REPO / "bertforge").rglob("*.py"):
        rel = p.relative_to(REPO).with_suffix("").as_posix().replace("/", ".")
        src = _room(rel)
        if src is None or src == "__init__":
            continue
        for n in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            names = [n.module] if isinstance(n, ast.ImportFrom) and n.module else \
                [a.name for a in n.names] if isinstance(n, ast.Import) else []
            for name in names:
                dst = _room(name)
                if dst is not None and dst != src:
                    edges.add((src, dst, p.relative_to(REPO).as_posix()))
    return edges


def test_imports_flow_down_and_rooms_form_no_cycle():
    edges = _imports_between_rooms()
    rooms = {s for s, _, _ in edges} | {d for _, d, _ in edges}
    assert rooms <= set(FLOORS), f"place these in FLOORS and docs/architecture.md: {rooms - set(FLOORS)}"
    upward = sorted(f"{f} imports {d}" for s, d, f in edges if FLOORS[d] > FLOORS[s])
    assert not upward, upward
    graph: dict[str, set[str]] = {}
    for s, d, _ in edges:
        graph.setdefault(s, set()).add(d)
    state: dict[str, int] = {}

    def visit(r: str, path: list[str]) -> None:
        state[r] = 1
        for nxt in sorted(graph.get(r, ())):
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join(path + [r, nxt])}"
            if nxt not in state:
                visit(nxt, path + [r])
        state[r] = 2

    for r in sorted(graph):
        if r not in state:
            visit(r, [])
