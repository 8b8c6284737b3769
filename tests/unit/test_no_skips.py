"""`--no-skips` (tests/no_skips.py): the switch CI's acceptance and Slurm runs use so that a
check that cannot run fails instead of passing as skipped."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

CASES = {
    "test_call.py": "import pytest\ndef test_ok():\n    pass\ndef test_skip():\n    pytest.skip('no data here')\n",
    "test_mark.py": "import pytest\n@pytest.mark.skipif(True, reason='no cluster here')\ndef test_marked():\n    pass\n",
    "test_module.py": "import pytest\npytest.skip('no tool here', allow_module_level=True)\n",
    "test_xfail.py": "import pytest\n@pytest.mark.xfail(reason='known')\ndef test_xf():\n    assert False\n",
}


def _pytest(path, *args):
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.no_skips", "-p", "no:cacheprovider",
                           "--rootdir", str(path), "-c", str(path / "pytest.ini"), *args, str(path)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_skips_fail_only_under_no_skips(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    for name, body in CASES.items():
        (tmp_path / name).write_text(body)
    plain = _pytest(tmp_path)
    assert plain.returncode == 0, plain.stdout[-2000:]
    assert "1 passed, 3 skipped, 1 xfailed" in plain.stdout
    # a module skipped at collection: a collection error, the run stops with its reason
    strict = _pytest(tmp_path, "--no-skips")
    assert strict.returncode == 2 and "skipped under --no-skips" in strict.stdout, strict.stdout[-2000:]
    assert "no tool here" in strict.stdout
    # skips in a test or by a mark: failures naming the reason; an xfail stays an xfail
    (tmp_path / "test_module.py").unlink()
    strict = _pytest(tmp_path, "--no-skips")
    assert strict.returncode == 1, strict.stdout[-2000:]
    assert "1 failed, 1 passed, 1 xfailed, 1 error" in strict.stdout, strict.stdout[-2000:]  # mark: at setup
    for reason in ("no data here", "no cluster here"):
        assert reason in strict.stdout
