"""Issue 4: hooks are called at their points, in the right process, with the documented arguments."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from conftest import Server, wait_for

from prefork.hooks import HOOK_NAMES

ALL_HOOKS = [arg for name in HOOK_NAMES for arg in (f"--{name.replace('_', '-')}", f"hookapps:{name}")]


def calls(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def named(path: Path, hook: str) -> list[dict[str, Any]]:
    return [call for call in calls(path) if call["hook"] == hook]


def test_every_hook_is_called_in_the_right_process(server: Server, tmp_path: Path) -> None:
    record = tmp_path / "hooks.jsonl"
    server.start(*ALL_HOOKS, workers=2, env={"HOOK_LOG": str(record)}).wait_ready(2)
    master = server.pid
    first = server.serving_pids()
    server.signal(signal.SIGHUP)
    wait_for(lambda: "reload done" in server.log() and len(server.serving_pids()) == 2
             and not server.serving_pids() & first, timeout=30, what=f"reload; log:\n{server.log()}")
    wait_for(lambda: len(named(record, "worker_exit")) >= 2, what="old generation reaped")
    server.signal(signal.SIGTERM)
    assert server.wait_exit() == 0
    log = calls(record)
    order = [call["hook"] for call in log]
    assert order[:3] == ["on_starting", "when_ready", "pre_fork"], order
    assert order[-1] == "on_exit"
    for call in log:  # the documented facade, never the Master itself
        assert call["server"] == "Server" and call["server_pid"] == master
        listening = [] if call["hook"] == "on_starting" else [f"127.0.0.1:{server.port}"]  # before it binds
        assert call["listeners"] == listening and call["workers_setting"] == 2
        if call["hook"] == "post_fork":  # in the new worker
            assert call["ppid"] == master and call["pid"] != master, call
            assert call["worker"] == "WorkerInfo" and call["worker_pid"] == call["pid"]
        else:  # everything else runs in the master
            assert call["pid"] == master, call
    forks = named(record, "pre_fork")
    assert {(c["worker"], c["worker_pid"]) for c in forks} == {("WorkerInfo", 0)}  # not forked yet
    assert sorted((c["index"], c["worker_generation"]) for c in forks) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert {c["pid"] for c in named(record, "post_fork")} == server.booted_pids()
    exits = named(record, "worker_exit")
    assert {c["worker"] for c in exits} == {"WorkerInfo"}
    assert {c["worker_pid"] for c in exits} == server.booted_pids()  # every worker, old and new
    assert {c["exit_status"] for c in exits} == {0}  # retired and stopped gracefully
    (reload,) = named(record, "on_reload")
    # Called with the new settings accepted, generation 2 on trial, before its workers fork.
    assert (reload["pending"], reload["generation"], reload["pending_generation"]) == (2, 1, 2)
    assert sorted((w[1], w[2], w[3]) for w in reload["table"]) == [(0, 1, True), (1, 1, True)]
    (ready,) = named(record, "when_ready")
    assert ready["table"] == [] and ready["num_workers"] == 2 and ready["stopping"] is None
    (exit_call,) = named(record, "on_exit")
    assert exit_call["table"] == [] and exit_call["stopping"] == "graceful" and exit_call["generation"] == 2
    assert order.index("on_reload") < max(i for i, c in enumerate(log) if c["hook"] == "pre_fork")


def test_failing_hooks_are_logged_and_the_server_carries_on(server: Server) -> None:
    server.start("--on-starting", "hookapps:fail", "--pre-fork", "hookapps:fail", "--worker-exit",
                 "hookapps:fail", "--when-ready", "hookapps:bail", workers=1).wait_ready(1)
    log = server.log()
    assert "hook on_starting (hookapps:fail) failed" in log and "hook failed on purpose" in log
    assert "hook pre_fork (hookapps:fail) failed" in log
    assert "hook when_ready (hookapps:bail) failed" in log and "SystemExit: 9" in log
    assert server.ask_pid() in server.worker_pids()
    (worker,) = server.worker_pids()
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: "hook worker_exit (hookapps:fail) failed" in server.log(), what="worker_exit failure")
    server.wait_ready(1)
    assert server.ask_pid() in server.worker_pids()


def test_post_fork_failure_is_a_boot_failure(server: Server) -> None:
    server.start("--post-fork", "hookapps:fail", workers=1)
    assert server.wait_exit(timeout=60) == 3  # EXIT_BOOT: workers kept failing to boot
    log = server.log()
    assert "hook post_fork (hookapps:fail) failed" in log and "RuntimeError: hook failed on purpose" in log
    assert "exited during boot (exit status 3)" in log


def test_unimportable_hook_refuses_to_start(server: Server) -> None:
    server.start("--when-ready", "hookapps:missing")
    assert server.wait_exit() == 2
    assert ("Error: when_ready: cannot import hook 'hookapps:missing': module 'hookapps' has no attribute"
            in server.log())


def test_unimportable_hook_on_reload_keeps_the_running_configuration(server: Server, tmp_path: Path) -> None:
    config = tmp_path / "app.toml"
    config.write_text("workers = 1\n")
    server.start("-c", str(config), workers=None).wait_ready(1)
    before = server.worker_pids()
    config.write_text('workers = 1\non_exit = "nosuchhookmodule:f"\n')
    server.signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in server.log(), what="refusal")
    assert "on_exit: cannot import hook 'nosuchhookmodule:f'" in server.log()
    assert server.worker_pids() == before


def test_hooks_cannot_write_into_the_server(server: Server, tmp_path: Path) -> None:
    record = tmp_path / "hooks.jsonl"
    server.start("--pre-fork", "hookapps:readonly", workers=1, env={"HOOK_LOG": str(record)}).wait_ready(1)
    server.signal(signal.SIGTTIN)
    server.wait_ready(2)
    outcomes = [call["outcome"] for call in named(record, "readonly")]
    assert outcomes[0] == ["refused", "refused", "refused"]  # no workers yet: the third write tries the server
    assert outcomes[1] == ["refused", "refused", "refused"]  # a WorkerInfo is frozen
