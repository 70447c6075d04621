"""Issue 4: settings from a TOML file, the environment and the command line; `prefork check`.

Real files, real environment variables, real processes. The first tier calls
``sources.load`` directly (with real files); the rest runs the real command.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT, TESTS, Server, free_port, wait_for

from prefork import docs, settings, sources
from prefork.errors import ConfigError
from prefork.settings import Settings

# --- tier 1: sources.load with real files ---

SOURCES = ("file", "env", "cli")


@pytest.mark.parametrize("given", [combo for n in range(4) for combo in itertools.combinations(SOURCES, n)])
def test_precedence_every_combination(tmp_path: Path, given: tuple[str, ...]) -> None:
    """command line > environment > file > default, for every subset of sources."""
    config = tmp_path / "app.toml"
    config.write_text("workers = 3\nbacklog = 30\n")
    cli: dict[str, object] = {"config": str(config)} if "file" in given else {}
    environ = {"PREFORK_WORKERS": "5", "PREFORK_BACKLOG": "50"} if "env" in given else {}
    if "cli" in given:
        cli["workers"] = 7
    loaded, origin = sources.load(cli, environ)
    expected = {"cli": 7, "env": 5, "file": 3}
    winner = next((source for source in ("cli", "env", "file") if source in given), None)
    assert loaded.workers == (expected[winner] if winner else os.cpu_count())
    expected_origin = {"cli": "command line", "env": "env PREFORK_WORKERS", "file": f"file {config}"}
    assert origin["workers"] == (expected_origin[winner] if winner else "default")
    # backlog is never on the command line: env beats file beats default.
    backlog_winner = next((source for source in ("env", "file") if source in given), None)
    assert loaded.backlog == {"env": 50, "file": 30, None: 2048}[backlog_winner]


def test_config_file_named_in_environment(tmp_path: Path) -> None:
    config = tmp_path / "env.toml"
    config.write_text('app = "testapps:pid"\nbind = ["127.0.0.1:9001", "unix:/tmp/a.sock"]\n')
    loaded, origin = sources.load({}, {"PREFORK_CONFIG": str(config)})
    assert loaded.app == "testapps:pid"
    assert [str(a) for a in loaded.bind] == ["127.0.0.1:9001", "unix:/tmp/a.sock"]
    assert origin["bind"] == f"file {config}" and origin["config"] == "env PREFORK_CONFIG"


def test_config_on_the_command_line_beats_config_in_environment(tmp_path: Path) -> None:
    (tmp_path / "env.toml").write_text("workers = 3\n")
    (tmp_path / "cli.toml").write_text("workers = 4\n")
    environ = {"PREFORK_CONFIG": str(tmp_path / "env.toml")}
    loaded, origin = sources.load({"config": str(tmp_path / "cli.toml")}, environ)
    assert loaded.workers == 4 and origin["workers"] == f"file {tmp_path / 'cli.toml'}"


def test_config_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reload after --chdir must read the same file: the path is pinned absolute."""
    (tmp_path / "rel.toml").write_text("workers = 2\n")
    monkeypatch.chdir(tmp_path)
    loaded, _ = sources.load({"config": "rel.toml"}, {})
    assert loaded.config == str(tmp_path / "rel.toml")


def test_environment_values_of_every_kind() -> None:
    loaded, _ = sources.load({}, {
        "PREFORK_BIND": "127.0.0.1:9000, unix:/tmp/a.sock",
        "PREFORK_REUSE_PORT": "yes", "PREFORK_GRACEFUL_TIMEOUT": "2.5",
        "PREFORK_UMASK": "027", "PREFORK_USER": "nobody", "PREFORK_APP": "testapps:pid",
        "PREFORK_ON_EXIT": "hookapps:record",
    })
    assert [str(a) for a in loaded.bind] == ["127.0.0.1:9000", "unix:/tmp/a.sock"]
    assert loaded.reuse_port is True and loaded.graceful_timeout == 2.5
    assert loaded.umask == 0o027 and loaded.user == "nobody" and loaded.on_exit == "hookapps:record"


def _error(tmp_path: Path, text: str | bytes) -> str:
    config = tmp_path / "bad.toml"
    if isinstance(text, bytes):
        config.write_bytes(text)
    else:
        config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        sources.load({"config": str(config)}, {})
    message = str(caught.value)
    assert message.startswith(str(config)), message  # every message names the file
    return message[len(str(config)) :]


