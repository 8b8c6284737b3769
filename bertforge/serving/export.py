"""Export a fine-tuned BERT (QA or classification) to ONNX and TorchScript, and check it.

``export_model`` writes into an export directory::

    model.onnx         ONNX, dynamic batch and sequence axes (fp32)
    model.pt           TorchScript (traced), any batch and sequence length (fp32)
    model.fp16.onnx    \
    model.fp16.pt      /  the same in fp16, only on a CUDA device
    export.json        names, dtypes and roles of every file + the numerical check

Every file is checked against the PyTorch model before it is renamed into place: the
maximum absolute difference of each output over the real (non-padding) positions, on
batches with padding and on unpadded single windows, must be <= 1e-4 in fp32 (fp16 is
compared with the fp16 PyTorch model, <= 5e-2). onnxruntime runs the ONNX files.

Tracing and the padding fast path: the model checks ``attention_mask.all()`` in Python to
skip masking for full batches, and by default runs position-wise layers on real tokens only
(data-dependent shapes). A trace records one branch of such a check as a constant, so the
export uses the plain padded path (``set_unpad(False)``) and traces an example that holds
padding: the recorded graph always applies the attention mask, which gives the same result
for batches without padding (an all-ones mask masks nothing). The check runs both kinds of
batch. The exporter is torch's TorchScript-based ONNX exporter (``dynamo=False``); the
torch.export-based one cannot trace that Python-level branch.

Dimension legend: B batch, L sequence length, N windows.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bertforge.cli.args import ArgumentParser
from bertforge.cli.environment import read_environment, use_cpu_gemm
from bertforge.config import ModelConfig
from bertforge.errors import ConfigError, UserError, cli_entry
from bertforge.files import atomic_path, atomic_write_json, ensure_dir
from bertforge.serving.signature import MANIFEST_NAME, ExportedModel, ExportManifest, io_specs

__all__ = [
    "ExportWrapper",
    "load_model",
    "export_onnx",
    "export_torchscript",
    "check_batches",
    "squad_check_inputs",
    "random_check_inputs",
    "compare",
    "export_model",
    "TOLERANCE",
    "build_parser",
    "main",
]

TOLERANCE = {"fp32": 1e-4, "fp16": 5e-2}
"""Largest max-abs difference accepted between an export and PyTorch, by precision."""

FILE_NAMES = {("onnx", "fp32"): "model.onnx", ("torchscript", "fp32"): "model.pt",
              ("onnx", "fp16"): "model.fp16.onnx", ("torchscript", "fp16"): "model.fp16.pt"}

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]
"""(input_ids, token_type_ids, attention_mask), each [B, L] integers."""


class ExportWrapper(nn.Module):
    """The exported graph: integer inputs of any int dtype -> float32 outputs.

    forward(input_ids [B, L], token_type_ids [B, L], attention_mask [B, L]) ->
    (start_logits [B, L], end_logits [B, L]) for QA, or (logits [B, num_labels],) for
    classification. Inputs are cast to int64 inside, so int32 requests need no copy on
    the client; outputs are cast to float32 so fp16 models answer in the same dtype.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, token_type_ids, attention_mask):
        out = self.model(input_ids.long(), token_type_ids.long(), attention_mask.long())
        if isinstance(out, tuple):
            return tuple(o.float() for o in out)
        return (out.float(),)


