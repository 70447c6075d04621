"""Who may connect: --allow/--deny, --max-per-source, unix socket mode and owner."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import stat
from pathlib import Path

import pytest
from conftest import Server, request, wait_for

from prefork.access import AccessRules, ClientIP, client_ip, count_busy_from, network_list, parse_network, peer_prefix
from prefork.connection import RateLimitedLog
from prefork.errors import ConfigError
from prefork.scoreboard import Scoreboard
from prefork.settings import Settings
from prefork.sockets import Owner
from prefork.sources import load
from prefork.values import FileMode, file_mode, owner

# --- pure functions ---


def test_parse_network() -> None:
    assert parse_network("10.0.0.0/8") == ipaddress.ip_network("10.0.0.0/8")
    assert parse_network(" 192.0.2.7 ") == ipaddress.ip_network("192.0.2.7/32")
    assert parse_network("2001:db8::/32") == ipaddress.ip_network("2001:db8::/32")
    with pytest.raises(ConfigError, match=r"did you mean 10\.0\.0\.0/8"):
        parse_network("10.1.2.3/8")
    with pytest.raises(ConfigError, match="not an IP address or CIDR"):
        parse_network("example.com")
    assert network_list("10.0.0.0/8, ::1") == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1"))
    with pytest.raises(ConfigError):
        network_list([10])


def ip(text: str) -> ClientIP:
    address = client_ip((text, 0))
    assert address is not None
    return address


def test_rules_deny_wins_and_allow_excludes_the_rest() -> None:
    rules = AccessRules(network_list("10.0.0.0/8,2001:db8::/32"), network_list("10.9.0.0/16"))
    assert rules.refusal(ip("10.1.2.3")) is None
    assert rules.refusal(ip("2001:db8::1")) is None
    assert "deny" in (rules.refusal(ip("10.9.1.1")) or "")
    assert "allow" in (rules.refusal(ip("192.0.2.1")) or "")
    assert "allow" in (rules.refusal(ip("2001:db9::1")) or "")
    assert "deny" in (rules.refusal(ip("::ffff:10.9.0.1")) or "")  # IPv4-mapped: the IPv4 rules apply
    assert AccessRules((), network_list("::1")).refusal(ip("127.0.0.1")) is None
    assert AccessRules((), network_list("0.0.0.0/0")).refusal(ip("::1")) is None  # families never mix


def test_client_ip() -> None:
    assert client_ip(("127.0.0.1", 5)) == ClientIP(4, int(ipaddress.ip_address("127.0.0.1")))
    assert client_ip(("::ffff:10.1.2.3", 5, 0, 0)) == ip("10.1.2.3")
    assert client_ip(("fe80::1%eth0", 5, 0, 2)) == ClientIP(6, int(ipaddress.ip_address("fe80::1")))
    assert client_ip("") is None  # a unix peer
    assert client_ip(("not-an-ip", 5)) is None


def test_refusal_log_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limited = RateLimitedLog(burst=3, window=10, clock=lambda: now[0])
    with caplog.at_level("INFO", logger="prefork"):
        written = [limited.info("refused %d", n) for n in range(100)]
        assert written.count(True) == 3
        now[0] = 10.5
        assert limited.info("refused again")
    assert "97 more refused connections were not logged" in caplog.text
    assert len(caplog.records) == 5


def test_count_busy_from_reads_every_generation() -> None:
    board = Scoreboard(16)
    for index, peer in enumerate(["10.0.0.1:5", "10.0.0.10:6", "10.0.0.1:7", "[::1]:8"]):
        board.slots[board.allocate(0, index, 1 + index % 2)].begin(peer)
    board.slots[board.allocate(0, 9, 1)].set_peer("10.0.0.1:9")  # booting, not busy
    assert count_busy_from(board, peer_prefix("10.0.0.1:1234")) == 2
    assert count_busy_from(board, peer_prefix("[::1]:1")) == 1
    board.slots[0].end()
    assert count_busy_from(board, peer_prefix("10.0.0.1:1")) == 1


def test_unix_mode_and_owner_parsers() -> None:
    assert file_mode("600") == file_mode("0o600") == file_mode(FileMode(0o600)) == 0o600  # FileMode: TOML 0o600
    with pytest.raises(ConfigError, match="0o660"):
        file_mode(660)  # a TOML decimal by mistake
    with pytest.raises(ConfigError):
        file_mode("9")
    assert owner("0:0") == Owner(0, 0) and owner("root") == Owner(0, -1) and owner(":0") == Owner(-1, 0)
    with pytest.raises(ConfigError, match="not a user"):
        owner("no-such-user-here")


def test_settings_from_file_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "prefork.toml"
    config.write_text('allow = ["10.0.0.0/8", "::1"]\nunix_mode = 0o600\nproxy_protocol = true\n')
    settings, _ = load({"config": str(config)}, {"PREFORK_DENY": "10.9.0.0/16,10.8.0.0/16",
                                                  "PREFORK_PROXY_ALLOW": "192.0.2.10"})
    assert settings.allow == network_list("10.0.0.0/8,::1") and settings.unix_mode == 0o600
    assert settings.deny == network_list("10.9.0.0/16,10.8.0.0/16") and settings.proxy_protocol
    assert settings.proxy_allow == network_list("192.0.2.10")
    config.write_text('deny = ["10.1.2.3/8"]\n')
    with pytest.raises(ConfigError, match=r"deny: '10\.1\.2\.3/8' has host bits set"):
        load({"config": str(config)}, {})


def test_settings_refuse_incoherent_combinations() -> None:
    with pytest.raises(ConfigError, match="needs ca_certs"):
        Settings(verify_client=True)
    with pytest.raises(ConfigError, match="threads"):
        Settings(max_per_source=2, threads=4)


# --- the real server ---


def ask(server: Server, source: str = "127.0.0.1", address: tuple[str, int] | None = None) -> str:
    """The handler's answer to a client bound to ``source``; "" when closed or reset."""
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    with socket.socket(family) as sock:
        sock.settimeout(20)
        sock.bind((source, 0))
        sock.connect(address or server.address)
        try:
            sock.shutdown(socket.SHUT_WR)
            return sock.recv(1000).decode().strip()
        except TimeoutError:
            raise  # neither served nor closed: a failure
        except OSError:  # reset, or already closed (ENOTCONN): refused
            return ""