@pytest.mark.parametrize(("text", "expected"), [
    ("workers = 2\nwokers = 3\n", ", line 2: unknown setting 'wokers' (did you mean 'workers'?)"),
    ("zzz = 1\n", ", line 1: unknown setting 'zzz'"),
    ('workers = "many"\n', ", line 1: workers: 'many' is not an integer (expected an integer from 1 to 4096)"),
    ("workers = 0\n", ", line 1: workers: 0 is too small (expected an integer from 1 to 4096)"),
    ("workers = true\n", ", line 1: workers: True is not an integer"),
    ('bind = "nonsense"\n', ", line 1: bind: 'nonsense' is not a bind address (expected HOST:PORT"),
    ('bind = ["127.0.0.1:99999"]\n', ", line 1: bind: '127.0.0.1:99999' has no valid port"),
    ("graceful_timeout = -1\n", ", line 1: graceful_timeout: -1 is too small (expected seconds from 0 to 86400)"),
    # 0 would close every connection before its PROXY header or TLS handshake: not "off".
    ("handshake_timeout = 0\n", ", line 1: handshake_timeout: 0 is too small (expected seconds from 0.1 to 86400)"),
    ('log_level = "loud"\n', ", line 1: log_level: 'loud' is not a log level"),
    ('umask = "8"\n', ", line 1: umask: '8' is not an octal umask"),
    ('user = "no-such-user-here"\n', ", line 1: user: 'no-such-user-here' is not a user on this system"),
    ('post_fork = "nocolon"\n', ", line 1: post_fork: 'nocolon' is not of the form module:function"),
    ('config = "other.toml"\n', ", line 1: 'config' cannot be set in a config file"),
    ("[prefork]\nworkers = 2\n", ", line 1: unknown table [prefork] (settings are top-level keys"),
    ("workers = 2\nbind = [\n", ", line 3, column 1: invalid TOML: "),
    ("workers = = 2\n", ", line 1, column 11: invalid TOML: Invalid value"),
    (b"workers = 2\n# caf\xe9\n", ", line 2: invalid TOML: the file is not UTF-8 text"),
])
def test_file_errors_point_at_the_mistake(tmp_path: Path, text: str | bytes, expected: str) -> None:
    assert _error(tmp_path, text).startswith(expected)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read config file: No such file or directory"):
        sources.load({"config": str(tmp_path / "missing.toml")}, {})
    with pytest.raises(ConfigError, match=r": cannot read config file: Is a directory"):
        sources.load({"config": str(tmp_path)}, {})


@pytest.mark.parametrize(("environ", "expected"), [
    ({"PREFORK_WOKERS": "2"}, "environment: unknown setting PREFORK_WOKERS (did you mean PREFORK_WORKERS?)"),
    ({"PREFORK_WORKERS": "many"}, "environment variable PREFORK_WORKERS: workers: 'many' is not an integer"),
    ({"PREFORK_REUSE_PORT": "perhaps"}, "environment variable PREFORK_REUSE_PORT: reuse_port: 'perhaps' is not a"),
    ({"PREFORK_BIND": "nonsense"}, "environment variable PREFORK_BIND: bind: 'nonsense' is not a bind address"),
])
def test_environment_errors(environ: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        sources.load({}, environ)
    assert str(caught.value).startswith(expected)


# --- the command: statuses and messages ---


def prefork(*args: str, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -m prefork ARGS`` to completion, with no PREFORK_ variables but ``env``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFORK_") and k != "NOTIFY_SOCKET"}
    full_env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT)])
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "prefork", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("command", ["run", "check"])
def test_command_exits_2_naming_file_and_key(tmp_path: Path, command: str) -> None:
    (tmp_path / "app.toml").write_text('app = "testapps:pid"\nwokers = 4\n')
    result = prefork(command, "-c", "app.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: app.toml, line 2: unknown setting 'wokers' (did you mean 'workers'?)")


def test_command_line_value_errors_exit_2(tmp_path: Path) -> None:
    result = prefork("run", "--workers", "0", "testapps:pid", cwd=tmp_path)
    assert result.returncode == 2 and "0 is too small (expected an integer from 1 to 4096)" in result.stderr
    result = prefork("run", "testapps:pid", cwd=tmp_path, env={"PREFORK_WORKERS": "many"})
    assert result.returncode == 2
    assert "Error: environment variable PREFORK_WORKERS: workers: 'many' is not an integer" in result.stderr


