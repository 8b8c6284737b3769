"""Serving benchmark (issue 8, acceptance 4): a QA model served by a real Triton server vs
in-process inference, on the same real SQuAD questions, at batch 1 and 8.

In one run, for the same model weights and the same windows (the first ``--questions``
questions of the SQuAD dev sample, cut as inference.py cuts them):
  * in-process PyTorch, exactly inference.py's path (``bertforge.tasks.squad.qa_logits``:
    each batch trimmed to its longest window);
  * in-process onnxruntime on the exported ONNX file (windows padded to max_seq_length),
    to separate the serving overhead from the runtime;
  * served: the ONNX model in a generated model repository, served by Triton (PyPI
    nvidia-pytriton, onnxruntime inside its Python path), over HTTP and gRPC, requests of
    1 and 8 windows padded to max_seq_length, from 1 client and from 4 concurrent clients.
Latency is per request (one batch of windows), throughput in windows per second, CPU time
per window over all processes involved (this one, plus the server's process group for
served runs; steadier than wall time on a shared machine). Every served run's answers are
compared with inference.py's answers.

    BERTFORGE_REAL_DATA=/work/shared/data .venv/bin/python bench/bench_serving.py \
        [--config_file bert_configs/small.json | --init_checkpoint CKPT] [--questions 64] [--json out.json]

Prints a Markdown table; ``--write docs/benchmarks.md`` rewrites that file's bench_serving
section (with the command and commit).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bertforge.config import ModelConfig  # noqa: E402
from bertforge.data.tokenization import load_tokenizer  # noqa: E402
from bertforge.model.bert import BertForQuestionAnswering  # noqa: E402
from bertforge.serving import export as ex  # noqa: E402
from bertforge.serving.client import latency_stats, run_squad  # noqa: E402
from bertforge.serving.launcher import TritonServerProcess  # noqa: E402
from bertforge.serving.repository import BatchingOptions, generate_repository  # noqa: E402
from bertforge.tasks.squad import decode, features_from, qa_logits, read_squad_examples  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pgid: int | None = None) -> float:
    """CPU seconds (user + system) of this process, plus every process in group ``pgid``
    (the Triton server and its helpers). Steadier than wall time on a shared machine."""
    t = os.times()
    total = t.user + t.system
    if pgid is not None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:  # fields: state ppid pgrp ... utime(11) stime(12)
                total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def _slice(feats, sl):
    """The windows ``sl`` of a SquadFeatures."""
    return type(feats)(**{k: (v[sl] if v is not None else None) for k, v in vars(feats).items()})


def _inprocess_torch(model, feats, batch_size):
    """inference.py's path, one call of qa_logits per request of ``batch_size`` windows."""
    lat, starts, ends = [], [], []
    t_all = time.perf_counter()
    for i in range(0, len(feats), batch_size):
        sub = _slice(feats, slice(i, i + batch_size))
        t0 = time.perf_counter()
        s, e = qa_logits(model, sub, batch_size=batch_size)
        lat.append(time.perf_counter() - t0)
        starts.append(s)
        ends.append(e)
    wall = time.perf_counter() - t_all
    return np.concatenate(starts), np.concatenate(ends), lat, wall


