"""Every claim about bertforge that only a GPU can check, in one run: ``bash bench/gpu_check.sh``.

Checks (each one runs the product's own code, on CUDA, and compares with a reference):

  fp16          dynamic loss scale: an overflowing step is skipped (weights, optimizer state and
                LR schedule untouched, scale halved), later steps train; fp16 training tracks
                fp32; run_pretraining.py --fp16 logs the skipped steps and finishes
  bf16          bf16 autocast really computes in bf16 and tracks fp32; run_pretraining.py --bf16
  tf32          TF32 matmuls on with --tf32 and off without: the error of a 2048^2 fp32 product
                against fp64, and torch's flag at the end of a real run_pretraining.py --tf32 run
  lamb          the optimizer build_optimizer("lamb") gives on CUDA (apex FusedLAMB when
                importable, else bertforge's LAMB) equals bertforge's LAMB on the CPU, 10 steps
  nccl          1 GPU: a 1-rank nccl group, all-reduce and a DDP training step equal to the
                plain step; 2 GPUs (when present): torchrun x2 == 1 process x accumulation 2
  resume        run_pretraining.py on the GPU (fp16): stopped after 3 steps and resumed == 6
                steps in one go, bit for bit
  phases        scripts/run_pretraining.sh with an NVIDIA GPU preset (BERT-large, fp16) shrunk
                to a few steps: phase 1 -> phase 2 on the Wikipedia sample's shards
  squad-onnx    run_squad.py --fp16 from the phase-2 checkpoint (train, predict, official EM/F1),
                then the ONNX export (fp32 and fp16) of the fine-tuned model, checked against PyTorch
  bench-large   bench/bench_train.py's BERT-large cases (fp16, tf32) beside NVIDIA's published
                single-GPU figures; passes when bertforge is faster than transformers

Prints one table (check, result, seconds, figures) and exits 0 when nothing failed, 1 otherwise.
``--device cpu`` is the harness's self-test (the CUDA-only checks report n/a; nccl becomes gloo):
it shows the harness runs, not that a GPU works.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "integration"))

from pretrain_fixtures import base_args, make_dataset, write_config  # noqa: E402

from bertforge.config import ModelConfig  # noqa: E402
from bertforge.model.bert import BertForPreTraining  # noqa: E402
from bertforge.optim import build_optimizer  # noqa: E402
from bertforge.optim.lamb import LAMB  # noqa: E402
from bertforge.optim.schedulers import PolyWarmUpScheduler  # noqa: E402
from bertforge.precision import Precision  # noqa: E402
from bertforge.train.loop import TrainStep  # noqa: E402
from bertforge.train.mlm import PretrainingLoss  # noqa: E402

PYTHON = sys.executable
NA = "n/a"


class Skip(Exception):
    """The check does not apply on this machine (the reason is the figure)."""


class Context:
    def __init__(self, args):
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        if self.cuda and self.device.index is None:
            self.device = torch.device("cuda", 0)  # nccl's device_id and DDP's device_ids need an index
        if self.cuda:
            torch.cuda.set_device(self.device)
        self.work = Path(args.work)
        self.real_data = Path(args.real_data) if args.real_data else None
        self.keep = args.keep
        self._micro = None
        self._sample = Path(args.data) if args.data else None
        self.phase2_ckpt: Path | None = None

    def micro(self) -> tuple[Path, Path]:
        """A micro BERT config and NVIDIA-schema shards with fixed mask counts (tests' fixtures)."""
        if self._micro is None:
            root = self.work / "micro"
            root.mkdir(parents=True, exist_ok=True)
            self._micro = (write_config(root / "micro.json"),
                           make_dataset(root / "data", shards=1, per_shard=128, fixed_masks=True))
        return self._micro

    def sample(self) -> Path:
        """Phase-1/phase-2 shards of the real Wikipedia sample (data/create_datasets_from_start.sh)."""
        if self._sample is None:
            self._sample = self.work / "sample_data"
        if not (self._sample / "phase2_parquet").is_dir():
            run(["bash", str(REPO / "data/create_datasets_from_start.sh"), "sample", str(self._sample)],
                timeout=900, env={"PYTHON": PYTHON})
        return self._sample


# ---- helpers ------------------------------------------------------------------------------------

def run(cmd: list[str], *, timeout: int = 600, env: dict | None = None, check: bool = True,
        cwd: Path = REPO) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in (env or {}):
            e.pop(var, None)
    p = subprocess.run(cmd, cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-12:])
        raise RuntimeError(f"{' '.join(cmd[:3])} ... exited {p.returncode}:\n{tail}")
    return p


