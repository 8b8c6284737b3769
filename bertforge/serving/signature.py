"""What an exported model takes and returns: tensor names, roles, dtypes and shapes.

An export directory holds the model files and ``export.json`` (an :class:`ExportManifest`):
one :class:`ExportedModel` per file, each with its own input/output :class:`TensorSpec` s,
plus what servers and clients need to validate requests (vocabulary size, longest
sequence). The repository generator, the server and the client all read names from here,
so none of them hard-codes a naming scheme.

Naming schemes:
* default: ``input_ids``, ``token_type_ids``, ``attention_mask`` -> ``start_logits``,
  ``end_logits`` (QA) or ``logits`` (classification);
* NVIDIA's (``nvidia_names=True``, DeepLearningExamples' Triton scripts): ``input__0``,
  ``input__1``, ``input__2`` -> ``output__0``, ``output__1``. Triton's pytorch (libtorch)
  backend maps TorchScript arguments by this ``<name>__<index>`` convention, so TorchScript
  exports always use it.

Shapes exclude the batch dimension (Triton's ``dims`` with ``max_batch_size > 0``):
inputs are ``[-1]`` (any sequence length L), QA outputs ``[-1]`` (one logit per token),
classification outputs ``[num_labels]``. Outputs are always float32.

This module imports only the standard library.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bertforge.errors import ConfigError, DataError

__all__ = [
    "INPUT_ROLES",
    "TASKS",
    "TensorSpec",
    "ExportedModel",
    "ExportManifest",
    "io_specs",
    "TRITON_DTYPES",
    "MANIFEST_NAME",
]

INPUT_ROLES = ("input_ids", "token_type_ids", "attention_mask")
OUTPUT_ROLES = {"qa": ("start_logits", "end_logits"), "classification": ("logits",)}
TASKS = tuple(OUTPUT_ROLES)
INPUT_DTYPES = ("int32", "int64")
MANIFEST_NAME = "export.json"

TRITON_DTYPES = {"int32": "TYPE_INT32", "int64": "TYPE_INT64", "float32": "TYPE_FP32",
                 "float16": "TYPE_FP16"}
"""numpy dtype name -> Triton ``data_type`` (model_config.proto)."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output. ``dims`` exclude the batch dimension; -1 is variable."""

    name: str
    role: str
    dtype: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ExportedModel:
    """One exported file: ``format`` is "onnx" or "torchscript", ``file`` is relative to the
    export directory, ``precision`` the compute precision (fp32/fp16), ``check`` the
    numerical check (max abs difference per output vs PyTorch, tolerance, batches)."""

    format: str
    file: str
    precision: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    check: dict = field(default_factory=dict)

    def input(self, role: str) -> TensorSpec:
        return next(t for t in self.inputs if t.role == role)

    def output(self, role: str) -> TensorSpec:
        return next(t for t in self.outputs if t.role == role)


@dataclass
class ExportManifest:
    """``export.json``: the task, limits requests must respect, and the exported files."""

    task: str
    num_labels: int
    max_position_embeddings: int
    """Longest sequence the model accepts (L <= this)."""
    vocab_size: int
    """Token ids must lie in [0, vocab_size) (the padded embedding size)."""
    type_vocab_size: int
    models: list[ExportedModel] = field(default_factory=list)
    source: str = ""
    """The checkpoint the export was made from."""

    def get(self, fmt: str, precision: str | None = None) -> ExportedModel:
        for m in self.models:
            if m.format == fmt and (precision is None or m.precision == precision):
                return m
        raise ConfigError(f"the export has no {fmt} model"
                          + (f" in {precision}" if precision else "")
                          + f" (it has: {', '.join(m.format + '/' + m.precision for m in self.models) or 'none'})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = MANIFEST_NAME) -> ExportManifest:
        try:
            models = [ExportedModel(
                format=m["format"], file=m["file"], precision=m["precision"],
                inputs=tuple(TensorSpec(t["name"], t["role"], t["dtype"], tuple(t["dims"])) for t in m["inputs"]),
                outputs=tuple(TensorSpec(t["name"], t["role"], t["dtype"], tuple(t["dims"])) for t in m["outputs"]),
                check=dict(m.get("check", {}))) for m in d["models"]]
            out = cls(task=d["task"], num_labels=int(d["num_labels"]),
                      max_position_embeddings=int(d["max_position_embeddings"]),
                      vocab_size=int(d["vocab_size"]), type_vocab_size=int(d["type_vocab_size"]),
                      models=models, source=str(d.get("source", "")))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{source}: not a bertforge export manifest ({type(e).__name__}: {e})") from None
        if out.task not in TASKS:
            raise DataError(f"{source}: unknown task {out.task!r}")
        return out

    @classmethod
    def load(cls, export_dir: str | os.PathLike) -> ExportManifest:
        path = Path(export_dir) / MANIFEST_NAME
        if not path.is_file():
            raise DataError(f"{path}: no such file (is {export_dir} an export directory made by "
                            "deploy/triton/export_model.py?)")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: cannot read ({e})") from None
        return cls.from_dict(d, str(path))


def io_specs(task: str, *, nvidia_names: bool, input_dtype: str,
             num_labels: int = 2) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Input and output specs of an export (see the module docstring for the names)."""
    if task not in TASKS:
        raise ConfigError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    if input_dtype not in INPUT_DTYPES:
        raise ConfigError(f"--input_dtype must be int32 or int64, got {input_dtype!r}")
    inputs = tuple(TensorSpec(f"input__{i}" if nvidia_names else role, role, input_dtype, (-1,))
                   for i, role in enumerate(INPUT_ROLES))
    out_dims = (-1,) if task == "qa" else (num_labels,)
    outputs = tuple(TensorSpec(f"output__{i}" if nvidia_names else role, role, "float32", out_dims)
                    for i, role in enumerate(OUTPUT_ROLES[task]))
    return inputs, outputs
