"""NVIDIA's checkpoints both ways: `python -m bertforge.convert --to ngc` loads strict into a
model with NVIDIA's layout and computes the same outputs; phase 2 starts from NVIDIA's
phase-1 checkpoints (NGC model-only, 2020 training dict with master params, current training
dict), exactly as NVIDIA's scripts chain the phases (--phase2 --resume_from_checkpoint
--phase1_end_step 7038 with ckpt_7038.pt in the output folder)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nvidia"))
import nvidia_layout as nv  # noqa: E402
from pretrain_fixtures import MICRO_CONFIG, REPO, base_args, make_dataset, run_cli  # noqa: E402

from bertforge.checkpoint import load_checkpoint  # noqa: E402
from bertforge.config import ModelConfig  # noqa: E402
from bertforge.model.bert import BertForPreTraining  # noqa: E402
from bertforge.model.convert import save_bertforge  # noqa: E402

pytestmark = pytest.mark.timeout(600)
CONFIG = {**MICRO_CONFIG, "vocab_size": 30522}  # Google's vocab size; NVIDIA pads it to 30528


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 30522, (3, 24), generator=g)
    types = torch.zeros_like(ids)
    types[:, 12:] = 1
    mask = torch.ones_like(ids)
    mask[1, 18:] = 0
    mask[2, 9:] = 0
    return ids, types, mask


def test_convert_to_ngc_loads_strict_into_nvidias_layout(tmp_path) -> None:
    torch.manual_seed(0)
    ours = BertForPreTraining(ModelConfig.from_dict(CONFIG)).eval()
    src = save_bertforge(ours, tmp_path / "ours.pt")
    dst = tmp_path / "ngc.pt"
    p = subprocess.run([sys.executable, "-m", "bertforge.convert", "--from", "bertforge", "--to", "ngc",
                        str(src), str(dst)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    sd = torch.load(dst, weights_only=True)["model"]
    theirs = nv.BertForPreTraining({**CONFIG, "vocab_size": 30528}).eval()
    assert list(sd) == list(theirs.state_dict())  # NVIDIA's keys, NVIDIA's order
    theirs.load_state_dict(sd, strict=True)
    ids, types, mask = _inputs()
    with torch.no_grad():
        a_mlm, a_nsp = ours(ids, types, mask)
        b_mlm, b_nsp = theirs(ids, types, mask)
    real = mask.bool()
    assert b_mlm.shape[-1] == 30528
    assert (a_mlm[real] - b_mlm[real][:, :30522]).abs().max() <= 1e-5
    assert (a_nsp - b_nsp).abs().max() <= 1e-5
    # and back: NVIDIA's file loads into bertforge with every weight
    p = subprocess.run([sys.executable, "-m", "bertforge.convert", "--from", "ngc", "--to", "bertforge",
                        str(dst), str(tmp_path / "back.pt"), "--config_file", str(_config(tmp_path))],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "all weights loaded" in p.stdout, p.stdout + p.stderr
    back = load_checkpoint(tmp_path / "back.pt")["model"]
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "bert_config.json"
    path.write_text(json.dumps(CONFIG))
    return path


def _nvidia_phase1(kind: str, seed: int = 1) -> tuple[dict, nv.BertForPreTraining, dict]:
    """A phase-1 ckpt_7038.pt as NVIDIA's code writes it; also the fp32 model and moments."""
    torch.manual_seed(seed)
    model = nv.BertForPreTraining({**CONFIG, "vocab_size": 30528})
    groups = nv.no_decay_groups(model)
    params = [p for g in groups for p in g["params"]]
    g = torch.Generator().manual_seed(seed)
    state = {i: {"exp_avg": torch.randn(p.shape, generator=g) * 1e-3,
                 "exp_avg_sq": torch.rand(p.shape, generator=g) * 1e-6} for i, p in enumerate(params)}
    first = len(groups[0]["params"])
    hyper = {"lr": 6e-3, "bias_correction": True, "betas": (0.9, 0.999), "eps": 1e-6,
             "grad_averaging": True, "max_grad_norm": 1.0}
    if kind == "head":  # NVIDIA's FusedLAMBAMP keeps step and lr as tensors
        hyper.update(lr=torch.tensor(6e-3), step=torch.tensor(7038))
    else:
        hyper.update(step=7038)
    optimizer = {"state": state, "param_groups": [
        {**hyper, "weight_decay": 0.01, "params": list(range(first))},
        {**hyper, "weight_decay": 0.0, "params": list(range(first, len(params)))}]}
    sd = model.state_dict()
    if kind == "ngc":
        ckpt = {"model": sd}
    elif kind == "2020":  # apex amp O2: fp16 model, fp32 masters in optimizer order
        ckpt = {"model": {k: v.half() for k, v in sd.items()}, "optimizer": optimizer,
                "master params": [p.detach().clone() for p in params],
                "files": [7, "a.hdf5", "b.hdf5"], "epoch": 2, "data_loader": None}
    else:
        ckpt = {"model": sd, "optimizer": optimizer, "grad_scaler": {}, "epoch": 2}
    names = {id(p): n for n, p in model.named_parameters()}
    moments = {names[id(p)]: state[i] for i, p in enumerate(params)}
    return ckpt, model, moments


