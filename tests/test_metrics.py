"""``--metrics-bind``: Prometheus text from the master's loop, scraped over HTTP and parsed by prometheus_client."""

from __future__ import annotations

import os
import signal
import socket
import urllib.error
import urllib.request

import pytest
from conftest import Server, free_port, request, wait_for
from prometheus_client.parser import text_string_to_metric_families


def start(server: Server, workers: int = 2, app: str = "testapps:pid") -> str:
    port = free_port()
    server.start("--metrics-bind", f"127.0.0.1:{port}", app=app, workers=workers).wait_ready(workers)
    return f"http://127.0.0.1:{port}/metrics"


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample by metric name, as prometheus_client parses the exposition."""
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = answer.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return next(v for found, v in samples[name] if all(found.get(k) == w for k, w in labels.items()))


def test_scrape_counts_connections_workers_and_memory(server: Server) -> None:
    url = start(server)
    for _ in range(5):
        request(server.address)
    samples = wait_for(lambda: (s := scrape(url)) and value(s, "prefork_connections_total") == 5 and s,
                       30, what="5 connections counted")
    assert value(samples, "prefork_workers", state="idle") == 2
    assert value(samples, "prefork_workers", state="busy") == 0
    assert value(samples, "prefork_workers_target") == 2
    assert value(samples, "prefork_generation") == 1
    assert value(samples, "prefork_phase", phase="serving") == 1
    assert value(samples, "prefork_phase", phase="draining") == 0
    memory = samples["prefork_worker_resident_memory_bytes"]
    assert {labels["pid"] for labels, _ in memory} == {str(pid) for pid in server.worker_pids()}
    assert all(rss > 1_000_000 for _, rss in memory)
    for reason in ("died", "timeout", "max_requests", "memory"):
        assert value(samples, "prefork_worker_restarts_total", reason=reason) == 0


def test_restarts_and_connections_survive_a_dead_worker(server: Server) -> None:
    url = start(server)
    for _ in range(4):
        request(server.address)
    victim = server.ask_pid()  # the fifth connection
    # The answer reaches us just before the worker counts it: wait for the count before killing.
    wait_for(lambda: value(scrape(url), "prefork_connections_total") == 5, 30, what="5 connections counted")
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in server.worker_pids() and len(server.serving_pids()) == 2, 30,
             what="the killed worker replaced")
    samples = wait_for(lambda: (s := scrape(url)) and value(s, "prefork_worker_restarts_total", reason="died") == 1
                       and s, 30, what="the restart counted")
    # The dead worker's connections still count: totals never go down.
    assert value(samples, "prefork_connections_total") == 5


def test_busy_worker_is_counted(server: Server) -> None:
    url = start(server, app="testapps:slow")
    with socket.create_connection(server.address) as sock:
        sock.sendall(b"30")
        samples = wait_for(lambda: (s := scrape(url)) and value(s, "prefork_workers", state="busy") == 1 and s,
                           30, what="one busy worker")
        assert value(samples, "prefork_threads_busy") == 1
        assert value(samples, "prefork_workers", state="idle") == 1


def test_a_silent_client_does_not_block_scrapes(server: Server) -> None:
    url = start(server)
    port = int(url.split(":")[2].split("/")[0])
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:
        assert value(scrape(url), "prefork_workers_target") == 2
        assert server.ask_pid() in server.worker_pids()  # nor the master's other work
    finally:
        for sock in silent:
            sock.close()


def test_other_paths_and_methods(server: Server) -> None:
    url = start(server)
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(url.replace("/metrics", "/nope"), timeout=10)
    assert missing.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as post:
        urllib.request.urlopen(urllib.request.Request(url, data=b"x", method="POST"), timeout=10)
    assert post.value.code == 405


def test_metrics_bind_in_use_is_a_bind_error(server: Server) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server.start("--metrics-bind", f"127.0.0.1:{port}")
        assert server.wait_exit(30) == 1
    assert "cannot listen on 127.0.0.1:" in server.log()
