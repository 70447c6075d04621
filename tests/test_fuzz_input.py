"""Issue 15: fuzzing every input boundary not fuzzed elsewhere (the pid file reader and HTTP have their own).

The settings loader (TOML documents, environment values, command-line values):
never a traceback, always one line, the documented status (2). The control
socket's protocol, both ends: a running master keeps serving whatever bytes
arrive on its control socket, and the client turns whatever it reads into one
line (status 6) or a report the table and the commands can use.

Examples are bounded for CI; ``PREFORK_FUZZ_EXAMPLES=5000`` runs more.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from conftest import Server, wait_for
from control_helpers import snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hostile_input import from_cli

from prefork import cli, client, sources, status_table
from prefork import settings as declaration
from prefork.endpoint import MAX_REQUEST
from prefork.errors import ControlError, NotRunningError, PreforkError, UsageError

EXAMPLES = int(os.environ.get("PREFORK_FUZZ_EXAMPLES", "150"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                              HealthCheck.too_slow])

NAMES = [name for name in declaration.names() if name != "config"]
TEXT = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=40)
INTERESTING = st.sampled_from(["inf", "-inf", "nan", "0", "-1", "1e309", "4096", "4097", "86400", "86400.5", "0o777",
                               "077", "1_000", "٣", "²", " 7 ", "+3", "9" * 40, "true", "unix:/tmp/x", ":80",
                               "[::]:0", "127.0.0.1:8000", "fd://3", "10.0.0.0/8", "*", "nobody", "root:0",
                               "a:b", "a:b()", "", ",", "debug"])
VALUE_TEXT = st.one_of(INTERESTING, TEXT)


def one_line(exc: BaseException) -> str:
    message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
    assert message and "\n" not in message, repr(message)
    return message


# --- the settings loader ---


def toml_scalar() -> st.SearchStrategy[str]:
    return st.one_of(
        st.integers(min_value=-(10**30), max_value=10**30).map(str),
        st.integers(min_value=0, max_value=0o7777).map(lambda n: f"0o{n:o}"),
        st.floats(allow_nan=True, allow_infinity=True).map(lambda f: "nan" if math.isnan(f) else
                                                           ("inf" if f > 0 else "-inf") if math.isinf(f) else repr(f)),
        st.booleans().map(lambda b: "true" if b else "false"),
        VALUE_TEXT.map(json.dumps),
        st.sampled_from(["1979-05-27T07:32:00Z", "07:32:00", "0x1f", "0b101", "1__0", "'lit'", '"""a\nb"""']),
    )


def toml_value() -> st.SearchStrategy[str]:
    return st.recursive(toml_scalar(), lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda items: "[" + ", ".join(items) + "]"),
        st.dictionaries(st.sampled_from(["a", "b", "workers"]), inner, max_size=3).map(
            lambda d: "{" + ", ".join(f"{k} = {v}" for k, v in d.items()) + "}"),
    ), max_leaves=6)


TOML_DOCUMENT = st.one_of(
    st.lists(st.tuples(st.one_of(st.sampled_from(NAMES), st.from_regex(r"[a-z_]{1,12}", fullmatch=True)),
                       toml_value()), max_size=6).map(lambda pairs: "".join(f"{k} = {v}\n" for k, v in pairs)),
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
)


@fuzz
@given(document=TOML_DOCUMENT)
def test_any_toml_document_loads_or_is_one_line(tmp_path: Path, document: str) -> None:
    config = tmp_path / "fuzz.toml"
    config.write_bytes(document.encode("utf-8", "surrogatepass"))
    try:
        sources.load({"config": str(config)}, {})
    except PreforkError as exc:
        assert exc.exit_status == 2
        one_line(exc)


ENVIRONMENT = st.dictionaries(
    st.one_of(st.sampled_from(NAMES).map(sources.env_var), st.from_regex(r"PREFORK_[A-Z_]{1,12}", fullmatch=True)),
    VALUE_TEXT, max_size=5)


@fuzz
@given(environ=ENVIRONMENT)
def test_any_environment_loads_or_is_one_line(environ: dict[str, str]) -> None:
    try:
        sources.load({}, environ)
    except PreforkError as exc:
        assert exc.exit_status == 2
        one_line(exc)


OPTIONS = [o for p in cli.run.params if isinstance(p, click.Option) for o in p.opts + p.secondary_opts
           if o not in ("--help", "-h", "--config", "-c")]


@fuzz
@given(args=st.lists(st.tuples(st.sampled_from(OPTIONS), VALUE_TEXT), max_size=5), app=st.none() | VALUE_TEXT)
def test_any_command_line_loads_or_is_one_line(args: list[tuple[str, str]], app: str | None) -> None:
    argv = [item for option, value in args for item in (option, value)] + ([app] if app is not None else [])
    try:
        from_cli(argv)
    except click.ClickException as exc:
        assert exc.exit_code == 2
        one_line(exc)
    except PreforkError as exc:
        assert exc.exit_status == 2
        one_line(exc)


@fuzz
@given(spec=st.one_of(TEXT, st.from_regex(r"\s*[+-]{0,2}[0-9]{0,12}(\.[0-9])?\s*", fullmatch=True)),
       timeout=VALUE_TEXT)
def test_any_control_argument_is_usable_or_status_2(spec: str, timeout: str) -> None:
    """``prefork scale SPEC --timeout T``, as parsed before the master is contacted."""
    try:
        amount, relative = client.parse_scale(spec)
        assert relative or 1 <= amount <= 4096
    except UsageError as exc:
        assert exc.exit_status == 2
        one_line(exc)
    try:
        assert 0 <= cli._seconds(click.Context(cli.stop_command), click.Option(["--timeout"]), timeout) <= 86400
    except click.BadParameter as exc:
        assert exc.exit_code == 2
        one_line(exc)


# --- the control socket, master side ---

CLIENT_BEHAVIOUR = st.fixed_dictionaries({
    "chunks": st.lists(st.one_of(st.binary(max_size=600), st.sampled_from([b"status", b"status\n", b"\n", b"\xff\xfe",
                                                                            b"x" * 9000, b"status\r\n"])),
                       max_size=4),
    "finish": st.sampled_from(["half-close", "close", "reset", "keep-open"]),
})


def behave(path: str, chunks: list[bytes], finish: str) -> bytes | None:
    """One client of the control socket; the answer when it waited for one."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:
            return None  # the master answered and closed after 8 KiB: it may
        if finish == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            return None
        if finish != "half-close":
            return None
        sock.shutdown(socket.SHUT_WR)
        answer = []
        try:
            while data := sock.recv(65536):
                answer.append(data)
        except ConnectionResetError:
            # The master reads at most MAX_REQUEST bytes, answers and closes: the kernel resets
            # a connection closed with unread bytes, and the answer may be lost with it.
            assert sum(map(len, chunks)) > MAX_REQUEST
            return None
        return b"".join(answer)


