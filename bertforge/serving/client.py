"""SQuAD client for a QA model served by Triton (HTTP or gRPC, via ``tritonclient``).

It uses the very windows and decoding of in-process inference (``inference.py``):
``bertforge.tasks.squad.features_from`` cuts questions and contexts into the same sliding
windows, the windows go to the server in batches, and ``bertforge.tasks.squad.decode`` turns
the returned logits into answers. So the answers equal those of ``inference.py`` for the
same model weights (up to float noise in the logits, far below any decision margin).

Every request holds whole windows padded to ``max_seq_length``: Triton's dynamic batcher
only merges requests of equal shapes. With ``concurrency`` C, C threads (one connection
each) send requests at once, which is what lets the batcher merge them.

Tensor names and dtypes come from the server (model metadata), so the client works with
bertforge's names and NVIDIA's (``input__0`` ...) alike; the batch and length limits come
from the model config.

Dimension legend: B batch (windows per request), L max_seq_length, N windows in all.
"""

from __future__ import annotations

import argparse
import json
import queue
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bertforge.cli.args import ArgumentParser
from bertforge.errors import ConfigError, UserError, cli_entry
from bertforge.files import atomic_write_json, ensure_dir

__all__ = [
    "ClientError",
    "ServerError",
    "TritonQAClient",
    "LatencyStats",
    "latency_stats",
    "check_examples",
    "run_squad",
    "build_parser",
    "main",
]

_DTYPES = {"INT32": np.int32, "INT64": np.int64, "FP32": np.float32, "FP16": np.float16}


class ClientError(UserError):
    """A request the client refuses to send (it would be invalid)."""


class ServerError(UserError):
    """Triton answered a request with an error (the message is Triton's)."""


def _short(message: str) -> str:
    """Triton's error text; for a Python-model error (a whole traceback) its last exception line."""
    lines = [ln.strip() for ln in message.splitlines()]
    if "Traceback (most recent call last)" in message:
        raised = [ln for ln in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception): ", ln)]
        if raised:
            return raised[-1]
    return " ".join(message.split())


def _modules(protocol: str):
    if protocol == "http":
        import tritonclient.http as tc
    elif protocol == "grpc":
        import tritonclient.grpc as tc
    else:
        raise ConfigError(f"--protocol must be http or grpc, got {protocol!r}")
    from tritonclient.utils import InferenceServerException
    return tc, InferenceServerException


