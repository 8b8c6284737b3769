"""Every preset of NVIDIA's scripts/configs/*.sh, both generations, exists here with NVIDIA's
values (tests/nvidia/presets.json, from tests/nvidia/extract_presets.py).

Paths are the one deliberate difference (docs/nvidia.md): NVIDIA's /workspace/bert is this
checkout, and pretraining data lives where data/create_datasets_from_start.sh writes it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TABLES = json.loads((REPO / "tests/nvidia/presets.json").read_text())["presets"]
PREP = "/BPWD"
CASES = [(f, gen, name) for f, gens in TABLES.items() for gen, presets in gens.items() for name in presets]


def ours(config: str, name: str) -> list[str]:
    p = subprocess.run(["bash", "-c", f"source scripts/configs/{config} && {name}"], cwd=REPO,
                       capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "BERT_PREP_WORKING_DIR": PREP})
    assert p.returncode == 0 and not p.stderr, p.stderr
    return p.stdout.split()


def expected(config: str, words: list[str]) -> list[str]:
    """NVIDIA's words with NVIDIA's paths mapped to ours."""
    out = [w.replace("/workspace/bert", str(REPO)).replace("$BPWD", PREP).rstrip("/") for w in words]
    if config == "pretrain_config.sh":
        out[20], out[21] = f"{PREP}/phase1_hdf5", f"{PREP}/phase2_parquet"  # data dirs
        if len(out) > 24:
            out[24] = f"{PREP}/text/train"  # wikipedia_source: the data script's text
            out[31] = str(REPO / out[31])  # bert_configs/large.json, relative in NVIDIA's
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}:{c[1]}:{c[2]}")
def test_preset_has_nvidias_values(case) -> None:
    config, gen, name = case
    want = expected(config, TABLES[config][gen][name])
    got = [w.rstrip("/") for w in ours(config, name)]
    assert got[:len(want)] == want
    if config == "pretrain_config.sh":
        assert len(got) == 32  # 2020's 23 are followed by the current generation's 9 defaults


def test_all_presets_are_there() -> None:
    assert len(CASES) == 4 + 6 + 4 + 6 + 32 + 36
    assert (REPO / "bert_config.json").resolve() == (REPO / "bert_configs/large.json").resolve()