def dllogger(path: Path) -> list[dict]:
    """The records of a dllogger JSON-lines file (``DLLL {...}`` lines)."""
    return [json.loads(line[5:]) for line in path.read_text().splitlines() if line.startswith("DLLL ")]


def final_record(path: Path) -> dict:
    """The last summary record (step ``[]``) of a dllogger file."""
    recs = [r["data"] for r in dllogger(path) if r.get("step") in ([], ())]
    if not recs:
        raise RuntimeError(f"{path}: no final summary record")
    return recs[-1]


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_pretraining(device: torch.device, seed: int = 0):
    cfg = ModelConfig.from_json_file(REPO / "bert_configs/tiny.json")
    torch.manual_seed(seed)
    return BertForPreTraining(cfg).to(device), cfg


def batches(cfg: ModelConfig, device: torch.device, n: int, B: int = 8, L: int = 128, P: int = 20):
    """Full-length synthetic pretraining batches (bench_train's generator), on ``device``."""
    import bench_train

    return [{k: v.to(device) for k, v in b.items()} for b in bench_train.synthetic_batches(cfg, B, L, P, n)]


loss_fn = PretrainingLoss()
"""Pretraining's own loss (MLM + NSP, normalised over the global batch by TrainStep)."""


def train_losses(prec_name: str, device, data, steps: int, init_loss_scale: float = 2.0**16) -> list[float]:
    """Losses of ``steps`` TrainStep steps of the tiny BERT (LAMB, fixed seed) in one precision."""
    model, _ = tiny_pretraining(device)
    opt = build_optimizer(model, "lamb", lr=1e-3)
    sched = PolyWarmUpScheduler(opt, warmup=0.0, total_steps=100)
    prec = Precision.from_flags(prec_name == "fp16", prec_name == "bf16", device, init_loss_scale=init_loss_scale)
    step = TrainStep(model, opt, sched, prec)
    torch.manual_seed(1)
    return [step.step([data[i % len(data)]], loss_fn).loss for i in range(steps)]


def micro_run(ctx: Context, out: Path, *extra: str, steps: int = 3, batch: int = 16, accum: int = 1,
              nproc: int = 1) -> subprocess.CompletedProcess:
    """run_pretraining.py on the micro config and shards, on the check's device."""
    cfg, data = ctx.micro()
    args = base_args(data, out, cfg, steps=steps, batch=batch, accum=accum, lr=1e-2,
                     extra=("--log_freq=1", f"--device={ctx.device.type}", f"--json-summary={out}/dllogger.json",
                            *extra))
    cmd = ([PYTHON, "run_pretraining.py"] if nproc == 1 else
           [PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "run_pretraining.py"])
    return run(cmd + args, timeout=600)


# ---- the checks ---------------------------------------------------------------------------------

def check_gpu(ctx: Context) -> str:
    if not ctx.cuda:
        return f"cpu self-test, torch {torch.__version__}"
    p = torch.cuda.get_device_properties(ctx.device)
    return (f"{torch.cuda.device_count()} x {p.name} (sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB), "
            f"torch {torch.__version__}, CUDA {torch.version.cuda}")


