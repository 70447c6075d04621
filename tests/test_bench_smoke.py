"""The benchmark harness still works: ``python -m bench --smoke`` runs end to end (no thresholds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT


@pytest.mark.timeout(120)
def test_bench_smoke(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, result.stdout + result.stderr
    report = (tmp_path / "results.md").read_text()
    for heading in ("Throughput", "Fairness", "Recovery", "Footprint", "HTTP", "Graceful stop"):
        assert f"## {heading}" in report, report
    assert "| tcp: new connections/s" in report, report
    assert "kill -9 of a worker" in report, report
