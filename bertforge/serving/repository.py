"""Triton model repository generator: ``config.pbtxt`` + version folders for an export.

For an export directory (see ``bertforge.serving.export``) it writes::

    <repository>/<name>_onnx/config.pbtxt           platform onnxruntime_onnx
    <repository>/<name>_onnx/<version>/model.onnx
    <repository>/<name>_torchscript/config.pbtxt    platform pytorch_libtorch
    <repository>/<name>_torchscript/<version>/model.pt
    <repository>/<name>_tensorrt/config.pbtxt       platform tensorrt_plan (only with a plan file
    <repository>/<name>_tensorrt/<version>/model.plan   built on the target GPU, e.g. by trtexec)

Each config names the model's inputs/outputs with the dtypes of the export, sets
``max_batch_size``, dynamic batching (preferred batch sizes, queue delay), an instance
group (CPU or GPU) and a version policy. bertforge's limits go into ``parameters``
(``bertforge_task``, ``bertforge_max_position_embeddings``, ``bertforge_vocab_size``,
``bertforge_type_vocab_size``) so a server can validate requests; Triton's backends
ignore parameters they do not know.

The text is Triton's ``ModelConfig`` protobuf in text format (model_config.proto);
``parse_config`` reads it back with the protobuf classes that ship with ``tritonclient``.
This module does not import torch.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bertforge.errors import ConfigError, DataError, cli_entry
from bertforge.files import atomic_path, atomic_write_text, ensure_dir
from bertforge.serving.signature import TRITON_DTYPES, ExportedModel, ExportManifest, TensorSpec

__all__ = [
    "BatchingOptions",
    "PLATFORMS",
    "config_pbtxt",
    "generate_repository",
    "parse_config",
    "latest_version",
    "build_parser",
    "main",
]

PLATFORMS = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch", "tensorrt": "tensorrt_plan"}
"""Export format -> Triton ``platform``."""
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.pt", "tensorrt": "model.plan"}
"""The file name each backend loads from a version folder (its default_model_filename)."""


@dataclass
class BatchingOptions:
    """Serving options shared by every generated config.

    max_batch_size: largest batch Triton forms (requests may carry up to this many rows).
    preferred_batch_sizes: batch sizes the dynamic batcher tries to form (each <= max).
    max_queue_delay_us: how long a request may wait for others to batch with.
    instance_kind: "cpu" or "gpu"; instance_count instances per device; gpus the GPU ids
        (empty = all GPUs).
    """

    max_batch_size: int = 8
    preferred_batch_sizes: list[int] = field(default_factory=lambda: [4, 8])
    max_queue_delay_us: int = 1000
    instance_kind: str = "cpu"
    instance_count: int = 1
    gpus: list[int] = field(default_factory=list)

    def validate(self) -> None:
        if self.max_batch_size < 1:
            raise ConfigError(f"--max_batch_size must be >= 1, got {self.max_batch_size}")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ConfigError(f"--preferred_batch_sizes {bad} must lie in [1, --max_batch_size "
                              f"{self.max_batch_size}]")
        if self.max_queue_delay_us < 0:
            raise ConfigError(f"--max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        if self.instance_kind not in ("cpu", "gpu"):
            raise ConfigError(f"--instance_kind must be cpu or gpu, got {self.instance_kind!r}")
        if self.instance_count < 1:
            raise ConfigError(f"--instance_count must be >= 1, got {self.instance_count}")
        if self.gpus and self.instance_kind != "gpu":
            raise ConfigError("--gpus needs --instance_kind gpu")


def _tensor_block(t: TensorSpec) -> str:
    dims = ", ".join(str(d) for d in t.dims)
    return f'  {{\n    name: "{t.name}"\n    data_type: {TRITON_DTYPES[t.dtype]}\n    dims: [ {dims} ]\n  }}'


def config_pbtxt(name: str, platform: str, exported: ExportedModel, manifest: ExportManifest,
                 options: BatchingOptions) -> str:
    """The ``config.pbtxt`` text of one model."""
    options.validate()
    if platform not in PLATFORMS.values():
        raise ConfigError(f"unknown Triton platform {platform!r}")
    kind = "KIND_GPU" if options.instance_kind == "gpu" else "KIND_CPU"
    gpus = f"\n    gpus: [ {', '.join(map(str, options.gpus))} ]" if options.gpus else ""
    preferred = ", ".join(str(b) for b in sorted(set(options.preferred_batch_sizes)))
    params = {
        "bertforge_task": manifest.task,
        "bertforge_max_position_embeddings": manifest.max_position_embeddings,
        "bertforge_vocab_size": manifest.vocab_size,
        "bertforge_type_vocab_size": manifest.type_vocab_size,
        "bertforge_precision": exported.precision,
    }
    param_text = "\n".join(
        f'parameters: {{\n  key: "{k}"\n  value: {{ string_value: "{v}" }}\n}}' for k, v in params.items())
    return (
        f'name: "{name}"\n'
        f'platform: "{platform}"\n'
        f"max_batch_size: {options.max_batch_size}\n"
        "input [\n" + ",\n".join(_tensor_block(t) for t in exported.inputs) + "\n]\n"
        "output [\n" + ",\n".join(_tensor_block(t) for t in exported.outputs) + "\n]\n"
        "dynamic_batching {\n"
        + (f"  preferred_batch_size: [ {preferred} ]\n" if preferred else "")
        + f"  max_queue_delay_microseconds: {options.max_queue_delay_us}\n"
        "}\n"
        "instance_group [\n"
        f"  {{\n    count: {options.instance_count}\n    kind: {kind}{gpus}\n  }}\n"
        "]\n"
        "version_policy: { latest: { num_versions: 1 } }\n"
        + param_text + "\n"
    )


def _copy_into(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` atomically (hard link when on the same filesystem)."""
    with atomic_path(dst) as tmp:
        try:
            tmp.unlink()
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def generate_repository(export_dir: str | os.PathLike, repository: str | os.PathLike, *,
                        model_name: str = "bert", version: int = 1,
                        formats: Sequence[str] = ("onnx", "torchscript"), precision: str = "fp32",
                        tensorrt_plan: str | os.PathLike | None = None,
                        options: BatchingOptions | None = None) -> dict[str, Path]:
    """Write one Triton model per format; returns {triton model name: model folder}.

    ``tensorrt_plan`` adds ``<model_name>_tensorrt`` with the plan (engine) file, which has
    the ONNX model's tensor names (plans are built from the ONNX file, on the serving GPU).
    """
    options = options or BatchingOptions()
    options.validate()
    if version < 1:
        raise ConfigError(f"--model_version must be >= 1, got {version}")
    if not model_name or any(c not in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-."
                             for c in model_name):
        raise ConfigError(f"--model_name {model_name!r}: use letters, digits, '_', '-', '.'")
    export_dir = Path(export_dir)
    manifest = ExportManifest.load(export_dir)
    repo = ensure_dir(repository, "--model_repository")
    written: dict[str, Path] = {}
    jobs: list[tuple[str, ExportedModel, Path]] = []
    for fmt in formats:
        if fmt not in ("onnx", "torchscript"):
            raise ConfigError(f"--formats: unknown format {fmt!r} (onnx, torchscript)")
        exported = manifest.get(fmt, precision)
        jobs.append((fmt, exported, export_dir / exported.file))
    if tensorrt_plan is not None:
        plan = Path(tensorrt_plan)
        if not plan.is_file():
            raise ConfigError(f"--tensorrt_plan {plan}: no such file")
        jobs.append(("tensorrt", manifest.get("onnx", precision), plan))
    for fmt, exported, src in jobs:
        if not src.is_file():
            raise DataError(f"{src}: listed in {export_dir}/export.json but missing")
        name = f"{model_name}_{fmt}"
        folder = repo / name
        _copy_into(src, folder / str(version) / MODEL_FILES[fmt])
        atomic_write_text(folder / "config.pbtxt",
                          config_pbtxt(name, PLATFORMS[fmt], exported, manifest, options))
        written[name] = folder
    return written


