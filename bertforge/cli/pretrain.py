"""``run_pretraining.py``: BERT pretraining with NVIDIA's flags (current and legacy).

Launch with ``python run_pretraining.py ...`` (one process), ``torchrun --nproc_per_node=N
run_pretraining.py ...`` or under ``srun`` (SLURM_* variables). See docs/pretraining.md.

``--train_batch_size`` is per rank and *before* accumulation, as NVIDIA defines it: each
rank runs ``--gradient_accumulation_steps`` micro-batches of
``train_batch_size / gradient_accumulation_steps`` sequences per optimizer step; the global
batch is ``train_batch_size * world_size``. These derived values are methods of the run's
configuration (:meth:`bertforge.config.TrainingConfig.micro_batch_size`), which
:func:`config_from_args` builds once from the flags and the environment; nothing below this
module sees the flags.
"""

from __future__ import annotations

import argparse

from bertforge.cli.args import ArgumentParser
from bertforge.cli.environment import (
    Environment,
    add_cpu_gemm_flag,
    cpu_gemm_policy,
    read_environment,
)
from bertforge.cli.nvidia import add_dry_run, argv_of, given, note, number
from bertforge.config import (
    LOSS_NORMALIZATIONS,
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    LaunchConfig,
    LoggingConfig,
    ModelSetupConfig,
    OptimizerConfig,
    PhaseConfig,
    PrecisionConfig,
    PretrainConfig,
    TrainingConfig,
)
from bertforge.distributed import DEFAULT_TIMEOUT_S
from bertforge.errors import cli_entry
from bertforge.optim import OPTIMIZERS

