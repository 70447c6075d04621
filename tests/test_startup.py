"""A lean start: `prefork run` imports only what the chosen settings need; `--version` skips the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Modules the master of `prefork run` loads only when a setting asks for them.
ON_DEMAND = ("ssl", "psutil", "prefork.http", "httptools", "json", "tomllib", "difflib", "prefork.tls",
             "prefork.client", "prefork.status_table")


def loaded_by_master(*argv: str) -> set[str]:
    """The modules a master would hold once started with ``argv`` (start-up done, no worker forked).

    ``argv`` is APP, or ``--exec`` and the PROGRAM (whose check, cli.serve's, loads check.py and inetd.py).
    """
    exec_flag = argv[0] == "--exec"
    positional = argv[1:] if exec_flag else argv[-1:]
    code = (
        "import sys\n"
        "from prefork import cli, master, sources\n"
        f"settings, _ = sources.load(cli._cli_values({positional!r}, {{}}, {exec_flag!r}), {{}})\n"
        "from prefork.reload import load_tls_context\n"
        "load_tls_context(settings)\n"
        "if settings.exec:\n"
        "    from prefork import check\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT)
    return set(done.stdout.split())


def test_a_plain_server_loads_nothing_on_demand() -> None:
    modules = loaded_by_master("testapps:pid")
    assert "prefork.master" in modules and "click" in modules  # the probe does load the server
    assert not modules & set(ON_DEMAND), sorted(modules & set(ON_DEMAND))


def test_an_exec_server_without_tls_loads_no_ssl() -> None:
    modules = loaded_by_master("--exec", "cat")
    assert "prefork.inetd" in modules  # loaded by the master, before the workers drop privileges
    assert "ssl" not in modules and "prefork.tlsrelay" not in modules


def test_version_does_not_import_the_cli() -> None:
    code = "import runpy, sys; sys.argv = ['prefork', '--version']; runpy.run_module('prefork', run_name='__main__')\n"
    code += "print(sorted(m for m in sys.modules if m == 'click' or m.startswith('prefork.')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT)
    version, modules = done.stdout.splitlines()
    assert version.startswith("prefork, version ")
    assert modules == "[]"  # neither click nor any of prefork's modules