def check_fp16(ctx: Context) -> str:
    if not ctx.cuda:
        raise Skip("fp16 training is CUDA-only (a CPU run refuses --fp16 by design)")
    dev = ctx.device
    model, cfg = tiny_pretraining(dev)
    data = batches(cfg, dev, 4)
    opt = build_optimizer(model, "lamb", lr=1e-3)
    sched = PolyWarmUpScheduler(opt, warmup=0.1, total_steps=100)
    prec = Precision.from_flags(True, False, dev, init_loss_scale=2.0**40)  # overflows at once
    step = TrainStep(model, opt, sched, prec)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    lr_before, sched_before = opt.param_groups[0]["lr"], sched.state_dict()
    r = step.step([data[0]], loss_fn)
    assert r.skipped and step.skipped_steps == 1, f"an fp16 step at loss scale 2^40 was not skipped ({r})"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "a skipped step changed weights"
    assert not any(opt.state.values()), "a skipped step reached the optimizer (it holds state)"
    assert opt.param_groups[0]["lr"] == lr_before and sched.state_dict() == sched_before, \
        "a skipped step advanced the LR schedule"
    assert r.loss_scale == 2.0**39, f"loss scale after one overflow: {r.loss_scale}, expected 2^39"
    skipped = 1
    while True:
        r = step.step([data[0]], loss_fn)
        if not r.skipped:
            break
        skipped += 1
        assert skipped < 40, "40 consecutive skipped steps"
    assert math.isfinite(r.loss), f"first taken fp16 step: loss {r.loss}"
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items()), "a taken step changed nothing"
    # fp16 tracks fp32 over 20 steps of the same batches
    f16, f32 = train_losses("fp16", dev, data, 20), train_losses("fp32", dev, data, 20)
    rel = abs(f16[-1] - f32[-1]) / abs(f32[-1])
    assert rel < 0.05 and f16[-1] < f16[0], f"fp16 loss {f16[0]:.3f} -> {f16[-1]:.3f}, fp32 -> {f32[-1]:.3f}"
    # the real CLI logs skipped steps and still takes --max_steps steps
    out = ctx.work / "fp16_cli"
    micro_run(ctx, out, "--fp16", f"--init_loss_scale={2.0**40}", steps=4)
    fin = final_record(out / "dllogger.json")
    assert fin["skipped_steps"] >= 1 and fin["global_step"] == 4 and math.isfinite(fin["final_loss"]), fin
    return (f"scale 2^40: {skipped} step(s) skipped (weights, moments, LR untouched; scale halved each), then trains; "
            f"20 steps fp16 {f16[-1]:.4f} vs fp32 {f32[-1]:.4f} ({100 * rel:.2f} %); CLI: "
            f"{fin['skipped_steps']} skipped, {fin['global_step']} taken")


def check_bf16(ctx: Context) -> str:
    dev = ctx.device
    if ctx.cuda and not torch.cuda.is_bf16_supported():
        raise Skip("this GPU has no bf16")
    model, cfg = tiny_pretraining(dev)
    data = batches(cfg, dev, 4)
    seen = []
    hook = model.bert.encoder.layer[0].intermediate.dense.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with Precision.from_flags(False, True, dev).autocast():
        loss_fn(model, data[0])
    hook.remove()
    assert seen == [torch.bfloat16], f"the feed-forward product under --bf16 ran in {seen}"
    b16, f32 = train_losses("bf16", dev, data, 20), train_losses("fp32", dev, data, 20)
    rel = abs(b16[-1] - f32[-1]) / abs(f32[-1])
    assert rel < 0.05 and b16[-1] < b16[0], f"bf16 loss {b16[0]:.3f} -> {b16[-1]:.3f}, fp32 -> {f32[-1]:.3f}"
    out = ctx.work / "bf16_cli"
    micro_run(ctx, out, "--bf16", steps=3)
    fin = final_record(out / "dllogger.json")
    assert fin["global_step"] == 3 and math.isfinite(fin["final_loss"]), fin
    return f"products in bf16; 20 steps bf16 {b16[-1]:.4f} vs fp32 {f32[-1]:.4f} ({100 * rel:.2f} %); CLI --bf16 ran"


