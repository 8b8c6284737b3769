"""The demo's helpers: the self-written SQuAD set (templates, exact spans) and fill-mask."""

from __future__ import annotations

import json

import pytest
import torch

from bertforge.cli import demo_qa as demo_qa_cli
from bertforge.cli import fill_mask
from bertforge.config import ModelConfig
from bertforge.model.bert import BertForPreTraining
from bertforge.model.convert import save_bertforge
from bertforge.tasks.demo_qa import (
    build_squad,
    count_questions,
    definition_question,
    questions_from_sentence,
    read_documents,
)
from bertforge.tasks.squad import read_squad_examples

DOCS = [
    ["Anarchism is a political philosophy that rejects hierarchy.",
     "The word was first used in 1642 by critics of the movement.",
     "The movement had about 3,000 members in the early years of its history.",
     "Its main ideas were developed by Pierre-Joseph Proudhon, a French writer.",
     "Proudhon later lived and worked in Brussels."],
    ["Aruba is an island in the southern Caribbean Sea.",
     "It has a land area of and is densely populated.",  # extraction debris: no question
     "Gold was not discovered on Aruba for another 300 years after the conquest."],
]


def test_templates_exact_spans_and_determinism():
    q = list(questions_from_sentence("The treaty was signed in 1648 by both sides of the war."))
    assert q[0][:3] == ("year", "The treaty was signed in what year by both sides of the war?", "1648")
    assert list(questions_from_sentence("Highway 3 joins the two largest towns.")) == []
    assert list(questions_from_sentence("Short one.")) == []
    assert definition_question(DOCS[0][0])[:2] == ("What is Anarchism?", "a political philosophy")
    squad = build_squad(DOCS, title="t", sentences_per_context=2)
    assert squad == build_squad(DOCS, title="t", sentences_per_context=2)
    kinds = {}
    for art in squad["data"]:
        for par in art["paragraphs"]:
            for qa in par["qas"]:
                a = qa["answers"][0]
                assert par["context"][a["answer_start"]:a["answer_start"] + len(a["text"])] == a["text"]
                assert qa["question"].endswith("?") and a["text"] not in qa["question"]
                kinds.setdefault(qa["id"].rsplit("-", 1)[1], (qa["question"], a["text"]))
    assert kinds["definition"] == ("What is Anarchism?", "a political philosophy")
    assert kinds["year"][1] == "1642" and kinds["count"][1] == "3,000"
    assert kinds["agent"] == ("Its main ideas were developed by whom, a French writer?",
                              "Pierre-Joseph Proudhon")
    assert kinds["place"] == ("Proudhon later lived and worked where?", "Brussels")
    capped = build_squad(DOCS, title="t", max_questions=2, seed=1)
    assert count_questions(capped) == 2 and capped == build_squad(DOCS, title="t", max_questions=2, seed=1)


