"""A real Triton Inference Server (PyPI nvidia-pytriton) serving an exported QA model.

The module starts one server on loopback (free ports, private PYTRITON_HOME) for a tiny QA
model exported to ONNX and put in a generated model repository, then:
* answers real SQuAD questions over HTTP and gRPC and compares every answer with
  inference.py's (run in-process on a checkpoint of the same model, same window settings);
* checks in Triton's own statistics that dynamic batching merged concurrent requests;
* sends bad requests (wrong dtype, wrong shape, over-long, out-of-range ids, empty context)
  and checks the errors and that the server still answers afterwards;
* stops the server and checks that no process of it is left.

Needs the serving environment (``make install-serve`` makes .venv-triton; the Makefile's
test target does it). Without it the module is skipped with that reason.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from bertforge.cli.inference import main as inference_main
from bertforge.config import ModelConfig
from bertforge.data.tokenization import load_tokenizer
from bertforge.errors import UserError
from bertforge.model.bert import BertForQuestionAnswering
from bertforge.model.convert import save_bertforge
from bertforge.serving import export as ex
from bertforge.serving.client import ClientError, ServerError, TritonQAClient, run_squad
from bertforge.serving.launcher import TritonServerProcess, processes_under, triton_python
from bertforge.serving.repository import BatchingOptions, generate_repository
from bertforge.tasks.squad import examples_from_pairs, read_squad_examples
from tests.conftest import real_data_path

pytestmark = pytest.mark.triton

N_QUESTIONS = 40
WINDOWS = dict(max_seq_length=256, doc_stride=128, max_query_length=64)
MODEL = "bert_qa_onnx"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    try:
        python = triton_python()
    except UserError as e:
        pytest.skip(str(e))
    squad = real_data_path("squad/dev-v1.1-sample.json")
    vocab = real_data_path("vocab/bert-base-uncased-vocab.txt")
    tokenizer = load_tokenizer(vocab)
    examples = read_squad_examples(squad)[:N_QUESTIONS]

    torch.manual_seed(0)
    model = BertForQuestionAnswering(ModelConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                                 intermediate_size=128)).eval()
    tmp = tmp_path_factory.mktemp("triton")
    inputs = ex.squad_check_inputs(str(squad), str(vocab), max_questions=8, **WINDOWS)
    ex.export_model(model, tmp / "export", task="qa", check_inputs=inputs, formats=("onnx",),
                    nvidia_names=True, input_dtype="int32", log=lambda *_: None)
    generate_repository(tmp / "export", tmp / "repo", model_name="bert_qa", formats=("onnx",),
                        options=BatchingOptions(max_batch_size=8, preferred_batch_sizes=[4, 8],
                                                max_queue_delay_us=5000))
    # The reference: inference.py itself (in-process) on a saved checkpoint of the model.
    ckpt = save_bertforge(model, tmp / "qa.pt")
    questions = tmp / "questions.json"
    questions.write_text(json.dumps([{"id": e.qas_id, "question": e.question, "context": e.context}
                                     for e in examples]))
    reference = inference_main(["--init_checkpoint", str(ckpt), "--vocab_file", str(vocab), "--do_lower_case",
                                "--json", str(questions), "--output", str(tmp / "answers.json"),
                                "--n_best_size", "20", "--batch_size", "8", "--no_cuda",
                                *(f"--{k}={v}" for k, v in WINDOWS.items())])
    assert [r["id"] for r in reference] == [e.qas_id for e in examples]
    server = TritonServerProcess(tmp / "repo", [MODEL], python=python).start()
    yield dict(server=server, model=model, tokenizer=tokenizer, examples=examples, reference=reference,
               squad=squad, vocab=vocab, tmp=tmp)
    server.stop()
    server.cleanup()


def _assert_same_answers(preds, reference):
    assert len(preds) == len(reference)
    for p, r in zip(preds, reference, strict=True):
        assert p.text == r["answer"], p.qas_id
        assert (p.start_char, p.end_char) == (r["start"], r["end"])
        assert abs(p.probability - r["probability"]) < 1e-4


@pytest.mark.parametrize("protocol, batch_size, concurrency", [("http", 1, 4), ("grpc", 8, 2)])
def test_served_answers_equal_inprocess_inference(setup, protocol, batch_size, concurrency):
    srv = setup["server"]
    url = srv.http_url if protocol == "http" else srv.grpc_url
    preds, stats = run_squad(url, MODEL, setup["examples"], setup["tokenizer"], protocol=protocol,
                             batch_size=batch_size, concurrency=concurrency, **WINDOWS)
    _assert_same_answers(preds, setup["reference"])
    assert stats.questions == N_QUESTIONS and stats.sequences >= N_QUESTIONS
    assert stats.requests == -(-stats.sequences // batch_size)
    assert 0 < stats.p50_ms <= stats.p90_ms <= stats.p99_ms and stats.sequences_per_s > 0


def _counts(client) -> tuple[dict, int, int]:
    stats = client.statistics()["model_stats"][0]  # a count still zero is left out of the reply
    return stats, int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def _settled_counts(client, at_least: int = 0) -> tuple[dict, int, int]:
    """The model's statistics once the inference count is ``at_least`` and two reads 0.2 s apart
    agree: Triton records a request's statistics after sending its response, so a read right
    after the last response can miss it."""
    last = None
    for _ in range(100):
        stats, inferences, executions = _counts(client)
        if inferences >= at_least and (inferences, executions) == last:
            return stats, inferences, executions
        last = inferences, executions
        time.sleep(0.2)
    raise AssertionError(f"Triton's statistics did not settle in 20 s (inferences {last[0]}, expected >= {at_least})")


def test_dynamic_batching_merges_concurrent_requests(setup):
    """Requests of one window each, sent 4 at a time, run in batches of more than one."""
    srv = setup["server"]
    with TritonQAClient(srv.grpc_url, MODEL, "grpc", headers=srv.headers) as c:
        _, inferences0, executions0 = _settled_counts(c)
        _, stats = run_squad(srv.grpc_url, MODEL, setup["examples"], setup["tokenizer"], protocol="grpc",
                             batch_size=1, concurrency=4, **WINDOWS)
        after, inferences1, executions1 = _settled_counts(c, at_least=inferences0 + stats.sequences)
    inferences, executions = inferences1 - inferences0, executions1 - executions0
    assert inferences == stats.sequences  # every window was one inference
    assert executions < inferences, "no request was merged with another"
    assert any(int(b["batch_size"]) > 1 for b in after["batch_stats"])


def test_client_cli_reports_em_f1_and_latency(setup, tmp_path, capsys):
    from bertforge.serving.client import main

    srv = setup["server"]
    rc = main(["--url", srv.grpc_url, "--protocol", "grpc", "--model_name", MODEL,
               "--vocab_file", str(setup["vocab"]), "--predict_file", str(setup["squad"]),
               "--max_questions", str(N_QUESTIONS), "--batch_size", "4", "--concurrency", "1,3",
               "--max_seq_length", "256", "--doc_stride", "128", "--output_dir", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "concurrency 3" in out and "p99" in out
    preds = json.loads((tmp_path / "predictions.json").read_text())
    assert [preds[e.qas_id] for e in setup["examples"]] == [r["answer"] for r in setup["reference"]]
    results = json.loads((tmp_path / "serving_results.json").read_text())
    assert set(results["metrics"]) == {"exact_match", "f1"} and 0 <= results["metrics"]["f1"] <= 100
    assert [r["concurrency"] for r in results["runs"]] == [1, 3]


def test_bad_requests_get_errors_and_the_server_keeps_serving(setup):
    srv = setup["server"]
    ref = setup["reference"][0]
    ex0 = setup["examples"][0]
    for protocol, url in (("http", srv.http_url), ("grpc", srv.grpc_url)):
        with TritonQAClient(url, MODEL, protocol, max_length=512) as c:
            ids = np.full((1, 16), 1000, np.int32)
            ones = np.ones_like(ids)
            names = [n for n, _ in c.inputs]
            # Wrong dtype: Triton itself rejects it (the config says INT32).
            with pytest.raises(ServerError, match="data-type is .FP32., but model .bert_qa_onnx. expects .INT32."):
                c.infer_raw(dict(zip(names, (ids.astype(np.float32), ones, ones), strict=True)))
            # Wrong rank.
            with pytest.raises(ServerError):
                c.infer_raw(dict(zip(names, (ids[0], ones[0], ones[0]), strict=True)))
            # Inputs of different lengths.
            with pytest.raises(ServerError, match="one shape"):
                c.infer_raw(dict(zip(names, (ids, ones[:, :8], ones), strict=True)))
            # Over-long: refused by the client, and by the server when sent anyway.
            long = np.ones((1, 600), np.int32)
            with pytest.raises(ClientError, match="exceeds the model's limit 512"):
                c.infer(long, long, long)
            with pytest.raises(ServerError, match="sequence length 600 is outside") as err:
                c.infer_raw(dict(zip(names, (long, long * 0, long), strict=True)))
            assert "\n" not in str(err.value) and "Traceback" not in str(err.value)  # one clear line
            # Token id outside the vocabulary; batch larger than max_batch_size.
            with pytest.raises(ServerError, match="token id 99999"):
                c.infer_raw(dict(zip(names, (ids * 0 + 99999, ones * 0, ones), strict=True)))
            big = np.ones((9, 16), np.int32)
            with pytest.raises(ServerError):
                c.infer_raw(dict(zip(names, (big, big, big), strict=True)))
            # Still serving, with the right answer.
            (pred,), _ = run_squad(url, MODEL, [ex0], setup["tokenizer"], protocol=protocol, **WINDOWS)
            assert pred.text == ref["answer"]
    with pytest.raises(ClientError, match="question 1: empty context"):
        run_squad(srv.http_url, MODEL, examples_from_pairs(["Who?", "Who?"], ["Some text.", "  "]),
                  setup["tokenizer"], **WINDOWS)
    assert srv.proc.poll() is None


def test_server_stops_with_no_process_left(setup):
    srv = setup["server"]
    proc, home = srv.proc, srv.home
    assert processes_under(proc.pid), "the server's process group should be alive before the stop"
    leftovers = srv.stop()
    assert leftovers == []
    assert proc.returncode == 0, srv.log_tail()
    assert processes_under(proc.pid, str(home)) == []
    assert not any("tritonserver" in cmd and str(home) in cmd for _, cmd in processes_under(None, "tritonserver"))
