"""``run_squad.py``: fine-tune and evaluate BERT on SQuAD v1.1 / v2.0 (NVIDIA's flags).

    python run_squad.py --init_checkpoint ckpt.pt --vocab_file vocab.txt --do_lower_case \\
        --do_train --train_file train-v1.1.json --do_predict --do_eval \\
        --predict_file dev-v1.1.json --output_dir results/SQuAD

Writes to ``--output_dir``: ``predictions.json``, ``nbest_predictions.json``,
``null_odds.json`` (v2.0), ``eval_results.json`` (--do_eval; the official script's
numbers), ``pytorch_model.bin`` + ``bert_config.json`` (after training unless
--skip_checkpoint) and the dllogger log (--json-summary). Every file is written
atomically. Under ``torchrun`` training is data-parallel; prediction runs on rank 0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from bertforge.cli.args import ArgumentParser
from bertforge.cli.environment import add_cpu_gemm_flag, read_environment
from bertforge.cli.finetune_flags import finetune_config, finetune_runtime
from bertforge.cli.nvidia import add_dry_run, argv_of, check_model_files, given, note
from bertforge.config import LOSS_NORMALIZATIONS
from bertforge.data.tokenization import find_vocab, load_tokenizer, lower_case
from bertforge.distributed import rank0_output_lock, wrap_ddp
from bertforge.errors import ConfigError, DataError, UserError, cli_entry
from bertforge.files import atomic_path, atomic_write_json, ensure_dir
from bertforge.model.bert import BertForQuestionAnswering
from bertforge.model.convert import load_task_model
from bertforge.profiling import StepProfiler
from bertforge.runlog import Logger
from bertforge.tasks import squad
from bertforge.tasks.squad_metrics import evaluate_v1, evaluate_v2, load_squad_json
from bertforge.train import finetune
from bertforge.train.loop import SummedLoss

__all__ = ["build_parser", "main"]

_CACHE_VERSION = 1
_CACHED_KEYS = ("input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="run_squad.py", description="BERT fine-tuning and prediction on SQuAD.")
    a = p.add_argument
    a("--init_checkpoint", required=True,
      help="weights to start from: a bertforge/NVIDIA .pt file or an HF directory")
    a("--output_dir", required=True, help="where predictions, the fine-tuned model and logs go")
    a("--bert_model", default=None,
      help="model name (NVIDIA's flag), used in the feature cache file name; a name ending in 'uncased' implies --do_lower_case")
    a("--vocab_file", default=None, help="WordPiece vocab.txt (default: vocab.txt of an HF --init_checkpoint)")
    a("--config_file", default=None, help="bert_config.json (needed for NGC files; else checked against the checkpoint)")
    a("--train_file", default=None, help="SQuAD json for training, e.g. train-v1.1.json")
    a("--predict_file", default=None, help="SQuAD json for predictions, e.g. dev-v1.1.json")
    a("--max_seq_length", type=int, default=384, help="tokens per window")
    a("--doc_stride", type=int, default=128, help="context tokens between the starts of consecutive windows")
    a("--max_query_length", type=int, default=64, help="question tokens kept")
    a("--do_train", action="store_true", help="fine-tune on --train_file")
    a("--do_predict", action="store_true", help="write predictions for --predict_file")
    a("--do_eval", action="store_true", help="score the predictions (official EM/F1; implies --do_predict)")
    a("--train_batch_size", type=int, default=32, help="sequences per optimizer step and process")
    a("--predict_batch_size", type=int, default=8)
    a("--learning_rate", type=float, default=5e-5)
    a("--num_train_epochs", type=float, default=3.0)
    a("--max_steps", type=float, default=-1.0, help="optimizer steps; > 0 overrides --num_train_epochs")
    a("--warmup_proportion", type=float, default=0.1, help="fraction of the steps with linear warmup")
    a("--n_best_size", type=int, default=20, help="n-best answers kept per question")
    a("--max_answer_length", type=int, default=30, help="longest answer in tokens")
    a("--seed", type=int, default=42)
    a("--gradient_accumulation_steps", type=int, default=1)
    a("--loss_normalization", choices=LOSS_NORMALIZATIONS, default="global_batch",
      help="global_batch (default): the loss is the mean over the examples of the whole global "
           "batch (--train_batch_size x processes), the same update for any split into "
           "processes and micro-batches; micro_batch: NVIDIA's mean of per-micro-batch means")
    a("--do_lower_case", action="store_true", help="lower-case and strip accents (uncased models)")
    a("--version_2_with_negative", action="store_true", help="SQuAD 2.0: questions may have no answer")
    a("--null_score_diff_threshold", type=float, default=0.0,
      help="v2.0: predict no answer when null score - best span score exceeds this")
    a("--fp16", "--amp", dest="fp16", action="store_true", help="fp16 autocast + loss scaling (CUDA)")
    a("--bf16", action="store_true", help="bf16 autocast")
    a("--no_cuda", action="store_true", help="run on the CPU even when CUDA is available")
    add_cpu_gemm_flag(a)
    a("--local_rank", "--local-rank", type=int, default=int(os.environ.get("LOCAL_RANK", -1)),
      help="set by the legacy torch.distributed.launch; torchrun sets LOCAL_RANK")
    a("--log_freq", type=int, default=50, help="log the loss every this many steps")
    a("--json-summary", dest="json_summary", default=None,
      help="dllogger JSON-lines file (default: <output_dir>/dllogger.json)")
    a("--skip_checkpoint", action="store_true", help="do not save the fine-tuned model")
    a("--skip_cache", action="store_true", help="do not write the training-feature cache")
    a("--cache_dir", default=None,
      help="where to cache training features (default: next to --train_file when that folder "
           "is yours and writable, as NVIDIA's code does, else --output_dir)")
    a("--eval_script", default="evaluate.py",
      help="with --do_eval: the official evaluate-v1.1.py/-v2.0.py; when the file exists it is run "
           "and its scores are reported (else bertforge's transcription of its formulas is used)")
    a("--verbose_logging", action="store_true", help="NVIDIA's flag (see docs/nvidia.md)")
    a("--use_env", action="store_true", help="NVIDIA's flag; the local rank always comes from LOCAL_RANK")
    a("--disable-progress-bar", "--disable_progress_bar", dest="disable_progress_bar", action="store_true",
      help="NVIDIA's flag; run_squad.py shows no progress bar")
    a("--loss_scale", type=float, default=0.0,
      help="fp16: 0 = dynamic loss scaling, > 0 = this static scale")
    a("--tf32", action="store_true", help="TF32 tensor-core math for fp32 matmuls (CUDA, Ampere or newer)")
    a("--profile", action="store_true",
      help="record a torch.profiler trace of 5 training steps (or prediction batches) to "
           "<output_dir>/profile_rank<R>.json")
    add_dry_run(p, "features are built or the model is loaded")
    return p.check(limits=LIMITS, outputs={"output_dir": "dir", "json_summary": "file", "cache_dir": "dir"})


#: The range of every numeric flag (checked by bertforge.cli.args; NaN/inf never pass).
LIMITS = {
    "max_seq_length": "[1,1048576]", "doc_stride": ">=1", "max_query_length": ">=1",
    "train_batch_size": "[1,16777216]", "predict_batch_size": "[1,16777216]",
    "learning_rate": ">0", "num_train_epochs": ">=0", "warmup_proportion": "[0,1)",
    "n_best_size": "[1,100000]", "max_answer_length": ">=1",
    "gradient_accumulation_steps": "[1,16777216]", "local_rank": ">=-1", "log_freq": ">=1", "loss_scale": ">=0",
}


def _notes(args, argv: list[str]) -> None:
    if args.verbose_logging:
        note("--verbose_logging", "answers are cut from the context by character offsets, so there is "
                                  "no answer-text alignment whose failures it would log")
    if given(argv, "--use_env"):
        note("--use_env", "the local rank is always read from LOCAL_RANK when the launcher sets it")
    if args.disable_progress_bar:
        note("--disable-progress-bar", "run_squad.py shows no progress bar (dllogger lines every --log_freq steps)")
    if args.loss_scale and not args.fp16:
        note("--loss_scale", "loss scaling is used only with --fp16")
    if given(argv, "--eval_script") and not args.do_eval:
        note("--eval_script", "it is run only with --do_eval")


def _validate(args) -> None:
    if args.do_eval:
        args.do_predict = True
    if not (args.do_train or args.do_predict):
        raise ConfigError("nothing to do: give --do_train and/or --do_predict (--do_eval)")
    if args.do_train and not args.train_file:
        raise ConfigError("--do_train needs --train_file")
    if args.do_predict and not args.predict_file:
        raise ConfigError("--do_predict/--do_eval needs --predict_file")
    for flag in ("train_file", "predict_file"):
        path = getattr(args, flag)
        if path and not Path(path).is_file():
            raise DataError(f"--{flag} {path}: no such file")


def _cache_path(args, vocab_file: str) -> Path:
    """The feature cache file for this train file, vocabulary and window settings."""
    train = Path(args.train_file).resolve()
    st = train.stat()
    key = json.dumps([_CACHE_VERSION, str(train), st.st_size, st.st_mtime_ns,
                      hashlib.sha1(Path(vocab_file).read_bytes()).hexdigest(),
                      lower_case(args.do_lower_case, args.bert_model),
                      args.max_seq_length, args.doc_stride, args.max_query_length,
                      args.version_2_with_negative])
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    model = Path((args.bert_model or "bert").rstrip("/")).name or "bert"
    name = (f"{train.name}_{model}_{args.max_seq_length}_{args.doc_stride}_{args.max_query_length}"
            f"_{digest}.npz")
    if args.cache_dir:
        return Path(args.cache_dir) / name
    if _yours_and_writable(train.parent):
        return train.parent / name  # NVIDIA's default
    return Path(args.output_dir) / name


def _yours_and_writable(folder: Path) -> bool:
    """A folder this user owns and may write: a shared dataset folder (another user's, or a
    read-only mount) is not cluttered with per-user caches."""
    try:
        return folder.stat().st_uid == os.getuid() and os.access(folder, os.W_OK | os.X_OK)
    except OSError:
        return False


def _train_arrays(args, tokenizer, vocab_file: str, rt, logger) -> dict[str, np.ndarray]:
    """Training windows with answer positions, from the cache when it matches."""
    cache = _cache_path(args, vocab_file)
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            if set(arrays) != set(_CACHED_KEYS) or len({len(v) for v in arrays.values()}) != 1:
                raise ValueError("unexpected contents")
            if logger:
                logger.log("PARAMETER", {"loaded_cached_train_features": str(cache)})
            return arrays
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:  # damaged: rebuild it
            print(f"note: ignoring unreadable feature cache {cache} ({e})", flush=True)
    examples = squad.read_squad_examples(args.train_file, is_training=True,
                                         version_2_with_negative=args.version_2_with_negative)
    feats = squad.features_from(examples, tokenizer, max_seq_length=args.max_seq_length,
                                doc_stride=args.doc_stride, max_query_length=args.max_query_length,
                                is_training=True)
    arrays = feats.arrays(with_labels=True)
    if logger:
        logger.log("PARAMETER", {"training_samples": len(examples), "training_features": len(feats)})
    if not args.skip_cache and rt.is_main:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cache) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
            if logger:
                logger.log("PARAMETER", {"cached_train_features_file": str(cache)})
            print(f"training features cached in {cache}", flush=True)
        except (OSError, UserError) as e:  # e.g. a read-only data directory: run without a cache
            print(f"note: not caching training features ({e}); use --cache_dir", flush=True)
    return arrays


class _QALoss(SummedLoss):
    """(start + end cross-entropy) / 2: NVIDIA's mean per micro-batch (``__call__``), or two
    terms summed over the examples (``sums``) for the mean over the global batch. Positions
    the mean ignores (>= the batch's width) are left out of the sums and counts alike;
    ``example_mask`` 0 (the loader's wrap-around padding) leaves an example out. ``sums``
    takes each softmax over the window's own tokens: NVIDIA's includes the padding
    positions, whose number depends on the longest window of the micro-batch, so an
    example's loss would depend on the split."""

    def _valid(self, batch) -> torch.Tensor:  # [B, 2]: start, end position counted
        width = batch["input_ids"].shape[1]
        pos = torch.stack([batch["start_positions"], batch["end_positions"]], 1)
        return (pos < width).float() * batch["example_mask"].float()[:, None]

    def __call__(self, model, batch):
        start, end = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        return squad.qa_loss(start, end, batch["start_positions"], batch["end_positions"])

    def counts(self, batch) -> torch.Tensor:
        return self._valid(batch).sum(0)

    def sums(self, model, batch) -> torch.Tensor:
        start, end = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        width = start.size(1)
        pad = batch["attention_mask"] == 0  # exp(-1e4 - max) is exactly 0 in fp32
        start, end = start.float().masked_fill(pad, -1e4), end.float().masked_fill(pad, -1e4)
        per = torch.stack([  # [B, 2] per-example cross-entropies, 0 where ignored
            torch.nn.functional.cross_entropy(logits.float(), pos.clamp(0, width), ignore_index=width,
                                              reduction="none")
            for logits, pos in ((start, batch["start_positions"]), (end, batch["end_positions"]))], 1)
        return (per * self._valid(batch)).sum(0) / 2


_qa_loss = _QALoss()


def _qa_forward(model, batch):
    return model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])


