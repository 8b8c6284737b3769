"""Parameter groups for weight decay: ONE rule, used by every optimizer in bertforge.

The rule (nanoGPT's): a tensor with two or more dimensions (weight matrices, embedding
tables) is decayed; a tensor with fewer (biases, LayerNorm gamma/beta) is not. For BERT
this is exactly what NVIDIA's name lists (``bias``, ``gamma``, ``beta``, ``LayerNorm``)
intend, without the two lists that disagree across their scripts.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["is_decayed", "param_groups"]


def is_decayed(param: torch.Tensor) -> bool:
    """True when weight decay applies to ``param`` (the one no-decay rule)."""
    return param.dim() >= 2


def param_groups(
    model_or_params: torch.nn.Module | Iterable[torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    weight_decay: float,
) -> list[dict]:
    """Split trainable parameters into a decayed and a non-decayed group.

    Args:
        model_or_params: an ``nn.Module``, an iterable of tensors, or of ``(name, tensor)``.
        weight_decay: the decay of the decayed group (the other group gets 0.0).

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay}, {"params": [...], "weight_decay": 0.0}]``
        with empty groups left out; parameter order is preserved inside each group.
    """
    if isinstance(model_or_params, torch.nn.Module):
        params = [p for p in model_or_params.parameters() if p.requires_grad]
    else:
        params = []
        for item in model_or_params:
            p = item[1] if isinstance(item, tuple) else item
            if p.requires_grad:
                params.append(p)
    decay = [p for p in params if is_decayed(p)]
    no_decay = [p for p in params if not is_decayed(p)]
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": float(weight_decay)})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups
