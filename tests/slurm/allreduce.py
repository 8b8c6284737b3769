"""Smoke check for the test cluster: every srun task joins a gloo group and all-reduces.

Run as `srun -n N python tests/slurm/allreduce.py`. Rank and world size come from
SLURM_PROCID / SLURM_NTASKS and the rendezvous from MASTER_ADDR / MASTER_PORT (the
batch script sets them from the first node of the allocation). Rank 0 prints one line
`allreduce world=N sum=S` where S must equal 0 + 1 + ... + (N - 1).
"""

import os

import torch
import torch.distributed as dist


def main() -> None:
    rank = int(os.environ["SLURM_PROCID"])
    world = int(os.environ["SLURM_NTASKS"])
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world)
    try:
        t = torch.tensor([float(rank)])
        dist.all_reduce(t)
        if rank == 0:
            print(f"allreduce world={world} sum={t.item():g}", flush=True)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
