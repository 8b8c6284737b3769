"""Serving: export to ONNX/TorchScript, Triton model repositories, a Triton server and client.

Modules (import the one you need; this package imports nothing at import time):

* ``signature``  tensor names, dtypes and roles of an exported model (numpy only)
* ``export``     ONNX / TorchScript export and the numerical check against PyTorch (torch)
* ``repository`` ``config.pbtxt`` generation for Triton's onnxruntime / pytorch / tensorrt
                 backends and the version folders (no torch)
* ``server``     serves a model repository through PyTriton's Python path (onnxruntime or
                 torch.jit inside), for machines without Triton's native backends
* ``launcher``   starts/stops that server in a child process (tests, benchmark, demo)
* ``client``     the SQuAD client over ``tritonclient`` HTTP and gRPC
"""