_TF32_PROBE = """import atexit, json, runpy, sys, torch
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(
    {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32})))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def check_tf32(ctx: Context) -> str:
    if not ctx.cuda:
        raise Skip("TF32 is a CUDA feature")
    major, _ = torch.cuda.get_device_capability(ctx.device)
    if major < 8:
        raise Skip(f"sm_{major}x has no TF32 (Ampere or newer)")
    try:
        from bertforge.precision import configure_tf32
    except ImportError:
        raise AssertionError("bertforge has no TF32 switch (bertforge.precision.configure_tf32 / --tf32)") from None
    g = torch.Generator(device=ctx.device).manual_seed(0)
    a = torch.randn(2048, 2048, device=ctx.device, generator=g)
    b = torch.randn(2048, 2048, device=ctx.device, generator=g)
    ref = a.double() @ b.double()

    def rel_err_and_time():
        (a @ b)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(10):
            c = a @ b
        torch.cuda.synchronize()
        return float((c.double() - ref).norm() / ref.norm()), (time.perf_counter() - t) / 10

    configure_tf32(False, ctx.device)
    off, t_off = rel_err_and_time()
    configure_tf32(True, ctx.device)
    on, t_on = rel_err_and_time()
    configure_tf32(False, ctx.device)
    assert off < 1e-5 and on > 1e-4, f"relative error vs fp64: tf32 off {off:.1e}, on {on:.1e}"
    probe = ctx.work / "tf32_probe.py"
    probe.write_text(_TF32_PROBE)
    flags = {}
    for name, extra in (("with", ("--tf32",)), ("without", ())):
        out = ctx.work / f"tf32_{name}"
        cfg, data = ctx.micro()
        args = base_args(data, out, cfg, steps=2, batch=16, extra=("--device=cuda", *extra))
        p = run([PYTHON, str(probe), str(ctx.work / f"tf32_{name}.json"), "run_pretraining.py", *args], check=False)
        if p.returncode != 0:
            tail = (p.stdout + p.stderr).strip().splitlines()[-3:]
            raise AssertionError(f"run_pretraining.py {' '.join(extra)} failed: {' | '.join(tail)}")
        flags[name] = json.loads((ctx.work / f"tf32_{name}.json").read_text())
    assert flags["with"]["matmul"] and not flags["without"]["matmul"], f"allow_tf32 at the end of the runs: {flags}"
    return (f"2048^2 product vs fp64: rel. error {off:.1e} off, {on:.1e} on; {1e3 * t_off:.2f} -> {1e3 * t_on:.2f} ms; "
            f"run_pretraining.py --tf32 ends with TF32 on, without it off")


def check_lamb(ctx: Context) -> str:
    dev = ctx.device
    torch.manual_seed(0)
    model_dev, cfg = tiny_pretraining(dev)
    model_cpu, _ = tiny_pretraining(torch.device("cpu"))
    model_cpu.load_state_dict({k: v.cpu() for k, v in model_dev.state_dict().items()})
    opt_dev = build_optimizer(model_dev, "lamb", lr=1e-2, weight_decay=0.01, max_grad_norm=1.0)
    ref = LAMB([{"params": g["params"], "weight_decay": g["weight_decay"]}
                for g in build_optimizer(model_cpu, "lamb", lr=1e-2, weight_decay=0.01).param_groups],
               lr=1e-2, weight_decay=0.01, max_grad_norm=1.0)
    impl = f"{type(opt_dev).__module__}.{type(opt_dev).__name__}"
    g = torch.Generator().manual_seed(1)
    pd = [p for grp in opt_dev.param_groups for p in grp["params"]]
    pc = [p for grp in ref.param_groups for p in grp["params"]]
    for step in range(10):
        for a, b in zip(pd, pc, strict=True):
            grad = torch.randn(b.shape, generator=g) * (3.0 if step % 3 == 0 else 0.01)  # some steps clip
            b.grad = grad
            a.grad = grad.to(dev)
        opt_dev.step()
        ref.step()
    worst = max(float((a.detach().cpu() - b.detach()).abs().max()) for a, b in zip(pd, pc, strict=True))
    scale = max(float(b.detach().abs().max()) for b in pc)
    assert worst <= 1e-5 * max(scale, 1.0), f"{impl} differs from the CPU reference by {worst:.2e}"
    return f"{impl} on {dev.type} vs bertforge LAMB on the CPU, 10 steps (clipping, decay groups): max |diff| {worst:.1e}"


_NCCL_ONE_RANK = """import os, sys, torch, torch.distributed as dist
sys.path.insert(0, os.environ["BF_REPO"]); sys.path.insert(0, os.environ["BF_BENCH"])
import gpu_check as gc
from torch.nn.parallel import DistributedDataParallel as DDP
dev = torch.device(os.environ["BF_DEVICE"])
backend = "nccl" if dev.type == "cuda" else "gloo"
if dev.type == "cuda":
    torch.cuda.set_device(dev)
dist.init_process_group(backend, rank=0, world_size=1, **({"device_id": dev} if backend == "nccl" else {}))
x = torch.arange(4.0, device=dev); dist.all_reduce(x)
assert x.tolist() == [0.0, 1.0, 2.0, 3.0], x
from bertforge.optim import build_optimizer
from bertforge.optim.schedulers import PolyWarmUpScheduler
from bertforge.precision import Precision
from bertforge.train.loop import TrainStep
out = []
for wrap in (False, True):
    model, cfg = gc.tiny_pretraining(dev)
    data = gc.batches(cfg, dev, 2)
    m = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None) if wrap else model
    opt = build_optimizer(model, "lamb", lr=1e-3)
    step = TrainStep(m, opt, PolyWarmUpScheduler(opt, 0.0, 10), Precision.from_flags(False, False, dev))
    torch.manual_seed(5)
    for b in data: step.step([b], gc.loss_fn)
    out.append({k: v.detach().cpu() for k, v in model.state_dict().items()})
