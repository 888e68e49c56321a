"""Under ``CI=true`` no test may pass by skipping (conftest turns skips into failures), except the opt-in
real-weights tests; outside CI a skip stays a skip."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

SKIPPING = '''
import pytest

def test_skips_at_run_time():
    pytest.skip("no browser here")

@pytest.mark.skipif(True, reason="condition")
def test_skipif():
    pass

@pytest.mark.real_weights
def test_opt_in():
    pass

def test_runs():
    assert 1 + 1 == 2
'''
IMPORT_SKIP = 'import pytest\npytest.importorskip("no_such_module_xyz")\n\ndef test_never():\n    pass\n'


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("suite")
    tests = root / "tests"
    tests.mkdir()
    for helper in [HERE / "conftest.py", *HERE.glob("_*.py")]:  # conftest and the helper modules it imports
        shutil.copy(helper, tests / helper.name)
    (root / "pytest.ini").write_text("[pytest]\nmarkers =\n    real_weights: opt-in\n")
    (tests / "test_skipping.py").write_text(SKIPPING)
    (tests / "test_import_skip.py").write_text(IMPORT_SKIP)
    return root


def outcomes(root: Path, ci: str | None, target: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", target], cwd=root,
                         env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    return run.stdout.strip().splitlines()[-1]


def test_under_ci_every_skip_fails_but_the_opt_in_one(suite):
    last = outcomes(suite, "true", "tests/test_skipping.py")
    # the run-time skip fails in its call, the skipif mark errors in its setup; only the opt-in test skips
    assert "1 failed" in last and "1 error" in last and "1 passed" in last and "1 skipped" in last, last


def test_under_ci_a_module_that_skips_itself_is_an_error(suite):
    last = outcomes(suite, "true", "tests/test_import_skip.py")
    assert "1 error" in last and "skipped" not in last, last


def test_outside_ci_skips_stay_skips(suite):
    last = outcomes(suite, None, "tests")
    assert "1 passed" in last and "4 skipped" in last and "failed" not in last and "error" not in last, last
