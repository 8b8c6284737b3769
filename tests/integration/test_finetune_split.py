"""Fine-tuning sees one global batch, however it is split (issue 20): run_squad.py and
run_glue.py with 1 process x accumulation A, 2 x A/2 and 4 x 1 (the same examples per step)
end with the same weights. Real SQuAD and SST-2 rows, Google's vocabulary, a micro BERT with
dropout 0. The SST-2 run has 38 rows, so 4 processes pad the last global batch by wrapping
around: the padding rows must not count.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_text import PYTHON, REAL_TEXT_CONFIG, REPO  # noqa: E402
from test_split_invariance import _worst_relative  # noqa: E402

from bertforge.config import ModelConfig  # noqa: E402
from bertforge.model.bert import BertForPreTraining  # noqa: E402
from bertforge.model.convert import save_bertforge  # noqa: E402
from tests.conftest import real_data_path  # noqa: E402

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def init(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = BertForPreTraining(ModelConfig(**REAL_TEXT_CONFIG))
    return save_bertforge(model, tmp_path_factory.mktemp("init") / "micro.pt")


def _run(script: str, args: list[str], nproc: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("WORLD_SIZE", None)
    launch = [PYTHON] if nproc == 1 else [PYTHON, "-m", "torch.distributed.run", "--standalone",
                                          f"--nproc_per_node={nproc}"]
    p = subprocess.run([*launch, script, *args], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]


def _splits(global_batch: int, accum1: int):
    """(processes, train_batch_size per process, accumulation) with the same global batch."""
    return [(1, global_batch, accum1), (2, global_batch // 2, max(1, accum1 // 2)),
            (4, global_batch // 4, 1)]


def _same_weights(outs: dict[int, Path]) -> None:
    w = {n: torch.load(p / "pytorch_model.bin", weights_only=True)["model"] for n, p in outs.items()}
    for n in w:
        if n != 1:
            # The QA output bias and the last layer's LayerNorm bias shift every logit of a
            # window alike and softmax ignores a shift: their gradient is 0 up to rounding,
            # and Adam turns that noise into steps of about the learning rate (1e-3 x 3 steps)
            # in any run.
            for name in ("qa_outputs.bias", "bert.encoder.layer.1.output.LayerNorm.bias"):
                bias = [x.pop(name) for x in (w[1], w[n]) if name in x and "qa_outputs.weight" in x]
                assert all(float(b.abs().max()) < 1e-2 for b in bias), name
            worst, name = _worst_relative(w[1], w[n])
            print(f"1 vs {n} processes: worst relative difference {worst:.2e} ({name})")
            assert worst <= 1e-5, (n, name, worst)


def test_glue_one_global_batch_however_split(init, tmp_path):
    data = tmp_path / "SST-2"
    data.mkdir()
    lines = real_data_path("glue/SST-2/train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    (data / "train.tsv").write_text("".join(lines[:39]), encoding="utf-8")  # header + 38 rows
    vocab = real_data_path("vocab/bert-base-uncased-vocab.txt")
    outs = {}
    for nproc, batch, accum in _splits(16, 4):
        outs[nproc] = tmp_path / f"glue{nproc}"
        _run("run_glue.py", ["--task_name", "SST-2", "--data_dir", str(data), "--init_checkpoint", str(init),
                             "--vocab_file", str(vocab), "--do_lower_case", "--do_train",
                             "--output_dir", str(outs[nproc]), "--max_seq_length", "64",
                             "--train_batch_size", str(batch), "--gradient_accumulation_steps", str(accum),
                             "--learning_rate", "1e-3", "--max_steps", "3", "--seed", "3", "--no_cuda",
                             "--log_freq", "1"], nproc)
    _same_weights(outs)


def test_squad_one_global_batch_however_split(init, tmp_path):
    vocab = real_data_path("vocab/bert-base-uncased-vocab.txt")
    train = real_data_path("squad/tiny-train-v1.1.json")
    outs = {}
    for nproc, batch, accum in _splits(8, 2):
        outs[nproc] = tmp_path / f"squad{nproc}"
        _run("run_squad.py", ["--init_checkpoint", str(init), "--vocab_file", str(vocab), "--do_lower_case",
                              "--do_train", "--train_file", str(train), "--output_dir", str(outs[nproc]),
                              "--max_seq_length", "64", "--doc_stride", "32", "--max_query_length", "16",
                              "--train_batch_size", str(batch), "--gradient_accumulation_steps", str(accum),
                              "--learning_rate", "1e-3", "--max_steps", "3", "--seed", "3", "--no_cuda",
                              "--log_freq", "1"], nproc)
    _same_weights(outs)
