"""Run many CLI invocations cheaply: import the CLIs once, then fork a child per invocation.

Batch: ``python tests/faults/forkrun.py < cases.json > results.json`` with
``{"preload": ["module", ...], "cases": [case, ...]}``; the output is
``{id: {"code", "stdout", "stderr", "seconds"}}``.
Server: ``python tests/faults/forkrun.py --serve MODULE...`` reads one JSON case per line on
stdin and answers one JSON result per line on stdout (until stdin closes).

A case is ``{"id", "argv", "script" | "module", "timeout", "env", "fault", "cwd"}``. It runs
in its own forked process exactly as ``python SCRIPT ARGV`` (or ``python -m MODULE ARGV``)
would in a fresh interpreter from the repo root (or from ``cwd``, when given): ``__main__``, real stdout/stderr file descriptors,
the real exit status (an uncaught exception prints its traceback and exits 1,
``SystemExit`` gives its code, a signal gives ``-signum``); ``env`` is added to the
environment and ``fault`` is injected as tests/faults/inject.py does. Only the imports are
shared, which saves the ~3 s of ``import torch`` per run.
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import signal
import sys
import tempfile
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _child(case: dict, out_path: str, err_path: str) -> None:
    code = 1
    try:
        null = os.open(os.devnull, os.O_RDONLY)  # never the server's request pipe
        os.dup2(null, 0)
        os.close(null)
        for fd, path in ((1, out_path), (2, err_path)):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
        os.chdir(case.get("cwd") or REPO)
        sys.path[0] = REPO
        os.environ.update(case.get("env") or {})
        if case.get("fault"):
            from tests.faults import inject

            inject.apply(case["fault"])
        try:
            if "module" in case:
                sys.argv = [case["module"], *case["argv"]]
                runpy.run_module(case["module"], run_name="__main__", alter_sys=True)
            else:
                script = os.path.join(REPO, case["script"])
                sys.argv = [script, *case["argv"]]
                runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as e:  # what the interpreter does with SystemExit
            if e.code is None:
                code = 0
            elif isinstance(e.code, int):
                code = e.code
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _run(case: dict, tmp: str) -> dict:
    out_path = os.path.join(tmp, "out.txt")
    err_path = os.path.join(tmp, "err.txt")
    sys.stdout.flush()
    sys.stderr.flush()
    t0 = time.time()
    pid = os.fork()
    if pid == 0:
        _child(case, out_path, err_path)
    deadline = t0 + float(case.get("timeout", 120))
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.time() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = None
            break
        time.sleep(0.01)
    if status is None:
        code = "timeout"
    elif os.WIFSIGNALED(status):
        code = -os.WTERMSIG(status)
    else:
        code = os.WEXITSTATUS(status)
    with open(out_path, encoding="utf-8", errors="replace") as f:
        out = f.read()
    with open(err_path, encoding="utf-8", errors="replace") as f:
        err = f.read()
    return {"code": code, "stdout": out, "stderr": err, "seconds": round(time.time() - t0, 3)}


def main() -> None:
    sys.path.insert(0, REPO)
    if sys.argv[1:2] == ["--serve"]:
        for mod in sys.argv[2:]:
            importlib.import_module(mod)
        out = sys.stdout
        with tempfile.TemporaryDirectory() as tmp:
            for line in sys.stdin:
                if line.strip():
                    out.write(json.dumps(_run(json.loads(line), tmp)) + "\n")
                    out.flush()
        return
    spec = json.load(sys.stdin)
    for mod in spec.get("preload", []):
        importlib.import_module(mod)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in spec["cases"]:
            results[case["id"]] = _run(case, tmp)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