__all__ = ["build_parser", "config_from_args", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="run_pretraining.py",
        description="BERT pretraining (MLM + NSP) with LAMB, two phases, mixed precision, "
                    "gradient accumulation, DDP and exact resume.")
    d = p.add_argument_group("data and model")
    d.add_argument("--input_dir", required=True,
                   help="directory of training shards (NVIDIA HDF5 or LDDL Parquet)")
    d.add_argument("--config_file", required=True, help="bert_config.json of the model")
    d.add_argument("--output_dir", required=True, help="checkpoints (ckpt_<step>.pt) go here")
    d.add_argument("--vocab_file", default=None,
                   help="WordPiece vocabulary; needed for Parquet shards and dynamic masking")
    d.add_argument("--init_checkpoint", default=None,
                   help="initial weights: a bertforge/NVIDIA checkpoint file or an HF directory; "
                        "a bertforge training checkpoint also gives its optimizer moments")
    d.add_argument("--max_seq_length", type=int, default=512,
                   help="longest sequence the data may hold (an error if a batch is longer)")
    d.add_argument("--max_predictions_per_seq", type=int, default=80,
                   help="the most masked positions per sequence")
    d.add_argument("--masking", choices=("static", "dynamic"), default="static",
                   help="static: masks stored in the shards; dynamic: new masks at load time")
    d.add_argument("--dynamic_masking", dest="masking", action="store_const", const="dynamic",
                   help="same as --masking dynamic (LDDL's flag name)")
    d.add_argument("--num_workers", type=int, default=4, help="data loader worker processes")
    d.add_argument("--eval_dir", default=None,
                   help="held-out shards: MLM accuracy at the start, every --eval_freq steps "
                        "and at the end")
    d.add_argument("--eval_freq", type=int, default=0,
                   help="evaluate every N steps (0: only at start and end)")
    d.add_argument("--num_eval_batches", type=int, default=50,
                   help="held-out batches per evaluation (per rank)")
    d.add_argument("--eval_batch_size", type=int, default=None,
                   help="held-out batch size (default: the training micro-batch size)")

    o = p.add_argument_group("optimisation")
    o.add_argument("--train_batch_size", type=int, default=32,
                   help="sequences per rank per optimizer step, before accumulation (NVIDIA's meaning)")
    o.add_argument("--gradient_accumulation_steps", type=int, default=1,
                   help="micro-batches per optimizer step; must divide --train_batch_size")
    o.add_argument("--learning_rate", type=float, default=5e-5, help="peak learning rate")
    o.add_argument("--max_steps", type=number, default=1000,
                   help="optimizer steps of this phase (skipped fp16 steps not counted); a "
                        "fraction rounds up, as NVIDIA's float comparison does")
    o.add_argument("--num_train_epochs", type=float, default=3.0,
                   help="NVIDIA's flag; pretraining length is --max_steps (NVIDIA's "
                        "run_pretraining.py does not read it either): one line says so")
    o.add_argument("--warmup_proportion", type=float, default=0.01,
                   help="fraction of --max_steps of linear warmup (then poly decay, power 0.5)")
    o.add_argument("--optimizer", choices=OPTIMIZERS, default="lamb",
                   help="lamb (NVIDIA's), adamw or bertadam")
    o.add_argument("--weight_decay", type=float, default=0.01,
                   help="decoupled weight decay of matrices (biases and LayerNorm: none)")
    o.add_argument("--max_grad_norm", type=float, default=1.0,
                   help="global gradient-norm clipping threshold (0 disables)")
    o.add_argument("--seed", type=int, default=42, help="random seed")

    m = p.add_argument_group("precision and speed")
    m.add_argument("--fp16", "--amp", dest="fp16", action="store_true",
                   help="fp16 autocast with dynamic loss scaling (CUDA only)")
    m.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA or CPU)")
    m.add_argument("--init_loss_scale", type=float, default=2.0**20,
                   help="initial fp16 loss scale")
    m.add_argument("--loss_scale", type=float, default=0.0,
                   help="fp16: 0 = dynamic loss scaling (from --init_loss_scale), > 0 = this "
                        "static scale (overflowing steps are still skipped)")
    m.add_argument("--tf32", action="store_true",
                   help="allow TF32 tensor-core math for fp32 matmuls and convolutions (CUDA, "
                        "Ampere or newer); run_pretraining.sh passes it for precision tf32")
    m.add_argument("--disable_jit_fusions", action="store_true",
                   help="turn bertforge's fused training blocks off (plain PyTorch ops)")
    m.add_argument("--cuda_graphs", action="store_true",
                   help="CUDA: compile the model with CUDA graphs (torch.compile mode "
                        "reduce-overhead); on a CPU one line says it has no effect")
    m.add_argument("--checkpoint_activations", action="store_true",
                   help="recompute each layer's activations in backward (less memory)")
    m.add_argument("--no_dense_sequence_output", action="store_true",
                   help="compute MLM logits at every position instead of only the masked ones")
    m.add_argument("--allreduce_post_accumulation", action=argparse.BooleanOptionalAction,
                   default=True,
                   help="all-reduce gradients once per optimizer step, after accumulation "
                        "(default; --no-allreduce_post_accumulation all-reduces every micro-batch)")
    m.add_argument("--allreduce_post_accumulation_fp16", action="store_true",
                   help="all-reduce gradients in fp16 (half the traffic, fp16 rounding)")
    o.add_argument("--loss_normalization", choices=LOSS_NORMALIZATIONS,
                   default="global_batch",
                   help="global_batch (default): MLM loss = sum over the masked tokens of the "
                        "whole global batch / their number (NSP: over its sequences), the same "
                        "update however the batch is split into processes and micro-batches; "
                        "micro_batch: NVIDIA's mean per micro-batch, the rank-sharded sample "
                        "order and per-rank dynamic masks (reproduces earlier bertforge runs)")

    c = p.add_argument_group("checkpoints and phases")
    c.add_argument("--resume_from_checkpoint", action="store_true",
                   help="continue from the latest checkpoint in --output_dir (or --resume_step)")
    c.add_argument("--resume_step", type=int, default=-1,
                   help="with --resume_from_checkpoint: load ckpt_<resume_step>.pt")
    c.add_argument("--num_steps_per_checkpoint", type=int, default=100,
                   help="save a checkpoint every N steps (and at the end)")
    c.add_argument("--keep_checkpoints", type=int, default=3,
                   help="keep only the last K checkpoints")
    c.add_argument("--skip_checkpoint", action="store_true", help="save no checkpoints")
    c.add_argument("--phase2", action="store_true",
                   help="phase 2: start from phase 1's last checkpoint (moments kept, step and "
                        "LR schedule reset) or from --init_checkpoint")
    c.add_argument("--resume_phase2", action="store_true",
                   help="with --phase2: continue a phase-2 checkpoint instead of refusing it")
    c.add_argument("--phase1_end_step", type=int, default=None,
                   help="phase 1's last step: offset of phase-2 step numbers and checkpoint "
                        "names (default: the step of the phase-1 checkpoint)")
    c.add_argument("--steps_this_run", type=int, default=-1,
                   help="stop (with a checkpoint) once the step of this phase reaches this "
                        "number, NVIDIA's absolute cap (-1: --max_steps)")
    c.add_argument("--do_train", action="store_true",
                   help="train (without it, only evaluate --init_checkpoint on --eval_dir)")

    g = p.add_argument_group("logging and launch")
    g.add_argument("--log_freq", type=number, default=1.0,
                   help="log every N steps (NVIDIA's float: when step %% N == 0)")
    g.add_argument("--json-summary", "--json_summary", dest="json_summary", default=None,
                   help="dllogger JSON-lines file (default: <output_dir>/dllogger.json)")
    g.add_argument("--tensorboard_dir", default=None,
                   help="also write TensorBoard scalars there (needs the tensorboard package: "
                        "pip install 'bertforge[tensorboard]')")
    g.add_argument("--disable_progress_bar", action="store_true", help="no tqdm progress bar")
    g.add_argument("--local_rank", "--local-rank", type=int, default=-1,
                   help="set by the legacy torch.distributed.launch; LOCAL_RANK takes precedence")
    g.add_argument("--dist_timeout", type=float, default=None,
                   help="seconds a collective may wait for a dead rank before failing "
                        "(default: $BERTFORGE_DIST_TIMEOUT, else 1800)")
    g.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="force the device (default: CUDA when available)")
    add_cpu_gemm_flag(g.add_argument)
    g.add_argument("--use_env", action="store_true",
                   help="NVIDIA's flag; the local rank always comes from LOCAL_RANK when the "
                        "launcher sets it: one line says so")
    g.add_argument("--bert_model", default="bert-large-uncased",
                   help="NVIDIA's 2020 flag; the model is --config_file: one line says so")
    g.add_argument("--profile", action="store_true",
                   help="record a torch.profiler trace of 5 optimizer steps after "
                        "--profile-start to <output_dir>/profile_rank<R>.json")
    g.add_argument("--profile-start", "--profile_start", dest="profile_start", type=int, default=0,
                   help="with --profile: the step after which recording starts (0: the first)")
    add_dry_run(p, "training")
    return p.check(limits=LIMITS, outputs={"output_dir": "dir", "json_summary": "file",
                                           "tensorboard_dir": "dir"})