def _predict_and_eval(args, examples, model, tokenizer, rt, logger) -> dict:
    feats = squad.features_from(examples, tokenizer, max_seq_length=args.max_seq_length,
                                doc_stride=args.doc_stride, max_query_length=args.max_query_length)
    logger.log("PARAMETER", {"eval_samples": len(examples), "eval_features": len(feats),
                             "predict_batch_size": args.predict_batch_size})
    t0 = time.perf_counter()
    profiler = StepProfiler(args.output_dir, rank=rt.rank, what="prediction batches",
                            enabled=args.profile and not args.do_train)
    try:
        (start, end), latencies = finetune.predict(model, feats.arrays(), args.predict_batch_size,
                                                   _qa_forward, precision=rt.precision,
                                                   on_batch=profiler.step)
    finally:
        profiler.close()
    infer_time = time.perf_counter() - t0
    preds = squad.decode(examples, feats, start, end, n_best_size=args.n_best_size,
                         max_answer_length=args.max_answer_length,
                         version_2_with_negative=args.version_2_with_negative,
                         null_score_diff_threshold=args.null_score_diff_threshold)
    out = Path(args.output_dir)
    atomic_write_json(out / "predictions.json", squad.predictions_json(preds), indent=4)
    atomic_write_json(out / "nbest_predictions.json", squad.nbest_json(preds), indent=4)
    if args.version_2_with_negative:
        atomic_write_json(out / "null_odds.json", squad.null_odds_json(preds), indent=4)
    results = {"e2e_inference_time": infer_time,
               "inference_sequences_per_second": len(feats) / max(infer_time, 1e-9),
               **finetune.latency_stats(latencies, args.predict_batch_size)}
    if args.do_eval:
        data = load_squad_json(args.predict_file)["data"]
        preds_json = squad.predictions_json(preds)
        if args.version_2_with_negative:
            # null_odds as the na_prob file, thresholded where decoding did: the scores are
            # those of predictions.json, and best_*_thresh is the threshold to use next time.
            metrics = evaluate_v2(data, preds_json, squad.null_odds_json(preds),
                                  args.null_score_diff_threshold, warn=None)
        else:
            metrics = evaluate_v1(data, preds_json, warn=None)
            metrics = {"exact_match": metrics["exact_match"], "F1": metrics["f1"]}
        official = _run_eval_script(args, out / "predictions.json")
        if official is not None:
            metrics = {**metrics, **official}
        atomic_write_json(out / "eval_results.json", metrics)
        print(json.dumps(metrics), flush=True)
        results.update(metrics)
    logger.log((), results)
    return results


