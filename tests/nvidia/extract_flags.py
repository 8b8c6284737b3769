"""Write tests/nvidia/flags.json: NVIDIA's flag tables, read from NVIDIA's own sources.

    python tests/nvidia/extract_flags.py /path/to/DeepLearningExamples.git > tests/nvidia/flags.json

The argument is a clone (or bare mirror) of github.com/NVIDIA/DeepLearningExamples. For the
five entry points of PyTorch/LanguageModeling/BERT at the two generations (``head``: the
LDDL/Parquet code at HEAD; ``2020``: the HDF5 code at commit 7a4c4250) every
``parser.add_argument(...)`` call is read with :mod:`ast` (nothing is imported or run) and
recorded as data: option strings, type, default, choices, required, action. Defaults that
are expressions (``os.getenv('LOCAL_RANK', -1)``, ``PROCESSORS.keys()``) are resolved by hand
below, each with its source text kept in ``default_src``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys

BERT = "PyTorch/LanguageModeling/BERT"
COMMITS = {"head": "HEAD", "2020": "7a4c4250"}
ENTRY_POINTS = ("run_pretraining.py", "run_squad.py", "run_glue.py", "inference.py",
                "create_pretraining_data.py")
# Expressions NVIDIA uses as defaults or choices, with the value they evaluate to.
EXPRESSIONS = {
    "os.getenv('LOCAL_RANK', -1)": -1,  # LOCAL_RANK unset
    "PROCESSORS.keys()": ["cola", "mnli", "mrpc", "sst-2"],  # processors/glue.py PROCESSORS
    "2 ** 20": 2 ** 20,
}


def _value(node: ast.AST):
    src = ast.unparse(node)
    if src in EXPRESSIONS:
        return EXPRESSIONS[src], src
    try:
        return ast.literal_eval(node), None
    except ValueError:
        if isinstance(node, ast.Name):  # a type: str, int, float
            return node.id, None
        raise SystemExit(f"cannot evaluate {src!r}: add it to EXPRESSIONS") from None


def flags_of(source: str) -> list[dict]:
    out = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"):
            continue
        entry = {"options": [ast.literal_eval(a) for a in node.args], "type": "str",
                 "default": None, "choices": None, "required": False, "action": "store"}
        for kw in node.keywords:
            if kw.arg == "help":
                continue
            value, src = _value(kw.value)
            if kw.arg == "type":
                entry["type"] = value
            elif kw.arg == "action":
                entry["action"] = value
            else:
                entry[kw.arg] = value
                if src is not None:
                    entry[f"{kw.arg}_src"] = src
        if entry["action"] == "store_true":
            entry["type"] = "bool"
            entry["default"] = bool(entry["default"]) if entry["default"] is not None else False
        if entry["choices"] is not None:
            entry["choices"] = list(entry["choices"])
        out.append(entry)
    return sorted(out, key=lambda e: e["options"][0])


def main(repo: str) -> None:
    tables: dict = {"source": "github.com/NVIDIA/DeepLearningExamples " + BERT, "commits": {},
                    "entry_points": {}}
    for gen, rev in COMMITS.items():
        sha = subprocess.run(["git", "-C", repo, "rev-parse", rev], capture_output=True, text=True,
                             check=True).stdout.strip()
        tables["commits"][gen] = sha
        for ep in ENTRY_POINTS:
            src = subprocess.run(["git", "-C", repo, "show", f"{sha}:{BERT}/{ep}"], capture_output=True,
                                 text=True, check=True).stdout
            tables["entry_points"].setdefault(ep, {})[gen] = flags_of(src)
    json.dump(tables, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