def parse_config(path: str | os.PathLike):
    """Parse a ``config.pbtxt`` into Triton's ``ModelConfig`` message (strict: unknown
    fields are errors). Needs ``tritonclient[grpc]`` (it ships model_config_pb2)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    path = Path(path)
    try:
        return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    except text_format.ParseError as e:
        raise DataError(f"{path}: not a valid Triton model config ({e})") from None


def latest_version(model_dir: str | os.PathLike) -> Path:
    """The highest numbered version folder of a Triton model folder."""
    model_dir = Path(model_dir)
    versions = sorted((int(p.name), p) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()) \
        if model_dir.is_dir() else []
    if not versions:
        raise DataError(f"{model_dir}: no version folder (1/, 2/, ...)")
    return versions[-1][1]


def _ints(s: str) -> list[int]:
    import argparse

    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def build_parser():
    from bertforge.cli.args import ArgumentParser

    p = ArgumentParser(prog="deploy/triton/generate_model_repository.py",
                                description="Write a Triton model repository for an export directory.")
    p.add_argument("--export_dir", required=True, help="made by deploy/triton/export_model.py")
    p.add_argument("--model_repository", required=True)
    p.add_argument("--model_name", default="bert", help="models are named <model_name>_<format>")
    p.add_argument("--model_version", type=int, default=1)
    p.add_argument("--formats", default="onnx,torchscript", help="onnx,torchscript")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    p.add_argument("--tensorrt_plan", default=None, help="a TensorRT engine built from the ONNX file")
    p.add_argument("--max_batch_size", type=int, default=8)
    p.add_argument("--preferred_batch_sizes", type=_ints, default=[4, 8])
    p.add_argument("--max_queue_delay_us", type=int, default=1000)
    p.add_argument("--instance_kind", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--instance_count", type=int, default=1)
    p.add_argument("--gpus", type=_ints, default=[], help="GPU ids for --instance_kind gpu (default: all)")
    return p.check(limits={"model_version": "[1,1000000000]", "max_batch_size": "[1,16777216]",
                           "preferred_batch_sizes": "[1,16777216]", "max_queue_delay_us": ">=0",
                           "instance_count": "[1,1024]", "gpus": "[0,1024]"},
                   outputs={"model_repository": "dir"})


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = BatchingOptions(max_batch_size=args.max_batch_size, preferred_batch_sizes=args.preferred_batch_sizes,
                              max_queue_delay_us=args.max_queue_delay_us, instance_kind=args.instance_kind,
                              instance_count=args.instance_count, gpus=args.gpus)
    written = generate_repository(args.export_dir, args.model_repository, model_name=args.model_name,
                                  version=args.model_version,
                                  formats=[f.strip() for f in args.formats.split(",") if f.strip()],
                                  precision=args.precision, tensorrt_plan=args.tensorrt_plan, options=options)
    for name, folder in written.items():
        print(f"{name}: {folder / 'config.pbtxt'}")
    return 0