worst = max(float((out[0][k] - out[1][k]).abs().max()) for k in out[0])
print(dist.get_backend(), worst)
dist.destroy_process_group()
"""


def check_nccl(ctx: Context) -> str:
    env = {"BF_REPO": str(REPO), "BF_BENCH": str(REPO / "bench"), "BF_DEVICE": str(ctx.device),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    p = run([PYTHON, "-c", _NCCL_ONE_RANK], env=env)
    backend, worst = p.stdout.split()[-2], float(p.stdout.split()[-1])
    assert backend == ("nccl" if ctx.cuda else "gloo") and worst <= 1e-6, f"{backend}: DDP vs plain {worst:.1e}"
    figures = f"1 rank {backend}: all-reduce ok, DDP step == plain step (max |diff| {worst:.1e})"
    n = torch.cuda.device_count() if ctx.cuda else 2
    if n < 2:
        return figures + "; 2 GPUs: n/a (one GPU)"
    common = ("--num_steps_per_checkpoint=100", "--seed=3")
    micro_run(ctx, ctx.work / "single", *common, steps=4, batch=16, accum=2)
    micro_run(ctx, ctx.work / "ddp", *common, steps=4, batch=8, accum=1, nproc=2)
    a, b = weights(ctx.work / "single/ckpt_4.pt"), weights(ctx.work / "ddp/ckpt_4.pt")
    flat = lambda w: torch.cat([v.flatten().double() for v in w.values()])  # noqa: E731
    rel = float((flat(a) - flat(b)).norm() / flat(a).norm())
    assert rel <= 1e-5, f"torchrun x2 vs 1 process x accumulation 2: relative difference {rel:.1e}"
    return figures + f"; torchrun x2 ({backend}) == 1 process x accumulation 2, 4 steps: rel. diff {rel:.1e}"


def check_resume(ctx: Context) -> str:
    prec = ("--fp16",) if ctx.cuda else ()
    common = (*prec, "--num_steps_per_checkpoint=3", "--seed=11")
    micro_run(ctx, ctx.work / "straight", *common, steps=6)
    micro_run(ctx, ctx.work / "again", *common, steps=6)
    micro_run(ctx, ctx.work / "resumed", *common, "--steps_this_run=3", steps=6)
    assert (ctx.work / "resumed/ckpt_3.pt").is_file() and not (ctx.work / "resumed/ckpt_6.pt").exists()
    micro_run(ctx, ctx.work / "resumed", *common, "--resume_from_checkpoint", steps=6)
    a, b, c = (weights(ctx.work / d / "ckpt_6.pt") for d in ("straight", "resumed", "again"))
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    rerun = max(float((a[k] - c[k]).abs().max()) for k in a)
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert not diff, (f"{len(diff)} tensors differ after resume (max |diff| {worst:.1e}); two uninterrupted "
                      f"runs differ by {rerun:.1e}")
    return f"{' '.join(prec) or 'fp32'}: 3 + 3 steps == 6 steps, bit for bit ({len(a)} tensors); two straight runs differ by {rerun:.1e}"


def check_phases(ctx: Context) -> str:
    data = ctx.sample()
    results = ctx.work / "phases"
    # NVIDIA's current A100 fp16 preset on a GPU (its 2020 one in older checkouts); the CPU self-test: cpu_smoke
    presets = "dgxa100-80g_8gpu_fp16 dgxa100_8gpu_fp16" if ctx.cuda else "cpu_smoke"
    script = f"""