def test_cli_writes_files_run_squad_reads(tmp_path, capsys):
    text = tmp_path / "text"
    for split, docs in (("train", DOCS), ("holdout", DOCS[1:])):
        (text / split).mkdir(parents=True)
        (text / split / "part-00000.txt").write_text("\n\n".join("\n".join(d) for d in docs) + "\n")
    assert read_documents(text / "train") == DOCS
    assert demo_qa_cli.main(["--text_dir", str(text), "--output_dir", str(tmp_path / "qa")]) == 0
    out = capsys.readouterr().out
    assert "train-v1.1.json: 7 questions about 2 articles" in out
    train = json.loads((tmp_path / "qa/train-v1.1.json").read_text())
    assert train["version"] == "1.1"
    examples = read_squad_examples(tmp_path / "qa/dev-v1.1.json", is_training=True)
    assert [(e.question, e.answers[0][0]) for e in examples] == [
        ("What is Aruba?", "an island"),
        ("Gold was not discovered on Aruba for another how many years after the conquest?", "300")]
    with pytest.raises(SystemExit) as e:
        demo_qa_cli.main(["--text_dir", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "qa2")])
    assert e.value.code == 2 and "no train/ folder" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory):
    """A random tiny BertForPreTraining (vocab 64 rows) and a 40-token vocab file."""
    d = tmp_path_factory.mktemp("fm")
    words = ["the", "river", "flows", "into", "sea", "a", "of", "city", "is", "big", "and", "old"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + words
    vocab += [f"w{i}" for i in range(40 - len(vocab))]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    model = BertForPreTraining(cfg)
    save_bertforge(model, d / "model.pt")
    return d


def test_fill_mask_predictions(tiny_mlm):
    fm = fill_mask.FillMask(str(tiny_mlm / "model.pt"), str(tiny_mlm / "vocab.txt"))
    preds = fm.predict(["The river flows into the [MASK].", "[MASK] city is [MASK] ."], top_k=4)
    assert [len(p) for p in preds] == [1, 2]
    vocab = fm.tokenizer.get_vocab()
    for per_text in preds:
        for pred in per_text:
            cands = pred.top
            probs = [q for _, q in cands]
            assert len(cands) == 4 and probs == sorted(probs, reverse=True) and sum(probs) <= 1
            # never a special token, never an id beyond the 40-token vocab (the model has 64 rows)
            assert all(t in vocab and t not in fill_mask.FillMask.EXCLUDED for t, _ in cands)
    # the same as scoring the full [B, L, V] output by hand
    ids = torch.tensor([fm.tokenizer.encode("The river flows into the [MASK].").ids])
    with torch.no_grad():
        scores = fm.model(ids, torch.zeros_like(ids), torch.ones_like(ids))[0]
    pos = int((ids[0] == vocab["[MASK]"]).nonzero())
    s = scores[pos, :40].clone()
    s[[vocab[t] for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]")]] = float("-inf")
    assert preds[0][0].top[0][0] == fm.id_to_token[int(s.argmax())]
    assert preds[0][0].rank is None  # no hidden word given
    # the rank of a hidden word: 1 + the number of fillable tokens scored higher
    ranked = fm.predict(["The river flows into the [MASK]."], top_k=1, answers=["Sea"])[0][0]
    sea = s[vocab["sea"]]
    assert ranked.rank == 1 + int((s > sea).sum())
    assert ranked.probability == pytest.approx(float(s.softmax(-1)[vocab["sea"]]), rel=1e-5)


def test_fill_mask_from_text_cli(tiny_mlm, tmp_path, capsys):
    sents = tmp_path / "held.txt"
    sents.write_text("the river flows into the sea and the city is big .\nshort .\n"
                     "the old city is a big city of the river and the sea .\n")
    out = tmp_path / "fm.json"
    argv = ["--init_checkpoint", str(tiny_mlm / "model.pt"), "--vocab_file", str(tiny_mlm / "vocab.txt"),
            "--from_text", str(sents), "--num_examples", "2", "--top_k", "3", "--output", str(out)]
    assert fill_mask.main(argv) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert len(res) == 2 and all(r["text"].count("[MASK]") == 1 for r in res)
    for r in res:  # the hidden word is one vocab token and sits where [MASK] is
        assert r["hidden_word"] in ("the", "river", "flows", "into", "sea", "and", "city", "is",
                                    "big", "old", "of")
        assert len(r["predictions"][0]) == 3 and 1 <= r["hidden_word_rank"] <= 36
        assert f"hidden: {r['hidden_word']}  (rank {r['hidden_word_rank']} of 36," in printed
    assert fill_mask.main(argv) == 0 and json.loads(out.read_text()) == res  # deterministic


def test_fill_mask_errors(tiny_mlm, minilm, capsys):
    vocab = ["--vocab_file", str(tiny_mlm / "vocab.txt")]
    cases = [
        (["--init_checkpoint", str(tiny_mlm / "model.pt"), "--text", "no mask here", *vocab], "no [MASK]"),
        (["--init_checkpoint", str(minilm), "--text", "a [MASK] b"], "has no MLM head"),  # its own vocab
        (["--init_checkpoint", str(tiny_mlm / "missing.pt"), "--text", "[MASK]", *vocab], "no such file"),
        (["--init_checkpoint", str(tiny_mlm / "model.pt"), "--text", "[MASK]", "--top_k", "0", *vocab],
         "argument --top_k: must be >= 1"),
        (["--init_checkpoint", str(tiny_mlm / "model.pt"), "--text", "[MASK]", "--top_k", "1000000", *vocab],
         "--top_k 1000000 is more than the"),
    ]
    for argv, needle in cases:
        with pytest.raises(SystemExit) as e:
            fill_mask.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        line = err.splitlines()[-1]  # argparse's refusals follow its usage lines
        assert (line.startswith("error: ") or ": error: argument " in line) and needle in line, err
