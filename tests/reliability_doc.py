"""docs/reliability.md's figures, written by this script, never by hand.

    python tests/reliability_doc.py --write    # run the bad-input table, rewrite the doc
    python tests/reliability_doc.py --check    # exit 1 if the doc's counts or rows are stale

``--write`` runs every case of tests/unit/test_bad_inputs.py (as the test does: one fork
per case) and rewrites two generated blocks of the doc: the counts (bad inputs, CLIs,
fault tests, fuzz invocations and flags) between ``<!-- counts:begin -->`` and
``<!-- counts:end -->``, and the bad-input table (the message each case printed) between
``<!-- bad-inputs:begin -->`` and ``<!-- bad-inputs:end -->``, with the command and commit.
``--check`` (also a test in ``make test``: tests/faults/test_docs.py) recomputes the
counts and the list of cases from the test sources and compares; it runs nothing.
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reliability.md"
sys.path.insert(0, str(REPO))


def _parametrized(fn: ast.FunctionDef) -> int:
    """How many tests pytest makes of ``fn`` (product of its parametrize lists)."""
    n = 1
    for d in fn.decorator_list:
        if isinstance(d, ast.Call) and getattr(d.func, "attr", "") == "parametrize" and len(d.args) > 1:
            arg = d.args[1]
            if isinstance(arg, (ast.List, ast.Tuple)):
                n *= len(arg.elts)
    return n


def fault_tests() -> tuple[int, int]:
    """(test functions, tests) in tests/faults (its doc check excluded)."""
    funcs = tests = 0
    for f in sorted((REPO / "tests" / "faults").glob("test_*.py")):
        if f.name == "test_docs.py":
            continue
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                funcs += 1
                tests += _parametrized(node)
    return funcs, tests


def counts() -> dict[str, int]:
    import importlib

    from tests.unit import test_bad_inputs as bad
    from tests.unit import test_fuzz_cli as fuzz

    funcs, tests = fault_tests()
    flags = sum(len(fuzz.flags_of(importlib.import_module(m).build_parser())) for _, _, m in fuzz.CLIS.values())
    return {"bad_inputs": len(bad.CASES), "bad_input_clis": len({c for c, _, _ in bad.CASES.values()}),
            "fault_functions": funcs, "fault_tests": tests, "fuzz_invocations": fuzz.n_invocations(),
            "fuzz_clis": len(fuzz.CLIS), "fuzz_flags": flags}


def counts_block(c: dict[str, int]) -> str:
    return "\n".join([
        "| suite | what | count |",
        "| --- | --- | --- |",
        f"| `tests/faults/` | fault-injection and two-run tests (real processes) | {c['fault_tests']} tests "
        f"({c['fault_functions']} functions) |",
        f"| `tests/unit/test_bad_inputs.py` | bad inputs, one line each, exit 2 | {c['bad_inputs']} cases over "
        f"{c['bad_input_clis']} CLIs |",
        f"| `tests/unit/test_fuzz_cli.py` | generated values for every flag of every CLI | "
        f"{c['fuzz_invocations']} invocations per run over {c['fuzz_clis']} CLIs and {c['fuzz_flags']} flags |",
        "| `tests/unit/test_properties.py` | property-based round trips (hypothesis) | text, vocab, HDF5, "
        "Parquet, SQuAD features |",
    ])


def _replace_block(doc: str, name: str, body: str) -> str:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in doc or end not in doc:
        raise SystemExit(f"{DOC}: no {begin} ... {end} block")
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def _short(s: str, fx: dict) -> str:
    for key in sorted(fx, key=lambda k: -len(str(fx[k]))):
        if key != "tmp":
            s = s.replace(str(fx[key]), Path(str(fx[key])).name)
    return s.replace(str(fx["tmp"]) + "/", "")


def _tried(cid: str, cli: str, argv: list[str]) -> str:
    """The flags a case changes against its CLI's base invocation (placeholders by name)."""
    from tests.unit import test_bad_inputs as bad

    base = {bad.P: bad.PRE, bad.C: bad.CRE, bad.S: bad.SQD, bad.G: bad.GLU, bad.I: bad.INF}.get(cli)
    shown = [re.sub(r"\{tmp\}/|\{|\}", "", a).replace("_{id}", "_id") for a in (argv if base is None else
             [a for a in argv if a not in base])]
    if base is not None:
        names = {a.split("=", 1)[0] for a in argv}
        shown += [f"without {n}" for n in dict.fromkeys(a.split("=", 1)[0] for a in base) if n not in names]
    env = " ".join(f"{k}={v}" for k, v in bad.ENV.get(cid, {}).items() if k in ("WORLD_SIZE", "RANK"))
    text = " ".join([env, *shown]).strip()
    return (text[:110] + "...") if len(text) > 113 else (text or "(the base invocation)")


