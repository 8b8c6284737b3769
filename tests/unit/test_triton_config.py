"""The generated Triton model repository: config.pbtxt files parse as Triton's ModelConfig
protobuf and name inputs/outputs that exist, with the dtypes they have, in the exported files."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from bertforge.config import ModelConfig
from bertforge.errors import ConfigError, DataError
from bertforge.model.bert import BertForQuestionAnswering, BertForSequenceClassification
from bertforge.serving import export as ex
from bertforge.serving.repository import (
    BatchingOptions,
    generate_repository,
    latest_version,
    parse_config,
)

pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] (dev extra) ships Triton's model_config proto")
from tritonclient.grpc import model_config_pb2  # noqa: E402

# Triton's pytorch backend loads TorchScript, which torch 2.13 marks deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

TINY = ModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                   max_position_embeddings=128)
ONNX_TYPES = {onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.INT64: "TYPE_INT64",
              onnx.TensorProto.FLOAT: "TYPE_FP32"}


def _export(path, task, **kw):
    torch.manual_seed(0)
    model = (BertForQuestionAnswering(TINY) if task == "qa"
             else BertForSequenceClassification(TINY, num_labels=kw.get("num_labels", 2))).eval()
    inputs = ex.random_check_inputs(TINY, n=4, length=32)
    ex.export_model(model, path, task=task, check_inputs=inputs, log=lambda *_: None, **kw)
    return path


@pytest.fixture(scope="module")
def qa_nvidia(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("qa_nv"), "qa", nvidia_names=True, input_dtype="int32")


@pytest.fixture(scope="module")
def cls_default(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("cls"), "classification", num_labels=3, formats=("onnx",))


def _dtype_name(enum_value):
    return model_config_pb2.DataType.Name(enum_value)


def _check_onnx_matches(config, onnx_path):
    graph = onnx.load(str(onnx_path)).graph
    onnx_in = {i.name: ONNX_TYPES[i.type.tensor_type.elem_type] for i in graph.input}
    onnx_out = {o.name: ONNX_TYPES[o.type.tensor_type.elem_type] for o in graph.output}
    assert {t.name: _dtype_name(t.data_type) for t in config.input} == onnx_in
    assert {t.name: _dtype_name(t.data_type) for t in config.output} == onnx_out


def test_onnx_and_torchscript_configs_parse_and_match_the_models(qa_nvidia, tmp_path):
    repo = tmp_path / "repo"
    written = generate_repository(qa_nvidia, repo, model_name="bert_qa", version=3,
                                  options=BatchingOptions(max_batch_size=16, preferred_batch_sizes=[8, 4, 16],
                                                          max_queue_delay_us=250))
    assert set(written) == {"bert_qa_onnx", "bert_qa_torchscript"}

    onnx_cfg = parse_config(repo / "bert_qa_onnx" / "config.pbtxt")
    assert onnx_cfg.name == "bert_qa_onnx" and onnx_cfg.platform == "onnxruntime_onnx"
    assert onnx_cfg.max_batch_size == 16
    assert list(onnx_cfg.dynamic_batching.preferred_batch_size) == [4, 8, 16]
    assert onnx_cfg.dynamic_batching.max_queue_delay_microseconds == 250
    assert onnx_cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert [list(t.dims) for t in onnx_cfg.input] == [[-1]] * 3
    assert onnx_cfg.parameters["bertforge_max_position_embeddings"].string_value == "128"
    assert latest_version(repo / "bert_qa_onnx").name == "3"
    _check_onnx_matches(onnx_cfg, repo / "bert_qa_onnx" / "3" / "model.onnx")

    ts_cfg = parse_config(repo / "bert_qa_torchscript" / "config.pbtxt")
    assert ts_cfg.platform == "pytorch_libtorch"
    names_in = [t.name for t in ts_cfg.input]
    names_out = [t.name for t in ts_cfg.output]
    assert names_in == ["input__0", "input__1", "input__2"] and names_out == ["output__0", "output__1"]
    # libtorch maps <name>__<index> to forward() arguments / returned tuple by position:
    # the module must take 3 tensors and return 2 [B, L] float32 tensors.
    ts = torch.jit.load(str(repo / "bert_qa_torchscript" / "3" / "model.pt"))
    n_args = len(list(ts.graph.inputs())) - 1  # minus self
    assert n_args == len(names_in)
    ids = torch.randint(1, 100, (2, 9), dtype=torch.int32)
    out = ts(ids, torch.zeros_like(ids), torch.ones_like(ids))
    assert len(out) == len(names_out) and all(o.shape == (2, 9) and o.dtype == torch.float32 for o in out)
    assert all(_dtype_name(t.data_type) == "TYPE_INT32" for t in ts_cfg.input)


def test_classification_gpu_instances_and_tensorrt_plan(cls_default, tmp_path):
    plan = tmp_path / "engine.plan"
    plan.write_bytes(b"built by trtexec on the serving GPU")  # the generator only copies it
    repo = tmp_path / "repo"
    written = generate_repository(cls_default, repo, model_name="sst2", formats=("onnx",), tensorrt_plan=plan,
                                  options=BatchingOptions(instance_kind="gpu", instance_count=2, gpus=[0, 1]))
    assert set(written) == {"sst2_onnx", "sst2_tensorrt"}
    cfg = parse_config(repo / "sst2_onnx" / "config.pbtxt")
    assert [t.name for t in cfg.input] == ["input_ids", "token_type_ids", "attention_mask"]
    assert [(t.name, list(t.dims)) for t in cfg.output] == [("logits", [3])]
    group = cfg.instance_group[0]
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU and group.count == 2
    assert list(group.gpus) == [0, 1]
    _check_onnx_matches(cfg, repo / "sst2_onnx" / "1" / "model.onnx")
    trt = parse_config(repo / "sst2_tensorrt" / "config.pbtxt")
    assert trt.platform == "tensorrt_plan" and (repo / "sst2_tensorrt" / "1" / "model.plan").is_file()
    assert [t.name for t in trt.input] == [t.name for t in cfg.input]


def test_parse_config_is_strict(tmp_path):
    bad = tmp_path / "config.pbtxt"
    bad.write_text('name: "m"\nmax_batch_sise: 8\n')
    with pytest.raises(DataError, match="not a valid Triton model config"):
        parse_config(bad)


@pytest.mark.parametrize("options, message", [
    (BatchingOptions(max_batch_size=4, preferred_batch_sizes=[8]), "preferred_batch_sizes"),
    (BatchingOptions(max_batch_size=0), "max_batch_size"),
    (BatchingOptions(instance_kind="tpu"), "instance_kind"),
    (BatchingOptions(gpus=[0]), "--gpus needs"),
])
def test_bad_options_are_one_line_errors(qa_nvidia, tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        generate_repository(qa_nvidia, tmp_path / "r", options=options)


def test_missing_export_or_format(tmp_path, cls_default):
    with pytest.raises(DataError, match="export.json: no such file"):
        generate_repository(tmp_path, tmp_path / "r")
    with pytest.raises(ConfigError, match="no torchscript model"):
        generate_repository(cls_default, tmp_path / "r", formats=("torchscript",))


def test_cli_generates_repository(qa_nvidia, tmp_path, capsys):
    from bertforge.serving.repository import main

    assert main(["--export_dir", str(qa_nvidia), "--model_repository", str(tmp_path / "repo"),
                 "--model_name", "bert", "--max_batch_size", "8", "--preferred_batch_sizes", "2,8",
                 "--max_queue_delay_us", "500"]) == 0
    cfg = parse_config(tmp_path / "repo" / "bert_onnx" / "config.pbtxt")
    assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 8]
    assert "bert_onnx" in capsys.readouterr().out
    np.testing.assert_equal(
        (tmp_path / "repo" / "bert_onnx" / "1" / "model.onnx").read_bytes(), (qa_nvidia / "model.onnx").read_bytes())