#: The range of every numeric flag (checked by bertforge.cli.args; NaN/inf never pass).
LIMITS = {
    "max_seq_length": "[1,1048576]", "max_predictions_per_seq": "[1,1048576]",
    "num_workers": "[0,1024]", "eval_freq": ">=0", "num_eval_batches": ">=1",
    "eval_batch_size": "[1,1048576]", "train_batch_size": "[1,16777216]",
    "gradient_accumulation_steps": "[1,16777216]", "learning_rate": ">0", "max_steps": ">=1",
    "warmup_proportion": "[0,1)", "weight_decay": ">=0", "max_grad_norm": ">=0",
    "init_loss_scale": ">0", "resume_step": ">=0", "num_steps_per_checkpoint": ">=1",
    "keep_checkpoints": ">=1", "phase1_end_step": ">=0", "steps_this_run": ">=1",
    "log_freq": ">0", "local_rank": ">=0", "dist_timeout": ">0",
    "loss_scale": ">=0", "num_train_epochs": ">=0", "profile_start": ">=0",
}


def _notes(args, argv: list[str]) -> None:
    """One line for each given flag that cannot act (see bertforge.cli.nvidia)."""
    if given(argv, "--use_env"):
        note("--use_env", "the local rank is always read from LOCAL_RANK when the launcher sets it")
    if given(argv, "--bert_model"):
        note("--bert_model", f"the model is defined by --config_file {args.config_file}")
    if given(argv, "--num_train_epochs"):
        note("--num_train_epochs", f"pretraining runs --max_steps {args.max_steps} optimizer steps "
                                   "(NVIDIA's run_pretraining.py does not read it either)")
    if args.loss_scale and not args.fp16:
        note("--loss_scale", "loss scaling is used only with --fp16")
    if args.profile_start and not args.profile:
        note("--profile-start", "it only delays --profile")