def table_block() -> str:
    from tests.faults.helpers import error_line, forkrun, make_read_only
    from tests.unit import test_bad_inputs as bad

    with tempfile.TemporaryDirectory() as tmp:
        fx = bad._fixtures(Path(tmp))
        undo = make_read_only(fx["read_only"])
        try:
            cases = [{"id": cid, ("script" if cli.endswith(".py") else "module"): cli,
                      "argv": bad._argv(cid, argv, fx), "env": bad.ENV.get(cid, {}), "timeout": 120}
                     for cid, (cli, argv, _) in bad.CASES.items()]
            preload = list(dict.fromkeys(m for mods in bad._PRELOAD.values() for m in mods))
            results = forkrun(cases, preload, timeout=3600)
        finally:
            undo()
        rows = ["| case | CLI | value tried | exit | message |", "| --- | --- | --- | --- | --- |"]
        for cid, (cli, argv, _) in bad.CASES.items():
            r = results[cid]
            line = _short(error_line(r["stderr"], r["stdout"]), fx).replace("|", "\\|")
            line = (line[:240] + "...") if len(line) > 243 else line
            shown = cli if cli.endswith(".py") else f"-m {cli}"
            rows.append(f"| `{cid}` | `{shown}` | `{_tried(cid, cli, argv)}` | {r['code']} | {line} |")
    return "\n".join(rows)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def check(doc: str | None = None) -> list[str]:
    """What is stale in the doc (empty when it is current)."""
    from tests.unit import test_bad_inputs as bad

    doc = DOC.read_text(encoding="utf-8") if doc is None else doc
    problems = []
    m = re.search(r"<!-- counts:begin -->\n(.*?)\n<!-- counts:end -->", doc, re.S)
    if not m:
        problems.append("no counts block")
    elif m.group(1) != counts_block(counts()):
        problems.append("the counts are stale")
    m = re.search(r"<!-- bad-inputs:begin -->\n(.*?)\n<!-- bad-inputs:end -->", doc, re.S)
    rows = re.findall(r"^\| `([^`]+)` \|", m.group(1), re.M) if m else []
    if rows != list(bad.CASES):
        problems.append(f"the bad-input table's rows are not the cases: missing "
                        f"{sorted(set(bad.CASES) - set(rows))[:5]}, extra {sorted(set(rows) - set(bad.CASES))[:5]}")
    return problems


def main() -> int:
    p = argparse.ArgumentParser(prog="python tests/reliability_doc.py", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", action="store_true", help="run the bad-input cases and rewrite the doc")
    g.add_argument("--check", action="store_true", help="exit 1 if the doc is stale")
    args = p.parse_args()
    if args.check:
        problems = check()
        for msg in problems:
            print(f"{DOC}: {msg} (run: python tests/reliability_doc.py --write)", file=sys.stderr)
        return 1 if problems else 0
    doc = DOC.read_text(encoding="utf-8")
    doc = _replace_block(doc, "counts", counts_block(counts()))
    table = table_block()
    note = (f"Written by `python tests/reliability_doc.py --write` at commit {_commit()} (the messages "
            "are the ones the cases printed; temporary paths shortened to their names).\n\n")
    doc = _replace_block(doc, "bad-inputs", note + table)
    DOC.write_text(doc, encoding="utf-8")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
