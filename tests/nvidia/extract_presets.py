"""Write tests/nvidia/presets.json: the arguments each of NVIDIA's presets echoes.

    python tests/nvidia/extract_presets.py /path/to/DeepLearningExamples.git > tests/nvidia/presets.json

For scripts/configs/{pretrain,squad,glue}_config.sh of NVIDIA's BERT for PyTorch at HEAD
and at the 2020 commit 7a4c4250, every function the file defines is called in a clean bash
with BERT_PREP_WORKING_DIR=$BPWD (a marker) and its words are recorded. Helper functions
(those that print nothing, or set variables only) are left out. The presets only set
variables and echo them, so running them runs nothing else.
"""

from __future__ import annotations

import json
import subprocess
import sys

BERT = "PyTorch/LanguageModeling/BERT"
COMMITS = {"head": "HEAD", "2020": "7a4c4250"}
FILES = ("pretrain_config.sh", "squad_config.sh", "glue_config.sh")
HELPERS = {"batch_size_and_gradient_accumulation_steps", "print_arguments_in_order"}


def presets(source: str) -> dict[str, list[str]]:
    env = {"PATH": "/usr/bin:/bin", "BERT_PREP_WORKING_DIR": "$BPWD"}
    names = subprocess.run(["bash", "-c", 'eval "$SRC"; declare -F | cut -d" " -f3'],
                           env={**env, "SRC": source}, capture_output=True, text=True,
                           check=True).stdout.split()
    out = {}
    for name in names:
        if name in HELPERS or name.endswith("commons"):
            continue
        words = subprocess.run(["bash", "-c", f'eval "$SRC"; {name}'], env={**env, "SRC": source},
                               capture_output=True, text=True, check=True).stdout.split()
        if words:
            out[name] = words
    return out


def main(repo: str) -> None:
    tables: dict = {"source": "github.com/NVIDIA/DeepLearningExamples " + BERT, "commits": {},
                    "presets": {}}
    for gen, rev in COMMITS.items():
        sha = subprocess.run(["git", "-C", repo, "rev-parse", rev], capture_output=True, text=True,
                             check=True).stdout.strip()
        tables["commits"][gen] = sha
        for f in FILES:
            src = subprocess.run(["git", "-C", repo, "show", f"{sha}:{BERT}/scripts/configs/{f}"],
                                 capture_output=True, text=True, check=True).stdout
            tables["presets"].setdefault(f, {})[gen] = presets(src)
    json.dump(tables, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
