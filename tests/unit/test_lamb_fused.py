"""The fused CPU path of LAMB equals its generic multi-tensor path."""

from __future__ import annotations

import pytest
import torch

from bertforge.optim import LAMB, param_groups


def _run(steps: int, fused: bool, monkeypatch, use_nvlamb: bool = False) -> list[torch.Tensor]:
    if not fused:
        monkeypatch.delattr(torch, "_fused_adamw_")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(50, 16), torch.nn.Linear(16, 16), torch.nn.LayerNorm(16))
    opt = LAMB(param_groups(model, 0.01), lr=0.02, weight_decay=0.01, max_grad_norm=1.0,
               use_nvlamb=use_nvlamb)
    gen = torch.Generator().manual_seed(1)
    for i in range(steps):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen) * (5.0 if i % 2 else 0.01)  # clipped / not
        opt.step()
    monkeypatch.undo()
    return [p.detach().clone() for p in model.parameters()] + [
        s[k].clone() for s in opt.state.values() for k in ("exp_avg", "exp_avg_sq")]


@pytest.mark.parametrize("use_nvlamb", [False, True], ids=["lamb", "nvlamb"])
def test_fused_cpu_path_equals_foreach_path(monkeypatch, use_nvlamb):
    """Decayed tensors take the kernel's own decay (weight_decay = wd - 1 on a copy of p); with
    NVLAMB the undecayed ones (biases, LayerNorm) also get a trust ratio, from a zeroed buffer."""
    assert hasattr(torch, "_fused_adamw_")
    a = _run(10, True, monkeypatch, use_nvlamb)
    b = _run(10, False, monkeypatch, use_nvlamb)
    for x, y in zip(a, b, strict=True):
        assert torch.allclose(x, y, rtol=1e-5, atol=1e-7), (x - y).abs().max()
