"""A lean start: `prefork run` imports only what the chosen settings need; `--version` skips the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from email.utils import formatdate
from pathlib import Path

import click
import pytest
from conftest import Server, wait_for
from http_helpers import get, start_http
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent

# Modules the master of `prefork run` loads only when a setting asks for them (subprocess: --reload's watcher;
# dataclasses: records are prefork.record's, the standard module is loaded only to read one through it).
ON_DEMAND = ("ssl", "psutil", "prefork.http", "httptools", "json", "tomllib", "difflib", "prefork.tls",
             "prefork.client", "prefork.status_table", "subprocess", "dataclasses")
# And once it has bound, read without click (which loads datetime and inspect itself): datetime is for JSON
# logs; encodings.idna, which getaddrinfo loads for a host given as a str, for a host name; inspect, ast and
# dis came with dataclasses.
ON_DEMAND_WITHOUT_CLICK = (*ON_DEMAND, "datetime", "encodings.idna", "inspect", "ast", "dis")


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


# Modules a --wsgi worker without TLS does without (ssl: ~4.5 MB and ~10 ms of import per worker).
NOT_IN_A_WSGI_WORKER = ("ssl", "_ssl", "email", "email.utils", "prefork.tls", "json", "tomllib", "subprocess",
                        "datetime", "encodings.idna")


def test_a_wsgi_worker_without_tls_loads_no_ssl_nor_email(server: Server) -> None:
    start_http(server, app="leanapp:modules", workers=1)
    status, _, body = get(server.address, "/")
    modules = set(body.decode().split())
    assert status == 200 and "prefork.http.handler" in modules and "httptools" in modules  # the probe works
    assert not modules & set(NOT_IN_A_WSGI_WORKER), sorted(modules & set(NOT_IN_A_WSGI_WORKER))


def test_the_date_header_is_written_as_email_utils_writes_it() -> None:
    pytest.importorskip("httptools")
    from prefork.http.response import imf_fixdate

    now = int(time.time())
    for when in (0, 951782400, 1709164799, 4102444799, now, *range(now, now + 86400 * 400, 86400 * 7 + 3601)):
        assert imf_fixdate(when) == formatdate(when, usegmt=True), when


def test_a_plain_prefork_run_master_does_without_click(server: Server, tmp_path: Path) -> None:
    noted = tmp_path / "modules"
    server.start("--when-ready", "leanapp:note_modules", app="leanapp:modules", workers=1,
                 env={"LEANAPP_MODULES": str(noted)}).wait_ready(1)
    wait_for(lambda: noted.exists() and noted.read_text(), what="the when_ready hook's list")
    modules = set(noted.read_text().split())
    assert "prefork.master" in modules and "prefork.quickstart" in modules  # the probe works
    assert "click" not in modules and "prefork.cli" not in modules
    assert not modules & set(ON_DEMAND_WITHOUT_CLICK), sorted(modules & set(ON_DEMAND_WITHOUT_CLICK))


def test_a_wsgi_master_imports_the_http_code_its_workers_share(server: Server, tmp_path: Path) -> None:
    noted = tmp_path / "modules"
    server.start("--wsgi", "--when-ready", "leanapp:note_modules", app="leanapp:modules", workers=1,
                 env={"LEANAPP_MODULES": str(noted)}).wait_ready(1)
    wait_for(lambda: noted.exists() and noted.read_text(), what="the when_ready hook's list")
    modules = set(noted.read_text().split())
    assert "prefork.http.handler" in modules and "httptools" in modules
    unasked = set(ON_DEMAND_WITHOUT_CLICK) - {"prefork.http", "httptools"}
    assert not modules & unasked, sorted(modules & unasked)


def read_by_click(args: list[str]) -> dict[str, object] | None:
    """What click makes of ``prefork run ARGS`` (cli._cli_values), or None when it refuses it."""
    from prefork import cli

    try:
        with cli.run.make_context("run", list(args)) as ctx:
            params = dict(ctx.params)
            app, exec_flag = params.pop("app"), params.pop("exec_flag")
            return cli._cli_values(app, params, exec_flag)
    except (click.exceptions.Exit, click.ClickException):
        return None


PLAIN = [
    ["testapps:pid"], ["-w", "3", "testapps:pid"], ["testapps:pid", "--workers", "2"],
    ["--workers=4", "--bind", "127.0.0.1:0", "-b", "unix:/tmp/x.sock", "--bind=127.0.0.1:1", "m:f"],
    ["--preload", "--no-preload", "--wsgi", "m:f()"],
    ["--timeout", "30", "--timeout", "5", "--log-level", "debug", "m:f"],
    ["--name=web", "m:f"], ["--name=", "m:f"], ["--forwarded-allow-ips", "10.0.0.0/8", "--umask", "0o22", "m:f"],
]
REFUSED_OR_CLICKS = [
    [], ["--help"], ["-h"], ["run"], ["a:b", "c:d"], ["--exec", "--", "cat"], ["-w4", "m:f"], ["-w", "-1", "m:f"],
    ["--workers", "0", "m:f"], ["--work", "2", "m:f"], ["--preload=1", "m:f"], ["--bind", "m:f"], ["m"], ["-", "m:f"],
    ["--", "m:f"], ["--workers"], ["m:f", "--no-such-option"], ["--log-level", "loud", "m:f"],
]


def test_quickstart_reads_a_plain_command_line_as_click_does() -> None:
    from prefork.quickstart import read_run

    for args in PLAIN:
        assert read_run(args) is not None, args  # the quick path is taken
        assert read_run(args) == read_by_click(args), args
    for args in REFUSED_OR_CLICKS:
        assert read_run(args) is None, args  # click reads it: its message, its exit status


TOKENS = st.sampled_from(["-w", "--workers", "--workers=", "-b", "--bind", "--bind=127.0.0.1:2", "--preload",
                          "--no-preload", "--preload=", "--timeout", "--log-level", "--", "--exec", "-h", "2",
                          "0", "-1", "127.0.0.1:0", "unix:/tmp/s", "debug", "m:f", "pkg.mod:app()", "x", ""])


@settings(max_examples=300, deadline=None)
@given(st.lists(TOKENS, max_size=7))
def test_quickstart_never_reads_a_command_line_otherwise_than_click(args: list[str]) -> None:
    """Either the quick path steps aside, or it gives exactly what click gives."""
    from prefork.quickstart import read_run

    quick = read_run(args)
    assert quick is None or quick == read_by_click(args), (args, quick)


def test_click_still_completes_a_run_command_line() -> None:
    """Shell completion is click's: the quick path steps aside when its variable is set."""
    code = "import sys; sys.argv = ['prefork', 'run', '--wor']; from prefork.__main__ import main; main()"
    env = dict(os.environ, PYTHONPATH=str(ROOT), _PREFORK_COMPLETE="bash_complete", COMP_WORDS="prefork run --wor",
               COMP_CWORD="2")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=30)
    assert done.returncode == 0 and "plain,--workers" in done.stdout.splitlines(), done
