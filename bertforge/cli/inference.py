"""``inference.py``: answer questions with a fine-tuned SQuAD model (NVIDIA's flags).

    python inference.py --init_checkpoint results/SQuAD/pytorch_model.bin \\
        --vocab_file vocab.txt --do_lower_case \\
        --question "Where is Normandy?" --context "The Normans ... in France."
    {"answer": "France", "probability": 0.97, "start": 159, "end": 165}

``--json FILE`` answers a batch: FILE is a JSON list of ``{"question", "context"[, "id"]}``
objects or a SQuAD-format file; the output is a JSON list with one object per question
(``--output FILE`` writes it atomically instead of printing). Contexts longer than one
window are split into the same sliding windows as in training. The checkpoint is a
bertforge/NVIDIA file or an HF directory holding a question-answering model.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from bertforge.cli.args import ArgumentParser
from bertforge.cli.environment import add_cpu_gemm_flag, read_environment, use_cpu_gemm
from bertforge.cli.nvidia import add_dry_run, argv_of, check_model_files, given, note
from bertforge.data.tokenization import find_vocab, load_tokenizer, lower_case
from bertforge.errors import ConfigError, DataError, cli_entry
from bertforge.files import atomic_write_json, read_input_text
from bertforge.model.bert import BertForQuestionAnswering
from bertforge.model.convert import load_task_model
from bertforge.precision import Precision
from bertforge.tasks import squad
from bertforge.train.finetune import check_inputs_fit

__all__ = ["build_parser", "main", "read_batch"]

# NVIDIA's inference.py answers this sample when --question/--context are not given.
SAMPLE_QUESTION = "Most antibiotics target bacteria and don't affect what class of organisms? "
SAMPLE_CONTEXT = (
    "Within the genitourinary and gastrointestinal tracts, commensal flora serve as biological "
    "barriers by competing with pathogenic bacteria for food and space and, in some cases, by "
    "changing the conditions in their environment, such as pH or available iron. This reduces "
    "the probability that pathogens will reach sufficient numbers to cause illness. However, "
    "since most antibiotics non-specifically target bacteria and do not affect fungi, oral "
    "antibiotics can lead to an overgrowth of fungi and cause conditions such as a vaginal "
    "candidiasis (a yeast infection). There is good evidence that re-introduction of probiotic "
    "flora, such as pure cultures of the lactobacilli normally found in unpasteurized yogurt, "
    "helps restore a healthy balance of microbial populations in intestinal infections in "
    "children and encouraging preliminary data in studies on bacterial gastroenteritis, "
    "inflammatory bowel diseases, urinary tract infection and post-surgical infections. ")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="inference.py", description="Question answering with a fine-tuned BERT.")
    a = p.add_argument
    a("--init_checkpoint", required=True, help="fine-tuned QA weights: a .pt/.bin file or an HF directory")
    a("--bert_model", default=None,
      help="model name (NVIDIA's flag); a name ending in 'uncased' implies --do_lower_case")
    a("--vocab_file", default=None, help="WordPiece vocab.txt (default: vocab.txt of an HF --init_checkpoint)")
    a("--config_file", default=None, help="bert_config.json (needed for NGC files)")
    a("--question", default=SAMPLE_QUESTION, help="the question (default: NVIDIA's sample question)")
    a("--context", default=SAMPLE_CONTEXT, help="the text holding the answer (default: NVIDIA's sample)")
    a("--json", dest="json_file", default=None, help="a JSON file of questions to answer in one batch")
    a("--output", default=None, help="with --json: write the answers here instead of stdout")
    a("--max_seq_length", type=int, default=384)
    a("--doc_stride", type=int, default=128)
    a("--max_query_length", type=int, default=64)
    a("--n_best_size", type=int, default=1, help="also print this many alternatives when > 1")
    a("--max_answer_length", type=int, default=30)
    a("--batch_size", type=int, default=8, help="windows per forward pass")
    a("--do_lower_case", action="store_true")
    a("--can_give_negative_answer", "--version_2_with_negative", dest="can_give_negative_answer",
      action="store_true",
      help="SQuAD 2.0 model: answer '' when the question has no answer in the context")
    a("--verbose_logging", action="store_true", help="NVIDIA's flag (see docs/nvidia.md)")
    a("--null_score_diff_threshold", type=float, default=-11.0,
      help="with --can_give_negative_answer: answer '' when null score - best span score exceeds this")
    a("--no_gpu", "--no_cuda", dest="no_gpu", action="store_true", help="run on the CPU even when CUDA is available")
    add_cpu_gemm_flag(a)
    a("--fp16", action="store_true", help="fp16 autocast (CUDA)")
    a("--bf16", action="store_true", help="bf16 autocast")
    a("--seed", type=int, default=1, help="torch seed (inference is deterministic; kept for NVIDIA's flag)")
    a("--local_rank", "--local-rank", type=int, default=int(os.environ.get("LOCAL_RANK", -1)),
      help="CUDA device index to use (NVIDIA's flag)")
    add_dry_run(p, "the model is loaded")
    return p.check(limits=LIMITS, outputs={"output": "file"})


#: The range of every numeric flag (checked by bertforge.cli.args; NaN/inf never pass).
LIMITS = {
    "max_seq_length": "[1,1048576]", "doc_stride": ">=1", "max_query_length": ">=1",
    "n_best_size": "[1,100000]", "max_answer_length": ">=1", "batch_size": "[1,16777216]",
    "local_rank": ">=-1",
}


def read_batch(path: str | os.PathLike) -> list[dict]:
    """``[{"id", "question", "context"}]`` from a list file or a SQuAD-format file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"--json {p}: no such file")
    try:
        obj = json.loads(read_input_text(p, f"--json {p}"))
    except json.JSONDecodeError as e:
        raise DataError(f"--json {p}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if isinstance(obj, dict) and "data" in obj:
        return [{"id": ex.qas_id, "question": ex.question, "context": ex.context}
                for ex in squad.read_squad_examples(p)]
    if not isinstance(obj, list):
        raise DataError(f"--json {p}: expected a list of {{\"question\", \"context\"}} objects or a SQuAD file")
    items = []
    for i, it in enumerate(obj):
        if not (isinstance(it, dict) and isinstance(it.get("question"), str) and isinstance(it.get("context"), str)):
            raise DataError(f"--json {p}: item {i} needs string fields 'question' and 'context'")
        items.append({"id": str(it.get("id", i)), "question": it["question"], "context": it["context"]})
    return items


def _device(args) -> torch.device:
    if torch.cuda.is_available() and not args.no_gpu:
        return torch.device("cuda", max(args.local_rank, 0))
    return torch.device("cpu")


@cli_entry
def main(argv: list[str] | None = None) -> list[dict]:
    argv = argv_of(argv)
    args = build_parser().parse_args(argv)
    if args.verbose_logging:
        note("--verbose_logging", "answers are cut from the context by character offsets, so there is "
                                  "no answer-text alignment whose failures it would log")
    if args.json_file is not None and given(argv, "--question", "--context"):
        raise ConfigError("--json cannot be combined with --question/--context")
    if args.output and not args.json_file:
        raise ConfigError("--output goes with --json")
    if args.dry_run:
        check_model_files(args)
        n = len(read_batch(args.json_file)) if args.json_file else 1
        print(f"dry run: {n} question(s) for {args.init_checkpoint}: flags and inputs OK", flush=True)
        return []
    use_cpu_gemm(read_environment(), args.cpu_gemm)
    torch.manual_seed(args.seed)
    items = read_batch(args.json_file) if args.json_file else \
        [{"id": "0", "question": args.question, "context": args.context}]
    for it in items:  # an empty text would be answered "with probability 1.0"
        for field in ("question", "context"):
            where = f"--json {args.json_file}: item {it['id']}: the {field}" if args.json_file else f"--{field}"
            if not it[field].strip():
                raise ConfigError(f"{where} is empty")
            try:
                it[field].encode("utf-8")
            except UnicodeEncodeError:  # e.g. a byte of a command line that is not UTF-8
                raise ConfigError(f"{where} is not valid text (it holds bytes that are not UTF-8)") from None
    device = _device(args)
    precision = Precision.from_flags(args.fp16, args.bf16, device)
    vocab_file = find_vocab(args.vocab_file, args.init_checkpoint)
    tokenizer = load_tokenizer(vocab_file, lower_case(args.do_lower_case, args.bert_model))
    model, _ = load_task_model(args.init_checkpoint, BertForQuestionAnswering, head=("qa_outputs.*",),
                               training=False, config_file=args.config_file, drop=("bert.pooler.*",))
    check_inputs_fit(model.config, max_seq_length=args.max_seq_length, tokenizer=tokenizer,
                     vocab_file=vocab_file)
    model.to(device).eval()
    with precision.autocast():
        answers = squad.answer_questions(
            model, tokenizer, [it["question"] for it in items], [it["context"] for it in items],
            max_seq_length=args.max_seq_length, doc_stride=args.doc_stride,
            max_query_length=args.max_query_length, n_best_size=max(args.n_best_size, 1),
            max_answer_length=args.max_answer_length, version_2_with_negative=args.can_give_negative_answer,
            null_score_diff_threshold=args.null_score_diff_threshold, batch_size=args.batch_size, device=device)
    out = []
    for it, ans in zip(items, answers, strict=True):
        rec = {"answer": ans["answer"], "probability": ans["probability"], "start": ans["start"], "end": ans["end"]}
        if args.can_give_negative_answer:
            rec["null_odds"] = ans["null_odds"]
        if args.n_best_size > 1:
            rec["nbest"] = ans["nbest"]
        if args.json_file:
            rec = {"id": it["id"], "question": it["question"], **rec}
        out.append(rec)
    if args.json_file:
        if args.output:
            atomic_write_json(args.output, out)
        else:
            print(json.dumps(out, indent=2), flush=True)
    else:
        print(json.dumps(out[0]), flush=True)
    return out
