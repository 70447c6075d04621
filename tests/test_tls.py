"""TLS: real certificates (trustme), good, plain, broken and slow clients, rotation on HUP, contexts inherited."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest
import trustme
from conftest import Server, wait_for

from prefork.errors import ConfigError
from prefork.settings import Settings
from prefork.tls import load_context, make_context


def write_identity(ca: trustme.CA, directory: Path) -> tuple[str, str]:
    """A server certificate for 127.0.0.1 signed by ``ca``: (certfile, keyfile) paths."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = directory / "server.pem", directory / "server.key"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(certfile), append=True)
    cert.private_key_pem.write_to_path(str(keyfile))
    return str(certfile), str(keyfile)


def client_context(ca: trustme.CA, client_cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if client_cert is not None:
        client_cert.configure_cert(context)
    return context


def tls_ask(server: Server, context: ssl.SSLContext) -> str:
    """Handshake, read the handler's answer; raises ssl.SSLError/OSError when refused."""
    with socket.create_connection(server.address, timeout=20) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        return sock.recv(1000).decode().strip()


def plain_ask(server: Server, payload: bytes) -> bytes:
    """What a client that does not speak TLS gets: never the handler's answer."""
    with socket.create_connection(server.address, timeout=20) as sock:
        try:
            sock.sendall(payload)
            data = b""
            while chunk := sock.recv(1000):
                data += chunk
            return data
        except TimeoutError:
            raise  # neither served nor closed: a failure
        except OSError:  # reset, or already closed (ENOTCONN): refused
            return b""


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def test_good_plain_broken_and_slow_clients(server: Server, ca: trustme.CA, tmp_path: Path) -> None:
    certfile, keyfile = write_identity(ca, tmp_path)
    server.start("--certfile", certfile, "--keyfile", keyfile, "--handshake-timeout", "1",
                 app="testapps:tls_info", workers=1).wait_ready(1)
    context = client_context(ca)
    pid, kind, version, _ = tls_ask(server, context).split()
    assert kind == "SSLSocket" and version.startswith("TLSv1.")
    for payload in (b"GET / HTTP/1.0\r\n\r\n", b"\x16\x03\x01\x00\x05hello", b"\x00" * 100):
        assert pid.encode() not in plain_ask(server, payload)
        assert tls_ask(server, context).split()[0] == pid  # the same worker goes on
    # A client that opens the handshake and stops, then one that trickles it a byte at a
    # time: --handshake-timeout bounds the whole handshake, not each read.
    with socket.create_connection(server.address, timeout=20) as silent:
        silent.sendall(b"\x16\x03\x01")
        assert silent.recv(100) == b""
    trickle_until_closed(server)
    assert tls_ask(server, context).split()[0] == pid
    wait_for(lambda: "TLS handshake failed" in server.log(), what="refusal logged")


def trickle_until_closed(server: Server) -> int:
    """Send a ClientHello one byte at a time; how many bytes went out before the server closed.

    A timeout per read would never fire: the server hears something every 0.1s.
    """
    hello = make_client_hello()
    with socket.create_connection(server.address, timeout=20) as sock:
        for sent, byte in enumerate(hello):
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                return sent
            time.sleep(0.1)
            if _closed(sock):
                return sent
    raise AssertionError("the server never closed a connection trickling its handshake")


def _closed(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(100, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.settimeout(20)


def make_client_hello() -> bytes:
    """The first bytes a real TLS client sends (taken from an in-memory handshake)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="x")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def test_client_certificates(server: Server, ca: trustme.CA, tmp_path: Path) -> None:
    certfile, keyfile = write_identity(ca, tmp_path)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server.start("--certfile", certfile, "--keyfile", keyfile, "--ca-certs", str(tmp_path / "ca.pem"),
                 "--verify-client", app="testapps:tls_info", workers=1).wait_ready(1)
    alice = ca.issue_cert("alice@example.org", common_name="alice")
    assert tls_ask(server, client_context(ca, alice)).split()[3] == "alice"
    # Without a certificate, or with one from another CA: the handler never runs. (In TLS 1.3
    # the client learns it on its first read: an alert, or the connection closed.)
    stranger = trustme.CA().issue_cert("mallory@example.org", common_name="mallory")
    for context in (client_context(ca), client_context(ca, stranger)):
        with pytest.raises((ssl.SSLError, ConnectionResetError, ValueError)):
            answer = tls_ask(server, context)
            if not answer:
                raise ValueError("closed without an answer")


def test_certificates_reloaded_on_hup(server: Server, ca: trustme.CA, tmp_path: Path) -> None:
    certfile, keyfile = write_identity(ca, tmp_path)
    server.start("--certfile", certfile, "--keyfile", keyfile, app="testapps:tls_info", workers=1).wait_ready(1)
    assert tls_ask(server, client_context(ca))
    rotated = trustme.CA()
    write_identity(rotated, tmp_path)  # the same paths, new files: what a rotation does
    server.signal(signal.SIGHUP)

    def served_with_new_certificate() -> bool:
        try:
            return bool(tls_ask(server, client_context(rotated)))
        except (ssl.SSLError, OSError):
            return False

    wait_for(served_with_new_certificate, 30, interval=0.2, what="the rotated certificate served")


def test_broken_rotation_is_refused_and_the_old_certificate_served(server: Server, ca: trustme.CA,
                                                                  tmp_path: Path) -> None:
    certfile, keyfile = write_identity(ca, tmp_path)
    server.start("--certfile", certfile, "--keyfile", keyfile, app="testapps:tls_info", workers=1).wait_ready(1)
    pid = tls_ask(server, client_context(ca)).split()[0]
    trustme.CA().issue_cert("x").private_key_pem.write_to_path(keyfile)  # a key that does not match
    server.signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in server.log(), 30, what="the reload refused")
    assert "cannot load the certificate and key" in server.log()
    assert tls_ask(server, client_context(ca)).split()[0] == pid


def test_bad_tls_settings_are_refused_at_start(server_factory: object, ca: trustme.CA, tmp_path: Path) -> None:
    certfile, keyfile = write_identity(ca, tmp_path)
    other_key = tmp_path / "other.key"
    trustme.CA().issue_cert("x").private_key_pem.write_to_path(str(other_key))
    cases = [
        (["--keyfile", keyfile], "given without certfile"),
        (["--certfile", certfile, "--keyfile", str(other_key)], "cannot load the certificate and key"),
        (["--certfile", certfile, "--keyfile", keyfile, "--verify-client"], "needs ca_certs"),
        (["--certfile", str(tmp_path / "missing.pem")], "is not a readable file"),
    ]
    for args, message in cases:
        server = server_factory()  # type: ignore[operator]
        server.start(*args)
        assert server.wait_exit() == 2
        assert message in server.log(), server.log()


def test_make_context_names_the_file() -> None:
    with pytest.raises(ConfigError, match=r"nothing\.pem"):
        make_context("nothing.pem", None, None, False)


def test_workers_inherit_their_generations_context(server: Server, ca: trustme.CA, tmp_path: Path) -> None:
    """The master loads the files once (start, HUP); a replacement worker reads none of them."""
    certfile, keyfile = write_identity(ca, tmp_path)
    server.start("--certfile", certfile, "--keyfile", keyfile, app="testapps:tls_info", workers=1).wait_ready(1)
    first = tls_ask(server, client_context(ca)).split()[0]
    Path(keyfile).unlink()  # gone: a worker loading it at boot would fail to boot
    Path(certfile).unlink()
    os.kill(int(first), signal.SIGKILL)
    wait_for(lambda: server.serving_pids() - {int(first)}, 30, what=f"a replacement; log:\n{server.log()}")
    assert tls_ask(server, client_context(ca)).split()[0] != first  # served with the inherited context
    assert "exited during boot" not in server.log()


def test_settings_values_read_no_certificate_file(ca: trustme.CA, tmp_path: Path) -> None:
    """Building or replacing a Settings value loads nothing: contexts are loaded once, by tls.load_context."""
    certfile, keyfile = write_identity(ca, tmp_path)
    settings = Settings(app="testapps:pid", certfile=certfile, keyfile=keyfile)
    Path(keyfile).write_text("not a key")
    changed = dataclasses.replace(settings, workers=3)  # no ConfigError: the files are not read here
    with pytest.raises(ConfigError, match="cannot load the certificate and key"):
        load_context(changed)