def config_from_args(args: argparse.Namespace, env: Environment) -> PretrainConfig:
    """The run's configuration from the parsed flags and the environment (validated)."""
    return PretrainConfig(
        # in the order the flags used to be checked: the first bad one is named
        training=TrainingConfig(
            train_batch_size=args.train_batch_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            max_steps=args.max_steps, steps_this_run=args.steps_this_run, seed=args.seed,
            do_train=args.do_train, loss_normalization=args.loss_normalization),
        optimizer=OptimizerConfig(
            name=args.optimizer, learning_rate=args.learning_rate,
            warmup_proportion=args.warmup_proportion, weight_decay=args.weight_decay,
            max_grad_norm=args.max_grad_norm),
        logging=LoggingConfig(log_freq=args.log_freq, json_summary=args.json_summary,
                              tensorboard_dir=args.tensorboard_dir,
                              progress_bar=not args.disable_progress_bar,
                              profile=args.profile, profile_start=args.profile_start),
        checkpoint=CheckpointConfig(
            output_dir=args.output_dir, num_steps_per_checkpoint=args.num_steps_per_checkpoint,
            keep_checkpoints=args.keep_checkpoints, skip_checkpoint=args.skip_checkpoint,
            resume_from_checkpoint=args.resume_from_checkpoint, resume_step=args.resume_step),
        data=DataConfig(
            input_dir=args.input_dir, vocab_file=args.vocab_file, max_seq_length=args.max_seq_length,
            max_predictions_per_seq=args.max_predictions_per_seq, masking=args.masking,
            num_workers=args.num_workers),
        eval=EvalConfig(eval_dir=args.eval_dir, eval_freq=args.eval_freq,
                        num_eval_batches=args.num_eval_batches, eval_batch_size=args.eval_batch_size),
        launch=LaunchConfig(
            local_rank=args.local_rank, device=args.device,
            dist_timeout=next(t for t in (args.dist_timeout, env.dist_timeout, DEFAULT_TIMEOUT_S)
                              if t is not None),
            allreduce_post_accumulation=args.allreduce_post_accumulation,
            allreduce_post_accumulation_fp16=args.allreduce_post_accumulation_fp16),
        phase=PhaseConfig(phase2=args.phase2, resume_phase2=args.resume_phase2,
                          phase1_end_step=args.phase1_end_step),
        model=ModelSetupConfig(
            config_file=args.config_file, init_checkpoint=args.init_checkpoint,
            checkpoint_activations=args.checkpoint_activations,
            dense_sequence_output=not args.no_dense_sequence_output,
            fused=not args.disable_jit_fusions, cuda_graphs=args.cuda_graphs),
        precision=PrecisionConfig(fp16=args.fp16, bf16=args.bf16, init_loss_scale=args.init_loss_scale,
                                  loss_scale=args.loss_scale, tf32=args.tf32,
                                  cpu_gemm=cpu_gemm_policy(args.cpu_gemm, env)),
    )


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Parse flags and run pretraining; returns the exit status (see docs/pretraining.md)."""
    from bertforge.train.pretrain import run

    argv = argv_of(argv)
    args = build_parser().parse_args(argv)
    _notes(args, argv)
    config = config_from_args(args, read_environment())
    if args.dry_run:
        from bertforge.train.pretrain import dry_run

        return dry_run(config)
    return run(config)


if __name__ == "__main__":
    from bertforge.distributed import run_as_process

    run_as_process(main)
