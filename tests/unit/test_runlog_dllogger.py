"""dllogger-format JSON lines: record shape, non-finite values, append on resume."""

from __future__ import annotations

import json

import torch

from bertforge.runlog import Logger, read_dllogger


def test_records_are_nvidia_dllogger_lines(tmp_path, capsys):
    path = tmp_path / "dllogger.json"
    lg = Logger(path, stdout=True)
    lg.metadata("final_loss", {"unit": None})
    lg.log(step=(0, 10), data={"average_loss": torch.tensor(7.5), "learning_rate": 1e-4})
    lg.log(step=(), data={"final_loss": float("nan"), "training_sequences_per_second": 12.0})
    lg.close()
    lines = path.read_text().splitlines()
    assert all(line.startswith("DLLL {") for line in lines)
    recs = [json.loads(line[5:]) for line in lines]
    assert recs[0]["type"] == "METADATA" and recs[0]["metric"] == "final_loss"
    assert recs[1]["type"] == "LOG" and recs[1]["step"] == [0, 10]
    assert recs[1]["data"] == {"average_loss": 7.5, "learning_rate": 1e-4}
    assert recs[2]["step"] == [] and recs[2]["data"]["final_loss"] == "nan"
    for key in ("timestamp", "datetime", "elapsedtime"):
        assert key in recs[1]
    out = capsys.readouterr().out
    assert "epoch 0 step 10 | average_loss 7.5000 | learning_rate 1.0000e-04" in out
    assert out.splitlines()[-1].startswith("final | final_loss nan")


def test_append_keeps_one_curve(tmp_path):
    path = tmp_path / "d.json"
    for step, append in ((1, False), (2, True)):
        lg = Logger(path, stdout=False, append=append)
        lg.log(step=(0, step), data={"average_loss": float(step)})
        lg.close()
    assert [r["step"][1] for r in read_dllogger(path)] == [1, 2]
    Logger(path, stdout=False).close()  # a fresh run truncates
    assert read_dllogger(path) == []
