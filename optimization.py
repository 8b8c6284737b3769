"""NVIDIA-compatible optimizer module: ``from optimization import BertAdam``.

The implementations live in :mod:`bertforge.optim`.
"""

from bertforge.optim import LAMB, BertAdam, build_optimizer, param_groups
from bertforge.optim.schedulers import warmup_linear, warmup_poly

__all__ = ["BertAdam", "LAMB", "build_optimizer", "param_groups", "warmup_linear", "warmup_poly"]
