"""NVIDIA-compatible schedulers module: ``from schedulers import PolyWarmUpScheduler``.

The implementations live in :mod:`bertforge.optim.schedulers`.
"""

from bertforge.optim.schedulers import (
    ConstantWarmUpScheduler,
    CosineWarmUpScheduler,
    LinearWarmUpScheduler,
    PolyWarmUpScheduler,
)

__all__ = ["PolyWarmUpScheduler", "LinearWarmUpScheduler", "ConstantWarmUpScheduler",
           "CosineWarmUpScheduler"]
