"""NVIDIA's own pretraining checkpoints, read for a bertforge run.

NVIDIA's ``run_pretraining.py`` writes ``<output_dir>/ckpt_<N>.pt`` holding
``{'model', 'optimizer', 'master params', 'files', 'epoch', 'data_loader'}`` (2020, apex
amp: ``model`` may be fp16, ``master params`` are the fp32 weights in optimizer order) or
``{'model', 'optimizer', 'grad_scaler', 'epoch'}`` (current); NGC publishes model-only files
``{'model': state_dict}``. Names are NVIDIA's modeling.py ones (``dense_act``), the vocab
padded to a multiple of 8 (30528). The step is in the file name, as NVIDIA's code reads it.

The optimizer state (apex FusedLAMB / NVIDIA's FusedLAMBAMP) is indexed by position in
NVIDIA's parameter groups: ``named_parameters()`` of NVIDIA's model split into a decayed group
and a no-decay group by NVIDIA's name list (``bias``, ``gamma``, ``beta``, ``LayerNorm``).
That order is recovered from the ``model`` entry (a state dict keeps the registration order;
the tied decoder weight appears twice there and once among the parameters), so the moments
can be moved onto bertforge's parameters by name.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from bertforge.errors import CheckpointError

__all__ = ["is_nvidia_checkpoint", "nvidia_step", "nvidia_parameter_order", "master_weights",
           "moments_by_name", "optimizer_state_for"]

_NO_DECAY = ("bias", "gamma", "beta", "LayerNorm")  # NVIDIA's run_pretraining.py list
_TIED = "cls.predictions.decoder.weight"


def is_nvidia_checkpoint(obj: object) -> bool:
    """A dict with NVIDIA's ``model`` entry and none of bertforge's training-state keys."""
    return isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "phase" not in obj \
        and "step" not in obj


def nvidia_step(path: str | Path) -> int:
    """N of ``ckpt_<N>.pt`` (NVIDIA's code takes the step from the name too)."""
    m = re.fullmatch(r"ckpt_(\d+)\.pt", Path(path).name)
    if not m:
        raise CheckpointError(f"{path}: NVIDIA's checkpoints are named ckpt_<step>.pt")
    return int(m.group(1))


def _strip(k: str) -> str:
    return k[len("module."):] if k.startswith("module.") else k


def nvidia_parameter_order(model_sd: dict) -> list[str]:
    """NVIDIA's optimizer order: decayed parameters, then the others, each in model order."""
    names = [_strip(k) for k in model_sd if _strip(k) != _TIED]
    decay = [n for n in names if not any(nd in n for nd in _NO_DECAY)]
    return decay + [n for n in names if any(nd in n for nd in _NO_DECAY)]


def master_weights(ckpt: dict) -> dict[str, torch.Tensor]:
    """``model`` with the fp32 ``master params`` (2020 apex amp) put in place of its entries."""
    sd = {_strip(k): v for k, v in ckpt["model"].items()}
    masters = ckpt.get("master params")
    if not masters:
        return sd
    order = nvidia_parameter_order(ckpt["model"])
    if len(masters) != len(order):
        raise CheckpointError(f"NVIDIA checkpoint: {len(masters)} master params for {len(order)} "
                              "parameters of its model")
    for name, w in zip(order, masters, strict=True):
        if tuple(w.shape) != tuple(sd[name].shape):
            raise CheckpointError(f"NVIDIA checkpoint: master param for {name} has shape "
                                  f"{tuple(w.shape)}, the model {tuple(sd[name].shape)}")
        sd[name] = w.float()
    if _TIED in sd:
        sd[_TIED] = sd["bert.embeddings.word_embeddings.weight"]
    return sd


def moments_by_name(ckpt: dict) -> dict[str, dict[str, torch.Tensor]] | None:
    """LAMB's ``exp_avg``/``exp_avg_sq`` of each parameter, by NVIDIA's name (None: no optimizer)."""
    opt = ckpt.get("optimizer")
    if not isinstance(opt, dict) or not isinstance(opt.get("state"), dict):
        return None
    order = nvidia_parameter_order(ckpt["model"])
    ids = [i for g in opt.get("param_groups", []) for i in g.get("params", [])]
    if len(ids) != len(order):
        raise CheckpointError(f"NVIDIA checkpoint: its optimizer has {len(ids)} parameters, its model "
                              f"{len(order)}")
    out = {}
    for name, i in zip(order, ids, strict=True):
        st = opt["state"].get(i)
        if st and "exp_avg" in st and "exp_avg_sq" in st:
            out[name] = {"exp_avg": st["exp_avg"].float(), "exp_avg_sq": st["exp_avg_sq"].float()}
    return out


def optimizer_state_for(moments: dict[str, dict[str, torch.Tensor]], model: torch.nn.Module,
                        optimizer: torch.optim.Optimizer, normalize) -> dict:
    """A state dict for bertforge's ``optimizer`` over ``model`` holding NVIDIA's moments.

    ``normalize(sd, model)`` maps NVIDIA's names and vocab padding onto ``model``'s (it is
    bertforge.model.convert.normalize_state_dict); each moment goes through it like a weight.
    """
    index = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    names = {id(p): n for n, p in model.named_parameters()}
    state = {}
    for key in ("exp_avg", "exp_avg_sq"):
        mapped = normalize({n: m[key] for n, m in moments.items()}, model)
        for pid, i in index.items():
            name = names[pid]
            if name not in mapped:
                raise CheckpointError(f"NVIDIA checkpoint: no LAMB moments for {name}")
            want = dict(model.named_parameters())[name].shape
            if mapped[name].shape != want:
                raise CheckpointError(f"NVIDIA checkpoint: moments of {name} have shape "
                                      f"{tuple(mapped[name].shape)}, the model {tuple(want)}")
            state.setdefault(i, {})[key] = mapped[name].clone()
    template = optimizer.state_dict()
    return {"state": state, "param_groups": template["param_groups"]}
