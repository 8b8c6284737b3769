"""``run_glue.py``: fine-tune and evaluate BERT on a GLUE task (NVIDIA's flags).

    python run_glue.py --task_name sst-2 --data_dir glue/SST-2 --init_checkpoint ckpt.pt \\
        --vocab_file vocab.txt --do_lower_case --do_train --do_eval --output_dir results/SST-2

Tasks: cola, sst-2, mrpc, sts-b, qqp, mnli (dev_matched), mnli-mm (dev_mismatched), qnli,
rte, wnli. Training reads ``<data_dir>/train.tsv``; evaluation and prediction the task's dev
file. Writes ``results.txt`` (JSON: metrics, losses, latency percentiles, throughput),
``predictions.json`` (--do_predict: example id -> label, or score for STS-B), the
fine-tuned ``pytorch_model.bin`` + ``bert_config.json`` and ``dllogger.json``, atomically.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from bertforge.cli.args import ArgumentParser
from bertforge.cli.environment import add_cpu_gemm_flag, read_environment
from bertforge.cli.finetune_flags import finetune_config, finetune_runtime
from bertforge.cli.nvidia import add_dry_run, argv_of, check_model_files, note
from bertforge.config import LOSS_NORMALIZATIONS
from bertforge.data.tokenization import find_vocab, load_tokenizer, lower_case
from bertforge.distributed import rank0_output_lock, wrap_ddp
from bertforge.errors import ConfigError, cli_entry
from bertforge.files import atomic_write_json, atomic_write_text, ensure_dir
from bertforge.model.bert import BertForSequenceClassification
from bertforge.model.convert import load_task_model
from bertforge.runlog import Logger
from bertforge.tasks import glue
from bertforge.train import finetune
from bertforge.train.loop import SummedLoss

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="run_glue.py", description="BERT fine-tuning and evaluation on GLUE.")
    a = p.add_argument
    a("--data_dir", required=True, help="the task's GLUE directory (train.tsv, dev.tsv, ...)")
    a("--task_name", required=True, help=f"one of {', '.join(glue.TASKS)}")
    a("--init_checkpoint", required=True, help="a bertforge/NVIDIA .pt file or an HF directory")
    a("--output_dir", required=True, help="where results.txt, predictions and the model go")
    a("--bert_model", default=None,
      help="model name (NVIDIA's flag); a name ending in 'uncased' implies --do_lower_case")
    a("--vocab_file", default=None, help="WordPiece vocab.txt (default: vocab.txt of an HF --init_checkpoint)")
    a("--config_file", default=None, help="bert_config.json (needed for NGC files)")
    a("--max_seq_length", type=int, default=128)
    a("--do_train", action="store_true", help="fine-tune on train.tsv")
    a("--do_eval", action="store_true", help="score the dev set")
    a("--do_predict", action="store_true", help="write predictions.json for the dev set")
    a("--do_lower_case", action="store_true")
    a("--train_batch_size", type=int, default=32, help="sequences per optimizer step and process")
    a("--eval_batch_size", type=int, default=8)
    a("--learning_rate", type=float, default=5e-5)
    a("--num_train_epochs", type=float, default=3.0)
    a("--max_steps", type=float, default=-1.0, help="optimizer steps; > 0 overrides --num_train_epochs")
    a("--warmup_proportion", type=float, default=0.1)
    a("--seed", type=int, default=1)
    a("--gradient_accumulation_steps", type=int, default=1)
    a("--loss_normalization", choices=LOSS_NORMALIZATIONS, default="global_batch",
      help="global_batch (default): the loss is the mean over the examples of the whole global "
           "batch (--train_batch_size x processes), the same update for any split into "
           "processes and micro-batches; micro_batch: NVIDIA's mean of per-micro-batch means")
    a("--fp16", "--amp", dest="fp16", action="store_true", help="fp16 autocast + loss scaling (CUDA)")
    a("--bf16", action="store_true", help="bf16 autocast")
    a("--no_cuda", action="store_true", help="run on the CPU even when CUDA is available")
    add_cpu_gemm_flag(a)
    a("--local_rank", "--local-rank", type=int, default=int(os.environ.get("LOCAL_RANK", -1)))
    a("--log_freq", type=int, default=50)
    a("--json-summary", dest="json_summary", default=None,
      help="dllogger JSON-lines file (default: <output_dir>/dllogger.json)")
    a("--skip_checkpoint", action="store_true", help="do not save the fine-tuned model")
    a("--loss_scale", type=float, default=0.0, help="fp16: 0 = dynamic loss scaling, > 0 = this static scale")
    a("--tf32", action="store_true", help="TF32 tensor-core math for fp32 matmuls (CUDA, Ampere or newer)")
    a("--server_ip", type=str, default="", help="with --server_port: wait for a remote debugger (debugpy) there")
    a("--server_port", type=str, default="", help="with --server_ip: wait for a remote debugger (debugpy) there")
    add_dry_run(p, "the model is loaded")
    return p.check(limits=LIMITS, outputs={"output_dir": "dir", "json_summary": "file"})


#: The range of every numeric flag (checked by bertforge.cli.args; NaN/inf never pass).
LIMITS = {
    "max_seq_length": "[1,1048576]", "train_batch_size": "[1,16777216]",
    "eval_batch_size": "[1,16777216]", "learning_rate": ">0", "num_train_epochs": ">=0",
    "warmup_proportion": "[0,1)", "gradient_accumulation_steps": "[1,16777216]",
    "local_rank": ">=-1", "log_freq": ">=1", "loss_scale": ">=0",
}


def _remote_debugger(args) -> None:
    """NVIDIA's --server_ip/--server_port: wait for a debugger to attach (ptvsd there; its
    successor debugpy here, or ptvsd when that is what is installed)."""
    if not (args.server_ip and args.server_port):
        if args.server_ip or args.server_port:
            note("--server_ip/--server_port", "both are needed to wait for a remote debugger")
        return
    try:
        port = int(args.server_port)
    except ValueError:
        raise ConfigError(f"--server_port must be a port number, got {args.server_port!r}") from None
    try:
        import debugpy
    except ImportError:
        try:
            import ptvsd as debugpy  # NVIDIA's choice; same two calls
        except ImportError:
            note("--server_ip/--server_port", "waiting for a remote debugger needs the debugpy package "
                                              "(pip install debugpy), which is not installed")
            return
    print(f"waiting for a debugger to attach at {args.server_ip}:{port}", flush=True)
    if hasattr(debugpy, "listen"):
        debugpy.listen((args.server_ip, port))
    else:
        debugpy.enable_attach(address=(args.server_ip, port), redirect_output=True)
    debugpy.wait_for_attach() if hasattr(debugpy, "wait_for_attach") else debugpy.wait_for_client()


class _Loss(SummedLoss):
    """Cross-entropy (squared error for regression) over the examples: NVIDIA's mean per
    micro-batch (``__call__``) or the sum (``sums``) for the mean over the global batch;
    ``example_mask`` 0 (the loader's wrap-around padding) leaves an example out."""

    def __init__(self, task: glue.GlueTask) -> None:
        self.regression = task.is_regression

    def __call__(self, model, batch):
        logits = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])  # [B, C]
        if self.regression:
            return torch.nn.functional.mse_loss(logits.float().view(-1), batch["labels"].float().view(-1))
        return torch.nn.functional.cross_entropy(logits.float(), batch["labels"].view(-1))

    def counts(self, batch) -> torch.Tensor:
        return batch["example_mask"].float().sum().reshape(1)

    def sums(self, model, batch) -> torch.Tensor:
        logits = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])  # [B, C]
        if self.regression:
            per = (logits.float().view(-1) - batch["labels"].float().view(-1)) ** 2
        else:
            per = torch.nn.functional.cross_entropy(logits.float(), batch["labels"].view(-1),
                                                    reduction="none")
        return (per * batch["example_mask"].float()).sum().reshape(1)


