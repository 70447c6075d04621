"""Running the ``prefork`` control commands (status, reload, stop, scale) as a person would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import ROOT, TESTS

from prefork.client import query


def prefork(*args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    """Run ``python -m prefork ARGS`` to completion and capture its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFORK_")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT)])
    return subprocess.run([sys.executable, "-m", "prefork", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def status_json(pidfile: Path) -> dict[str, Any]:
    result = prefork("status", "--json", "--pid", str(pidfile))
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def snapshot(pidfile: Path) -> dict[str, Any]:
    """The master's own report, asked in-process (quick enough to poll; no CPU or memory figures)."""
    return query(str(pidfile))
