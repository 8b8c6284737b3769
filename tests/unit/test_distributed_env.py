"""Rank layout from torchrun / Slurm variables, and the single-process default."""

from __future__ import annotations

import pytest

from bertforge.distributed import env_rank_layout, init_distributed, is_main
from bertforge.errors import ConfigError

_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID",
         "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_env(monkeypatch):
    for v in _VARS:
        monkeypatch.delenv(v, raising=False)
    return monkeypatch


def test_single_process_default(clean_env):
    assert env_rank_layout() == (0, 0, 1)
    info = init_distributed(device="cpu")
    assert (info.rank, info.world_size, info.device.type, info.distributed) == (0, 1, "cpu", False)
    assert is_main()


def test_torchrun_variables(clean_env):
    clean_env.setenv("WORLD_SIZE", "4")
    clean_env.setenv("RANK", "3")
    clean_env.setenv("LOCAL_RANK", "1")
    assert env_rank_layout() == (3, 1, 4)


def test_legacy_local_rank_flag(clean_env):
    clean_env.setenv("WORLD_SIZE", "2")
    clean_env.setenv("RANK", "1")
    assert env_rank_layout(local_rank_arg=1) == (1, 1, 2)


def test_slurm_variables(clean_env):
    clean_env.setenv("SLURM_NTASKS", "8")
    clean_env.setenv("SLURM_PROCID", "5")
    clean_env.setenv("SLURM_LOCALID", "1")
    assert env_rank_layout() == (5, 1, 8)


def test_missing_master_addr_is_a_user_error(clean_env):
    clean_env.setenv("SLURM_NTASKS", "2")
    clean_env.setenv("SLURM_PROCID", "0")
    with pytest.raises(ConfigError, match="MASTER_ADDR is not set"):
        init_distributed(device="cpu")


def test_bad_integer(clean_env):
    clean_env.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE='two'"):
        env_rank_layout()