def _run_eval_script(args, predictions: Path) -> dict | None:
    """NVIDIA's way: ``python <eval_script> <predict_file> predictions.json``, whose printed JSON
    holds the scores. None (with one line) when the script is not there."""
    import subprocess
    import sys

    script = Path(args.eval_script)
    if not script.is_file():
        note(f"--eval_script {args.eval_script}",
             "no such file; EM/F1 come from bertforge's transcription of the official formulas")
        return None
    proc = subprocess.run([sys.executable, str(script), args.predict_file, str(predictions)],
                          capture_output=True, text=True)
    try:
        scores = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        scores = None
    if proc.returncode != 0 or not isinstance(scores, dict):
        raise DataError(f"--eval_script {script} failed (exit {proc.returncode}): "
                        f"{(proc.stderr or proc.stdout).strip()[-200:]}")
    # evaluate-v1.1.py prints {"exact_match", "f1"}, evaluate-v2.0.py {"exact", "f1", ...}
    em = scores.get("exact_match", scores.get("exact"))
    return {"exact_match": em, "F1": scores.get("f1"), "eval_script": str(script)}


def _dry_run(args) -> dict:
    check_model_files(args)
    what = " + ".join(w for w, on in (("train", args.do_train), ("predict", args.do_predict),
                                       ("eval", args.do_eval)) if on)
    print(f"dry run: {what} from {args.init_checkpoint} into {args.output_dir}: flags and inputs OK",
          flush=True)
    return {}