def _loss(task: glue.GlueTask) -> _Loss:
    return _Loss(task)


def _forward(model, batch):
    return model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])


def _evaluate(args, task, examples, model, tokenizer, rt) -> dict:
    """Predict the dev set; metrics (--do_eval) and predictions.json (--do_predict)."""
    arrays = glue.glue_features(examples, task, tokenizer, args.max_seq_length, with_labels=args.do_eval)
    inputs = {k: v for k, v in arrays.items() if k != "labels"}
    (logits,), latencies = finetune.predict(model, inputs, args.eval_batch_size, _forward, precision=rt.precision)
    results = {"eval:num_samples_per_gpu": len(examples), "eval:num_steps": len(latencies),
               **finetune.latency_stats(latencies, args.eval_batch_size)}
    preds = logits[:, 0] if task.is_regression else logits.argmax(axis=1)
    if args.do_predict:
        if task.is_regression:
            out = {e.guid: float(p) for e, p in zip(examples, preds, strict=True)}
        else:
            out = {e.guid: task.labels[int(p)] for e, p in zip(examples, preds, strict=True)}
        atomic_write_json(Path(args.output_dir) / "predictions.json", out)
    if args.do_eval:
        labels = arrays["labels"]
        t_logits, t_labels = torch.from_numpy(logits), torch.from_numpy(labels)
        if task.is_regression:
            loss = torch.nn.functional.mse_loss(t_logits[:, 0], t_labels.float())
        else:
            loss = torch.nn.functional.cross_entropy(t_logits, t_labels)
        results["eval:loss"] = float(loss)
        results.update(glue.compute_metrics(task, preds, labels))
    return results