def test_app_from_the_file_runs_with_no_argument(server: Server, tmp_path: Path) -> None:
    config = tmp_path / "app.toml"
    config.write_text(f'app = "testapps:pid"\nworkers = 1\nbind = ["127.0.0.1:{server.port}"]\n')
    server.start("-c", str(config), app=None, workers=None, bind=False).wait_ready(1)
    assert server.ask_pid() in server.worker_pids()


def test_precedence_end_to_end(tmp_path: Path) -> None:
    """All three sources at once, through `prefork check`'s report of origins."""
    (tmp_path / "app.toml").write_text(
        'app = "testapps:pid"\nworkers = 3\nbacklog = 30\nmax_requests = 10\nbind = ["127.0.0.1:0"]\n')
    result = prefork("check", "-c", "app.toml", "--workers", "7", "--no-reuse-port", cwd=tmp_path,
                     env={"PREFORK_WORKERS": "5", "PREFORK_BACKLOG": "50", "PREFORK_REUSE_PORT": "yes"})
    assert result.returncode == 0, result.stderr
    lines = {line.split(" = ")[0]: line for line in result.stdout.splitlines() if " = " in line}
    assert re.match(r"workers = 7 +# command line$", lines["workers"])
    assert re.match(r"backlog = 50 +# env PREFORK_BACKLOG$", lines["backlog"])
    assert re.match(r"max_requests = 10 +# file app.toml$", lines["max_requests"])
    assert re.match(r"graceful_timeout = 30 +# default$", lines["graceful_timeout"])
    assert re.match(r"reuse_port = false +# command line$", lines["reuse_port"])  # --no-X beats env