def test_allow_deny_and_the_same_worker_goes_on(server: Server) -> None:
    server.start("--allow", "127.0.0.0/8", "--deny", "127.0.0.2", app="testapps:pid_peer",
                 workers=1).wait_ready(1)
    pid = ask(server).split()[0]
    assert ask(server, "127.0.0.3").split()[0] == pid
    for _ in range(30):
        assert ask(server, "127.0.0.2") == ""
        assert ask(server).split()[0] == pid
    # Each refusal is logged before its connection is closed, so the log is complete here.
    refusals = re.findall(r"refused connection from 127\.0\.0\.2:\d+: denied", server.log())
    assert 1 <= len(refusals) <= 10  # rate-limited: at most 10 lines per 10 s per worker


def test_ipv6_rules(server: Server) -> None:
    server.start("--bind", f"[::1]:{server.port}", "--bind", f"127.0.0.1:{server.port}",
                 "--allow", "127.0.0.1", "--allow", "::1", "--deny", "127.0.0.1",
                 bind=False, app="testapps:pid_peer", workers=1).wait_ready(1)
    assert ask(server, "::1", ("::1", server.port)).split()[1].startswith("('::1'")
    assert ask(server) == ""


def test_max_per_source(server: Server) -> None:
    server.start("--max-per-source", "1", app="testapps:hold", workers=3).wait_ready(3)
    first = socket.create_connection(server.address, timeout=20, source_address=("127.0.0.2", 0))
    assert first.recv(100).strip().isdigit()  # in the handler: one worker busy with 127.0.0.2
    assert ask(server, "127.0.0.2") == ""  # a second from that host is closed at once
    assert ask(server, "127.0.0.3").isdigit()  # other hosts are served
    first.close()
    wait_for(lambda: ask(server, "127.0.0.2").isdigit(), 20, what="127.0.0.2 served again")
    wait_for(lambda: "already served (--max-per-source)" in server.log(), what="refusal logged")


def test_unix_socket_mode_and_owner(server_factory: object, tmp_path: Path) -> None:
    path = tmp_path / "default.sock"
    server = server_factory()  # type: ignore[operator]
    server.start("--bind", f"unix:{path}", bind=False, workers=1).wait_ready(1)
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660 & ~umask  # "660 less the umask's bits"
    assert request(str(path)).strip().isdigit()
    if os.geteuid() != 0:
        pytest.skip("changing a socket's owner needs root")
    path = tmp_path / "owned.sock"
    server = server_factory()  # type: ignore[operator]
    server.start("--bind", f"unix:{path}", "--unix-mode", "600", "--unix-owner", "nobody:nogroup",
                 bind=False, workers=1).wait_ready(1)
    info = os.stat(path)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert Owner(info.st_uid, info.st_gid) == owner("nobody:nogroup")