@cli_entry
def main(argv: list[str] | None = None) -> dict:
    argv = argv_of(argv)
    args = build_parser().parse_args(argv)
    _notes(args, argv)
    _validate(args)
    if args.dry_run:
        return _dry_run(args)
    precision, launch = finetune_runtime(args, read_environment())
    rt = finetune.setup_runtime(seed=args.seed, precision=precision, launch=launch)
    with rank0_output_lock(args.output_dir, "--output_dir", rt):
        return _run(args, rt)


def _run(args, rt) -> dict:
    ensure_dir(args.output_dir)
    logger = Logger(args.json_summary or Path(args.output_dir) / "dllogger.json") if rt.is_main else \
        Logger(None, stdout=False)
    # Read the data before the (slow) model load so that bad files fail at once.
    predict_examples = squad.read_squad_examples(
        args.predict_file, is_training=False,
        version_2_with_negative=args.version_2_with_negative) if args.do_predict else None
    vocab_file = find_vocab(args.vocab_file, args.init_checkpoint)
    tokenizer = load_tokenizer(vocab_file, lower_case(args.do_lower_case, args.bert_model))
    train_arrays = _train_arrays(args, tokenizer, vocab_file, rt, logger if rt.is_main else None) \
        if args.do_train else None
    model, report = load_task_model(args.init_checkpoint, BertForQuestionAnswering,
                                    head=("qa_outputs.*",), training=args.do_train,
                                    config_file=args.config_file, drop=("bert.pooler.*",))
    finetune.check_inputs_fit(model.config, max_seq_length=args.max_seq_length, tokenizer=tokenizer,
                              vocab_file=vocab_file)
    logger.log("PARAMETER", {"init_checkpoint": str(args.init_checkpoint), "load": report.summary(),
                             "precision": rt.precision.name, "world_size": rt.world_size})
    model.to(rt.device)
    results: dict = {}
    if args.do_train:
        cfg = finetune_config(args)
        profiler = StepProfiler(args.output_dir, rank=rt.rank, what="training steps", enabled=args.profile)
        try:
            summary = finetune.train(wrap_ddp(model, rt.device, rt.world_size), train_arrays, _qa_loss,
                                     cfg, precision=rt.precision, rank=rt.rank, world_size=rt.world_size,
                                     logger=logger, on_step=profiler.step)
        finally:
            profiler.close()
        train_results = {"e2e_train_time": summary.train_time_s, "final_loss": summary.final_loss,
                         "training_sequences_per_second": summary.sequences_per_second}
        logger.log((), train_results)
        results.update(train_results)
        if rt.is_main and not args.skip_checkpoint:
            finetune.save_finetuned(model, args.output_dir, args=vars(args))
    if args.do_predict and rt.is_main:
        results.update(_predict_and_eval(args, predict_examples, model, tokenizer, rt, logger))
    logger.close()
    from bertforge.distributed import barrier, cleanup

    barrier()
    cleanup()
    return results