def test_check_test_binds_other_addresses_too(tmp_path: Path) -> None:
    """Any other address setting (--metrics-bind) is test-bound like --bind."""
    names = [f.name for f in dataclasses.fields(Settings)
             if f.name != "bind" and "ADDR" in f.metadata["meta"].metavar and not f.metadata["meta"].multiple]
    if not names:
        pytest.skip("no other address setting declared")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        option = "--" + names[0].replace("_", "-")
        result = prefork("check", "-b", "127.0.0.1:0", option, f"127.0.0.1:{port}", "testapps:pid", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{names[0]} 127.0.0.1:{port}: Address already in use" in result.stderr


# --- prefork check ---


def test_check_all_good_prints_toml_with_origins(tmp_path: Path) -> None:
    result = prefork("check", "-b", "127.0.0.1:0", "-b", f"unix:{tmp_path}/s.sock", "testapps:pid", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ok: app testapps:pid imports as a worker would" in result.stdout
    assert "ok: bind 127.0.0.1:0" in result.stdout and f"ok: bind unix:{tmp_path}/s.sock" in result.stdout
    # The report is TOML (comments aside) that reads back as the same settings.
    report = tomllib.loads(result.stdout.split("\nok: ")[0])
    assert report["app"] == "testapps:pid" and report["bind"] == ["127.0.0.1:0", f"unix:{tmp_path}/s.sock"]
    assert not os.path.exists(tmp_path / "s.sock")  # nothing was bound for real


@pytest.mark.parametrize(("app", "expected"), [
    ("nosuchmodule:app", "Error: cannot import app 'nosuchmodule:app': no module named 'nosuchmodule'"),
    ("testapps:nothere", "has no attribute 'nothere'"),
    ("testapps:not_callable", "is not callable"),
    ("confapps_broken:handler", "ZeroDivisionError"),
])
def test_check_app_errors_exit_4(tmp_path: Path, app: str, expected: str) -> None:
    (tmp_path / "confapps_broken.py").write_text("x = 1 / 0\n")
    result = prefork("check", "-b", "127.0.0.1:0", app, cwd=tmp_path)
    assert result.returncode == 4, result.stdout + result.stderr
    assert expected in result.stderr


def test_check_survives_an_import_that_kills_or_hangs(tmp_path: Path) -> None:
    (tmp_path / "killer.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    (tmp_path / "hanger.py").write_text("import time\ntime.sleep(600)\n")
    result = prefork("check", "-b", "127.0.0.1:0", "killer:app", cwd=tmp_path)
    assert result.returncode == 4 and "killed the process (SIGSEGV)" in result.stderr
    result = prefork("check", "-b", "127.0.0.1:0", "--timeout", "1", "hanger:app", cwd=tmp_path)
    assert result.returncode == 4 and "did not finish within 1s" in result.stderr


def test_check_bind_problems_exit_1(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(tmp_path / "live.sock"))
    live.listen()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "stale.sock"))
    stale.close()
    (tmp_path / "plain").write_text("")
    port = busy.getsockname()[1]
    with busy, live:
        result = prefork(
            "check", "testapps:pid", "-b", f"127.0.0.1:{port}",
            "-b", f"unix:{tmp_path}/live.sock", "-b", f"unix:{tmp_path}/stale.sock",
            "-b", f"unix:{tmp_path}/nodir/x.sock", "-b", f"unix:{tmp_path}/plain", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    errors = result.stderr
    assert f"bind 127.0.0.1:{port}: Address already in use" in errors
    assert "live.sock: another server is listening on it" in errors
    assert f"directory {tmp_path}/nodir does not exist" in errors
    assert "plain: the file exists and is not a socket" in errors
    assert f"ok: bind unix:{tmp_path}/stale.sock" in result.stdout  # stale files are removed at start


def test_check_before_a_reload_accepts_addresses_held_by_the_running_server(server: Server, tmp_path: Path) -> None:
    pidfile = tmp_path / "prefork.pid"
    server.start("--pid", str(pidfile), workers=1).wait_ready(1)
    bind = f"127.0.0.1:{server.port}"
    result = prefork("check", "--pid", str(pidfile), "-b", bind, "testapps:pid", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ok: bind {bind} (in use by the running server, pid {server.pid})" in result.stdout
    result = prefork("check", "-b", bind, "testapps:pid", cwd=tmp_path)  # no pid file: someone else's
    assert result.returncode == 1 and "Address already in use" in result.stderr


def test_check_reports_all_problems_and_exits_with_the_first(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = prefork("check", "-b", f"127.0.0.1:{busy.getsockname()[1]}", "nosuchmodule:app", cwd=tmp_path)
    assert result.returncode == 4
    assert "no module named 'nosuchmodule'" in result.stderr and "Address already in use" in result.stderr


def test_check_without_app_exits_2(tmp_path: Path) -> None:
    result = prefork("check", "-b", "127.0.0.1:0", cwd=tmp_path)
    assert result.returncode == 2 and "no APP given" in result.stderr


def test_check_unimportable_hook_exits_2(tmp_path: Path) -> None:
    result = prefork("check", "-b", "127.0.0.1:0", "--on-starting", "hookapps:nothere", "testapps:pid", cwd=tmp_path)
    assert result.returncode == 2
    assert "on_starting: cannot import hook 'hookapps:nothere'" in result.stderr


def test_check_refuses_the_log_files_run_refuses_and_creates_none(tmp_path: Path) -> None:
    """`check` says what `run` would: a log file in a missing directory or behind a symlink exits 2."""
    (tmp_path / "evil.log").symlink_to("/etc/passwd")
    for log_file, why in ((tmp_path / "missing" / "x.log", "No such file or directory"),
                          (tmp_path / "evil.log", "it is a symbolic link, not a regular file (refused)")):
        for command in ("check", "run"):
            result = prefork(command, "-b", "127.0.0.1:0", "--log-file", str(log_file), "testapps:pid", cwd=tmp_path)
            assert result.returncode == 2, (command, result.stderr)
            assert f"log_file: cannot open '{log_file}': {why}" in result.stderr, (command, result.stderr)
    fine = tmp_path / "fine.log"
    result = prefork("check", "-b", "127.0.0.1:0", "--log-file", str(fine), "testapps:pid", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not fine.exists()  # a check changes nothing


# --- reload (HUP) re-reads the file ---


def test_hup_applies_a_changed_workers_count_and_keeps_config_when_file_breaks(server: Server, tmp_path: Path) -> None:
    config = tmp_path / "app.toml"
    config.write_text("workers = 1\n")
    server.start("-c", str(config), workers=None).wait_ready(1)
    config.write_text("workers = 3\n")
    server.signal(signal.SIGHUP)
    wait_for(lambda: "reload done" in server.log() and len(server.serving_pids()) == 3, timeout=30,
             what=f"3 workers after HUP; log:\n{server.log()}")
    serving = server.serving_pids()
    config.write_text("workers = 2\nwokers = 5\n")  # now invalid
    server.signal(signal.SIGHUP)
    wait_for(lambda: "reload refused, keeping the running configuration" in server.log(), what="refusal logged")
    assert f"{config}, line 2: unknown setting 'wokers' (did you mean 'workers'?)" in server.log()
    assert server.worker_pids() == serving  # nothing restarted
    assert server.ask_pid() in serving
    config.write_text("workers = [\n")  # invalid TOML
    server.signal(signal.SIGHUP)
    wait_for(lambda: f"{config}, line 2, column 1: invalid TOML" in server.log(), what="TOML error logged")
    assert server.worker_pids() == serving
    assert server.proc is not None and server.proc.poll() is None


def test_hup_warns_about_settings_it_cannot_change(server: Server, tmp_path: Path) -> None:
    config = tmp_path / "app.toml"
    config.write_text("workers = 1\n")
    server.start("-c", str(config), workers=None).wait_ready(1)
    config.write_text('workers = 1\numask = "077"\n')
    server.signal(signal.SIGHUP)
    wait_for(lambda: "reload done" in server.log(), timeout=30, what="reload")
    assert "reload: umask only take effect when the master starts" in server.log()


def test_hup_switches_to_a_new_log_file_and_refuses_one_it_cannot_open(server: Server, tmp_path: Path) -> None:
    config, first, second = tmp_path / "app.toml", tmp_path / "first.log", tmp_path / "second.log"
    config.write_text(f'workers = 1\nlog_file = "{first}"\n')
    server.start("-c", str(config), workers=None)
    wait_for(lambda: first.exists() and "booted" in first.read_text(), what="boot in the first log")
    config.write_text(f'workers = 1\nlog_file = "{second}"\n')
    server.signal(signal.SIGHUP)
    wait_for(lambda: second.exists() and "reload done" in second.read_text(), timeout=30, what="reload in the new log")
    assert f"logging to {second} from now on" in first.read_text()
    assert "gen 2" in second.read_text() and "gen 2" not in first.read_text()  # new workers write there too
    config.write_text(f'workers = 1\nlog_file = "{tmp_path}/missing/third.log"\n')
    serving = server.serving_pids()
    server.signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in second.read_text(), what="refusal in the current log")
    assert f"log_file: cannot open '{tmp_path}/missing/third.log': No such file or directory" in second.read_text()
    assert server.serving_pids() == serving  # nothing restarted, still serving


def test_hup_rereads_relative_config_after_chdir(server: Server, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    config = tmp_path / "app.toml"
    config.write_text("workers = 1\n")
    server.start("-c", "app.toml", "--chdir", str(tmp_path / "elsewhere"), workers=None).wait_ready(1)
    config.write_text("workers = 2\n")
    server.signal(signal.SIGHUP)
    wait_for(lambda: "reload done" in server.log() and len(server.serving_pids()) == 2, timeout=30,
             what=f"2 workers after HUP; log:\n{server.log()}")


# --- generated documentation and example config ---


def test_readme_sections_match_the_declaration() -> None:
    readme = (ROOT / "README.md").read_text()
    for marker, generate in docs.GENERATED.items():
        assert docs.section(readme, marker).strip() == generate().strip(), (
            f"README section {marker!r} drifted from the declaration: run `python -m prefork.docs --write`")


def test_example_config_matches_the_declaration() -> None:
    assert (ROOT / "conf" / "prefork.toml").read_text() == docs.example_config(), (
        "conf/prefork.toml drifted from the declaration: run `python -m prefork.docs --write`")


def test_example_config_covers_every_setting_with_its_default() -> None:
    text = (ROOT / "conf" / "prefork.toml").read_text()
    examples = dict(re.findall(r"^# (\w+) = (.*)$", text, re.MULTILINE))
    defaults = Settings()
    for f, _ in settings.declared():
        if f.name == "config":
            continue
        assert f.name in examples, f"conf/prefork.toml lacks {f.name}"
        if examples[f.name].startswith("<"):
            continue  # computed at run time (the number of CPUs)
        value = tomllib.loads(f"{f.name} = {examples[f.name]}")[f.name]
        parsed = f.metadata["meta"].parse(value)
        assert parsed == getattr(defaults, f.name), f"{f.name}: example {examples[f.name]} is not the default"
    assert all(f.name in text for f in dataclasses.fields(Settings))


def test_example_config_is_accepted_by_check(tmp_path: Path) -> None:
    result = prefork("check", "-c", str(ROOT / "conf" / "prefork.toml"), "-b", f"127.0.0.1:{free_port()}",
                     "prefork.examples:echo", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
