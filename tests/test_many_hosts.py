"""Many prefork hosts behind a real HAProxy (issue 18): three network namespaces, one master each.

The topology and HAProxy's configuration are in ``netns.py``, the scenarios in
``hosts_scenarios.py`` (both also run by ``bench/hosts.py``). Each scenario runs under
load from four clients, each with its own address, and counts failed requests by kind;
its figures are printed. Skipped with one line where network namespaces (root) or
HAProxy are not available.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from typing import Any

import hosts_scenarios as hosts
import netns
import pytest
from conftest import ROOT

pytestmark = pytest.mark.timeout(90)

REASON = netns.unavailable()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[hosts.Cluster]:
    if REASON:
        pytest.skip(REASON)
    cluster = hosts.Cluster("pft", tmp_path_factory.mktemp("hosts"))
    try:
        cluster.open()
        yield cluster
    finally:
        cluster.close()
    assert not set(cluster.topology.names()) & set(namespaces()), "a namespace of ours survived the cleanup"


@pytest.fixture
def load(cluster: hosts.Cluster) -> Iterator[hosts.Load]:
    cluster.ensure_all_up()
    with hosts.Load(cluster.topology) as load:
        yield load


def namespaces() -> list[str]:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()


def report(capsys: pytest.CaptureFixture[str], name: str, figures: dict[str, Any]) -> None:
    with capsys.disabled():
        print("\n" + hosts.describe(name, figures))


def assert_clean(cluster: hosts.Cluster, figures: dict[str, Any]) -> None:
    assert figures["failed"] == 0, f"{figures}\n{cluster.log_tail()}"
    assert figures["wrong_client"] == 0, figures


def test_steady_load_spreads_over_hosts_with_real_client_addresses(cluster: hosts.Cluster, load: hosts.Load,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    figures = hosts.steady(cluster, load)
    report(capsys, "1 steady load", figures)
    assert_clean(cluster, figures)
    assert set(figures["by_host"]) == {"h1", "h2", "h3"}, figures
    # Every answer named the client's own address and port (PROXY v2), none HAProxy's.
    assert figures["ok"] >= 90 and figures["wrong_client"] == 0, figures


def test_rolling_reload_host_by_host_drops_nothing(cluster: hosts.Cluster, load: hosts.Load,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    figures = hosts.rolling_reload(cluster, load)
    report(capsys, "2 rolling HUP", figures)
    assert_clean(cluster, figures)


def test_rolling_upgrade_host_by_host_drops_nothing(cluster: hosts.Cluster, load: hosts.Load,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    figures = hosts.rolling_upgrade(cluster, load)
    report(capsys, "3 rolling USR2", figures)
    assert_clean(cluster, figures)


def test_drained_host_leaves_the_pool_before_it_stops_accepting(cluster: hosts.Cluster, load: hosts.Load,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    figures = hosts.drain(cluster, load)
    report(capsys, "4 drain (TERM, --shutdown-delay)", figures)
    assert_clean(cluster, figures)
    # /readyz turns 503 at TERM (the shutdown delay), so HAProxy has the host out while its
    # listener still accepts: the pool left at or before a look that still saw the master accepting.
    assert figures["left_pool_after"] is not None, figures
    assert figures["last_seen_accepting_after"] is not None, figures
    assert figures["left_pool_after"] <= figures["last_seen_accepting_after"], figures
    assert figures["last_seen_accepting_after"] < figures["stopped_accepting_after"], figures


def test_killed_master_fails_only_in_flight_requests_and_rejoins(cluster: hosts.Cluster, load: hosts.Load,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    figures = hosts.kill(cluster, load)
    report(capsys, "5 kill -9 of a master", figures)
    # Each client waits for its answer, so at most one request per client was in flight to the host.
    assert figures["failed"] <= figures["in_flight_bound"], figures
    assert set(figures["failures"]) <= {"HTTP 502", "HTTP 503"}, figures  # HAProxy answered for the lost ones
    assert figures["wrong_client"] == 0, figures
    assert figures["sent_while_out"] == 0, figures  # once DOWN, HAProxy sent it nothing (100 requests went elsewhere)
    assert figures["by_host"].get("h3", 0) > 0, figures  # it rejoined and served


def test_readme_shows_the_haproxy_config_the_test_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Running on many hosts"):]
    shown = re.search(r"```haproxy\n(.*?)```", section, re.S)
    assert shown is not None, "no haproxy block in 'Running on many hosts'"
    addresses = [netns.host_address(i) for i in range(3)]
    assert shown.group(1) == netns.haproxy_config(addresses), "README: not netns.haproxy_config"
    toml = re.search(r"```toml\n(.*?)```", section, re.S)
    assert toml is not None, "no toml block in 'Running on many hosts'"
    expected = netns.host_config(addresses[0], "myproject.wsgi:application")
    assert toml.group(1) == expected, "README: not netns.host_config"