def load_model(init_checkpoint: str, task: str, *, config_file: str | None = None,
               num_labels: int = 2) -> nn.Module:
    """A fine-tuned model from a bertforge file, an HF directory or an NGC file, loaded by the
    same rules as inference.py / run_glue.py prediction (the task head must be present)."""
    from bertforge.model.bert import BertForQuestionAnswering, BertForSequenceClassification
    from bertforge.model.convert import load_task_model

    if task == "qa":
        model, _ = load_task_model(init_checkpoint, BertForQuestionAnswering, head=("qa_outputs.*",),
                                   training=False, config_file=config_file, drop=("bert.pooler.*",))
    elif task == "classification":
        model, _ = load_task_model(init_checkpoint, BertForSequenceClassification, head=("classifier.*",),
                                   training=False, config_file=config_file, num_labels=num_labels)
    else:
        raise ConfigError(f"--task must be qa or classification, got {task!r}")
    return model.eval()


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Silence the warnings every export prints, all explained in the module docstring: the
    traced ``bool(mask.all())`` (TracerWarning), the legacy-exporter notice, and torch.jit's
    deprecation (Triton's pytorch backend loads TorchScript, so we still write it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated.*", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        yield


def _example(config: ModelConfig, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
    """A [2, 16] tracing example whose second row is padded (see the module docstring)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, min(config.vocab_size, 1000), (2, 16), generator=g)
    types = torch.zeros_like(ids)
    types[:, 8:] = 1
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0
    return tuple(t.to(device=device, dtype=dtype) for t in (ids, types, mask))


def _prepare(model: nn.Module, device: torch.device) -> ExportWrapper:
    """An eval wrapper on ``device`` around ``model`` switched to the padded path."""
    model.set_unpad(False)
    return ExportWrapper(model).eval().to(device)


def export_onnx(model: nn.Module, path: str | Path, exported: ExportedModel, *, opset: int = 17,
                device: torch.device | str = "cpu") -> None:
    """Write ``model`` as ONNX with ``exported``'s tensor names and dynamic B and L axes."""
    device = torch.device(device)
    wrapper = _prepare(model, device)
    in_dtype = torch.int32 if exported.inputs[0].dtype == "int32" else torch.int64
    example = _example(model.config, in_dtype, device)
    names_in = [t.name for t in exported.inputs]
    names_out = [t.name for t in exported.outputs]
    axes = {n: {0: "batch", 1: "sequence"} for n in names_in}
    for t in exported.outputs:
        axes[t.name] = {0: "batch", 1: "sequence"} if t.dims == (-1,) else {0: "batch"}
    with _quiet_tracing(), torch.inference_mode():
        with open(path, "wb") as fh:  # any bytes in the path (see export_torchscript)
            torch.onnx.export(wrapper, example, fh, dynamo=False, input_names=names_in,
                              output_names=names_out, dynamic_axes=axes, opset_version=opset,
                              do_constant_folding=True)


def export_torchscript(model: nn.Module, path: str | Path, exported: ExportedModel, *,
                       device: torch.device | str = "cpu") -> None:
    """Write ``model`` as traced TorchScript (forward(input_ids, token_type_ids, attention_mask))."""
    device = torch.device(device)
    wrapper = _prepare(model, device)
    in_dtype = torch.int32 if exported.inputs[0].dtype == "int32" else torch.int64
    with _quiet_tracing(), torch.inference_mode():
        traced = torch.jit.trace(wrapper, _example(model.config, in_dtype, device), check_trace=False)
    # through a file object: TorchScript's own writer takes only a str that encodes as UTF-8,
    # and a path may hold any bytes
    with open(path, "wb") as fh:
        torch.jit.save(traced, fh)


# --------------------------------------------------------------------------- checks


def squad_check_inputs(predict_file: str, vocab_file: str, *, max_seq_length: int = 384,
                       doc_stride: int = 128, max_query_length: int = 64, max_questions: int = 32,
                       do_lower_case: bool = True) -> Batch:
    """Real inputs: the sliding windows of the first ``max_questions`` questions of a SQuAD
    file, exactly as inference.py builds them. Returns arrays [N, max_seq_length]."""
    from bertforge.data.tokenization import load_tokenizer
    from bertforge.tasks.squad import features_from, read_squad_examples

    examples = read_squad_examples(predict_file)[:max_questions]
    if not examples:
        raise UserError(f"--check_file {predict_file}: no questions")
    feats = features_from(examples, load_tokenizer(vocab_file, do_lower_case), max_seq_length=max_seq_length,
                          doc_stride=doc_stride, max_query_length=max_query_length)
    return feats.input_ids, feats.token_type_ids, feats.attention_mask


def random_check_inputs(config: ModelConfig, n: int = 16, length: int = 128, seed: int = 0) -> Batch:
    """Synthetic inputs when no real data is given: random ids, two segments, random lengths."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, config.vocab_size, size=(n, length), dtype=np.int64)
    lengths = rng.integers(length // 4, length + 1, size=n)
    lengths[0] = length  # at least one unpadded row
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    types = ((np.arange(length)[None, :] >= lengths[:, None] // 2) & (mask == 1)).astype(np.int64)
    return ids * mask, types, mask


def check_batches(inputs: Batch, batch_size: int = 8, singles: int = 4) -> list[Batch]:
    """Batches for the check: every window in batches of ``batch_size`` padded to the full L,
    plus the first ``singles`` windows alone, cut to their length (no padding at all)."""
    ids, types, mask = inputs
    out = [(ids[i:i + batch_size], types[i:i + batch_size], mask[i:i + batch_size])
           for i in range(0, len(ids), batch_size)]
    for i in range(min(singles, len(ids))):
        n = int(mask[i].sum())
        out.append((ids[i:i + 1, :n], types[i:i + 1, :n], mask[i:i + 1, :n]))
    return out


@torch.inference_mode()
def _torch_outputs(model: nn.Module, batch: Batch, device: torch.device) -> list[np.ndarray]:
    out = model(*[torch.as_tensor(np.asarray(a, dtype=np.int64), device=device) for a in batch])
    out = out if isinstance(out, tuple) else (out,)
    return [o.float().cpu().numpy() for o in out]


def _runner(fmt: str, path: Path, exported: ExportedModel, device: torch.device):
    """A function batch -> list of output arrays running the exported file."""
    dtype = np.int32 if exported.inputs[0].dtype == "int32" else np.int64
    if fmt == "onnx":
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        session = ort.InferenceSession(Path(path).read_bytes(), providers=providers)  # any path bytes
        names = [t.name for t in exported.inputs]
        return lambda b: session.run(None, {n: np.ascontiguousarray(a, dtype=dtype) for n, a in zip(names, b, strict=True)})
    with _quiet_tracing():
        with open(path, "rb") as fh:  # any bytes in the path (see export_torchscript)
            module = torch.jit.load(fh, map_location=device).eval()

    def run(b):
        with torch.inference_mode():
            out = module(*[torch.as_tensor(np.asarray(a, dtype=dtype), device=device) for a in b])
        return [o.float().cpu().numpy() for o in out]
    return run


def compare(model: nn.Module, fmt: str, path: Path, exported: ExportedModel, batches: Sequence[Batch],
            *, task: str, device: torch.device | str = "cpu") -> dict[str, float]:
    """Max abs difference of each output between the file at ``path`` and ``model``.

    The reference is ``model`` as inference.py runs it (the default unpadded fast path; for
    fp16 exports pass the fp16 model). QA logits are compared at real tokens only (logits at
    padding carry no meaning); classification logits whole.
    """
    device = torch.device(device)
    run = _runner(fmt, path, exported, device)
    model.set_unpad(True)
    worst = {t.role: 0.0 for t in exported.outputs}
    for batch in batches:
        ref = _torch_outputs(model, batch, device)
        got = run(batch)
        real = np.asarray(batch[2]).astype(bool)
        for spec, r, g in zip(exported.outputs, ref, got, strict=True):
            if g.shape != r.shape:
                raise UserError(f"{fmt} export {path.name}: {spec.name} has shape {g.shape}, "
                                f"PyTorch gives {r.shape}")
            diff = np.abs(g.astype(np.float64) - r)
            d = float(diff[real].max()) if task == "qa" else float(diff.max())
            worst[spec.role] = max(worst[spec.role], d)
    return worst


# --------------------------------------------------------------------------- export


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ConfigError(f"--device {device!r}: expected auto, cpu or cuda[:N]")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    return torch.device(device)


def export_model(model: nn.Module, output_dir: str | Path, *, task: str, check_inputs: Batch,
                 formats: Sequence[str] = ("onnx", "torchscript"), precisions: Sequence[str] = ("fp32",),
                 nvidia_names: bool = False, input_dtype: str = "int64", num_labels: int = 2,
                 opset: int = 17, device: str | torch.device = "cpu", source: str = "",
                 log=print) -> ExportManifest:
    """Export ``model`` in every format x precision, check each file, write ``export.json``.

    A file whose check exceeds :data:`TOLERANCE` is not written and a UserError says which
    output differed by how much. Returns the manifest (also written to the directory).
    """
    device = torch.device(device) if not isinstance(device, str) else _resolve_device(device)
    for fmt in formats:
        if fmt not in ("onnx", "torchscript"):
            raise ConfigError(f"--formats: unknown format {fmt!r} (onnx, torchscript)")
    for p in precisions:
        if p not in TOLERANCE:
            raise ConfigError(f"--precisions: unknown precision {p!r} (fp32, fp16)")
        if p == "fp16" and device.type != "cuda":
            raise ConfigError("--precisions fp16 needs a CUDA device (fp16 export and its check run on the "
                              f"GPU); this run is on {device.type}")
    out = ensure_dir(output_dir, "--output_dir")
    model = model.eval().to(device)
    cfg = model.config
    batches = check_batches(check_inputs)
    manifest = ExportManifest(task=task, num_labels=num_labels if task == "classification" else 0,
                              max_position_embeddings=cfg.max_position_embeddings,
                              vocab_size=cfg.padded_vocab_size, type_vocab_size=cfg.type_vocab_size,
                              source=source)
    for precision in precisions:
        # The fp16 export and its reference are a half copy; the caller's model stays fp32.
        m = copy.deepcopy(model).half() if precision == "fp16" else model
        for fmt in formats:
            # libtorch maps TorchScript arguments/outputs by the <name>__<index> convention.
            inputs, outputs = io_specs(task, nvidia_names=nvidia_names or fmt == "torchscript",
                                       input_dtype=input_dtype, num_labels=num_labels)
            name = FILE_NAMES[fmt, precision]
            spec = ExportedModel(fmt, name, precision, inputs, outputs)
            with atomic_path(out / name) as tmp:
                if fmt == "onnx":
                    export_onnx(m, tmp, spec, opset=opset, device=device)
                else:
                    export_torchscript(m, tmp, spec, device=device)
                diffs = compare(m, fmt, tmp, spec, batches, task=task, device=device)
                worst = max(diffs.values())
                log(f"{fmt} {precision} {name}: max abs diff vs PyTorch "
                    + ", ".join(f"{k} {v:.3g}" for k, v in diffs.items())
                    + f" over {len(batches)} batches (tolerance {TOLERANCE[precision]:g})")
                if not worst <= TOLERANCE[precision]:
                    raise UserError(f"{fmt} {precision} export differs from PyTorch by {worst:.3g} "
                                    f"(> {TOLERANCE[precision]:g}); {name} was not written")
            manifest.models.append(ExportedModel(
                fmt, name, precision, inputs, outputs,
                check={"max_abs_diff": diffs, "tolerance": TOLERANCE[precision], "batches": len(batches),
                       "windows": int(len(check_inputs[0])), "device": device.type}))
    atomic_write_json(out / MANIFEST_NAME, manifest.to_dict())
    return manifest


# --------------------------------------------------------------------------- CLI


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="deploy/triton/export_model.py",
        description="Export a fine-tuned BERT to ONNX and TorchScript and check it against PyTorch.")
    p.add_argument("--init_checkpoint", required=True,
                   help="fine-tuned model: bertforge file, HF directory or NGC file")
    p.add_argument("--config_file", default=None, help="bert_config.json (needed for NGC files)")
    p.add_argument("--task", choices=("qa", "classification"), default="qa")
    p.add_argument("--num_labels", type=int, default=2, help="classification: number of labels")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--formats", type=_csv, default=["onnx", "torchscript"], help="onnx,torchscript")
    p.add_argument("--precisions", type=_csv, default=["fp32"], help="fp32,fp16 (fp16 needs CUDA)")
    p.add_argument("--nvidia_names", action="store_true",
                   help="name ONNX tensors input__0..2 / output__0..1 as NVIDIA's Triton scripts do")
    p.add_argument("--input_dtype", choices=("int32", "int64"), default="int64")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--check_file", default=None,
                   help="SQuAD json whose windows are the check inputs (default: random token ids)")
    p.add_argument("--vocab_file", default=None, help="vocabulary for --check_file")
    p.add_argument("--do_lower_case", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--check_questions", type=int, default=32)
    p.add_argument("--max_seq_length", type=int, default=384)
    p.add_argument("--doc_stride", type=int, default=128)
    p.add_argument("--max_query_length", type=int, default=64)
    return p.check(limits={"num_labels": "[1,1000000]", "opset": "[14,1000]",
                           "check_questions": "[1,100000]", "max_seq_length": "[8,1048576]",
                           "doc_stride": ">=1", "max_query_length": ">=1"},
                   outputs={"output_dir": "dir"})


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    use_cpu_gemm(read_environment())
    model = load_model(args.init_checkpoint, args.task, config_file=args.config_file,
                       num_labels=args.num_labels)
    if args.check_file:
        if not args.vocab_file:
            raise ConfigError("--check_file needs --vocab_file")
        inputs = squad_check_inputs(args.check_file, args.vocab_file, max_seq_length=args.max_seq_length,
                                    doc_stride=args.doc_stride, max_query_length=args.max_query_length,
                                    max_questions=args.check_questions, do_lower_case=args.do_lower_case)
    else:
        print("note: no --check_file; checking on random token ids", file=sys.stderr)
        inputs = random_check_inputs(model.config, length=min(128, model.config.max_position_embeddings))
    export_model(model, args.output_dir, task=args.task, check_inputs=inputs, formats=args.formats,
                 precisions=args.precisions, nvidia_names=args.nvidia_names, input_dtype=args.input_dtype,
                 num_labels=args.num_labels, opset=args.opset, device=args.device,
                 source=str(args.init_checkpoint))
    print(f"wrote {Path(args.output_dir) / MANIFEST_NAME}")
    return 0