@cli_entry
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv_of(argv))
    if args.loss_scale and not args.fp16:
        note("--loss_scale", "loss scaling is used only with --fp16")
    _remote_debugger(args)
    task = glue.get_task(args.task_name)
    if not (args.do_train or args.do_eval or args.do_predict):
        raise ConfigError("nothing to do: give --do_train, --do_eval and/or --do_predict")
    if not Path(args.data_dir).is_dir():
        raise ConfigError(f"--data_dir {args.data_dir}: no such directory")
    if args.dry_run:
        check_model_files(args)
        print(f"dry run: {task.name} from {args.init_checkpoint} into {args.output_dir}: "
              "flags and inputs OK", flush=True)
        return {}
    precision, launch = finetune_runtime(args, read_environment())
    rt = finetune.setup_runtime(seed=args.seed, precision=precision, launch=launch)
    with rank0_output_lock(args.output_dir, "--output_dir", rt):
        return _run(args, task, rt)


def _run(args, task, rt) -> dict:
    ensure_dir(args.output_dir)
    logger = Logger(args.json_summary or Path(args.output_dir) / "dllogger.json") if rt.is_main else \
        Logger(None, stdout=False)
    # Read the data before the (slow) model load so that bad files fail at once.
    train_examples = glue.read_examples(task, Path(args.data_dir) / "train.tsv", "train") if args.do_train else None
    dev_examples = glue.read_examples(task, Path(args.data_dir) / task.dev_file, "dev",
                                      with_labels=args.do_eval) if (args.do_eval or args.do_predict) else None
    vocab_file = find_vocab(args.vocab_file, args.init_checkpoint)
    tokenizer = load_tokenizer(vocab_file, lower_case(args.do_lower_case, args.bert_model))
    model, report = load_task_model(args.init_checkpoint, BertForSequenceClassification,
                                    head=("classifier.*",), training=args.do_train,
                                    config_file=args.config_file, num_labels=task.num_labels)
    finetune.check_inputs_fit(model.config, max_seq_length=args.max_seq_length, tokenizer=tokenizer,
                              vocab_file=vocab_file, pairs=task.text_b is not None)
    logger.log("PARAMETER", {"task": task.name, "bert_model": args.bert_model or "",
                             "init_checkpoint": str(args.init_checkpoint), "load": report.summary(),
                             "precision": rt.precision.name, "world_size": rt.world_size})
    model.to(rt.device)
    results: dict = {}
    if args.do_train:
        cfg = finetune_config(args)
        arrays = glue.glue_features(train_examples, task, tokenizer, args.max_seq_length)
        s = finetune.train(wrap_ddp(model, rt.device, rt.world_size), arrays, _loss(task), cfg, precision=rt.precision,
                           rank=rt.rank, world_size=rt.world_size, logger=logger)
        results.update({"global_step": s.global_step, "train:loss": s.average_loss,
                        "train:latency": s.train_time_s, "train:num_samples_per_gpu": len(train_examples),
                        "train:num_steps": s.global_step, "train:throughput": s.sequences_per_second})
        if rt.is_main and not args.skip_checkpoint:
            finetune.save_finetuned(model, args.output_dir, args=vars(args), task=task.name)
    if (args.do_eval or args.do_predict) and rt.is_main:
        results.update(_evaluate(args, task, dev_examples, model, tokenizer, rt))
    if rt.is_main:
        atomic_write_text(Path(args.output_dir) / "results.txt", json.dumps(results) + "\n")
        summary = {"exact_match": results.get("acc"), "F1": results.get("f1"),
                   "e2e_train_time": results.get("train:latency"),
                   "training_sequences_per_second": results.get("train:throughput"),
                   "e2e_inference_time": (results["infer:latency(ms):sum"] / 1000
                                          if "infer:latency(ms):sum" in results else None),
                   "inference_sequences_per_second": results.get("infer:throughput(samples/s):avg")}
        logger.log((), {k: v for k, v in summary.items() if v is not None})
        for k in sorted(results):
            if k.startswith(("acc", "f1", "mcc", "pearson", "spearmanr", "corr", "eval:loss")):
                print(f"{k} = {results[k]}", flush=True)
    logger.close()
    from bertforge.distributed import barrier, cleanup

    barrier()
    cleanup()
    return results
