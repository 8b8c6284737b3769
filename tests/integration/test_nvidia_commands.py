"""Every command line of NVIDIA's two READMEs and every invocation of the entry points inside
NVIDIA's run_pretraining.sh, run_squad.sh, run_glue.sh, run.sub and data scripts, run here.

The commands are NVIDIA's words (tests/nvidia/commands.py, with the README line or script
each comes from), run in a workspace laid out like NVIDIA's container: /workspace/bert is a
directory whose scripts/, data/, bert_configs/ and entry points are this checkout's,
BERT_PREP_WORKING_DIR holds tiny real data (Google's vocab, SQuAD and SST-2 samples, HDF5 and
Parquet shards made by create_pretraining_data.py). Training commands run with DRY_RUN=1 /
--dry_run (flags, files and values checked, nothing trained: NVIDIA's presets ask for 8192
sequences per step); the rest run for real. No command may print "unrecognized arguments"
or "command not found", and each must exit 0.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import real_data_path as real_data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nvidia"))
from commands import README, SCRIPT_INVOCATIONS  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(900)
LINKED = ("scripts", "data", "bert_configs", "bert_config.json", "run_pretraining.py", "run_squad.py",
          "run_glue.py", "inference.py", "create_pretraining_data.py", "modeling.py", "tokenization.py",
          "run.sub", "Dockerfile", "Dockerfile.cpu")
# Stand-ins for what this machine lacks, each printing how it was called: docker, and a
# Slurm whose sbatch runs the batch script at once (srun prints the command it would start).
FAKES = {
    "docker": 'echo "docker $*"\n',
    "sbatch": ('while [[ $1 == -* ]]; do shift; done\n'
               'SLURM_JOB_ID=501 SLURM_JOB_NUM_NODES=4 SLURM_JOB_NODELIST="node[1-4]" '
               'SLURM_NTASKS_PER_NODE=8 SLURM_SUBMIT_DIR=$FAKE_SUBMIT_DIR exec bash "$1"\n'),
    "srun": 'echo "srun $*"\n',
    "scontrol": 'printf "node1\\nnode2\\nnode3\\nnode4\\n"\n',
    "scancel": 'echo "scancel $*"\n',
}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """/workspace/bert and BERT_PREP_WORKING_DIR with tiny real data."""
    import torch

    from bertforge.config import ModelConfig
    from bertforge.model.bert import BertForPreTraining, BertForQuestionAnswering
    from bertforge.model.convert import save_bertforge

    root = tmp_path_factory.mktemp("nvws")
    bert = root / "workspace" / "bert"
    bert.mkdir(parents=True)
    fakes = root / "bin"
    fakes.mkdir()
    for name, body in FAKES.items():
        (fakes / name).write_text("#!/bin/bash\n" + body)
        (fakes / name).chmod(0o755)
    for name in LINKED:
        (bert / name).symlink_to(REPO / name)
    prep = bert / "data_prep"
    google = prep / "download/google_pretrained_weights/uncased_L-24_H-1024_A-16"
    google.mkdir(parents=True)
    vocab = google / "vocab.txt"
    shutil.copy(real_data("vocab/bert-base-uncased-vocab.txt"), vocab)
    (bert / "vocab").mkdir()
    shutil.copy(vocab, bert / "vocab" / "vocab")  # NVIDIA's current scripts' VOCAB_FILE=vocab/vocab
    squad = prep / "download/squad/v1.1"
    squad.mkdir(parents=True)
    shutil.copy(real_data("squad/tiny-train-v1.1.json"), squad / "train-v1.1.json")
    shutil.copy(real_data("squad/dev-v1.1-sample.json"), squad / "dev-v1.1.json")
    for task in ("MRPC", "SST-2"):
        d = prep / "download/glue" / task
        d.mkdir(parents=True)
        for f in ("train.tsv", "dev.tsv"):
            shutil.copy(real_data("glue/SST-2/dev.tsv"), d / f)
    text = root / "text"
    text.mkdir()
    article = ("The Normans were the people who gave their name to Normandy, a region in France.\n"
               "They were descended from Norse raiders and pirates from Denmark.\n\n"
               "Computational complexity theory is a branch of the theory of computation.\n"
               "It focuses on classifying computational problems by their difficulty.\n\n")
    (text / "wiki_0.txt").write_text(article * 6)
    env = _env(root, bert, prep)
    env["PATH"] = f"{fakes}:{env['PATH']}"
    env["WIKI_DUMP_URL"] = _wiki_dump(root, env)
    for phase, seq, pred, fmt in ((1, 128, 20, ["--output_format=hdf5"]),
                                  (2, 512, 80, ["--output_format=parquet", "--bin_size=64"])):
        out = prep / ("phase1_hdf5" if phase == 1 else "phase2_parquet")
        subprocess.run([sys.executable, "create_pretraining_data.py", f"--input_file={text}",
                        f"--output_file={out}", f"--vocab_file={vocab}", f"--max_seq_length={seq}",
                        f"--max_predictions_per_seq={pred}", "--dupe_factor=2", "--num_shards=1", *fmt],
                       cwd=bert, env=env, check=True, capture_output=True)
    (prep / "text").mkdir()
    (prep / "text" / "train").symlink_to(text)
    shutil.copy(vocab, prep / "vocab.txt")
    torch.manual_seed(0)
    cfg = ModelConfig.from_json_file(REPO / "bert_configs/tiny.json")
    (bert / "checkpoints").mkdir()
    for name in ("bert_uncased.pt", "pre-trained_checkpoint.pt", "bert_large_uncased.pt",
                 "bert_large_uncased_wiki+books.pt.model"):
        save_bertforge(BertForPreTraining(cfg), bert / "checkpoints" / name)
    save_bertforge(BertForQuestionAnswering(cfg), bert / "checkpoints" / "fine_tuned_checkpoint.pt")
    for name in ("bert_large_uncased.pt", "bert_large_uncased_wiki+books.pt.model"):
        (bert / name).symlink_to(bert / "checkpoints" / name)
    (bert / "squad_data").symlink_to(squad)
    submit = root / "submit"  # run.sub's data layout under the submit directory
    for phase, src in ((1, "phase1_hdf5"), (2, "phase2_parquet")):
        for layout in ("unbinned", "bin_size_64"):
            d = submit / "data/pretrain" / f"phase{phase}" / layout
            d.mkdir(parents=True)
            (d / "parquet").symlink_to(prep / src)
    env.update(FAKE_SUBMIT_DIR=str(submit), BERT_DIR=str(bert))
    return {"root": root, "bert": bert, "prep": prep, "env": env, "text": text}


def _wiki_dump(root: Path, env: dict) -> str:
    """The real shortened Wikipedia dump of the gensim wheel, served as file:// with the
    sha1sums.txt the download checks (as dumps.wikimedia.org serves it)."""
    import hashlib

    dump = Path(subprocess.run([sys.executable, "-m", "bertforge.cli.prepare_wiki_sample"], env=env,
                               capture_output=True, text=True, check=True).stdout.strip())
    site = root / "dumps"
    site.mkdir()
    name = "enwiki-latest-pages-articles.xml.bz2"
    shutil.copy(dump, site / name)
    sha1 = hashlib.sha1((site / name).read_bytes()).hexdigest()
    (site / "enwiki-latest-sha1sums.txt").write_text(f"{sha1}  {name}\n")
    return f"file://{site / name}"


def _env(root: Path, bert: Path, prep: Path) -> dict:
    bindir = Path(sys.executable).parent
    return {**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "PYTHON": sys.executable, "BERT_PREP_WORKING_DIR": str(prep), "OMP_NUM_THREADS": "1",
            "DRY_RUN": "1", "PYTHONUNBUFFERED": "1"}


def _run(ws, command: str) -> subprocess.CompletedProcess:
    """One of NVIDIA's command lines, in the workspace, /workspace/bert and /results mapped."""
    bert, root = ws["bert"], ws["root"]
    cmd = (command.replace("/workspace/bert", str(bert)).replace("/workspace/checkpoints", str(bert / "checkpoints"))
           .replace("/results", str(root / "results"))
           .replace("$BERT_PREP_WORKING_DIR", str(ws["prep"])).replace("$TEXT", str(ws["text"])))
    return subprocess.run(["bash", "-c", cmd], cwd=bert, env=ws["env"], capture_output=True, text=True,
                          timeout=600)


