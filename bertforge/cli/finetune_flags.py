"""NVIDIA's fine-tuning flags (``run_squad.py``, ``run_glue.py``) as the run's typed settings."""

from __future__ import annotations

import argparse

from bertforge.cli.environment import Environment, cpu_gemm_policy
from bertforge.config import FinetuneConfig, LaunchConfig, PrecisionConfig

__all__ = ["finetune_config", "finetune_runtime"]


def finetune_config(args: argparse.Namespace) -> FinetuneConfig:
    """The hyper-parameters of the fine-tuning run (validated)."""
    return FinetuneConfig(
        learning_rate=args.learning_rate, num_train_epochs=args.num_train_epochs,
        max_steps=int(args.max_steps), warmup_proportion=args.warmup_proportion,
        train_batch_size=args.train_batch_size, gradient_accumulation_steps=args.gradient_accumulation_steps,
        seed=args.seed, log_freq=args.log_freq, loss_normalization=args.loss_normalization)


def finetune_runtime(args: argparse.Namespace, env: Environment) -> tuple[PrecisionConfig, LaunchConfig]:
    """Precision and launch settings from ``--fp16``/``--amp``, ``--bf16``, ``--loss_scale``,
    ``--tf32``, ``--cpu_gemm``, ``--no_cuda``, ``--local_rank`` and the environment."""
    precision = PrecisionConfig(fp16=args.fp16, bf16=args.bf16, loss_scale=args.loss_scale,
                                tf32=args.tf32, cpu_gemm=cpu_gemm_policy(args.cpu_gemm, env))
    launch = LaunchConfig(local_rank=args.local_rank, device="cpu" if args.no_cuda else None,
                          **({"dist_timeout": env.dist_timeout} if env.dist_timeout else {}))
    return precision, launch