@pytest.mark.parametrize("kind", ["ngc", "2020", "head"])
def test_phase2_starts_from_nvidias_phase1_checkpoint(kind, tmp_path) -> None:
    from bertforge.model.convert import normalize_state_dict
    from bertforge.train import pretrain

    ckpt, theirs, moments = _nvidia_phase1(kind)
    out = tmp_path / "results" / "checkpoints"
    out.mkdir(parents=True)
    torch.save(ckpt, out / "ckpt_7038.pt")
    data = make_dataset(tmp_path / "phase2", shards=1, per_shard=32)
    cfg = _config(tmp_path)
    argv = base_args(data, out, cfg, steps=3, extra=(
        "--phase2", "--resume_from_checkpoint", "--phase1_end_step=7038", "--num_steps_per_checkpoint=100"))

    # what the run starts from: NVIDIA's fp32 weights and LAMB moments, step 0 of phase 2
    from bertforge.checkpoint import plan_start
    from bertforge.cli.environment import Environment
    from bertforge.cli.pretrain import build_parser, config_from_args
    from bertforge.distributed import DistInfo

    config = config_from_args(build_parser().parse_args(argv), Environment())
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    trainer = pretrain.Trainer(config, ModelConfig.from_json_file(cfg), info)
    start = plan_start(config.checkpoint, config.phase, config.model.init_checkpoint)
    trainer._build_model(start)
    trainer._build_training(start)
    want = normalize_state_dict({k: v.float() for k, v in theirs.state_dict().items()}, trainer.model_core)
    got = trainer.model_core.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want), "weights differ from NVIDIA's"
    assert trainer.state.phase1_end_step == 7038 and trainer.state.step == 0
    state = trainer.optimizer.state_dict()
    if kind == "ngc":
        assert not state["state"]  # a model-only file has no moments: LAMB starts fresh
    else:
        ours = dict(trainer.model_core.named_parameters())
        index = {id(p): i for i, p in enumerate(p for g in trainer.optimizer.param_groups for p in g["params"])}
        for name, m in moments.items():
            our_name = name.replace("dense_act", "dense")
            i = index[id(ours[our_name])]
            rows = ours[our_name].shape[0]
            assert torch.equal(state["state"][i]["exp_avg"], m["exp_avg"][:rows]), name
            assert torch.equal(state["state"][i]["exp_avg_sq"], m["exp_avg_sq"][:rows]), name
        assert all(g["step"] == 0 for g in state["param_groups"])

    # and the real run: phase 2's checkpoints continue NVIDIA's numbering
    run_cli(argv)
    ck = load_checkpoint(out / "ckpt_7041.pt")
    assert (ck["phase"], ck["step"], ck["global_step"]) == (2, 3, 7041)


def test_nvidia_checkpoint_as_init_checkpoint(tmp_path) -> None:
    """run.sub's way: --init_checkpoint NVIDIA's file, --phase1_end_step given."""
    ckpt, _, _ = _nvidia_phase1("2020")
    torch.save(ckpt, tmp_path / "ckpt_7038.pt")
    data = make_dataset(tmp_path / "d", shards=1, per_shard=32)
    out = tmp_path / "o"
    run_cli(base_args(data, out, _config(tmp_path), steps=2, extra=(
        "--phase2", "--resume_from_checkpoint", f"--init_checkpoint={tmp_path / 'ckpt_7038.pt'}",
        "--phase1_end_step=7038")))
    assert load_checkpoint(out / "ckpt_7040.pt")["step"] == 2
    code = run_cli(base_args(data, tmp_path / "o2", _config(tmp_path), steps=2, extra=("--resume_from_checkpoint",))
                   + ["--output_dir", str(tmp_path)], check=False)
    assert code.returncode == 2 and "NVIDIA's checkpoint" in code.stderr