def _inprocess_onnx(path, feats, batch_size, names):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    lat = []
    t_all = time.perf_counter()
    for i in range(0, len(feats), batch_size):
        sl = slice(i, i + batch_size)
        feed = {n: a[sl].astype(np.int32) for n, a in zip(names, (feats.input_ids, feats.token_type_ids,
                                                                  feats.attention_mask), strict=True)}
        t0 = time.perf_counter()
        session.run(None, feed)
        lat.append(time.perf_counter() - t0)
    return lat, time.perf_counter() - t_all


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config_file", default=str(REPO / "bert_configs" / "small.json"),
                   help="model size (random weights; timing does not depend on them)")
    p.add_argument("--init_checkpoint", default=None, help="a fine-tuned QA checkpoint instead of random weights")
    p.add_argument("--questions", type=int, default=64)
    p.add_argument("--max_seq_length", type=int, default=384)
    p.add_argument("--doc_stride", type=int, default=128)
    p.add_argument("--warmup", type=int, default=8, help="requests before each timed run")
    p.add_argument("--json", default=None, help="write all figures here")
    p.add_argument("--write", help="rewrite this markdown file's bench_serving section")
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from report import provenance, provenance_line, write_section

    info = provenance("bench/bench_serving.py", sys.argv[1:])

    root = os.environ.get("BERTFORGE_REAL_DATA")
    if not root:
        sys.exit("error: set BERTFORGE_REAL_DATA (e.g. /work/shared/data)")
    squad = Path(root) / "squad" / "dev-v1.1-sample.json"
    vocab = Path(root) / "vocab" / "bert-base-uncased-vocab.txt"
    tokenizer = load_tokenizer(vocab)
    examples = read_squad_examples(squad)[:args.questions]
    windows = dict(max_seq_length=args.max_seq_length, doc_stride=args.doc_stride, max_query_length=64)
    feats = features_from(examples, tokenizer, **windows)

    if args.init_checkpoint:
        model = ex.load_model(args.init_checkpoint, "qa")
        model_desc = args.init_checkpoint
    else:
        torch.manual_seed(0)
        cfg = ModelConfig.from_json_file(args.config_file)
        model = BertForQuestionAnswering(cfg).eval()
        model_desc = f"{Path(args.config_file).name} (random weights)"
    n_params = sum(p.numel() for p in model.parameters())

    rows, figures = [], {"model": model_desc, "parameters": n_params, "questions": len(examples),
                         "windows": len(feats), "max_seq_length": args.max_seq_length,
                         "torch_threads": torch.get_num_threads(), "runs": []}

    def add(name, stats, cpu_s, agree=None):
        d = asdict(stats)
        d["run"] = name
        d["cpu_ms_per_window"] = 1e3 * cpu_s / stats.sequences
        d["answers_equal_inference_py"] = agree
        figures["runs"].append(d)
        rows.append(f"| {name} | {stats.batch_size} | {stats.concurrency} | {stats.p50_ms:.1f} | {stats.p90_ms:.1f} | "
                    f"{stats.p99_ms:.1f} | {stats.sequences_per_s:.1f} | {d['cpu_ms_per_window']:.1f} | "
                    + ("" if agree is None else f"{agree}/{len(examples)}") + " |")
        print(rows[-1], flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        tmp = Path(tmp)
        check = (feats.input_ids[:16], feats.token_type_ids[:16], feats.attention_mask[:16])
        manifest = ex.export_model(model, tmp / "export", task="qa", check_inputs=check, formats=("onnx",),
                                   nvidia_names=True, input_dtype="int32", log=lambda *_: None)
        figures["onnx_max_abs_diff"] = manifest.get("onnx").check["max_abs_diff"]
        generate_repository(tmp / "export", tmp / "repo", model_name="bert_qa", formats=("onnx",),
                            options=BatchingOptions(max_batch_size=8, preferred_batch_sizes=[4, 8],
                                                    max_queue_delay_us=2000))

        reference = {}
        for bs in (1, 8):
            _inprocess_torch(model, _slice(feats, slice(0, args.warmup)), bs)  # warm-up
            cpu0 = _cpu_s()
            s, e, lat, wall = _inprocess_torch(model, feats, bs)
            cpu = _cpu_s() - cpu0
            reference[bs] = [pr.text for pr in decode(examples, feats, s, e)]
            add("in-process PyTorch (inference.py path)", latency_stats(
                lat, protocol="-", batch_size=bs, concurrency=1, sequences=len(feats), questions=len(examples),
                wall_s=wall), cpu)
        ref = reference[8]
        names = [t.name for t in manifest.get("onnx").inputs]
        for bs in (1, 8):
            _inprocess_onnx(tmp / "export" / "model.onnx", feats, bs, names)  # warm-up pass
            cpu0 = _cpu_s()
            lat, wall = _inprocess_onnx(tmp / "export" / "model.onnx", feats, bs, names)
            cpu = _cpu_s() - cpu0
            add("in-process onnxruntime", latency_stats(lat, protocol="-", batch_size=bs, concurrency=1,
                                                        sequences=len(feats), questions=len(examples), wall_s=wall),
                cpu)

        with TritonServerProcess(tmp / "repo", ["bert_qa_onnx"]) as srv:
            warm = examples[:args.warmup]
            for protocol, url in (("http", srv.http_url), ("grpc", srv.grpc_url)):
                for bs, conc in ((1, 1), (8, 1), (1, 4), (8, 4)):
                    run_squad(url, "bert_qa_onnx", warm, tokenizer, protocol=protocol, batch_size=bs,
                              concurrency=conc, **windows)
                    cpu0 = _cpu_s(srv.proc.pid)
                    preds, stats = run_squad(url, "bert_qa_onnx", examples, tokenizer, protocol=protocol,
                                             batch_size=bs, concurrency=conc, **windows)
                    cpu = _cpu_s(srv.proc.pid) - cpu0  # client (incl. tokenizing, decoding) + server
                    agree = sum(p.text == r for p, r in zip(preds, ref, strict=True))
                    add(f"Triton {protocol}", stats, cpu, agree)
        figures["server_leftover_processes"] = len(srv.leftovers)

    try:
        figures["load_average"] = os.getloadavg()
    except OSError:
        pass
    header = ("| run | batch | clients | p50 ms | p90 ms | p99 ms | windows/s | CPU ms/window | answers = inference.py |\n"
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    summary = (f"Model {model_desc}, {n_params / 1e6:.1f} M parameters (ONNX export differs from PyTorch by at most "
               f"{figures['onnx_max_abs_diff']:.2g}); {len(examples)} questions -> {len(feats)} windows of "
               f"{args.max_seq_length}.")
    text = f"{summary}\n\n{header}\n" + "\n".join(rows) + "\n"
    print("\n" + text)
    if args.write:
        info["load_end"] = round(os.getloadavg()[0], 2)
        write_section(args.write, "bench_serving",
                      f"Written by `bench/bench_serving.py --write`.\n\n{provenance_line(info)}\n\n{text}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