set -euo pipefail
source "{REPO}/scripts/configs/pretrain_config.sh"
name=""
for f in {presets}; do declare -F "$f" >/dev/null && {{ name=$f; break; }}; done
[[ -n $name ]] || {{ echo "no GPU preset found in pretrain_config.sh" >&2; exit 3; }}
read -r -a a <<< "$($name)"
(( ${{#a[@]}} == 32 )) || {{ echo "preset $name gave ${{#a[@]}} arguments" >&2; exit 3; }}
echo "preset $name precision ${{a[2]}} config $(basename "${{a[31]}}")"
# shrunk: 1 process, small batches, 4 + 2 steps, the sample's shards
a[0]=16; a[3]=1; a[5]=4; a[6]=4; a[8]=false; a[10]=2; a[15]=4; a[18]=2; a[19]=2
a[20]="{data}/phase1_hdf5"; a[21]="{data}/phase2_parquet"; a[22]="{REPO}"; a[25]=2; a[26]=1; a[27]=0
exec bash "{REPO}/scripts/run_pretraining.sh" "${{a[@]}}"
"""
    env = {"RESULTS_DIR": str(results), "VOCAB_FILE": str(data / "vocab.txt"), "PYTHON": PYTHON,
           "BERT_PREP_WORKING_DIR": str(data)}
    p = run(["bash", "-c", script], env=env, timeout=1200)
    head = p.stdout.splitlines()[0]
    ck = results / "checkpoints"
    one, two = ck / "ckpt_4.pt", ck / "ckpt_6.pt"
    assert one.is_file() and two.is_file(), f"checkpoints: {sorted(x.name for x in ck.iterdir())}"
    s1 = torch.load(one, map_location="cpu", weights_only=True)
    s2 = torch.load(two, map_location="cpu", weights_only=True)
    assert s1.get("phase") == 1 and s2.get("phase") == 2, (s1.get("phase"), s2.get("phase"))
    finals = [r["data"] for r in dllogger(results / "dllogger.json") if r.get("step") in ([], ())]
    assert len(finals) >= 2 and all(math.isfinite(f["final_loss"]) for f in finals[-2:]), finals
    ctx.phase2_ckpt = two
    return (f"{head.removeprefix('preset ')}: phase 1 4 steps (loss {finals[-2]['final_loss']:.3f}) -> phase 2 "
            f"2 steps (loss {finals[-1]['final_loss']:.3f}), {finals[-1].get('skipped_steps', 0)} skipped")


def check_squad_onnx(ctx: Context) -> str:
    if ctx.phase2_ckpt is None:
        raise AssertionError("needs the phase-2 checkpoint of the 'phases' check")
    if ctx.real_data is None or not (ctx.real_data / "squad/dev-v1.1-sample.json").is_file():
        raise AssertionError("needs the SQuAD sample: set BERTFORGE_REAL_DATA (or --real_data) to the shared data folder")
    squad = ctx.real_data / "squad/dev-v1.1-sample.json"
    vocab = ctx.sample() / "vocab.txt"
    out = ctx.work / "squad"
    cfg = torch.load(ctx.phase2_ckpt, map_location="cpu", weights_only=True)["config"]
    cfg_file = ctx.work / "phase2_config.json"
    cfg_file.write_text(json.dumps(cfg))
    prec = ["--fp16"] if ctx.cuda else []
    run([PYTHON, "run_squad.py", f"--init_checkpoint={ctx.phase2_ckpt}", f"--vocab_file={vocab}", "--do_lower_case",
         f"--config_file={cfg_file}", "--do_train", f"--train_file={squad}", "--do_predict", "--do_eval",
         f"--predict_file={squad}", "--max_steps=8", "--train_batch_size=8", "--predict_batch_size=32",
         f"--output_dir={out}", "--skip_cache", *prec, *([] if ctx.cuda else ["--no_cuda"])], timeout=900)
    ev = json.loads((out / "eval_results.json").read_text())
    n_pred = len(json.loads((out / "predictions.json").read_text()))
    exp = ctx.work / "onnx"
    precisions = "fp32,fp16" if ctx.cuda else "fp32"
    run([PYTHON, "deploy/triton/export_model.py", f"--init_checkpoint={out / 'pytorch_model.bin'}", "--task=qa",
         f"--output_dir={exp}", "--formats=onnx", f"--precisions={precisions}", f"--device={ctx.device.type}",
         f"--check_file={squad}", f"--vocab_file={vocab}", "--check_questions=16"], timeout=900)
    manifest = json.loads((exp / "export.json").read_text())
    checks = {m["precision"]: max(m["check"]["max_abs_diff"].values()) for m in manifest["models"]}
    assert set(checks) == set(precisions.split(",")), manifest
    return (f"fine-tuned 8 steps {' '.join(prec) or 'fp32'} from the phase-2 checkpoint, {n_pred} predictions, "
            f"EM {ev['exact_match']:.1f} F1 {ev['F1']:.1f}; ONNX " +
            ", ".join(f"{k} max |diff| vs PyTorch {v:.1e}" for k, v in checks.items()))


def check_bench_large(ctx: Context) -> str:
    figures, slower = [], []
    runs = [("fp32", "small-p1", 4)]
    if ctx.cuda:  # both models and their optimizer state share the GPU: batches by its memory
        gib = torch.cuda.get_device_properties(ctx.device).total_memory / 2**30
        f = 4 if gib >= 70 else 2 if gib >= 35 else 1
        runs = [("fp16", "large-p1", 16 * f), ("fp16", "large-p2", 2 * f), ("tf32", "large-p1", 8 * f)]
    for prec, case, batch in runs:
        out = ctx.work / f"bench_{prec}_{case}.json"
        run([PYTHON, "bench/bench_train.py", f"--device={ctx.device.type}", f"--precision={prec}", f"--cases={case}",
             f"--batch_size={batch}", "--repeats=4", "--warmup=2", "--distinct_batches=2", f"--json={out}"],
            timeout=1200)
        r = json.loads(out.read_text())
        c = r["cases"][0]
        import bench_train

        ref = bench_train.NVIDIA_A100_1GPU.get((case, "fp16" if prec in ("fp16", "bf16") else prec))
        mem = r.get("memory", {}).get(case)
        figures.append(f"{case} {prec} b{batch}: {c['bertforge']['seq_per_s_total']:.1f} seq/s, "
                       f"{c['speedup_median']:.2f}x transformers"
                       + (f", NVIDIA 1xA100 {ref}" if ref else "")
                       + (f", peak {mem['ours']:.0f}/{mem['hf']:.0f} MB" if mem else ""))
        if c["speedup_median"] <= 1.0:
            slower.append(case + " " + prec)
    assert not slower, "not faster than transformers: " + ", ".join(slower) + " (" + "; ".join(figures) + ")"
    return "; ".join(figures)


CHECKS = [("gpu", check_gpu), ("fp16", check_fp16), ("bf16", check_bf16), ("tf32", check_tf32),
          ("lamb", check_lamb), ("nccl", check_nccl), ("resume", check_resume), ("phases", check_phases),
          ("squad-onnx", check_squad_onnx), ("bench-large", check_bench_large)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", help="comma-separated checks: " + ", ".join(n for n, _ in CHECKS))
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (the harness's self-test)")
    p.add_argument("--work", help="working directory (default: a temporary one, removed unless --keep)")
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    p.add_argument("--data", help="an existing output of data/create_datasets_from_start.sh sample")
    p.add_argument("--real_data", default=os.environ.get("BERTFORGE_REAL_DATA"),
                   help="the shared data folder (SQuAD sample); default $BERTFORGE_REAL_DATA")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    names = [n for n, _ in CHECKS]
    only = [x for x in (args.only or ",".join(names)).split(",") if x]
    bad = [x for x in only if x not in names]
    if bad:
        print(f"error: --only: unknown check(s) {', '.join(bad)} (choose from {', '.join(names)})", file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU is visible to torch on this machine: nothing to check", file=sys.stderr)
        return 2
    tmp = None
    if not args.work:
        tmp = args.work = tempfile.mkdtemp(prefix="gpu_check.")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    ctx = Context(args)
    rows = []
    t_all = time.perf_counter()
    for name, fn in CHECKS:
        if name not in only:
            continue
        t = time.perf_counter()
        try:
            status, figure = "PASS", fn(ctx)
        except Skip as e:
            status, figure = NA, str(e)
        except Exception as e:  # a failed check is reported, the others still run
            status, figure = "FAIL", " ".join(str(e).split()) or type(e).__name__
            (Path(args.work) / f"{name}.traceback.txt").write_text(traceback.format_exc())
        rows.append({"check": name, "result": status, "seconds": round(time.perf_counter() - t, 1), "figures": figure})
        print(f"[{rows[-1]['seconds']:7.1f} s] {name}: {status}: {figure}", flush=True)
    total = time.perf_counter() - t_all
    width = max(len(r["check"]) for r in rows)
    print(f"\n{'check'.ljust(width)}  result  seconds  figures")
    for r in rows:
        print(f"{r['check'].ljust(width)}  {r['result'].ljust(6)}  {r['seconds']:7.1f}  {r['figures']}")
    failed = [r["check"] for r in rows if r["result"] == "FAIL"]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} checks did not fail ({total / 60:.1f} min)"
          + (f"; FAILED: {', '.join(failed)} (tracebacks in {args.work})" if failed else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "seconds": total, "device": str(ctx.device)}, indent=2))
    if tmp and not args.keep and not failed:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
