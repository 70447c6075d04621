"""Issue 15: bad input gets one line and its documented status, never a traceback.

Bounds of counts, sizes and durations (the same in the file, the environment,
``run`` and ``check``), octal modes in TOML, the control commands' arguments, and
what gunicorn users write (``--bind :PORT``, ``PREFORK_HOME``, ``--print-config``).
The first tier calls ``sources.load`` with real files; the rest runs the real command.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from conftest import ROOT, TESTS, Server, free_port, wait_for

from prefork import cli, settings, sources
from prefork.errors import ConfigError
from prefork.sockets import parse_address
from prefork.values import Number

BOUNDED = [(f.name, meta.parse) for f, meta in settings.declared() if isinstance(meta.parse, Number)]


def prefork(*args: str, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFORK_") and k != "NOTIFY_SOCKET"}
    full_env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT)])
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "prefork", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a mistake gets (after click's usage lines, if any); never a traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def from_cli(args: list[str]) -> Any:
    """Settings from command-line arguments, parsed by the real ``run`` command (without serving)."""
    params = dict(cli.run.make_context("run", args).params)
    app = params.pop("app")
    exec_mode = {"exec_flag": params.pop("exec_flag")} if "exec_flag" in params else {}  # with exec mode (issue 19)
    return sources.load(cli._cli_values(app, params, **exec_mode), {})[0]


# --- tier 1: every bounded setting, from every source ---


def test_every_count_size_and_duration_is_bounded() -> None:
    names = {name for name, _ in BOUNDED}
    durations = {f.name for f, _ in settings.declared() if f.type == "float"}
    counts = {f.name for f, meta in settings.declared() if f.type == "int" and not meta.flag}
    assert durations | counts <= names, "a number setting without declared bounds"
    assert {"timeout", "graceful_timeout", "keepalive", "idle_timeout", "workers", "backlog"} <= names


def _bad_values(parser: Number) -> list[tuple[str, str]]:
    """(TOML literal, text) pairs past the bounds; the TOML of a count also tries a float."""
    bad = [("inf", "inf"), ("nan", "nan"), ("-inf", "-inf"), (str(parser.maximum + 1), str(parser.maximum + 1)),
           (str(parser.minimum - 1), str(parser.minimum - 1))]
    return bad if parser.unit else [*bad, ("2.0", "2.0")]


@pytest.mark.parametrize(("name", "parser"), BOUNDED)
def test_out_of_bounds_is_a_usage_error_in_every_source(tmp_path: Path, name: str, parser: Number) -> None:
    config = tmp_path / "bad.toml"
    for literal, text in _bad_values(parser):
        config.write_text(f"{name} = {literal}\n")
        with pytest.raises(ConfigError, match=f"^{config}, line 1: {name}: .*(expected .* from {parser.bounds})"):
            sources.load({"config": str(config)}, {})
        var = sources.env_var(name)
        with pytest.raises(ConfigError, match=f"^environment variable {var}: {name}: .*{parser.bounds}"):
            sources.load({}, {var: text})
        option = "--" + name.replace("_", "-")
        with pytest.raises(click.BadParameter, match=parser.bounds) as caught:
            from_cli([f"{option}={text}", "testapps:pid"])
        assert caught.value.exit_code == 2 and option in caught.value.format_message()


@pytest.mark.parametrize(("name", "parser"), BOUNDED)
def test_the_bounds_themselves_are_accepted(tmp_path: Path, name: str, parser: Number) -> None:
    config = tmp_path / "edge.toml"
    for edge in (parser.minimum, parser.maximum):
        config.write_text(f"{name} = {edge}\n")
        values = sources.read_file(str(config))
        assert values[name] == edge and sources.read_environment({sources.env_var(name): str(edge)})[name] == edge


def test_readme_and_help_show_the_bounds() -> None:
    rows = {line.split(" | ")[0]: line for line in (ROOT / "README.md").read_text().splitlines()}
    assert "| 0 to 86400 |" in rows["| `timeout`"] and "| 1 to 4096 |" in rows["| `workers`"]
    assert "| 0 to 1048576 |" in rows["| `limit_request_line`"] and "|  |" in rows["| `bind`"]
    ctx = cli.run.make_context("run", ["--help"], resilient_parsing=True)
    assert "0 to 86400; env PREFORK_TIMEOUT" in " ".join(cli.run.get_help(ctx).split())


# --- tier 1: modes in TOML ---


@pytest.mark.parametrize(("written", "mode"), [("0o077", 0o77), ('"077"', 0o77), ('"0o077"', 0o77), ("0o7", 0o7),
                                               ("'0o640'", 0o640), ("0o0", 0)])
def test_toml_modes_written_in_octal(tmp_path: Path, written: str, mode: int) -> None:
    config = tmp_path / "modes.toml"
    config.write_text(f"umask = {written}\nunix_mode = {written}\n")
    loaded, _ = sources.load({"config": str(config)}, {})
    assert loaded.umask == mode and loaded.unix_mode == mode


@pytest.mark.parametrize(("text", "expected"), [
    ("umask = 77\n", 'line 1: umask: 77 is a decimal integer (write an octal umask: 0o77 or "77")'),
    ("workers = 2\nunix_mode = 440\n",
     'line 2: unix_mode: 440 is a decimal integer (write an octal file mode: 0o440 or "440")'),
    ("unix_mode = 900\n", 'unix_mode: 900 is a decimal integer (write an octal file mode: 0o660 or "660")'),
    ("umask = 0o1000\n", "umask: 0o1000 is not a umask (expected an octal number 000-777)"),
])
def test_a_decimal_mode_in_toml_is_refused_saying_how_to_write_it(tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "modes.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        sources.load({"config": str(config)}, {})
    assert str(caught.value).endswith(expected) and "\n" not in str(caught.value)


def test_octal_on_the_command_line_and_in_the_environment_is_unchanged() -> None:
    assert sources.load({}, {"PREFORK_UMASK": "077", "PREFORK_UNIX_MODE": "0o440"})[0].unix_mode == 0o440
    assert from_cli(["--umask", "77", "testapps:pid"]).umask == 0o77


# --- tier 1: what TOML can hold that Python cannot read back ---


@pytest.mark.parametrize(("text", "expected"), [
    ("workers = " + "9" * 5000 + "\n", "invalid TOML: an integer of more than 4300 digits"),
    ("bind = " + "[" * 5000 + "]" * 5000 + "\n", "invalid TOML: arrays or tables nested too deeply"),
], ids=["huge-integer", "deep-nesting"])
def test_toml_python_cannot_hold_is_one_line(tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "huge.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        sources.load({"config": str(config)}, {})
    assert str(caught.value) == f"{config}: {expected}"


# --- tier 1: gunicorn users ---


def test_an_unrelated_prefork_variable_is_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    sources._ignored_variables.discard("PREFORK_HOME")  # warned once per process: another test may have
    with caplog.at_level(logging.WARNING, logger="prefork"):
        loaded, _ = sources.load({}, {"PREFORK_HOME": "/x", "PREFORK_WORKERS": "3"})
    assert loaded.workers == 3
    assert caplog.messages == ["ignoring the environment variable PREFORK_HOME: no setting is named so"]


def test_a_misspelt_prefork_variable_stays_an_error() -> None:
    with pytest.raises(ConfigError, match=r"^environment: unknown setting PREFORK_WOKERS \(did you mean "
                                          r"PREFORK_WORKERS\?\)$"):
        sources.load({}, {"PREFORK_WOKERS": "3"})


def test_bind_colon_port_is_every_ipv4_interface() -> None:
    assert parse_address(":8000") == parse_address("0.0.0.0:8000")
    assert str(parse_address(":8000")) == "0.0.0.0:8000"
    assert parse_address("[::]:8000").host == "::"
    for bad in (":", ":x", "::8000", ":70000"):
        with pytest.raises(ConfigError):
            parse_address(bad)


# --- tier 3: the real command ---


@pytest.mark.parametrize(("args", "env", "expected"), [
    (["run", "--timeout", "inf"], {}, "Invalid value for '--timeout': inf is too large (expected seconds from 0 to "
                                      "86400)"),
    (["run", "--timeout", "3000000"], {}, "'--timeout': 3000000 is too large"),
    (["check", "--idle-timeout", "inf"], {}, "'--idle-timeout': inf is too large"),
    (["check", "--proxy-protocol", "--handshake-timeout", "0"], {}, "'--handshake-timeout': 0 is too small "
                                                                   "(expected seconds from 0.1 to 86400)"),
    (["run", "--wsgi", "--keepalive", "inf"], {}, "'--keepalive': inf is too large"),
    (["run"], {"PREFORK_GRACEFUL_TIMEOUT": "inf"}, "environment variable PREFORK_GRACEFUL_TIMEOUT: graceful_timeout: "
                                                   "inf is too large"),
    (["check"], {"PREFORK_WORKERS": "99999999999"}, "workers: 99999999999 is too large (expected an integer from "
                                                    "1 to 4096)"),
])
def test_out_of_bounds_exits_2_with_one_line(tmp_path: Path, args: list[str], env: dict[str, str],
                                             expected: str) -> None:
    result = prefork(*args, "-b", f"127.0.0.1:{free_port()}", "testapps:pid", cwd=tmp_path, env=env)
    assert result.returncode == 2 and expected in error_line(result), result.stderr


@pytest.mark.parametrize("command", ["run", "check"])
def test_infinite_timeout_in_the_file_exits_2(tmp_path: Path, command: str) -> None:
    (tmp_path / "app.toml").write_text('app = "testapps:pid"\n\ntimeout = inf\n')
    result = prefork(command, "-c", "app.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert error_line(result) == ("Error: app.toml, line 3: timeout: inf is too large "
                                  "(expected seconds from 0 to 86400)")


def test_check_refuses_a_decimal_umask_in_the_file(tmp_path: Path) -> None:
    (tmp_path / "app.toml").write_text('app = "testapps:pid"\numask = 77\n')
    result = prefork("check", "-c", "app.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert error_line(result) == ('Error: app.toml, line 2: umask: 77 is a decimal integer '
                                  '(write an octal umask: 0o77 or "77")')


@pytest.mark.parametrize(("count", "expected"), [
    ("abc", "Error: 'abc' is not a worker count (expected N, +N or -N)"),
    ("0", "Error: cannot scale to 0 workers (expected 1 to 4096)"),
    ("5000", "Error: cannot scale to 5000 workers (expected 1 to 4096)"),
    ("1.5", "Error: '1.5' is not a worker count (expected N, +N or -N)"),
])
def test_scale_argument_errors_exit_2_before_anything_is_contacted(tmp_path: Path, count: str, expected: str) -> None:
    # No pid file at all: a command that contacted anything first would say "no server running" (5).
    result = prefork("scale", count, "--pid", str(tmp_path / "none.pid"), cwd=tmp_path)
    assert result.returncode == 2 and error_line(result) == expected


@pytest.mark.parametrize("command", [["reload"], ["stop"], ["scale", "2"]])
def test_control_timeout_is_bounded_like_the_settings(tmp_path: Path, command: list[str]) -> None:
    for bad in ("nan", "inf", "-1"):
        result = prefork(*command, "--timeout", bad, "--pid", str(tmp_path / "none.pid"), cwd=tmp_path)
        assert result.returncode == 2 and "expected seconds from 0 to 86400" in error_line(result)


def test_prefork_home_in_the_environment_is_ignored_and_the_server_serves(server: Server) -> None:
    server.start(env={"PREFORK_HOME": "/x"}).wait_ready(2)
    assert server.ask_pid() in server.worker_pids()
    warning = "ignoring the environment variable PREFORK_HOME: no setting is named so"
    assert warning in server.log()
    # A reload reads the environment again: the same variable is not news to the operator.
    for generation in (2, 3):
        server.signal(signal.SIGHUP)
        wait_for(lambda g=generation: f"reload done: generation {g}" in server.log(), what=f"generation {generation}")
    assert server.log().count(warning) == 1, server.log()


def test_a_misspelt_prefork_variable_exits_2_with_the_suggestion(tmp_path: Path) -> None:
    result = prefork("run", "testapps:pid", cwd=tmp_path, env={"PREFORK_WOKERS": "3"})
    assert result.returncode == 2
    assert error_line(result) == "Error: environment: unknown setting PREFORK_WOKERS (did you mean PREFORK_WORKERS?)"


def test_bind_colon_port_serves_on_every_ipv4_interface(server: Server, tmp_path: Path) -> None:
    server.start("--bind", f":{server.port}", bind=False).wait_ready(2)
    assert server.ask_pid() in server.worker_pids()
    result = prefork("check", "-b", f":{server.port}", "--pid", str(tmp_path / "x.pid"), "testapps:pid", cwd=tmp_path)
    assert f'bind = ["0.0.0.0:{server.port}"]' in result.stdout
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        assert sock.getpeername()[1] == server.port


@pytest.mark.parametrize(("option", "suggestion"), [
    ("--print-config", "'prefork check'"), ("--check-config", "'prefork check'"),
    ("--access-logfile", "'--access-log'"), ("--error-logfile", "'--log-file'"), ("--keep-alive", "'--keepalive'"),
    ("--pythonpath", "'--chdir'"),
])
def test_gunicorn_option_names_suggest_prefork_equivalents(tmp_path: Path, option: str, suggestion: str) -> None:
    result = prefork("run", option, "x", "testapps:pid", cwd=tmp_path)
    assert result.returncode == 2
    assert error_line(result) == f"Error: No such option '{option}'. Did you mean {suggestion}?"
