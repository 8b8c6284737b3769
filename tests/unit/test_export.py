"""ONNX / TorchScript export of QA and classification models, checked on real SQuAD windows.

Every export is compared here with the PyTorch model independently of the check built into
export_model: on a padded batch of real windows, on single unpadded windows, and on int32
and int64 inputs.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from bertforge.config import ModelConfig
from bertforge.errors import ConfigError, UserError
from bertforge.model.bert import (
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
)
from bertforge.model.convert import save_bertforge
from bertforge.serving import export as ex
from bertforge.serving.signature import ExportManifest

# Triton's pytorch backend loads TorchScript, which torch 2.13 marks deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

TINY = ModelConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                   max_position_embeddings=512)


@pytest.fixture(scope="module")
def windows(request):
    """Real inputs: the SQuAD windows of 12 questions of the dev sample (max_seq_length 256)."""
    from tests.conftest import real_data_path

    return ex.squad_check_inputs(str(real_data_path("squad/dev-v1.1-sample.json")),
                                 str(real_data_path("vocab/bert-base-uncased-vocab.txt")),
                                 max_seq_length=256, doc_stride=96, max_questions=12)


def _qa_model(seed=0):
    torch.manual_seed(seed)
    return BertForQuestionAnswering(TINY).eval()


def _torch(model, ids, types, mask):
    model.set_unpad(True)
    with torch.inference_mode():
        out = model(*(torch.as_tensor(np.asarray(a, np.int64)) for a in (ids, types, mask)))
    out = out if isinstance(out, tuple) else (out,)
    return [o.numpy() for o in out]


def _padded_and_unpadded(windows):
    ids, types, mask = windows
    assert (mask.sum(1) < mask.shape[1]).any(), "the real windows should include padded ones"
    batch = (ids[:6], types[:6], mask[:6])
    n = int(mask[0].sum())
    single = (ids[:1, :n], types[:1, :n], mask[:1, :n])  # no padding at all
    assert single[2].all()
    return batch, single


@pytest.fixture(scope="module")
def qa_export(tmp_path_factory, windows):
    model = _qa_model()
    out = tmp_path_factory.mktemp("qa_export")
    logs = []
    manifest = ex.export_model(model, out, task="qa", check_inputs=windows, nvidia_names=True,
                               input_dtype="int32", log=logs.append)
    return model, out, manifest, logs


def test_qa_onnx_matches_pytorch_on_real_windows(qa_export, windows):
    model, out, manifest, _ = qa_export
    spec = manifest.get("onnx")
    assert [t.name for t in spec.inputs] == ["input__0", "input__1", "input__2"]
    assert [t.name for t in spec.outputs] == ["output__0", "output__1"]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.type for i in session.get_inputs()] == ["tensor(int32)"] * 3
    # Dynamic batch and sequence axes.
    assert all(not isinstance(d, int) for i in session.get_inputs() for d in i.shape)
    for ids, types, mask in _padded_and_unpadded(windows):
        got = session.run(None, {"input__0": ids.astype(np.int32), "input__1": types.astype(np.int32),
                                 "input__2": mask.astype(np.int32)})
        ref = _torch(model, ids, types, mask)
        real = mask.astype(bool)
        for g, r in zip(got, ref, strict=True):
            assert g.shape == r.shape
            assert np.abs(g - r)[real].max() <= 1e-4
    check = manifest.get("onnx").check
    assert max(check["max_abs_diff"].values()) <= 1e-4 and check["windows"] == len(windows[0])


def test_qa_torchscript_matches_pytorch_on_real_windows(qa_export, windows):
    model, out, manifest, _ = qa_export
    ts = torch.jit.load(str(out / "model.pt"))
    for ids, types, mask in _padded_and_unpadded(windows):
        for dtype in (torch.int32, torch.int64):  # int64 works too: the graph casts inputs
            with torch.inference_mode():
                got = ts(*(torch.as_tensor(a).to(dtype) for a in (ids, types, mask)))
            ref = _torch(model, ids, types, mask)
            real = mask.astype(bool)
            for g, r in zip(got, ref, strict=True):
                assert np.abs(g.numpy() - r)[real].max() <= 1e-4
    assert manifest.get("torchscript").inputs[0].name == "input__0"


def test_export_writes_manifest_and_reports_differences(qa_export):
    _, out, manifest, logs = qa_export
    loaded = ExportManifest.load(out)
    assert loaded == manifest
    assert {m.format for m in loaded.models} == {"onnx", "torchscript"}
    assert loaded.max_position_embeddings == 512 and loaded.vocab_size == TINY.padded_vocab_size
    assert any("max abs diff" in line and "model.onnx" in line for line in logs)
    json.loads((out / "export.json").read_text())


def test_default_names_int64_and_classification(tmp_path, windows):
    torch.manual_seed(1)
    model = BertForSequenceClassification(TINY, num_labels=3).eval()
    manifest = ex.export_model(model, tmp_path, task="classification", num_labels=3, check_inputs=windows,
                               formats=("onnx",), input_dtype="int64", log=lambda *_: None)
    spec = manifest.get("onnx")
    assert [t.name for t in spec.inputs] == ["input_ids", "token_type_ids", "attention_mask"]
    assert [t.name for t in spec.outputs] == ["logits"] and spec.outputs[0].dims == (3,)
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["input_ids", "token_type_ids", "attention_mask"]
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    ids, types, mask = (a[:5].astype(np.int64) for a in windows)
    (got,) = session.run(None, {"input_ids": ids, "token_type_ids": types, "attention_mask": mask})
    (ref,) = _torch(model, ids, types, mask)
    assert got.shape == (5, 3) and np.abs(got - ref).max() <= 1e-4


def test_check_detects_a_model_that_differs(qa_export, windows):
    """The comparison is not vacuous: a perturbed model is far from the exported file."""
    model, out, manifest, _ = qa_export
    other = _qa_model(seed=5)
    diffs = ex.compare(other, "onnx", out / "model.onnx", manifest.get("onnx"),
                       ex.check_batches(windows), task="qa")
    assert max(diffs.values()) > 1e-2
    same = ex.compare(model, "onnx", out / "model.onnx", manifest.get("onnx"),
                      ex.check_batches(windows), task="qa")
    assert max(same.values()) <= 1e-4


def test_failed_check_writes_no_file(tmp_path, windows, monkeypatch):
    monkeypatch.setitem(ex.TOLERANCE, "fp32", -1.0)  # nothing can pass
    with pytest.raises(UserError, match="differs from PyTorch"):
        ex.export_model(_qa_model(), tmp_path, task="qa", check_inputs=windows, formats=("onnx",),
                        log=lambda *_: None)
    assert not (tmp_path / "model.onnx").exists() and not (tmp_path / "export.json").exists()


def test_fp16_needs_cuda_and_bad_options(tmp_path, windows):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: fp16 export is allowed")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        ex.export_model(_qa_model(), tmp_path, task="qa", check_inputs=windows, precisions=("fp16",))
    with pytest.raises(ConfigError, match="unknown format"):
        ex.export_model(_qa_model(), tmp_path, task="qa", check_inputs=windows, formats=("tflite",))


def test_cli_exports_a_checkpoint_and_fails_in_one_line(tmp_path, capsys, windows):
    from tests.conftest import real_data_path

    ckpt = save_bertforge(_qa_model(), tmp_path / "qa.pt")
    rc = ex.main(["--init_checkpoint", str(ckpt), "--output_dir", str(tmp_path / "out"), "--formats", "onnx",
                  "--check_file", str(real_data_path("squad/dev-v1.1-sample.json")),
                  "--vocab_file", str(real_data_path("vocab/bert-base-uncased-vocab.txt")),
                  "--check_questions", "3", "--max_seq_length", "128", "--doc_stride", "64"])
    assert rc == 0 and (tmp_path / "out" / "model.onnx").is_file()
    assert "max abs diff" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        ex.main(["--init_checkpoint", str(tmp_path / "missing.pt"), "--output_dir", str(tmp_path / "o2")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --init_checkpoint") and "\n" not in err
    # A pretraining checkpoint has no QA head: refused, not exported with a random head.
    torch.manual_seed(0)
    pre = save_bertforge(BertForPreTraining(TINY), tmp_path / "pretrained.pt")
    with pytest.raises(SystemExit) as e:
        ex.main(["--init_checkpoint", str(pre), "--output_dir", str(tmp_path / "o3")])
    assert e.value.code == 2 and "qa_outputs" in capsys.readouterr().err
    assert not (tmp_path / "o3" / "model.onnx").exists()


def test_torchscript_to_a_folder_whose_name_is_not_utf8(tmp_path, windows):
    """A path may hold any bytes (the fuzz test found a traceback from TorchScript's writer,
    which takes only a str that encodes as UTF-8)."""
    out = tmp_path / "x\udcff"  # the byte 0xff, as os.fsdecode gives it
    manifest = ex.export_model(_qa_model(), out, task="qa", check_inputs=windows, log=lambda *_: None)
    assert {m.format for m in manifest.models} == {"onnx", "torchscript"}
    assert (out / "model.pt").is_file() and (out / "model.onnx").is_file()
