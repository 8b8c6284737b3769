"""The bad-input table: every CLI flag that takes a path or a number, tried with the wrong
kind of value. Each case must end with ONE line ``error: ...`` naming the flag or file (or
argparse's ``prog: error: argument --flag: ...`` for a value of the wrong type), a non-zero
exit status (2) and no traceback.

The CLIs run for real, from the repo root, as ``python SCRIPT ARGS`` would run them; to
avoid paying ``import torch`` ~80 times, tests/faults/forkrun.py imports each CLI once and
forks one child per case (real processes, real exit codes and stderr). The table is also
docs/reliability.md's bad-input section.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.faults.helpers import (
    PYTHON,
    REPO,
    cli_env,
    error_line,
    forkrun,
    make_read_only,
    make_world,
)

pytestmark = pytest.mark.timeout(900)

# id -> (cli, argv with {placeholders}, substrings the error line must contain).
# cli: a script in the repo root, or a module run with -m.
P = "run_pretraining.py"
C = "create_pretraining_data.py"
S = "run_squad.py"
G = "run_glue.py"
I = "inference.py"  # noqa: E741
V = "bertforge.convert"
E = "bertforge.evaluate_squad"
T = "bertforge.cli.prepare_text"
W = "bertforge.cli.prepare_vocab"
F = "bertforge.cli.fill_mask"
X = "deploy/triton/export_model.py"
R = "deploy/triton/generate_model_repository.py"
K = "deploy/triton/run_squad_client.py"
D = "deploy/triton/serve_demo.py"

PRE = ["--input_dir={hdf5}", "--config_file={config}", "--output_dir={tmp}/out_{id}", "--do_train",
       "--train_batch_size=8", "--max_steps=2", "--max_seq_length=64",
       "--max_predictions_per_seq=10", "--num_workers=0", "--disable_progress_bar"]
CRE = ["--input_file={text}", "--output_file={tmp}/shards_{id}", "--vocab_file={vocab}",
       "--max_seq_length=64", "--max_predictions_per_seq=10", "--dupe_factor=1",
       "--progress=false"]
SQD = ["--init_checkpoint={qa}", "--vocab_file={vocab}", "--output_dir={tmp}/squad_{id}",
       "--do_train", "--train_file={squad}", "--max_seq_length=64", "--doc_stride=32",
       "--max_query_length=16", "--train_batch_size=4", "--max_steps=1"]
GLU = ["--task_name=sst-2", "--data_dir={glue}", "--init_checkpoint={pretrain_ckpt}", "--vocab_file={vocab}",
       "--output_dir={tmp}/glue_{id}", "--do_train", "--max_seq_length=32",
       "--train_batch_size=4", "--max_steps=1"]
INF = ["--init_checkpoint={qa}", "--vocab_file={vocab}", "--question=Who wrote it?",
       "--context=The book was written by the city council.", "--max_seq_length=64",
       "--doc_stride=32", "--max_query_length=16"]


def _with(base: list[str], *flags: str) -> list[str]:
    """``base`` with ``flags`` replacing the same flags (``--x=v``) or appended."""
    names = {f.split("=", 1)[0] for f in flags}
    return [a for a in base if a.split("=", 1)[0] not in names] + list(flags)


def _without(base: list[str], *names: str) -> list[str]:
    return [a for a in base if a.split("=", 1)[0] not in names]


CASES: dict[str, tuple[str, list[str], tuple[str, ...]]] = {
    # -- run_pretraining.py: paths
    "pretrain-input_dir-missing": (P, _with(PRE, "--input_dir={tmp}/nope"), ("--input_dir", "nope")),
    "pretrain-input_dir-is-file": (P, _with(PRE, "--input_dir={file}"), ("--input_dir", "notes.txt")),
    "pretrain-input_dir-no-shards": (P, _with(PRE, "--input_dir={empty}"), ("no shards", "empty")),
    "pretrain-config_file-missing": (P, _with(PRE, "--config_file={tmp}/nope.json"), ("nope.json",)),
    "pretrain-config_file-is-dir": (P, _with(PRE, "--config_file={empty}"), ("empty",)),
    "pretrain-config_file-not-json": (P, _with(PRE, "--config_file={garbage}"), ("garbage.json",)),
    "pretrain-vocab_file-missing": (P, _with(PRE, "--vocab_file={tmp}/nope.txt"), ("--vocab_file", "nope.txt")),
    "pretrain-parquet-without-vocab": (P, _with(PRE, "--input_dir={parquet}"), ("vocab",)),
    "pretrain-vocab_file-not-the-shards-vocab": (P, _with(PRE, "--vocab_file={vocab_no_mask}"),
                                                 ("--vocab_file", "vocab_no_mask.txt", "made with")),
    "pretrain-init_checkpoint-missing": (P, _with(PRE, "--init_checkpoint={tmp}/nope.pt"), ("nope.pt",)),
    "pretrain-init_checkpoint-dir-without-config": (P, _with(PRE, "--init_checkpoint={empty}"),
                                                    ("empty", "config.json")),
    "pretrain-init_checkpoint-not-torch": (P, _with(PRE, "--init_checkpoint={garbage}"), ("garbage.json",)),
    "pretrain-init_checkpoint-pickle-runs-code": (P, _with(PRE, "--init_checkpoint={evil}"),
                                                  ("evil.pt", "GLOBAL", "could run code; refused")),
    "pretrain-output_dir-is-file": (P, _with(PRE, "--output_dir={file}"), ("notes.txt",)),
    "pretrain-eval_dir-missing": (P, [*PRE, "--eval_dir={tmp}/nope"], ("--eval_dir", "nope")),
    "pretrain-resume_step-missing": (P, [*PRE, "--resume_from_checkpoint", "--resume_step=99"],
                                     ("--resume_step 99", "ckpt_99.pt")),
    # -- run_pretraining.py: numbers
    "pretrain-train_batch_size-zero": (P, _with(PRE, "--train_batch_size=0"), ("--train_batch_size",)),
    "pretrain-train_batch_size-negative": (P, _with(PRE, "--train_batch_size=-8"), ("--train_batch_size",)),
    "pretrain-batch-not-divisible-by-accumulation": (
        P, _with(PRE, "--train_batch_size=6", "--gradient_accumulation_steps=4"),
        ("--train_batch_size 6", "--gradient_accumulation_steps 4")),
    "pretrain-gradient_accumulation_steps-zero": (P, _with(PRE, "--gradient_accumulation_steps=0"),
                                                  ("--gradient_accumulation_steps",)),
    "pretrain-max_seq_length-above-max_position_embeddings": (
        P, _with(PRE, "--max_seq_length=1024"), ("--max_seq_length 1024", "max_position_embeddings")),
    "pretrain-max_seq_length-below-the-data": (P, _with(PRE, "--max_seq_length=16"), ("--max_seq_length",)),
    "pretrain-max_steps-zero": (P, _with(PRE, "--max_steps=0"), ("--max_steps",)),
    "pretrain-max_steps-nan": (P, _with(PRE, "--max_steps=nan"), ("--max_steps",)),
    "pretrain-learning_rate-negative": (P, [*PRE, "--learning_rate=-1"], ("--learning_rate",)),
    "pretrain-learning_rate-not-a-number": (P, [*PRE, "--learning_rate=fast"], ("--learning_rate",)),
    "pretrain-warmup_proportion-above-one": (P, [*PRE, "--warmup_proportion=1.5"], ("--warmup_proportion",)),
    "pretrain-num_steps_per_checkpoint-zero": (P, [*PRE, "--num_steps_per_checkpoint=0"],
                                               ("--num_steps_per_checkpoint",)),
    "pretrain-keep_checkpoints-zero": (P, [*PRE, "--keep_checkpoints=0"], ("--keep_checkpoints",)),
    "pretrain-num_workers-negative": (P, _with(PRE, "--num_workers=-1"), ("--num_workers",)),
    "pretrain-max_predictions_per_seq-zero": (P, _with(PRE, "--max_predictions_per_seq=0"),
                                              ("--max_predictions_per_seq",)),
    "pretrain-log_freq-zero": (P, [*PRE, "--log_freq=0"], ("--log_freq",)),
    "pretrain-eval_freq-negative": (P, [*PRE, "--eval_freq=-1"], ("--eval_freq",)),
    "pretrain-dist_timeout-zero": (P, [*PRE, "--dist_timeout=0"], ("--dist_timeout",)),
    "pretrain-vocab-larger-than-model": (P, _with(PRE, "--config_file={config_small_vocab}"),
                                         ("token id", "outside the vocabulary")),
    "pretrain-fp16-on-cpu": (P, [*PRE, "--fp16"], ("--fp16", "CUDA")),
    "pretrain-fp16-and-bf16": (P, [*PRE, "--fp16", "--bf16"], ("--bf16",)),
    "pretrain-device-cuda-absent": (P, [*PRE, "--device=cuda"], ("CUDA",)),
    # -- create_pretraining_data.py
    "create-input_file-missing": (C, _with(CRE, "--input_file={tmp}/nope"), ("nope",)),
    "create-input_file-empty-dir": (C, _with(CRE, "--input_file={empty}"), ("empty",)),
    "create-vocab_file-missing": (C, _with(CRE, "--vocab_file={tmp}/nope.txt"), ("nope.txt",)),
    "create-vocab_file-is-dir": (C, _with(CRE, "--vocab_file={empty}"), ("empty",)),
    "create-vocab_file-without-mask": (C, _with(CRE, "--vocab_file={vocab_no_mask}"), ("[MASK]",)),
    "create-output_file-is-file": (C, _with(CRE, "--output_file={file}"), ("notes.txt",)),
    "create-max_seq_length-zero": (C, _with(CRE, "--max_seq_length=0"), ("max_seq_length",)),
    "create-max_seq_length-negative": (C, _with(CRE, "--max_seq_length=-5"), ("max_seq_length",)),
    "create-max_predictions_per_seq-negative": (C, _with(CRE, "--max_predictions_per_seq=-1"),
                                                ("max_predictions_per_seq",)),
    "create-masked_lm_prob-above-one": (C, [*CRE, "--masked_lm_prob=1.5"], ("masked_lm_prob",)),
    "create-short_seq_prob-above-one": (C, [*CRE, "--short_seq_prob=2"], ("short_seq_prob",)),
    "create-dupe_factor-zero": (C, _with(CRE, "--dupe_factor=0"), ("dupe_factor",)),
    "create-num_workers-zero": (C, [*CRE, "--num_workers=0"], ("--num_workers",)),
    "create-num_shards-negative": (C, [*CRE, "--num_shards=-1"], ("--num_shards",)),
    "create-rank-outside-world": (C, [*CRE, "--rank=3", "--world_size=2"], ("--rank 3",)),
    "create-bin_size-zero": (C, [*CRE, "--output_format=parquet", "--bin_size=0"], ("--bin_size",)),
    "create-max_seq_length-not-a-number": (C, _with(CRE, "--max_seq_length=long"), ("--max_seq_length",)),
    # -- run_squad.py
    "squad-train_file-missing": (S, _with(SQD, "--train_file={tmp}/nope.json"), ("--train_file", "nope.json")),
    "squad-predict_file-is-dir": (S, [*_without(SQD, "--do_train"), "--do_predict", "--predict_file={empty}"],
                                  ("--predict_file",)),
    "squad-train_file-not-json": (S, _with(SQD, "--train_file={garbage}"), ("garbage.json",)),
    "squad-init_checkpoint-missing": (S, _with(SQD, "--init_checkpoint={tmp}/nope.pt"), ("nope.pt",)),
    "squad-init_checkpoint-pickle-runs-code": (S, _with(SQD, "--init_checkpoint={evil}"),
                                               ("evil.pt", "could run code; refused")),
    "squad-vocab_file-missing": (S, _with(SQD, "--vocab_file={tmp}/nope.txt"), ("nope.txt",)),
    "squad-config_file-other-model": (S, [*SQD, "--config_file={config_small_vocab}"],
                                      ("qa.pt", "another config", "vocab_size 294 vs 100")),
    "squad-max_seq_length-zero": (S, _with(SQD, "--max_seq_length=0"), ("--max_seq_length",)),
    "squad-max_seq_length-above-max_position_embeddings": (S, _with(SQD, "--max_seq_length=1024"),
                                                           ("--max_seq_length", "max_position_embeddings")),
    "squad-doc_stride-zero": (S, _with(SQD, "--doc_stride=0"), ("--doc_stride",)),
    "squad-train_batch_size-zero": (S, _with(SQD, "--train_batch_size=0"), ("--train_batch_size",)),
    "squad-batch-below-accumulation": (S, [*SQD, "--gradient_accumulation_steps=8"],
                                       ("--gradient_accumulation_steps",)),
    "squad-learning_rate-zero": (S, [*SQD, "--learning_rate=0"], ("--learning_rate",)),
    "squad-vocab-larger-than-model": (S, _with(SQD, "--init_checkpoint={qa_small_vocab}"), ("--vocab_file",)),
    "squad-fp16-on-cpu": (S, [*SQD, "--fp16"], ("--fp16", "CUDA")),
    # -- run_glue.py
    "glue-task_name-unknown": (G, _with(GLU, "--task_name=sst-3"), ("--task_name", "sst-3")),
    "glue-data_dir-missing": (G, _with(GLU, "--data_dir={tmp}/nope"), ("--data_dir",)),
    "glue-data_dir-without-train.tsv": (G, _with(GLU, "--data_dir={empty}"), ("train.tsv",)),
    "glue-init_checkpoint-missing": (G, _with(GLU, "--init_checkpoint={tmp}/nope.pt"), ("nope.pt",)),
    "glue-max_seq_length-zero": (G, _with(GLU, "--max_seq_length=0"), ("--max_seq_length",)),
    "glue-max_seq_length-above-max_position_embeddings": (G, _with(GLU, "--max_seq_length=1024"),
                                                          ("--max_seq_length", "max_position_embeddings")),
    "glue-num_train_epochs-zero": (G, [*_without(GLU, "--max_steps"), "--num_train_epochs=0"],
                                   ("--num_train_epochs",)),
    "glue-warmup_proportion-negative": (G, [*GLU, "--warmup_proportion=-0.1"], ("--warmup_proportion",)),
    "glue-bf16-and-fp16": (G, [*GLU, "--bf16", "--fp16"], ("--bf16",)),
    # -- inference.py
    "inference-json-missing": (I, [*_without(INF, "--question", "--context"), "--json={tmp}/nope.json"],
                               ("--json", "nope.json")),
    "inference-json-not-json": (I, [*_without(INF, "--question", "--context"), "--json={garbage}"],
                                ("--json", "garbage.json")),
    "inference-json-and-question": (I, [*_without(INF, "--context"), "--json={squad}"], ("--question",)),
    "inference-init_checkpoint-missing": (I, _with(INF, "--init_checkpoint={tmp}/nope.pt"), ("nope.pt",)),
    "inference-checkpoint-without-qa-head": (I, _with(INF, "--init_checkpoint={pretrain_ckpt}"),
                                             ("qa_outputs",)),
    "inference-vocab-larger-than-model": (I, _with(INF, "--init_checkpoint={qa_small_vocab}"),
                                          ("--vocab_file", "294 tokens", "100 embeddings")),
    "inference-batch_size-zero": (I, [*INF, "--batch_size=0"], ("--batch_size",)),
    "inference-max_seq_length-above-max_position_embeddings": (I, _with(INF, "--max_seq_length=1024"),
                                                               ("--max_seq_length 1024", "max_position_embeddings")),
    "inference-doc_stride-zero": (I, _with(INF, "--doc_stride=0"), ("--doc_stride",)),
    # -- python -m bertforge.convert
    "convert-src-missing": (V, ["--from=bertforge", "--to=hf", "{tmp}/nope.pt", "{tmp}/hf_{id}"], ("nope.pt",)),
    "convert-from-hf-given-a-file": (V, ["--from=hf", "--to=bertforge", "{qa}", "{tmp}/x_{id}.pt"], ("--from hf",)),
    "convert-pickle-runs-code": (V, ["--from=ngc", "--to=bertforge", "{evil}", "{tmp}/x_{id}.pt",
                                     "--config_file={config}"],
                                 ("evil.pt", "GLOBAL io.open", "not with --trust_checkpoint either")),
    "convert-config_file-missing": (V, ["--from=ngc", "--to=bertforge", "{qa}", "{tmp}/x_{id}.pt",
                                        "--config_file={tmp}/nope.json"], ("nope.json",)),
    # -- data preparation (python -m bertforge.cli.prepare_text / prepare_vocab)
    "prepare_text-input-missing": (T, ["--input={tmp}/nope.xml.bz2", "--output_dir={tmp}/text_{id}"],
                                   ("nope.xml.bz2",)),
    "prepare_text-num_shards-zero": (T, ["--input={text}", "--output_dir={tmp}/text_{id}", "--num_shards=0"],
                                     ("--num_shards",)),
    "prepare_text-holdout_fraction-above-one": (T, ["--input={text}", "--output_dir={tmp}/text_{id}",
                                                    "--holdout_fraction=1.5"], ("--holdout_fraction",)),
    "prepare_text-num_workers-zero": (T, ["--input={text}", "--output_dir={tmp}/text_{id}",
                                          "--num_workers=0"], ("--num_workers",)),
    "prepare_vocab-input-missing": (W, ["--input={tmp}/nope", "--output={tmp}/v_{id}.txt"], ("nope",)),
    "prepare_vocab-vocab_size-zero": (W, ["--input={text}", "--output={tmp}/v_{id}.txt", "--vocab_size=0"],
                                      ("--vocab_size",)),
    "prepare_vocab-output-is-dir": (W, ["--input={text}", "--output={empty}"], ("empty",)),
    # -- python -m bertforge.cli.fill_mask
    "fill_mask-init_checkpoint-missing": (F, ["--init_checkpoint={tmp}/nope.pt", "--vocab_file={vocab}",
                                              "--text=the [MASK] city"], ("nope.pt",)),
    "fill_mask-top_k-zero": (F, ["--init_checkpoint={pretrain_ckpt}", "--vocab_file={vocab}",
                                 "--text=the [MASK] city", "--top_k=0"], ("--top_k",)),
    "fill_mask-input_file-missing": (F, ["--init_checkpoint={pretrain_ckpt}", "--vocab_file={vocab}",
                                         "--input_file={tmp}/nope.txt"], ("nope.txt",)),
    # -- deploy/triton scripts (the Triton server itself runs in its own venv)
    "export-init_checkpoint-missing": (X, ["--init_checkpoint={tmp}/nope.pt", "--output_dir={tmp}/exp_{id}"],
                                       ("nope.pt",)),
    "export-max_seq_length-zero": (X, ["--init_checkpoint={qa}", "--output_dir={tmp}/exp_{id}",
                                       "--check_file={squad}", "--vocab_file={vocab}",
                                       "--max_seq_length=0"], ("--max_seq_length",)),
    "export-num_labels-zero": (X, ["--init_checkpoint={pretrain_ckpt}", "--output_dir={tmp}/exp_{id}",
                                   "--task=classification", "--num_labels=0"], ("--num_labels",)),
    "export-fp16-on-cpu": (X, ["--init_checkpoint={qa}", "--output_dir={tmp}/exp_{id}",
                               "--precisions=fp16", "--device=cpu"], ("fp16",)),
    "repository-export_dir-missing": (R, ["--export_dir={tmp}/nope", "--model_repository={tmp}/repo_{id}"],
                                      ("nope",)),
    "repository-max_batch_size-zero": (R, ["--export_dir={empty}", "--model_repository={tmp}/repo_{id}",
                                           "--max_batch_size=0"], ("--max_batch_size",)),
    "repository-instance_count-zero": (R, ["--export_dir={empty}", "--model_repository={tmp}/repo_{id}",
                                           "--instance_count=0"], ("--instance_count",)),
    "serve_demo-init_checkpoint-empty": (D, ["--init_checkpoint=", "--work_dir={tmp}/sd_{id}"],
                                         ("--init_checkpoint is empty",)),
    "client-vocab_file-missing": (K, ["--vocab_file={tmp}/nope.txt", "--question=q", "--context=c"],
                                  ("nope.txt",)),
    "client-predict_file-missing": (K, ["--vocab_file={vocab}", "--predict_file={tmp}/nope.json"],
                                    ("nope.json",)),
    "client-max_questions-negative": (K, ["--vocab_file={vocab}", "--predict_file={squad}",
                                          "--max_questions=-1"], ("--max_questions",)),
    "client-concurrency-zero": (K, ["--vocab_file={vocab}", "--predict_file={squad}",
                                    "--concurrency=0"], ("--concurrency",)),
    # -- issue 19: data that used to be lost silently
    "pretrain-init_checkpoint-larger-vocab": (P, _with(PRE, "--init_checkpoint={big_vocab}"),
                                              ("big_vocab.pt", "vocabulary of 688 rows", "vocab_size 294")),
    "pretrain-phase2-init_checkpoint-larger-vocab": (P, [*_with(PRE, "--init_checkpoint={big_vocab}"), "--phase2"],
                                                     ("big_vocab.pt", "vocabulary of 688 rows", "vocab_size 294")),
    "convert-config_file-smaller-vocab": (V, ["--from=bertforge", "--to=bertforge", "{big_vocab}",
                                              "{tmp}/x_{id}.pt", "--config_file={config}"],
                                          ("big_vocab.pt", "vocabulary of 688 rows", "vocab_size 294")),
    "convert-dst-folder-not-empty": (V, ["--from=bertforge", "--to=hf", "{qa}", "{nonempty_hf}"],
                                     ("nonempty_hf", "holds files", "--overwrite")),
    "convert-dst-file-exists": (V, ["--from=bertforge", "--to=bertforge", "{qa}", "{pretrain_ckpt}"],
                                ("pretrain.pt", "exists", "--overwrite")),
    "create-output_file-holds-dataset": (C, _with(CRE, "--output_file={dataset_out}"),
                                         ("dataset_out", "already holds a dataset", "--overwrite")),
    "create-output_file-holds-other-files": (C, [*_with(CRE, "--output_file={other_out}"), "--overwrite"],
                                             ("other_out", "not part of a dataset", "notes.txt")),
    # -- issue 19: inputs that ended in a traceback
    "pretrain-max_grad_norm-negative": (P, [*PRE, "--max_grad_norm=-1"], ("--max_grad_norm", ">= 0")),
    "pretrain-max_grad_norm-nan": (P, [*PRE, "--max_grad_norm=nan"], ("--max_grad_norm", "finite")),
    "pretrain-seed-beyond-64-bits": (P, [*PRE, f"--seed={2**70}"], ("--seed", "64 bits")),
    "pretrain-json-summary-is-a-folder": (P, [*PRE, "--json-summary={empty}"], ("--json-summary", "is a directory")),
    "pretrain-json-summary-read-only": (P, [*PRE, "--json-summary={read_only}/dllogger.json"],
                                        ("--json-summary", "read_only", "not writable")),
    "pretrain-output_dir-name-too-long": (P, _with(PRE, "--output_dir={tmp}/" + "o" * 300),
                                          ("--output_dir", "300 bytes", "255")),
    "pretrain-input_dir-mixed-lengths": (P, _with(PRE, "--input_dir={mixed_lengths}", "--max_seq_length=128",
                                                  "--max_steps=8"),
                                         ("mixed_lengths", "max_seq_length 64", "128")),
    "pretrain-config-type_vocab_size-1": (P, _with(PRE, "--config_file={config_type_vocab_1}"),
                                          ("type_vocab_size 1", "token types 0 and 1")),
    "pretrain-config-initializer_range-nan": (P, _with(PRE, "--config_file={config_init_nan}"),
                                              ("initializer_range", "finite")),
    "pretrain-rank-outside-world_size": (P, PRE, ("RANK=1", "WORLD_SIZE=1")),
    "pretrain-rank-5-of-2": (P, PRE, ("RANK=5", "WORLD_SIZE=2")),
    "inference-json-binary": (I, [*_without(INF, "--question", "--context"), "--json={binary}"],
                              ("--json", "binary.bin", "binary file")),
    "fill_mask-input_file-binary": (F, ["--init_checkpoint={pretrain_ckpt}", "--vocab_file={vocab}",
                                        "--input_file={binary}"], ("--input_file", "binary file")),
    "fill_mask-top_k-above-vocab": (F, ["--init_checkpoint={pretrain_ckpt}", "--vocab_file={vocab}",
                                        "--text=the [MASK] city", "--top_k=100000"],
                                    ("--top_k 100000", "tokens the model can fill in")),
    "create-vocab_file-dev-zero": (C, _with(CRE, "--vocab_file=/dev/zero"), ("/dev/zero", "not a regular file")),
    "squad-vocab_file-dev-zero": (S, _with(SQD, "--vocab_file=/dev/zero"), ("/dev/zero", "not a regular file")),
    "inference-vocab_file-dev-zero": (I, _with(INF, "--vocab_file=/dev/zero"), ("/dev/zero", "not a regular file")),
    # -- issue 19: sizes that would not fit (refused before allocation)
    "pretrain-config-a-million-layers": (P, _with(PRE, "--config_file={config_deep}"),
                                         ("num_hidden_layers 1000000", "1024")),
    "pretrain-config-hidden-65536": (P, _with(PRE, "--config_file={config_wide}"),
                                     ("config_wide.json", "parameters", "GB", "more than the")),
    "pretrain-config-max_position_embeddings-1e9": (P, _with(PRE, "--config_file={config_positions}"),
                                                    ("config_positions.json", "GB", "more than the")),
    "pretrain-config-intermediate_size-1e10": (P, _with(PRE, "--config_file={config_ffn}"),
                                               ("config_ffn.json", "TB", "more than the")),
    "inference-checkpoint-config-too-big": (I, _with(INF, "--init_checkpoint={huge_ckpt}"),
                                            ("parameters", "GB", "more than the")),
    # -- issue 19: wrong values that used to be accepted
    "pretrain-config-layer_norm_eps-infinity": (P, _with(PRE, "--config_file={config_eps_inf}"),
                                                ("layer_norm_eps", "finite")),
    "pretrain-weight_decay-negative": (P, [*PRE, "--weight_decay=-5"], ("--weight_decay", ">= 0")),
    "pretrain-learning_rate-nan": (P, [*PRE, "--learning_rate=nan"], ("--learning_rate", "finite")),
    "pretrain-learning_rate-inf": (P, [*PRE, "--learning_rate=inf"], ("--learning_rate", "finite")),
    "pretrain-input_dir-mixed-formats": (P, _with(PRE, "--input_dir={mixed_formats}", "--vocab_file={vocab}"),
                                         ("mix HDF5", "Parquet")),
    "create-input_file-random-bytes": (C, _with(CRE, "--input_file={random_bytes}"),
                                       ("random.bin", "binary file")),
    "inference-question-empty": (I, _with(INF, "--question="), ("--question is empty",)),
    "inference-context-blank": (I, _with(INF, "--context=   "), ("--context is empty",)),
    # -- issue 19: refusals that were unclear
    "convert-pickle-calls-os-system": (V, ["--from=ngc", "--to=bertforge", "{evil_system}", "{tmp}/x_{id}.pt",
                                           "--config_file={config}"],
                                       ("GLOBAL posix.system", "not with --trust_checkpoint either")),
    "pretrain-init_checkpoint-legacy-pickle-runs-code": (P, _with(PRE, "--init_checkpoint={evil_legacy}"),
                                                         ("evil_legacy.pt", "GLOBAL io.open", "could run code")),
    "pretrain-resume-other-batch-size": (P, [*_with(PRE, "--output_dir={resume_out}", "--train_batch_size=4"),
                                             "--resume_from_checkpoint"],
                                         ("--train_batch_size", "8 sequences then, 4 now")),
    "pretrain-resume-other-input_dir": (P, [*_with(PRE, "--output_dir={resume_out}", "--input_dir={parquet}",
                                                   "--vocab_file={vocab}"), "--resume_from_checkpoint"],
                                        ("--input_dir", "other shards")),
    "pretrain-resume-other-seed": (P, [*_with(PRE, "--output_dir={resume_out}"), "--resume_from_checkpoint",
                                       "--seed=7"], ("--seed (42 then, 7 now)",)),
    "create-input_file-one-long-line": (C, _with(CRE, "--input_file={one_line}"),
                                        ("1 document(s) with 1 sentence(s)", "one sentence per line")),
    # -- python -m bertforge.evaluate_squad
    "evaluate-data_file-missing": (E, ["{tmp}/nope.json", "{garbage}"], ("nope.json",)),
    "evaluate-pred_file-not-json": (E, ["{squad}", "{garbage}"], ("garbage.json",)),
    "evaluate-na_prob_thresh-not-a-number": (E, ["{squad}", "{garbage}", "--na_prob_thresh=high"],
                                             ("--na_prob_thresh",)),
}

#: Environment variables of a case (the rank layout of a launcher gone wrong).
ENV = {"pretrain-rank-outside-world_size": {"WORLD_SIZE": "1", "RANK": "1"},
       "pretrain-rank-5-of-2": {"WORLD_SIZE": "2", "RANK": "5", "MASTER_ADDR": "127.0.0.1",
                                "MASTER_PORT": "29999"}}

_PRELOAD = {P: ["bertforge.cli.pretrain", "bertforge.train.pretrain", "bertforge.model.bert"],
            C: ["bertforge.cli.create_pretraining_data", "bertforge.data.create"],
            S: ["bertforge.cli.squad"], G: ["bertforge.cli.glue"], I: ["bertforge.cli.inference"],
            V: ["bertforge.convert"], E: ["bertforge.evaluate_squad"],
            T: ["bertforge.cli.prepare_text"], W: ["bertforge.cli.prepare_vocab"],
            F: ["bertforge.cli.fill_mask"], X: ["bertforge.serving.export"],
            R: ["bertforge.serving.repository"],
            K: ["bertforge.serving.client", "bertforge.tasks.squad", "tritonclient.http"],
            D: ["bertforge.serving.demo"]}

_MARKER = "pwned_by_pickle"


class _Calls:
    """Unpickling calls ``fn(arg)`` (e.g. ``os.system``), as a malicious file would."""

    def __init__(self, fn, arg) -> None:
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


class _RunsCode:
    """Unpickling calls ``open(marker, "w")``: the file appears iff the pickle ran code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _fixtures(root: Path) -> dict:
    import torch

    from bertforge.config import ModelConfig
    from bertforge.model.bert import BertForPreTraining, BertForQuestionAnswering
    from bertforge.model.convert import save_bertforge

    w = make_world(root / "world")
    empty = root / "empty"
    empty.mkdir()
    (root / "notes.txt").write_text("not a directory, not a checkpoint\n")
    (root / "garbage.json").write_text("{this is not json\n")
    lines = w.vocab.read_text().splitlines()
    (root / "vocab_no_mask.txt").write_text("\n".join(t for t in lines if t != "[MASK]") + "\n")
    small = json.loads(w.config.read_text())
    small["vocab_size"] = 100  # the data and the vocab file hold ids up to ~290
    (root / "tiny_small_vocab.json").write_text(json.dumps(small))
    torch.manual_seed(0)
    save_bertforge(BertForQuestionAnswering(ModelConfig.from_json_file(w.config)), root / "qa.pt")
    save_bertforge(BertForQuestionAnswering(ModelConfig.from_dict(small)), root / "qa_small_vocab.pt")
    save_bertforge(BertForPreTraining(ModelConfig.from_json_file(w.config)), root / "pretrain.pt")
    torch.save({"model": _RunsCode(str(root / _MARKER))}, root / "evil.pt")  # as an attacker would
    ctx = "The book was written by the city council in the year of the new school."
    squad = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": ctx, "qas": [
        {"id": "q1", "question": "Who wrote the book?",
         "answers": [{"text": "the city council", "answer_start": ctx.index("the city council")}]}]}]}]}
    (root / "squad.json").write_text(json.dumps(squad))
    glue = root / "glue"
    glue.mkdir()
    rows = "sentence\tlabel\n" + "".join(f"the {w} was good\t1\nthe {w} was bad\t0\n"
                                         for w in ("city", "school", "world"))
    (glue / "train.tsv").write_text(rows)
    (glue / "dev.tsv").write_text(rows)
    fx = {"hdf5": w.hdf5, "parquet": w.parquet, "text": w.text, "vocab": w.vocab,
          "config": w.config, "config_small_vocab": root / "tiny_small_vocab.json",
          "tmp": root, "empty": empty, "file": root / "notes.txt", "garbage": root / "garbage.json",
          "vocab_no_mask": root / "vocab_no_mask.txt", "qa": root / "qa.pt",
          "qa_small_vocab": root / "qa_small_vocab.pt", "pretrain_ckpt": root / "pretrain.pt",
          "evil": root / "evil.pt", "squad": root / "squad.json", "glue": glue}
    return {**fx, **_issue19_fixtures(root, w, fx)}


