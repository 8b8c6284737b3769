"""Serve a generated Triton model repository with a real Triton server, on any machine.

Triton's native onnxruntime/pytorch backends come with NVIDIA's containers. Where they are
missing (e.g. the PyPI package ``nvidia-pytriton``, which bundles Triton Inference Server
with only its Python backend), this module serves the same repository through PyTriton:
each model folder's ``config.pbtxt`` gives the model name, tensors, ``max_batch_size``,
dynamic batching and instance count, and the model file of its latest version folder runs
inside the Python callable (onnxruntime for ``onnxruntime_onnx``, ``torch.jit`` for
``pytorch_libtorch``). Clients cannot tell the difference: same names, shapes, dtypes,
batching, HTTP and gRPC endpoints.

Run it in an environment with the ``serve`` extra (``make install-serve`` makes
``.venv-triton``; PyTriton needs numpy < 2)::

    python -m bertforge.serving.server --model_repository REPO [--models bert_qa_onnx]
        [--host 127.0.0.1] [--http_port 8000] [--grpc_port 8001]

SIGINT or SIGTERM stops Triton and its helper processes. If the environment variable
``BERTFORGE_TRITON_ACCESS_TOKEN`` is set it becomes the access token of Triton's protected
endpoints (statistics, model repository, ...); otherwise PyTriton makes a random one.

Requests are validated before they reach the model: the three inputs must have one shape
[B, L] with 1 <= L <= max_position_embeddings, token ids must lie in the vocabulary, token
types in [0, type_vocab_size), the mask in {0, 1}. An invalid request gets a Triton error
naming the problem and the server keeps serving (PyTriton fails the whole dynamic batch a
bad request was merged into; Triton only merges requests of equal shapes, so this concerns
out-of-range values only).

This module needs numpy, pytriton and onnxruntime (torch only for TorchScript models).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import sysconfig
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bertforge.cli.args import ArgumentParser
from bertforge.errors import ConfigError, DataError, UserError, cli_entry
from bertforge.serving.repository import MODEL_FILES, latest_version, parse_config

__all__ = ["ModelSpec", "read_model", "make_infer_fn", "serve", "build_parser", "main",
           "ACCESS_TOKEN_ENV", "prepend_libdir"]

ACCESS_TOKEN_ENV = "BERTFORGE_TRITON_ACCESS_TOKEN"
_NP_DTYPES = {"TYPE_INT32": np.int32, "TYPE_INT64": np.int64, "TYPE_FP32": np.float32, "TYPE_FP16": np.float16}
_ROLES = ("input_ids", "token_type_ids", "attention_mask")


class ModelSpec:
    """One model folder of a repository, read from its ``config.pbtxt``.

    inputs/outputs: [(name, numpy dtype, dims)] in config order (inputs are input_ids,
    token_type_ids, attention_mask in that order, as the generator writes them).
    """

    def __init__(self, folder: Path):
        config = parse_config(folder / "config.pbtxt")
        self.folder = folder
        self.name = config.name or folder.name
        self.platform = config.platform or config.backend
        self.version_dir = latest_version(folder)
        self.version = int(self.version_dir.name)
        self.max_batch_size = int(config.max_batch_size)
        dtypes = {v: k for k, v in _dtype_enum_names().items()}
        self.inputs = [(t.name, _NP_DTYPES[dtypes[t.data_type]], tuple(t.dims)) for t in config.input]
        self.outputs = [(t.name, _NP_DTYPES[dtypes[t.data_type]], tuple(t.dims)) for t in config.output]
        if len(self.inputs) != 3:
            raise DataError(f"{folder}/config.pbtxt: expected 3 inputs (input ids, token types, mask), "
                            f"got {len(self.inputs)}")
        db = config.dynamic_batching
        self.dynamic_batching = config.HasField("dynamic_batching")
        self.preferred_batch_sizes = list(db.preferred_batch_size)
        self.max_queue_delay_us = int(db.max_queue_delay_microseconds)
        self.instance_count = max(1, sum(g.count or 1 for g in config.instance_group))
        self.use_gpu = any(g.kind == 1 for g in config.instance_group)  # KIND_GPU
        params = {k: v.string_value for k, v in config.parameters.items()}
        try:
            self.max_length = int(params.get("bertforge_max_position_embeddings", 512))
            self.vocab_size = int(params.get("bertforge_vocab_size", 0)) or None
            self.type_vocab_size = int(params.get("bertforge_type_vocab_size", 2))
        except ValueError as e:
            raise DataError(f"{folder}/config.pbtxt: bad bertforge parameter ({e})") from None
        self.model_file = self.version_dir / MODEL_FILES.get(
            {"onnxruntime_onnx": "onnx", "onnxruntime": "onnx", "pytorch_libtorch": "torchscript",
             "pytorch": "torchscript"}.get(self.platform, ""), "model.onnx")
        if self.platform not in ("onnxruntime_onnx", "onnxruntime", "pytorch_libtorch", "pytorch"):
            raise ConfigError(f"{folder}: platform {self.platform!r} needs Triton's own backend "
                              "(NVIDIA's Triton container); this server runs ONNX and TorchScript models")
        if not self.model_file.is_file():
            raise DataError(f"{self.model_file}: no such file")


def _dtype_enum_names() -> dict[str, int]:
    from tritonclient.grpc import model_config_pb2

    return {name: model_config_pb2.DataType.Value(name) for name in _NP_DTYPES}


def read_model(repository: Path, name: str) -> ModelSpec:
    folder = repository / name
    if not (folder / "config.pbtxt").is_file():
        raise ConfigError(f"--models {name}: no {folder}/config.pbtxt")
    return ModelSpec(folder)


def _make_runner(spec: ModelSpec, intra_op_threads: int) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """inputs [3 x [B, L]] -> outputs in config order, running the model file."""
    if spec.platform.startswith("onnxruntime"):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if intra_op_threads > 0:
            opts.intra_op_num_threads = intra_op_threads
        providers = ["CPUExecutionProvider"]
        if spec.use_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        session = ort.InferenceSession(str(spec.model_file), opts, providers=providers)
        names_in = [n for n, _, _ in spec.inputs]
        names_out = [n for n, _, _ in spec.outputs]
        have = {i.name for i in session.get_inputs()} | {o.name for o in session.get_outputs()}
        missing = [n for n in names_in + names_out if n not in have]
        if missing:
            raise DataError(f"{spec.folder}/config.pbtxt names {missing}, which {spec.model_file} does not have")
        return lambda arrays: session.run(names_out, dict(zip(names_in, arrays, strict=True)))
    try:
        import torch
    except ImportError:
        raise ConfigError(f"{spec.name}: serving TorchScript through the Python path needs torch in "
                          "this environment") from None
    if intra_op_threads > 0:
        torch.set_num_threads(intra_op_threads)
    device = torch.device("cuda" if spec.use_gpu and torch.cuda.is_available() else "cpu")
    module = torch.jit.load(str(spec.model_file), map_location=device).eval()

    def run(arrays):
        with torch.inference_mode():
            out = module(*[torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays])
        return [o.float().cpu().numpy() for o in out]
    return run


def validate_request(spec: ModelSpec, arrays: Sequence[np.ndarray]) -> None:
    """Raise ValueError with a one-line reason if the inputs [B, L] are not a valid request."""
    shapes = [a.shape for a in arrays]
    if len(set(shapes)) != 1:
        raise ValueError("inputs must all have one shape [batch, length]; got "
                         + ", ".join(f"{n} {s}" for (n, _, _), s in zip(spec.inputs, shapes, strict=True)))
    if arrays[0].ndim != 2:
        raise ValueError(f"inputs must be [batch, length], got shape {shapes[0]}")
    length = shapes[0][1]
    if not 1 <= length <= spec.max_length:
        raise ValueError(f"sequence length {length} is outside [1, {spec.max_length}] "
                         "(max_position_embeddings of the model)")
    ids, types, mask = arrays
    limits = ((ids, spec.vocab_size, "token id"), (types, spec.type_vocab_size, "token type"), (mask, 2, "mask value"))
    for (name, _, _), (a, hi, what) in zip(spec.inputs, limits, strict=True):
        if hi is not None and a.size and (a.min() < 0 or a.max() >= hi):
            bad = a[(a < 0) | (a >= hi)].flat[0]
            raise ValueError(f"{name}: {what} {int(bad)} is outside [0, {hi})")


def make_infer_fn(spec: ModelSpec, intra_op_threads: int = 0):
    """The PyTriton callable of one model instance (batched: inputs [B, L] per name)."""
    from pytriton.decorators import batch

    runner = _make_runner(spec, intra_op_threads)
    names_in = [n for n, _, _ in spec.inputs]
    names_out = [n for n, _, _ in spec.outputs]

    @batch
    def infer(**inputs):
        arrays = [inputs[n] for n in names_in]
        validate_request(spec, arrays)
        return dict(zip(names_out, runner(arrays), strict=True))
    return infer


def prepend_libdir(env: dict) -> dict:
    """Put this interpreter's libpython directory first on LD_LIBRARY_PATH (in place).

    Triton's Python backend stub otherwise links the system libpython and model loads fail
    with "'_thread.RLock' object has no attribute '_recursion_count'".
    """
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    current = env.get("LD_LIBRARY_PATH", "")
    if libdir and not current.startswith(libdir):
        env["LD_LIBRARY_PATH"] = libdir + (":" + current if current else "")
    return env


def serve(repository: str | os.PathLike, models: Sequence[str] | None = None, *, host: str = "127.0.0.1",
          http_port: int = 8000, grpc_port: int = 8001, intra_op_threads: int = 0,
          exit_timeout_secs: int = 10, log=print) -> None:
    """Serve ``models`` of ``repository`` (all model folders by default) until SIGINT/SIGTERM."""
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    repository = Path(repository)
    if not repository.is_dir():
        raise ConfigError(f"--model_repository {repository}: no such directory")
    if models is None:
        models = sorted(p.name for p in repository.iterdir() if (p / "config.pbtxt").is_file())
        if not models:
            raise ConfigError(f"--model_repository {repository}: no model folder with a config.pbtxt")
    specs = [read_model(repository, name) for name in models]
    prepend_libdir(os.environ)
    # SIGTERM behaves as SIGINT: PyTriton's serve loop then stops Triton and its helpers.
    # SIGINT is reset too: a process started in the background of a non-interactive shell
    # inherits SIGINT as ignored.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    config = TritonConfig(http_address=host, http_port=http_port, grpc_address=host, grpc_port=grpc_port,
                          allow_metrics=False, exit_timeout_secs=exit_timeout_secs)
    security = TritonSecurityConfig(access_token=os.environ.get(ACCESS_TOKEN_ENV) or None)
    # Load every model before Triton starts, so a bad file fails fast and cleanly.
    infer_fns = {spec.name: [make_infer_fn(spec, intra_op_threads) for _ in range(spec.instance_count)]
                 for spec in specs}
    with Triton(config=config, security_config=security) as triton:
        for spec in specs:
            batcher = DynamicBatcher(max_queue_delay_microseconds=spec.max_queue_delay_us,
                                     preferred_batch_size=spec.preferred_batch_sizes or None)
            triton.bind(
                model_name=spec.name,
                model_version=spec.version,
                infer_func=infer_fns[spec.name],
                inputs=[Tensor(name=n, dtype=d, shape=dims) for n, d, dims in spec.inputs],
                outputs=[Tensor(name=n, dtype=d, shape=dims) for n, d, dims in spec.outputs],
                config=ModelConfig(max_batch_size=spec.max_batch_size, batcher=batcher,
                                   batching=spec.max_batch_size > 0),
                strict=True,
            )
        triton.run()
        log(f"serving {', '.join(s.name for s in specs)} on http://{host}:{http_port} and grpc {host}:{grpc_port}",
            flush=True)
        triton.serve()


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="deploy/triton/serve.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model_repository", required=True, help="made by deploy/triton/generate_model_repository.py")
    p.add_argument("--models", default=None, help="comma-separated model folders (default: all)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind HTTP and gRPC to")
    p.add_argument("--http_port", type=int, default=8000)
    p.add_argument("--grpc_port", type=int, default=8001)
    p.add_argument("--intra_op_threads", type=int, default=0, help="threads per model instance (0: runtime default)")
    p.add_argument("--exit_timeout_secs", type=int, default=10)
    p.add_argument("--verbose", action="store_true", help="PyTriton's INFO logs")
    return p.check(limits={"http_port": "[1,65535]", "grpc_port": "[1,65535]",
                           "intra_op_threads": "[0,1024]", "exit_timeout_secs": ">=0"})


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s", stream=sys.stderr)
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    try:
        serve(args.model_repository, models, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
              intra_op_threads=args.intra_op_threads, exit_timeout_secs=args.exit_timeout_secs)
    except KeyboardInterrupt:
        pass
    except ImportError as e:
        raise UserError(f"{e.name or e}: not installed; the server needs the serve extra "
                        "(make install-serve, or pip install 'bertforge[serve]')") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