def _runs_as_expected(ws, command: str, expect) -> None:
    """The command runs: no unknown flag or command, exit 0, each expected text printed."""
    p = _run(ws, command)
    both = p.stdout + p.stderr
    assert "unrecognized arguments" not in both and "command not found" not in both, both[-3000:]
    assert p.returncode == 0, f"{command}\nexit {p.returncode}\n{both[-3000:]}"
    for text in expect:
        assert text in both, (command, both[-3000:])


# Run in `make test`: one of each kind; the rest (slow: a Python start-up each, the data
# script three times) run in `make test-nvidia`, which .ci/run calls.
FAST = {("head", "294"), ("head", "351"), ("2020", "337"), ("2020", "842"), ("head", "525"),
        ("2020", "286"), ("head", "run_pretraining.sh phase 2"), ("head", "run_squad.sh train eval"),
        ("2020", "run.sub phase 1"), ("2020", "bertPrep.py create_hdf5_files")}


def _params(entries):
    return [pytest.param(e, id=f"{e[0]}:{e[1]}", marks=() if (e[0], e[1]) in FAST else pytest.mark.slow)
            for e in entries]


def test_fast_subset_names_real_entries() -> None:
    assert FAST <= {(e[0], e[1]) for e in README + SCRIPT_INVOCATIONS}


@pytest.mark.parametrize("entry", _params(README))
def test_nvidia_readme_command(ws, entry) -> None:
    _, _, command, expect = entry
    _runs_as_expected(ws, command, expect)


@pytest.mark.parametrize("entry", _params(SCRIPT_INVOCATIONS))
def test_nvidia_script_invocation(ws, entry) -> None:
    _, _, command, expect = entry
    _runs_as_expected(ws, command, expect)
