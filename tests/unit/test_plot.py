"""python -m bertforge.plot: curves from dllogger logs (ours, resumed, two phases, partial)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bertforge import plot
from bertforge.runlog import Logger

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _two_phase_log(path, partial_tail: bool = True):
    """A log as run_pretraining.sh writes it: phase 1 (resumed once), then phase 2."""
    lg = Logger(path, stdout=False)
    lg.metadata("final_loss", {"unit": None})
    lg.log("PARAMETER", {"phase": 1, "start_step": 0})
    for s in range(1, 7):  # steps 1..6, then a crash; the checkpoint was at step 4
        lg.log((0, s), {"average_loss": 10.0 - s, "learning_rate": 1e-3 * s,
                        "sequences_per_second": 100.0, "loss_scale": 65536.0})
    lg.close()
    lg = Logger(path, stdout=False, append=True)  # the resume repeats steps 5, 6
    lg.log("PARAMETER", {"phase": 1, "start_step": 4})
    for s in range(5, 11):
        lg.log((0, s), {"average_loss": 5.0 - 0.1 * s, "learning_rate": 1e-3,
                        "sequences_per_second": 120.0, "loss_scale": 32768.0})
    lg.log((), {"final_loss": 4.0, "eval_mlm_accuracy": 0.2})
    lg.log("PARAMETER", {"phase": 2, "start_step": 0})
    for s in range(11, 14):
        lg.log((0, s), {"average_loss": 4.0, "learning_rate": 5e-4,
                        "sequences_per_second": 30.0, "loss_scale": 32768.0})
    lg.close()
    if partial_tail:  # a writer caught mid-line
        with open(path, "a") as fh:
            fh.write('DLLL {"timestamp": "1", "type": "LOG", "step": [0, 14], "data": {"avera')


def test_curves_dedup_phases_and_partial_line(tmp_path):
    log = tmp_path / "dllogger.json"
    _two_phase_log(log)
    records, bad = plot.read_records(log)
    assert bad == 1
    c = plot.extract_curves(records)
    steps, loss = c.series["average_loss"]
    assert steps == list(range(1, 14))
    # steps 5 and 6 were logged twice: the resumed run's values win
    assert loss[4] == pytest.approx(4.5) and loss[5] == pytest.approx(4.4)
    assert c.phase_starts == [(2, 10)]
    assert c.final["final_loss"] == 4.0
    assert c.first_key(("step_loss", "average_loss")) == "average_loss"


def test_cli_writes_png_with_all_panels(tmp_path):
    log = tmp_path / "dllogger.json"
    _two_phase_log(log)
    out = tmp_path / "sub" / "curves.png"
    r = subprocess.run([sys.executable, "-m", "bertforge.plot", str(log), "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "average_loss, learning_rate, sequences_per_second, loss_scale" in r.stdout
    assert "1 unreadable line(s) skipped" in r.stdout and str(out) in r.stdout
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC
    import matplotlib.image as mpimg

    img = mpimg.imread(out)
    assert img.shape[0] > 300 and img.shape[1] > 600  # 2 x 2 panels
    assert img[..., :3].std() > 0.05  # not a blank canvas
    assert not list(out.parent.glob(".tmp*"))  # written atomically


def test_default_output_and_nvidia_style_log(tmp_path):
    """A log with only NVIDIA's per-step keys (step_loss, learning_rate) still plots."""
    log = tmp_path / "squad.json"
    lg = Logger(log, stdout=False)
    lg.log("PARAMETER", {"training_examples": 8})
    for s in (25, 50, 75):
        lg.log((0, s), {"step_loss": 1.0 / s, "learning_rate": 5e-5})
    lg.close()
    assert plot.main([str(log)]) == 0
    assert (tmp_path / "squad.png").read_bytes()[:8] == PNG_MAGIC


def test_bad_inputs_one_line_errors(tmp_path, capsys):
    empty = tmp_path / "empty.json"
    lg = Logger(empty, stdout=False)
    lg.log("PARAMETER", {"phase": 1})
    lg.close()
    for argv, needle in (([str(empty)], "no training records"),
                         ([str(tmp_path / "missing.json")], "does not exist"),
                         ([str(empty), "-o", str(tmp_path / "x.pdf")], "must be a .png")):
        with pytest.raises(SystemExit) as e:
            plot.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and err.count("\n") == 1


def test_missing_matplotlib_is_a_clear_error(tmp_path, monkeypatch, capsys):
    log = tmp_path / "dllogger.json"
    _two_phase_log(log, partial_tail=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(SystemExit) as e:
        plot.main([str(log), "-o", str(tmp_path / "x.png")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "pip install 'bertforge[plot]'" in err
    assert not (tmp_path / "x.png").exists()
