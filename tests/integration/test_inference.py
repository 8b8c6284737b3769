"""inference.py on a (tiny, random-head) QA checkpoint: output format, batches from a file,
sliding windows for long contexts, and one-line errors. The fine-tuned-model check of
acceptance 4 (a correct answer from fine-tuned MiniLM) is in test_finetune_squad.py."""

from __future__ import annotations

import json

import pytest
import torch

from bertforge.cli.inference import main as inference_main
from bertforge.config import ModelConfig
from bertforge.data.tokenization import load_tokenizer
from bertforge.model.bert import BertForQuestionAnswering
from bertforge.model.convert import export_hf, save_bertforge
from bertforge.tasks import squad
from tests.conftest import REPO

CONTEXT = ("The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, "
           "a region in France. They were descended from Norse raiders and pirates from Denmark, Iceland "
           "and Norway who, under their leader Rollo, agreed to swear fealty to King Charles III.")


@pytest.fixture(scope="module")
def qa_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("qa") / "qa.pt"
    save_bertforge(BertForQuestionAnswering(ModelConfig.from_json_file(REPO / "bert_configs/tiny.json")), path)
    return path


@pytest.fixture(scope="module")
def vocab():
    from tests.conftest import real_data_path

    return real_data_path("vocab/bert-base-uncased-vocab.txt")


def test_single_question(qa_ckpt, vocab, capsys):
    out = inference_main(["--init_checkpoint", str(qa_ckpt), "--vocab_file", str(vocab), "--do_lower_case",
                          "--question", "Who was the leader?", "--context", CONTEXT, "--n_best_size", "4"])
    printed = json.loads(capsys.readouterr().out)
    assert printed == out[0]
    assert CONTEXT[printed["start"]:printed["end"]] == printed["answer"] != ""
    assert 0 < printed["probability"] <= 1 and len(printed["nbest"]) == 4
    assert printed["nbest"][0]["text"] == printed["answer"]


def test_batch_file_and_windows_match_the_library(qa_ckpt, vocab, tmp_path, capsys):
    long_context = " ".join([CONTEXT] * 6)
    items = [{"id": "a", "question": "Where is Normandy?", "context": CONTEXT},
             {"question": "Who was the leader?", "context": long_context}]
    (tmp_path / "q.json").write_text(json.dumps(items))
    argv = ["--init_checkpoint", str(qa_ckpt), "--vocab_file", str(vocab), "--do_lower_case",
            "--json", str(tmp_path / "q.json"), "--max_seq_length", "64", "--doc_stride", "24"]
    out = inference_main(argv)
    assert [o["id"] for o in out] == ["a", "1"] and json.loads(capsys.readouterr().out) == out
    tok = load_tokenizer(vocab, True)
    feats = squad.features_from(squad.examples_from_pairs(["q"], [long_context]), tok, max_seq_length=64,
                                doc_stride=24)
    assert len(feats) > 6  # the long context really is split into windows
    model = BertForQuestionAnswering(ModelConfig.from_json_file(REPO / "bert_configs/tiny.json"))
    model.load_state_dict(torch.load(qa_ckpt, weights_only=True)["model"])
    lib = squad.answer_questions(model, tok, [i["question"] for i in items], [i["context"] for i in items],
                                 max_seq_length=64, doc_stride=24, n_best_size=1)
    assert [x["answer"] for x in lib] == [o["answer"] for o in out]
    # a SQuAD file works as a batch too, and --output is written instead of printed
    squad_file = tmp_path / "s.json"
    squad_file.write_text(json.dumps({"data": [{"paragraphs": [{"context": CONTEXT, "qas": [
        {"id": "q1", "question": "Where?", "answers": []}, {"id": "q2", "question": "Who?", "answers": []}]}]}]}))
    inference_main(argv[:4] + ["--json", str(squad_file), "--output", str(tmp_path / "ans.json")])
    assert capsys.readouterr().out == ""
    assert [a["id"] for a in json.loads((tmp_path / "ans.json").read_text())] == ["q1", "q2"]


def test_hf_directory_and_negative_answers(qa_ckpt, vocab, tmp_path, capsys):
    model = BertForQuestionAnswering(ModelConfig.from_json_file(REPO / "bert_configs/tiny.json"))
    model.load_state_dict(torch.load(qa_ckpt, weights_only=True)["model"])
    hf = export_hf(model, tmp_path / "hf", vocab_file=vocab)
    a = inference_main(["--init_checkpoint", str(hf), "--do_lower_case", "--question", "Where?", "--context", CONTEXT])
    b = inference_main(["--init_checkpoint", str(qa_ckpt), "--vocab_file", str(vocab), "--do_lower_case",
                        "--question", "Where?", "--context", CONTEXT])
    assert a[0]["answer"] == b[0]["answer"] and a[0]["probability"] == pytest.approx(b[0]["probability"], abs=1e-5)
    # with a huge threshold the null answer never wins, with a very low one it always does
    base = ["--init_checkpoint", str(hf), "--do_lower_case", "--question", "Where?", "--context", CONTEXT,
            "--can_give_negative_answer"]
    assert inference_main([*base, "--null_score_diff_threshold", "1e6"])[0]["answer"] != ""
    never = inference_main([*base, "--null_score_diff_threshold=-1e6"])[0]
    assert never["answer"] == "" and never["start"] == -1 and isinstance(never["null_odds"], float)
    capsys.readouterr()


def _err(capsys, argv) -> str:
    with pytest.raises(SystemExit) as ei:
        inference_main(argv)
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_bad_input_one_line(qa_ckpt, vocab, tmp_path, capsys):
    base = ["--init_checkpoint", str(qa_ckpt), "--vocab_file", str(vocab)]
    assert "cannot be combined" in _err(capsys, [*base, "--question", "q", "--json", str(tmp_path / "x.json")])
    (tmp_path / "bad.json").write_text("[{")
    assert "not valid JSON" in _err(capsys, [*base, "--json", str(tmp_path / "bad.json")])
    (tmp_path / "items.json").write_text(json.dumps([{"question": "q"}]))
    assert "item 0 needs" in _err(capsys, [*base, "--json", str(tmp_path / "items.json")])
    assert "--output goes with --json" in _err(capsys, [*base, "--question", "q", "--context", "c", "--output", "x"])
    assert "no such file" in _err(capsys, ["--init_checkpoint", str(tmp_path / "none.pt"), "--vocab_file", str(vocab),
                                           "--question", "q", "--context", "c"])
    (tmp_path / "vocab.txt").write_text("hello\nworld\n")
    assert "not a BERT WordPiece vocabulary" in _err(capsys, ["--init_checkpoint", str(qa_ckpt), "--vocab_file",
                                                              str(tmp_path / "vocab.txt"), "--question", "q",
                                                              "--context", "c"])