class TritonQAClient:
    """One connection to a served model.

    ``url`` is host:port of the HTTP (default 8000) or gRPC (default 8001) endpoint.
    ``headers`` go with every call (e.g. ``{"triton-access-token": ...}``).
    ``max_length`` is the longest sequence the client sends; by default the model's
    ``bertforge_max_position_embeddings`` config parameter when the server reports it
    (Triton with the generated config.pbtxt does; PyTriton's generated config does not).
    """

    def __init__(self, url: str, model_name: str, protocol: str = "http", *,
                 headers: dict | None = None, timeout_s: float = 60.0, max_length: int | None = None):
        tc, self._exc = _modules(protocol)
        self.protocol, self.model_name, self.headers = protocol, model_name, headers
        self._tc = tc
        self.timeout_s = timeout_s
        try:
            if protocol == "http":
                self._client = tc.InferenceServerClient(url, connection_timeout=timeout_s,
                                                        network_timeout=timeout_s)
                meta = self._client.get_model_metadata(model_name, headers=headers)
                config = self._client.get_model_config(model_name, headers=headers)
            else:
                self._client = tc.InferenceServerClient(url)
                meta = self._client.get_model_metadata(model_name, headers=headers, as_json=True)
                config = self._client.get_model_config(model_name, headers=headers, as_json=True)["config"]
        except self._exc as e:
            self.close()
            raise ServerError(f"{protocol}://{url} model {model_name}: {_short(e.message())}") from None
        except OSError as e:  # the HTTP client lets connection errors through
            self.close()
            raise ServerError(f"{protocol}://{url}: cannot connect ({e.strerror or e})") from None
        self.inputs = [(t["name"], t["datatype"]) for t in meta["inputs"]]
        self.outputs = [t["name"] for t in meta["outputs"]]
        if len(self.inputs) != 3:
            self.close()
            raise ClientError(f"model {model_name} has {len(self.inputs)} inputs; a BERT model has 3")
        self.max_batch_size = int(config.get("max_batch_size", 0))
        params = config.get("parameters", {}) or {}
        max_len = params.get("bertforge_max_position_embeddings", {}).get("string_value")
        self.max_length = max_length or (int(max_len) if max_len else None)

    def close(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()
            self._client = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def infer(self, input_ids: np.ndarray, token_type_ids: np.ndarray, attention_mask: np.ndarray) -> list[np.ndarray]:
        """One request: inputs [B, L] -> the model's outputs (e.g. start/end logits [B, L]).

        Raises ClientError for inputs the server would reject anyway (checked here so the
        message is clear) and ServerError with Triton's message for anything else.
        """
        arrays = [np.asarray(a) for a in (input_ids, token_type_ids, attention_mask)]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1 or arrays[0].ndim != 2:
            raise ClientError(f"inputs must share one shape [batch, length], got {[a.shape for a in arrays]}")
        b, length = arrays[0].shape
        if b < 1 or length < 1:
            raise ClientError(f"empty request (shape {arrays[0].shape})")
        if self.max_batch_size and b > self.max_batch_size:
            raise ClientError(f"batch of {b} exceeds the model's max_batch_size {self.max_batch_size}")
        if self.max_length and length > self.max_length:
            raise ClientError(f"sequence length {length} exceeds the model's limit {self.max_length}")
        return self.infer_raw({name: a.astype(_DTYPES[dt], copy=False)
                               for (name, dt), a in zip(self.inputs, arrays, strict=True)})

    def infer_raw(self, named: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Send ``named`` arrays as they are (no client-side checks); outputs in model order."""
        inputs = []
        for name, array in named.items():
            dt = next((k for k, v in _DTYPES.items() if v == array.dtype), None) or str(array.dtype).upper()
            inp = self._tc.InferInput(name, list(array.shape), dt)
            inp.set_data_from_numpy(np.ascontiguousarray(array))
            inputs.append(inp)
        outputs = [self._tc.InferRequestedOutput(n) for n in self.outputs]
        try:
            if self.protocol == "http":
                res = self._client.infer(self.model_name, inputs, outputs=outputs, headers=self.headers)
            else:
                res = self._client.infer(self.model_name, inputs, outputs=outputs, headers=self.headers,
                                         client_timeout=self.timeout_s)
        except self._exc as e:
            raise ServerError(f"model {self.model_name}: {_short(e.message())}") from None
        return [res.as_numpy(n) for n in self.outputs]

    def statistics(self) -> dict:
        """Triton's inference statistics of the model (needs the access token in ``headers``)."""
        try:
            if self.protocol == "http":
                return self._client.get_inference_statistics(self.model_name, headers=self.headers)
            return self._client.get_inference_statistics(self.model_name, headers=self.headers, as_json=True)
        except self._exc as e:
            raise ServerError(f"statistics of {self.model_name}: {_short(e.message())}") from None


# --------------------------------------------------------------------------- SQuAD


@dataclass
class LatencyStats:
    """Request latencies (ms) and throughput of one run."""

    protocol: str
    batch_size: int
    concurrency: int
    requests: int
    sequences: int
    questions: int
    wall_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    sequences_per_s: float
    questions_per_s: float


def latency_stats(latencies_s: Sequence[float], *, protocol: str, batch_size: int, concurrency: int,
                  sequences: int, questions: int, wall_s: float) -> LatencyStats:
    ms = np.asarray(latencies_s, dtype=np.float64) * 1e3
    p50, p90, p99 = (float(np.percentile(ms, q)) for q in (50, 90, 99)) if len(ms) else (0.0,) * 3
    return LatencyStats(protocol, batch_size, concurrency, len(ms), sequences, questions, wall_s, p50, p90, p99,
                        float(ms.mean()) if len(ms) else 0.0, sequences / wall_s if wall_s else 0.0,
                        questions / wall_s if wall_s else 0.0)


def check_examples(examples) -> None:
    """ClientError naming the first question with an empty question or context."""
    for ex in examples:
        if not ex.question.strip():
            raise ClientError(f"question {ex.qas_id}: empty question")
        if not ex.context.strip():
            raise ClientError(f"question {ex.qas_id}: empty context")


def _send_all(make_client, feats, batch_size: int, concurrency: int):
    """Send every window in requests of ``batch_size`` from ``concurrency`` threads.
    Returns (start_logits [N, L], end_logits [N, L], latencies in s, wall time in s)."""
    n, length = feats.input_ids.shape
    start = np.zeros((n, length), np.float32)
    end = np.zeros((n, length), np.float32)
    todo: queue.Queue[int] = queue.Queue()
    for i in range(0, n, batch_size):
        todo.put(i)
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    # Each thread opens its own connection (the HTTP client is bound to its thread) and
    # waits at the barrier, so the clock starts once every connection is up.
    ready = threading.Barrier(concurrency + 1)

    def worker():
        try:
            client = make_client()
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)
            ready.abort()
            return
        try:
            ready.wait()
            while not errors:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                sl = slice(i, i + batch_size)
                t0 = time.perf_counter()
                s, e = client.infer(feats.input_ids[sl], feats.token_type_ids[sl], feats.attention_mask[sl])[:2]
                dt = time.perf_counter() - t0
                start[sl], end[sl] = s, e
                with lock:
                    latencies.append(dt)
        except threading.BrokenBarrierError:
            pass
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        pass
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return start, end, latencies, wall


def run_squad(url: str, model_name: str, examples, tokenizer, *, protocol: str = "http", batch_size: int = 8,
              concurrency: int = 1, max_seq_length: int = 384, doc_stride: int = 128, max_query_length: int = 64,
              n_best_size: int = 20, max_answer_length: int = 30, version_2_with_negative: bool = False,
              null_score_diff_threshold: float = 0.0, headers: dict | None = None):
    """Answer ``examples`` (``SquadExample`` list) through the served model.

    Returns (predictions: list of ``SquadPrediction``, stats: LatencyStats).
    """
    from bertforge.tasks.squad import decode, features_from

    if batch_size < 1:
        raise ConfigError(f"--batch_size must be >= 1, got {batch_size}")
    if concurrency < 1:
        raise ConfigError(f"--concurrency must be >= 1, got {concurrency}")
    check_examples(examples)
    feats = features_from(examples, tokenizer, max_seq_length=max_seq_length, doc_stride=doc_stride,
                          max_query_length=max_query_length)
    start, end, latencies, wall = _send_all(
        lambda: TritonQAClient(url, model_name, protocol, headers=headers), feats, batch_size, concurrency)
    preds = decode(examples, feats, start, end, n_best_size=n_best_size, max_answer_length=max_answer_length,
                   version_2_with_negative=version_2_with_negative,
                   null_score_diff_threshold=null_score_diff_threshold)
    stats = latency_stats(latencies, protocol=protocol, batch_size=batch_size, concurrency=concurrency,
                          sequences=len(feats), questions=len(examples), wall_s=wall)
    return preds, stats


# --------------------------------------------------------------------------- CLI


def _ints(s: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="deploy/triton/run_squad_client.py",
                                description="Answer SQuAD questions with a BERT QA model served by Triton.")
    p.add_argument("--url", default=None, help="host:port (default localhost:8000 for http, :8001 for grpc)")
    p.add_argument("--protocol", choices=("http", "grpc"), default="http")
    p.add_argument("--model_name", default="bert_qa_onnx")
    p.add_argument("--vocab_file", required=True)
    p.add_argument("--do_lower_case", action=argparse.BooleanOptionalAction, default=True)
    src = p.add_argument_group("questions (a SQuAD file, or one question)")
    src.add_argument("--predict_file", default=None, help="SQuAD json; EM/F1 are reported")
    src.add_argument("--max_questions", type=int, default=0, help="use the first N questions (0: all)")
    src.add_argument("--question", default=None)
    src.add_argument("--context", default=None)
    p.add_argument("--batch_size", type=int, default=8, help="windows per request")
    p.add_argument("--concurrency", type=_ints, default=[1], help="e.g. 1,4: one run per value")
    p.add_argument("--max_seq_length", type=int, default=384)
    p.add_argument("--doc_stride", type=int, default=128)
    p.add_argument("--max_query_length", type=int, default=64)
    p.add_argument("--n_best_size", type=int, default=20)
    p.add_argument("--max_answer_length", type=int, default=30)
    p.add_argument("--version_2_with_negative", action="store_true")
    p.add_argument("--null_score_diff_threshold", type=float, default=0.0)
    p.add_argument("--output_dir", default=None, help="write predictions.json, nbest_predictions.json, "
                                                       "serving_results.json")
    return p.check(limits={"max_questions": ">=0", "batch_size": "[1,16777216]",
                           "concurrency": "[1,1024]", "max_seq_length": "[1,1048576]",
                           "doc_stride": ">=1", "max_query_length": ">=1",
                           "n_best_size": "[1,100000]", "max_answer_length": ">=1"},
                   outputs={"output_dir": "dir"})


@cli_entry
def main(argv: list[str] | None = None) -> int:
    from bertforge.data.tokenization import load_tokenizer
    from bertforge.tasks.squad import (
        examples_from_pairs,
        nbest_json,
        predictions_json,
        read_squad_examples,
    )
    from bertforge.tasks.squad_metrics import evaluate_v1, evaluate_v2, load_squad_json

    args = build_parser().parse_args(argv)
    url = args.url or ("localhost:8000" if args.protocol == "http" else "localhost:8001")
    if not re.fullmatch(r"[A-Za-z0-9._\-\[\]:]+", url):
        raise ConfigError(f"--url {url!r}: expected host:port, e.g. localhost:8000")
    if not args.concurrency:
        raise ConfigError("--concurrency: give at least one value, e.g. 1,4")
    if (args.predict_file is None) == (args.question is None):
        raise ConfigError("give either --predict_file or --question with --context")
    if args.question is not None:
        if args.context is None:
            raise ConfigError("--question needs --context")
        examples = examples_from_pairs([args.question], [args.context])
    else:
        examples = read_squad_examples(args.predict_file, version_2_with_negative=args.version_2_with_negative)
        if args.max_questions > 0:
            examples = examples[:args.max_questions]
    tokenizer = load_tokenizer(args.vocab_file, args.do_lower_case)
    results = []
    preds = None
    for c in args.concurrency:
        preds, stats = run_squad(
            url, args.model_name, examples, tokenizer, protocol=args.protocol, batch_size=args.batch_size,
            concurrency=c, max_seq_length=args.max_seq_length, doc_stride=args.doc_stride,
            max_query_length=args.max_query_length, n_best_size=args.n_best_size,
            max_answer_length=args.max_answer_length, version_2_with_negative=args.version_2_with_negative,
            null_score_diff_threshold=args.null_score_diff_threshold)
        results.append(asdict(stats))
        print(f"{stats.protocol} batch {stats.batch_size} concurrency {stats.concurrency}: "
              f"{stats.requests} requests, p50 {stats.p50_ms:.1f} ms, p90 {stats.p90_ms:.1f} ms, "
              f"p99 {stats.p99_ms:.1f} ms, {stats.sequences_per_s:.1f} windows/s, "
              f"{stats.questions_per_s:.1f} questions/s")
    if args.question is not None:
        p = preds[0]
        print(json.dumps({"question": args.question, "answer": p.text, "probability": round(p.probability, 4),
                          "start": p.start_char, "end": p.end_char}))
    metrics = None
    if args.predict_file is not None:
        ids = {ex.qas_id for ex in examples}
        data = load_squad_json(args.predict_file)["data"]
        for article in data:  # score only the questions that were asked
            for para in article["paragraphs"]:
                para["qas"] = [qa for qa in para["qas"] if str(qa["id"]) in ids]
        evaluate = evaluate_v2 if args.version_2_with_negative else evaluate_v1
        metrics = evaluate(data, predictions_json(preds))
        print(json.dumps(metrics))
    if args.output_dir:
        out = ensure_dir(args.output_dir, "--output_dir")
        atomic_write_json(out / "predictions.json", predictions_json(preds))
        atomic_write_json(out / "nbest_predictions.json", nbest_json(preds))
        atomic_write_json(out / "serving_results.json", {"metrics": metrics, "runs": results})
        print(f"wrote {Path(out) / 'predictions.json'}")
    return 0
