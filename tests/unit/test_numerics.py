"""bertforge.train.numerics: the record of what decides a step's kernels, and its comparison."""

import torch

from bertforge.train.numerics import differences, environment


def test_environment_names_what_picks_the_kernels(monkeypatch):
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    env = environment()
    assert env["torch"] == torch.__version__
    assert env["threads"] == str(torch.get_num_threads())
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["cpu"] and len(env["cpu_flags"]) == 8
    assert env["$MKL_CBWR"] == "COMPATIBLE" and "$ONEDNN_MAX_CPU_ISA" not in env
    assert all(isinstance(v, str) for v in env.values())  # plain values for a weights_only load


def test_differences_name_each_change_and_nothing_else():
    now = environment()
    assert differences(dict(now), now) == []
    assert differences(None, now) == []  # a checkpoint written before the record
    other = dict(now, cpu="AMD EPYC 7B13", threads="8", **{"$MKL_CBWR": "AVX2"})
    assert differences(other, now) == [
        f"cpu AMD EPYC 7B13 -> {now['cpu']}",
        f"threads 8 -> {now['threads']}",
        f"$MKL_CBWR AVX2 -> {now.get('$MKL_CBWR', 'unset')}",
    ]
