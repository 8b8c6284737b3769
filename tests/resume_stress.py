"""Run every exact-resume test many times, each round in fresh processes.

    python tests/resume_stress.py --repeat 20 [--slurm] [--summary FILE]

A round is one new ``pytest -m "exact_resume and not slurm"`` process (its fork server,
torchrun agents and training runs are all new processes too) and, with ``--slurm``, one
run of the Slurm requeue chain on a real one-node cluster (``tests/slurm/run_tests.sh``,
which starts and stops the cluster itself). Nothing is shared between rounds but the
files of the repository, so state left in a process, a library or a cache by one round
cannot make the next one pass or fail.

Prints one line per round and a table of failures per test; exits 1 if any round failed.
``make test-resume-stress`` runs 20 rounds; CI (.ci/run) runs 2 (after make test and make
test-slurm, which run each test once). ``--write docs/reliability.md`` puts the table, with
the command, commit and machine, between the file's ``<!-- resume-stress:begin -->`` /
``<!-- resume-stress:end -->`` markers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from report import cpu_name, git_commit  # noqa: E402


def _results(junit: Path) -> dict[str, str]:
    """test id -> 'passed' / 'failed' / 'skipped' from a pytest JUnit XML file."""
    out = {}
    if not junit.is_file():
        return out
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None or case.find("error") is not None:
            out[name] = "failed"
        elif case.find("skipped") is not None:
            out[name] = "skipped"
        else:
            out[name] = "passed"
    return out


def _round(i: int, slurm: bool, workdir: Path, python: str) -> dict:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    junit = workdir / f"round{i}.xml"
    t0 = time.time()
    p = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m",
                        "exact_resume and not slurm", f"--junitxml={junit}", "tests"],
                       cwd=REPO, env=env, capture_output=True, text=True)
    res = _results(junit)
    logs = {"pytest": p.stdout[-6000:] + p.stderr[-3000:]}
    if p.returncode != 0 and not any(v == "failed" for v in res.values()):
        res["pytest (collection or session)"] = "failed"
    if slurm:
        sj = workdir / f"round{i}-slurm.xml"
        q = subprocess.run(["bash", "tests/slurm/run_tests.sh", "-m", "exact_resume",
                            f"--junitxml={sj}"],
                           cwd=REPO, env={**env, "PY": python, "BERTFORGE_REQUIRE_SLURM": "1"},
                           capture_output=True, text=True)
        sres = _results(sj)
        if q.returncode != 0 and not any(v == "failed" for v in sres.values()):
            sres["tests/slurm (cluster)"] = "failed"
        res.update(sres)
        logs["slurm"] = q.stdout[-6000:] + q.stderr[-3000:]
    return {"round": i, "seconds": round(time.time() - t0, 1), "results": res, "logs": logs}


def _node_id(name: str) -> str:
    """'tests.faults.test_x::test_y[a]' (JUnit's classname::name) -> 'tests/faults/test_x.py::test_y[a]'."""
    module, _, test = name.partition("::")
    return f"{module.replace('.', '/')}.py::{test}" if test else name


def _write(doc: Path, args, tests: list[str], failures: dict, rounds: list, seconds: float) -> None:
    cmd = "python tests/resume_stress.py " + " ".join(
        [f"--repeat {args.repeat}"] + (["--slurm"] if args.slurm else []) + [f"--write {args.write}"])
    total = sum(len(v) for v in failures.values())
    lines = [f"Measured by `{cmd}` at commit {git_commit()} on {os.cpu_count()} x {cpu_name()}, "
             f"{datetime.date.today().isoformat()}: {len(tests)} exact-resume tests x "
             f"{args.repeat} rounds, each round in fresh processes, {seconds / 60:.0f} min; "
             f"**{total} failures**.", "", "| test | runs | failures |", "| --- | --- | --- |"]
    for t in tests:
        runs = sum(t in r["results"] for r in rounds)
        lines.append(f"| `{_node_id(t)}` | {runs} | {len(failures.get(t, []))} |")
    text = doc.read_text()
    begin, end = "<!-- resume-stress:begin -->", "<!-- resume-stress:end -->"
    if begin not in text or end not in text:
        raise SystemExit(f"{doc} has no {begin} ... {end} block")
    block = begin + "\n" + "\n".join(lines) + "\n" + end
    doc.write_text(re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=20, help="rounds (default 20)")
    ap.add_argument("--slurm", action="store_true",
                    help="also run the Slurm requeue chain each round (needs root and apt-get)")
    ap.add_argument("--summary", default=None, help="write a JSON summary here")
    ap.add_argument("--python", default=sys.executable, help="interpreter of the test runs")
    ap.add_argument("--write", default=None, metavar="DOC",
                    help="write the table between DOC's resume-stress markers")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error(f"--repeat must be >= 1, got {args.repeat}")
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"bertforge-resume-stress-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    rounds, failures = [], {}
    t0 = time.time()
    for i in range(1, args.repeat + 1):
        r = _round(i, args.slurm, workdir, args.python)
        rounds.append(r)
        bad = sorted(k for k, v in r["results"].items() if v != "passed")
        for k in bad:
            failures.setdefault(k, []).append(i)
        print(f"round {i}/{args.repeat}: {len(r['results'])} tests, "
              f"{sum(v == 'passed' for v in r['results'].values())} passed, "
              f"{len(bad)} not passed, {r['seconds']:.0f} s" + (f": {', '.join(bad)}" if bad else ""),
              flush=True)
        if bad:
            (workdir / f"round{i}.log").write_text("\n\n".join(f"== {k}\n{v}" for k, v in r["logs"].items()))
            print(f"  log: {workdir / f'round{i}.log'}", flush=True)
    tests = sorted({k for r in rounds for k in r["results"]})
    print(f"\n{len(tests)} exact-resume tests x {args.repeat} rounds in fresh processes, "
          f"{time.time() - t0:.0f} s:")
    for t in tests:
        runs = sum(t in r["results"] for r in rounds)
        print(f"  {len(failures.get(t, [])):3d} failed / {runs:3d} runs  {t}")
    if args.summary:
        Path(args.summary).write_text(json.dumps(
            {"commit": git_commit(), "cpu": f"{os.cpu_count()} x {cpu_name()}", "slurm": args.slurm,
             "seconds": round(time.time() - t0), "repeat": args.repeat, "tests": tests, "failures": failures,
             "rounds": [{k: v for k, v in r.items() if k != "logs"} for r in rounds]}, indent=2))
    total = sum(len(v) for v in failures.values())
    print(f"failures: {total}")
    if args.write:
        _write(REPO / args.write, args, tests, failures, rounds, time.time() - t0)
        print(f"wrote the table into {args.write}")
    return 1 if total else 0


if __name__ == "__main__":
    raise SystemExit(main())
