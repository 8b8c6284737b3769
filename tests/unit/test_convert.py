"""Checkpoint interop: the real MiniLM checkpoint, HF export, NGC import, strictness, bad files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import transformers

from bertforge.config import ModelConfig, pad_vocab_size
from bertforge.errors import CheckpointError, ConfigError
from bertforge.model.bert import BertForPreTraining, BertForQuestionAnswering, BertModel
from bertforge.model.convert import export_hf, load_pretrained, save_bertforge, to_ngc_state_dict
from tests.conftest import REPO

SENTENCES = [
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy.",
    "Computational complexity theory classifies problems by their inherent difficulty.",
    "Hello world!",
]


def tiny(**kw):
    d = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=128, max_position_embeddings=64)
    d.update(kw)
    return ModelConfig(**d)


def test_real_minilm_checkpoint_matches_transformers(minilm):
    from tokenizers import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(str(minilm / "vocab.txt"), lowercase=True)
    tok.enable_padding()
    enc = tok.encode_batch(SENTENCES)
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    tt = torch.tensor([e.type_ids for e in enc])
    assert (mask == 0).any()  # the batch has padding

    ours, report = load_pretrained(minilm, BertModel)
    ours.eval()
    hf = transformers.BertModel.from_pretrained(str(minilm)).eval()
    with torch.no_grad():
        seq, pooled = ours(ids, tt, mask)
        ref = hf(input_ids=ids, token_type_ids=tt, attention_mask=mask)
    diff = (seq - ref.last_hidden_state).abs()[mask.bool()].max().item()
    assert diff <= 1e-5, diff
    assert (pooled - ref.pooler_output).abs().max().item() <= 1e-5
    assert ours.config.num_hidden_layers == 6 and ours.config.hidden_size == 384


def test_minilm_into_task_model_reports_new_heads(minilm):
    qa, report = load_pretrained(minilm, BertForQuestionAnswering, allow_missing=("qa_outputs.*",),
                                 allow_unexpected=("bert.pooler.*",))
    assert report.missing_allowed == ["qa_outputs.bias", "qa_outputs.weight"]
    assert report.unexpected_allowed == ["bert.pooler.dense.bias", "bert.pooler.dense.weight"]
    with pytest.raises(CheckpointError, match="missing keys: qa_outputs"):
        load_pretrained(minilm, BertForQuestionAnswering, allow_unexpected=("bert.pooler.*",))


def test_export_loads_in_transformers_with_same_logits(tmp_path):
    torch.manual_seed(0)
    ours = BertForPreTraining(tiny()).eval()
    export_hf(ours, tmp_path / "hf")
    hf = transformers.BertForPreTraining.from_pretrained(str(tmp_path / "hf")).eval()
    ids = torch.randint(1, 1000, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    with torch.no_grad():
        a, b = ours(ids, attention_mask=mask)
        ref = hf(input_ids=ids, attention_mask=mask)
    assert (a - ref.prediction_logits)[mask.bool()].abs().max() <= 1e-5
    assert (b - ref.seq_relationship_logits).abs().max() <= 1e-5
    # ... and back again through the HF importer
    back, _ = load_pretrained(tmp_path / "hf", BertForPreTraining)
    for k, v in ours.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


def test_ngc_checkpoint_imports_identically(tmp_path):
    torch.manual_seed(1)
    cfg = tiny(vocab_size=998)  # NGC pads to a multiple of 8 -> 1000 rows
    ours = BertForPreTraining(cfg).eval()
    sd = {"module." + k: v for k, v in to_ngc_state_dict(ours).items()}
    assert "module.bert.encoder.layer.0.intermediate.dense_act.weight" in sd
    assert sd["module.bert.embeddings.word_embeddings.weight"].shape[0] == 1000
    torch.save({"model": sd, "epoch": 3}, tmp_path / "ngc.pt")
    back, report = load_pretrained(tmp_path / "ngc.pt", BertForPreTraining, config=cfg)
    back.eval()
    ids = torch.randint(1, 998, (2, 10))
    with torch.no_grad():
        a = ours(ids)
        b = back(ids)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # An NGC file without a config is refused with a clear message.
    with pytest.raises(CheckpointError, match="carries no model config"):
        load_pretrained(tmp_path / "ngc.pt", BertForPreTraining)


def test_convert_cli_roundtrip(tmp_path):
    torch.manual_seed(2)
    m = BertForQuestionAnswering(tiny()).eval()
    save_bertforge(m, tmp_path / "qa.pt")
    def run(*a):
        return subprocess.run([sys.executable, "-m", "bertforge.convert", *map(str, a)],
                              capture_output=True, text=True, cwd=REPO)

    r = run("--from", "bertforge", "--to", "hf", tmp_path / "qa.pt", tmp_path / "hf")
    assert r.returncode == 0, r.stderr
    assert "BertForQuestionAnswering" in r.stdout
    hf = transformers.BertForQuestionAnswering.from_pretrained(str(tmp_path / "hf")).eval()
    ids = torch.randint(1, 1000, (1, 9))
    with torch.no_grad():
        assert (m(ids)[0] - hf(input_ids=ids).start_logits).abs().max() <= 1e-5
    r = run("--from", "hf", "--to", "bertforge", tmp_path / "hf", tmp_path / "back.pt")
    assert r.returncode == 0, r.stderr
    back, _ = load_pretrained(tmp_path / "back.pt", BertForQuestionAnswering)
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in m.state_dict().items())
    # a user error: one line, exit 2, no traceback
    r = run("--from", "hf", "--to", "bertforge", tmp_path / "qa.pt", tmp_path / "x.pt")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_convert_replaces_an_export_only_when_asked_and_only_whole(tmp_path):
    """Into a folder that holds files: refused without --overwrite (config.json was silently
    overwritten); with it the folder is replaced as a whole, files with the umask's mode
    (model.safetensors was 0600)."""
    torch.manual_seed(3)
    save_bertforge(BertForQuestionAnswering(tiny()), tmp_path / "qa.pt")
    dst = tmp_path / "hf"
    dst.mkdir()
    (dst / "config.json").write_text("mine\n")
    (dst / "notes.txt").write_text("mine\n")

    def run(*a, umask="022"):
        return subprocess.run(["sh", "-c", f"umask {umask} && exec \"$0\" \"$@\"", sys.executable,
                               "-m", "bertforge.convert", *map(str, a)],
                              capture_output=True, text=True, cwd=REPO)

    r = run("--from", "bertforge", "--to", "hf", tmp_path / "qa.pt", dst)
    assert r.returncode == 2 and "holds files; pass --overwrite" in r.stderr, r.stderr
    assert (dst / "config.json").read_text() == "mine\n"
    for umask, mode in (("022", 0o644), ("027", 0o640)):
        r = run("--from", "bertforge", "--to", "hf", tmp_path / "qa.pt", dst, "--overwrite", umask=umask)
        assert r.returncode == 0, r.stderr
        assert sorted(p.name for p in dst.iterdir()) == ["config.json", "model.safetensors"]
        assert {p.name: p.stat().st_mode & 0o777 for p in dst.iterdir()} == \
            {"config.json": mode, "model.safetensors": mode}
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name] == []


def test_only_nvidias_vocab_padding_may_differ(tmp_path):
    """30528 -> 30522 (NVIDIA's padding to a multiple of 8) loads; any other difference is
    refused naming both sizes (a larger vocabulary used to be cut down silently)."""
    cfg = tiny(vocab_size=1001)  # not a multiple of 8: NVIDIA pads it to 1008
    torch.manual_seed(4)
    m = BertForPreTraining(cfg)
    padded = pad_vocab_size(cfg.vocab_size, 8)
    assert padded > cfg.vocab_size
    sd = {k: (torch.cat([v, v.new_zeros((padded - v.shape[0], *v.shape[1:]))]) if v.shape[0] == cfg.vocab_size
              else v) for k, v in m.state_dict().items()}
    torch.save({"model": sd}, tmp_path / "ngc.pt")
    back, _ = load_pretrained(tmp_path / "ngc.pt", BertForPreTraining, config=cfg)
    assert torch.equal(back.bert.embeddings.word_embeddings.weight, m.bert.embeddings.word_embeddings.weight)
    bigger = {k: (torch.cat([v, v.new_zeros((padded + 8 - v.shape[0], *v.shape[1:]))])
                  if v.shape[0] == cfg.vocab_size else v) for k, v in m.state_dict().items()}
    torch.save({"model": bigger}, tmp_path / "bigger.pt")
    with pytest.raises(CheckpointError, match=rf"vocabulary of {padded + 8} rows but the model's config has "
                                              rf"vocab_size {cfg.vocab_size}"):
        load_pretrained(tmp_path / "bigger.pt", BertForPreTraining, config=cfg)


# ---- bad configs and checkpoints: one-line errors naming the problem ------------------------

def test_config_unknown_and_missing_keys(tmp_path):
    good = json.loads((REPO / "bert_configs" / "base.json").read_text())
    assert ModelConfig.from_json_file(REPO / "bert_configs" / "base.json").hidden_size == 768
    bad = dict(good, hiden_size=3)
    (tmp_path / "a.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="unknown key.*hiden_size"):
        ModelConfig.from_json_file(tmp_path / "a.json")
    bad = dict(good)
    del bad["num_attention_heads"]
    (tmp_path / "b.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="missing key.*num_attention_heads"):
        ModelConfig.from_json_file(tmp_path / "b.json")
    (tmp_path / "c.json").write_text(json.dumps(dict(good, num_attention_heads=5)))
    with pytest.raises(ConfigError, match="not divisible"):
        ModelConfig.from_json_file(tmp_path / "c.json")
    (tmp_path / "d.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelConfig.from_json_file(tmp_path / "d.json")
    with pytest.raises(ConfigError, match="does not exist"):
        ModelConfig.from_json_file(tmp_path / "nope.json")


def test_bad_checkpoints(tmp_path):
    torch.manual_seed(3)
    m = BertForPreTraining(tiny())
    path = save_bertforge(m, tmp_path / "ok.pt")
    # wrong shapes: a checkpoint of another config
    other = tiny(hidden_size=32, intermediate_size=64)
    with pytest.raises(CheckpointError, match="another config: hidden_size 64 vs 32"):
        load_pretrained(path, BertForPreTraining, config=other)
    sd = {k: v for k, v in m.state_dict().items()}
    sd["bert.encoder.layer.0.output.dense.weight"] = torch.zeros(3, 3)
    torch.save({"model": sd, "config": m.config.to_dict()}, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match="wrong shapes: bert.encoder.layer.0.output.dense.weight"):
        load_pretrained(tmp_path / "shape.pt", BertForPreTraining)
    # unknown key
    sd = dict(m.state_dict(), **{"bert.extra.weight": torch.zeros(1)})
    torch.save({"model": sd, "config": m.config.to_dict()}, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match="unexpected keys: bert.extra.weight"):
        load_pretrained(tmp_path / "extra.pt", BertForPreTraining)
    # truncated file
    data = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a torch checkpoint"):
        load_pretrained(tmp_path / "trunc.pt", BertForPreTraining)
    # a pickle that is not a state dict
    torch.save({"model": [1, 2, 3], "config": m.config.to_dict()}, tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        load_pretrained(tmp_path / "list.pt", BertForPreTraining)
    torch.save({"model": {"a": 1}, "config": m.config.to_dict()}, tmp_path / "nottensor.pt")
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_pretrained(tmp_path / "nottensor.pt", BertForPreTraining)


class _Evil:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['EVIL_MARK'], 'w').write('pwned')",))


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    mark = tmp_path / "mark"
    monkeypatch.setenv("EVIL_MARK", str(mark))
    torch.save({"model": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"GLOBAL builtins.exec\) that would be imported and called on load, "
                                              r"so it could run code; refused: .*not with --trust_checkpoint either"):
        load_pretrained(tmp_path / "evil.pt", BertForPreTraining, config=tiny())
    assert not mark.exists()