def test_a_master_keeps_serving_whatever_arrives_on_its_control_socket(server: Server, tmp_path: Path) -> None:
    pidfile = tmp_path / "fuzz.pid"
    server.start("--pid", str(pidfile)).wait_ready(2)
    path = str(pidfile) + ".ctl"

    @fuzz
    @given(behaviour=CLIENT_BEHAVIOUR)
    def one_client(behaviour: dict[str, Any]) -> None:
        answer = behave(path, **behaviour)
        if answer:  # every answer is one JSON document: the status, or what was wrong with the request
            document = json.loads(answer)
            assert isinstance(document, dict) and ("master" in document or "error" in document)
        assert server.proc is not None and server.proc.poll() is None

    one_client()
    assert server.ask_pid() in server.worker_pids()
    assert snapshot(pidfile)["master"]["target_workers"] == 2
    assert "Traceback" not in server.log()


# --- the control socket, client side: whatever a "master" answers ---


class FakeMaster:
    """A process titled like a master (so the pid file is not stale) and a control socket we answer."""

    def __init__(self, tmp_path: Path) -> None:
        self.proc = subprocess.Popen(["bash", "-c", 'exec -a "prefork: master fuzz" sleep 600'])
        self.pidfile = tmp_path / "fake.pid"
        self.pidfile.write_text(f"{self.proc.pid}\n")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.pidfile) + ".ctl")
        self.sock.listen(8)
        self.answer = b""
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(100)
                try:
                    conn.sendall(self.answer)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def fake_master(tmp_path: Path) -> Iterator[FakeMaster]:
    master = FakeMaster(tmp_path)
    wait_for(lambda: "prefork: master" in " ".join(_cmdline(master.proc.pid)), 10, what="the fake master's title")
    yield master
    master.close()


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    except OSError:
        return []


def valid_report() -> dict[str, Any]:
    worker = {"pid": 1, "index": 0, "generation": 1, "state": "busy", "booted": True, "requests": 3,
              "started": 1.7e9, "busy_for": 0.5, "peer": "127.0.0.1:5000", "threads": 2, "busy_threads": 1}
    return {
        "master": {"pid": 1, "name": "app", "app": "app:handler", "generation": 1, "pending_generation": None,
                   "started": 1.7e9, "listeners": ["127.0.0.1:8000"], "target_workers": 1, "threads": 2,
                   "stopping": None, "graceful_timeout": 30.0,
                   "pool": {"min_workers": 1, "max_workers": 4, "spare": 1, "idle_retire": 10.0}},
        "stats": {"connections": 3, "restarts": {"died": 1}, "reloads": 0, "reload_failures": 0,
                  "last_reload_error": None, "boot_failures": 0},
        "workers": [worker],
    }


JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)


@st.composite
def mutated_report(draw: st.DrawFn) -> bytes:
    """A valid report with one field replaced or removed, somewhere down its tree."""
    report = valid_report()
    node: Any = report
    path = draw(st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=4))
    for step in path:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        key = keys[step % len(keys)]
        if not isinstance(node[key], (dict, list)) or not node[key] or step == path[-1]:
            if draw(st.booleans()):
                node[key] = draw(JSON_VALUE)
            elif isinstance(node, dict):
                del node[key]
            break
        node = node[key]
    return json.dumps(report, allow_nan=True).encode()


ANSWERS = st.one_of(
    st.binary(max_size=300),
    JSON_VALUE.map(lambda v: json.dumps(v).encode()),
    mutated_report(),
    st.sampled_from([b"[" * 100000, b'{"error": "unknown command \'x\'\\nsecond line"}', b"NaN", b"Infinity",
                     json.dumps(valid_report()).encode()]),
)


@fuzz
@given(answer=ANSWERS)
def test_the_client_takes_whatever_a_master_answers(fake_master: FakeMaster, answer: bytes) -> None:
    fake_master.answer = answer
    try:
        report = client.query(str(fake_master.pidfile))
    except (ControlError, NotRunningError) as exc:
        assert exc.exit_status in (5, 6)
        one_line(exc)
        return
    status_table.Sampler().measure(report)  # what `prefork status` does with it
    status_table.render(report)
    json.dumps(report)