def _issue19_fixtures(root: Path, w, fx: dict) -> dict:
    """Files for the cases of issue 19 (data loss, tracebacks, sizes, unclear refusals)."""
    import os
    import shutil

    import h5py
    import numpy as np
    import torch

    from bertforge.cli.create_pretraining_data import main as create_main
    from bertforge.cli.pretrain import main as pretrain_main

    out = {}
    # a checkpoint with a larger vocabulary (688 rows) than the config's 294
    ck = torch.load(fx["pretrain_ckpt"], weights_only=True)
    n = ck["config"]["vocab_size"]
    for k in ("bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight",
              "cls.predictions.bias", "cls.predictions.decoder.bias"):
        if k in ck["model"]:
            v = ck["model"][k]
            ck["model"][k] = torch.cat([v, v.new_zeros((n + 100, *v.shape[1:]))], 0)
    torch.save({"model": ck["model"], "config": {**ck["config"], "vocab_size": 2 * n + 100}},
               root / "big_vocab.pt")
    out["big_vocab"] = root / "big_vocab.pt"
    # outputs holding something: an HF folder, a dataset, a folder of other files
    (root / "nonempty_hf").mkdir()
    (root / "nonempty_hf" / "config.json").write_text("{}\n")
    shutil.copytree(w.hdf5, root / "dataset_out")
    (root / "other_out").mkdir()
    (root / "other_out" / "notes.txt").write_text("mine\n")
    out.update(nonempty_hf=root / "nonempty_hf", dataset_out=root / "dataset_out",
               other_out=root / "other_out")
    # model configs: wrong values and sizes that cannot fit
    base = json.loads(w.config.read_text())
    for name, change in (("config_type_vocab_1", {"type_vocab_size": 1}),
                         ("config_init_nan", {"initializer_range": float("nan")}),
                         ("config_eps_inf", {"layer_norm_eps": float("inf")}),
                         ("config_deep", {"num_hidden_layers": 10**6}),
                         ("config_wide", {"hidden_size": 65536, "num_attention_heads": 2}),
                         ("config_positions", {"max_position_embeddings": 10**9}),
                         ("config_ffn", {"intermediate_size": 10**10})):
        (root / f"{name}.json").write_text(json.dumps({**base, **change}))  # NaN/Infinity as JSON has them
        out[name] = root / f"{name}.json"
    # a 2 KB checkpoint whose stored config asks for a hidden size of 65536
    torch.save({"model": {"qa_outputs.bias": torch.zeros(2)},
                "config": {**base, "hidden_size": 65536, "num_attention_heads": 2}}, root / "huge_ckpt.pt")
    out["huge_ckpt"] = root / "huge_ckpt.pt"
    # binary and odd inputs
    rng = np.random.default_rng(19)
    (root / "binary.bin").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (root / "random.bin").write_bytes(rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    words = [t for t in w.vocab.read_text().split() if t.isalpha()]
    (root / "one_line.txt").write_text(" ".join(rng.choice(words, 900_000)) + "\n")  # ~5.5 MB
    out.update(binary=root / "binary.bin", random_bytes=root / "random.bin", one_line=root / "one_line.txt")
    # pickles that would run code: os.system; io.open in the legacy (pre-zip) format
    torch.save({"model": _Calls(os.system, "true")}, root / "evil_system.pt")
    torch.save({"model": _RunsCode(str(root / _MARKER))}, root / "evil_legacy.pt",
               _use_new_zipfile_serialization=False)
    out.update(evil_system=root / "evil_system.pt", evil_legacy=root / "evil_legacy.pt")
    # shard folders: two formats; two sequence lengths (tiny shards: the second is reached at once)
    (root / "mixed_formats").mkdir()
    shutil.copy(w.hdf5 / "training_shard_00000.hdf5", root / "mixed_formats")
    shutil.copy(w.parquet / "shard-0.parquet", root / "mixed_formats")
    common = ["--input_file", str(w.text), "--vocab_file", str(w.vocab), "--max_predictions_per_seq",
              "10", "--dupe_factor", "1", "--progress", "false", "--num_shards", "1"]
    assert create_main([*common, "--max_seq_length", "128", "--output_file", str(root / "h128")]) == 0
    (root / "mixed_lengths").mkdir()
    for i, src in enumerate((w.hdf5 / "training_shard_00000.hdf5", root / "h128" / "training_shard_00000.hdf5")):
        with h5py.File(src, "r") as a, h5py.File(root / "mixed_lengths" / f"training_shard_{i}.hdf5", "w") as b:
            for k in a:
                b.create_dataset(k, data=a[k][:9])
    out.update(mixed_formats=root / "mixed_formats", mixed_lengths=root / "mixed_lengths")
    # a pretraining output folder to resume with other flags
    assert pretrain_main([f"--input_dir={w.hdf5}", f"--config_file={w.config}",
                          f"--output_dir={root / 'resume_out'}", "--do_train", "--train_batch_size=8",
                          "--max_steps=1", "--max_seq_length=64", "--max_predictions_per_seq=10",
                          "--num_workers=0", "--disable_progress_bar"]) == 0
    out["resume_out"] = root / "resume_out"
    out["read_only"] = root / "read_only"  # made read-only by the table fixture (and undone)
    return out


def _argv(case_id: str, argv: list[str], fx: dict) -> list[str]:
    return [a.format(id=case_id, **{k: str(v) for k, v in fx.items()}) for a in argv]


@pytest.fixture(scope="module")
def table(cli_fixtures):
    """Run every case (one forkrun process for all: torch is imported once); results by id."""
    fx = cli_fixtures
    undo = make_read_only(fx["read_only"])
    try:
        cases = [{"id": cid, ("script" if cli.endswith(".py") else "module"): cli,
                  "argv": _argv(cid, argv, fx), "env": ENV.get(cid, {}), "timeout": 120}
                 for cid, (cli, argv, _) in CASES.items()]
        preload = list(dict.fromkeys(m for mods in _PRELOAD.values() for m in mods))
        results = forkrun(cases, preload)
    finally:
        undo()
    return fx, results


def test_the_table_is_big_enough():
    assert len(CASES) >= 30
    assert len({c for c, _, _ in CASES.values()}) == 14  # every CLI that takes paths/numbers (serve_demo.py since its empty-path check)


@pytest.mark.parametrize("case_id", list(CASES))
def test_bad_input(table, case_id):
    fx, results = table
    cli, _, needles = CASES[case_id]
    r = results[case_id]
    assert r["code"] == 2, f"exit {r['code']}\nSTDERR:\n{r['stderr'][-3000:]}"
    line = error_line(r["stderr"], r["stdout"])
    assert line.startswith("error: ") or ": error: argument " in line, line
    for n in needles:
        assert n.format(**{k: str(v) for k, v in fx.items()}) in line, f"{n!r} not in {line!r}"
    assert not (fx["tmp"] / _MARKER).exists(), "a pickle ran code"


def test_forkrun_agrees_with_a_plain_subprocess(table):
    """The fork runner reports what `python SCRIPT ARGS` reports (same code, same message)."""
    fx, results = table
    for cid in ("pretrain-batch-not-divisible-by-accumulation", "pretrain-init_checkpoint-pickle-runs-code"):
        cli, argv, _ = CASES[cid]
        p = subprocess.run([PYTHON, cli, *_argv(cid, argv, fx)], cwd=REPO, env=cli_env(),
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == results[cid]["code"] == 2
        assert error_line(p.stderr) == error_line(results[cid]["stderr"])


def test_every_case_is_in_the_reliability_doc():
    doc = (REPO / "docs/reliability.md").read_text(encoding="utf-8")
    missing = [cid for cid in CASES if f"`{cid}`" not in doc]
    assert not missing, f"add these rows to docs/reliability.md: {missing}"


def test_bad_gemm_backend_variable_is_one_line_error(table):
    """BERTFORGE_CPU_GEMM is read when the model is built: a bad value stops the CLI with one
    line naming the variable, before any work."""
    fx, _ = table
    argv = _argv("gemm-env", INF, fx)
    p = subprocess.run([PYTHON, I, *argv], cwd=REPO, env={**cli_env(), "BERTFORGE_CPU_GEMM": "blas"},
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    line = error_line(p.stderr, p.stdout)
    assert line == "error: environment variable BERTFORGE_CPU_GEMM='blas': expected one of auto, onednn, aten", line
    assert "Traceback" not in p.stderr


def test_tensorboard_dir_needs_the_package(table):
    """Without the tensorboard package --tensorboard_dir is refused in one line (it used to be
    accepted and ignored); the package hidden as an uninstalled one is."""
    fx, _ = table
    argv = _argv("tb", [*PRE, "--tensorboard_dir={tmp}/tb_{id}"], fx)
    code = ("import sys; sys.modules['tensorboard'] = None; sys.argv = ['run_pretraining.py', *sys.argv[1:]]; "
            "from bertforge.cli.pretrain import main; raise SystemExit(main())")
    p = subprocess.run([PYTHON, "-c", code, *argv], cwd=REPO, env=cli_env(), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    line = error_line(p.stderr, p.stdout)
    assert line.startswith("error: --tensorboard_dir needs the tensorboard package"), line
    assert "pip install 'bertforge[tensorboard]'" in line


def test_tensorboard_dir_writes_the_logged_scalars(table, tmp_path):
    """With the package (the tensorboard extra, in make install) the run's records are
    TensorBoard scalars: tag = key, step = global step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fx, _ = table
    tb = tmp_path / "tb"
    argv = _argv("tbw", [*_with(PRE, "--max_steps=3", f"--output_dir={tmp_path}/out"),
                         f"--tensorboard_dir={tb}"], fx)
    p = subprocess.run([PYTHON, P, *argv], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    acc = EventAccumulator(str(tb))
    acc.Reload()
    assert {"average_loss", "learning_rate", "grad_norm"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("average_loss")] == [1, 2, 3]
    logged = [r["data"]["average_loss"] for r in map(json.loads, (
        ln[5:] for ln in (tmp_path / "out" / "dllogger.json").read_text().splitlines()))
              if r.get("type") == "LOG" and isinstance(r.get("step"), list) and len(r["step"]) == 2
              and "average_loss" in r["data"]]
    assert [e.value for e in acc.Scalars("average_loss")] == pytest.approx(logged, rel=1e-6)


def test_squad_feature_cache_is_written_where_the_user_may_write(table, tmp_path):
    """NVIDIA's default (next to --train_file) when that folder is the user's and writable;
    else (read-only, or another user's: a shared dataset folder) --output_dir; the run says
    where the cache went."""
    import os
    import shutil

    fx, _ = table
    mine, shared, foreign = tmp_path / "mine", tmp_path / "shared", tmp_path / "foreign"
    for d in (mine, shared, foreign):
        d.mkdir()
        shutil.copy(fx["squad"], d / "train.json")
    undo = make_read_only(shared)
    folders = [(mine, mine), (shared, tmp_path / "out_shared")]
    if os.geteuid() == 0:  # a folder of another user that this one may write (root may)
        os.chown(foreign, 65534, 65534)
        folders.append((foreign, tmp_path / "out_foreign"))
    try:
        for train_dir, expected in folders:
            out = tmp_path / f"out_{train_dir.name}"
            argv = _argv("cache", [*_with(SQD, f"--train_file={train_dir / 'train.json'}",
                                          f"--output_dir={out}")], fx)
            p = subprocess.run([PYTHON, S, *argv], cwd=REPO, env=cli_env(), capture_output=True, text=True,
                               timeout=300)
            assert p.returncode == 0, p.stderr[-2000:]
            (cache,) = expected.glob("train.json_bert_64_32_16_*.npz")
            assert f"training features cached in {cache}" in p.stdout
            if expected != train_dir:
                assert not list(train_dir.glob("*.npz"))
    finally:
        undo()
