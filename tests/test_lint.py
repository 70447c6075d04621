"""ruff stays clean on prefork/, tests/ and bench/, mypy --strict on prefork/ (part of the README's test command)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.timeout(180)
def test_ruff_clean() -> None:
    if shutil.which("ruff") is None:
        pytest.skip("ruff not installed")
    result = subprocess.run(["ruff", "check", "prefork", "tests", "bench"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(300)
def test_mypy_strict_clean() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy", "prefork"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
