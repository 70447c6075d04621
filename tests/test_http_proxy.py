"""--wsgi behind proxies: X-Forwarded-* from trusted peers only, --root-path, and a real nginx."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Server, free_port, wait_for
from http_helpers import assert_validator_clean, get, start_http

pytest.importorskip("httptools")

FORWARDED = {"X-Forwarded-For": "203.0.113.7, 10.0.0.1", "X-Forwarded-Proto": "https",
             "X-Forwarded-Prefix": "/mounted"}


def environ_of(address: tuple[str, int], path: str, headers: dict[str, str] | None = None) -> dict[str, object]:
    status, _, body = get(address, path, headers=headers)
    assert status == 200, body
    return json.loads(body)  # type: ignore[no-any-return]


def test_trusted_proxy_sets_client_scheme_and_script_name(server: Server) -> None:
    start_http(server, "--forwarded-allow-ips", "127.0.0.1", "--forwarded-allow-ips", "10.0.0.0/8", workers=1)
    env = environ_of(server.address, "/mounted/environ", FORWARDED)
    assert env["REMOTE_ADDR"] == "203.0.113.7"  # 10.0.0.1 is a trusted hop too: skipped
    assert env["wsgi.url_scheme"] == "https"
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/mounted", "/environ")
    assert_validator_clean(server)


def test_untrusted_peer_cannot_set_them(server: Server) -> None:
    start_http(server, "--forwarded-allow-ips", "10.0.0.1", workers=1)
    env = environ_of(server.address, "/mounted/environ", FORWARDED)
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["wsgi.url_scheme"] == "http"
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("", "/mounted/environ")


def test_root_path(server: Server) -> None:
    start_http(server, "--root-path", "/app/", workers=1)
    env = environ_of(server.address, "/app/environ")
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/app", "/environ")
    env = environ_of(server.address, "/environ")  # a proxy that already took the prefix off
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/app", "/environ")


NGINX_CONF = """
daemon off;
user root;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 128; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream app {{
        server unix:{sock};
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host:$server_port;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-Forwarded-Prefix /mounted;
            proxy_buffering off;
        }}
    }}
}}
"""


@pytest.fixture
def nginx(server: Server, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """prefork --wsgi on a unix socket, nginx in front of it on a TCP port."""
    binary = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if binary is None:
        pytest.skip("nginx is not installed")
    sock = tmp_path / "app.sock"
    server.start("--wsgi", "--bind", f"unix:{sock}", "--unix-mode", "666", app="wsgiapps:app", bind=False)
    server.wait_ready(2)
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp_path, sock=sock, port=port))
    proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(tmp_path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return proc.poll() is not None  # gone: fail below with its log
        wait_for(listening, 20, what="nginx listening")
        if proc.poll() is not None:
            pytest.fail("nginx did not start: " + (tmp_path / "nginx-error.log").read_text(errors="replace"))
        yield ("127.0.0.1", port)
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    assert_validator_clean(server)


def test_behind_nginx(nginx: tuple[str, int]) -> None:
    env = environ_of(nginx, "/mounted/environ?x=1")
    assert env["REMOTE_ADDR"] == "127.0.0.1"  # nginx's X-Forwarded-For, believed from a unix socket peer
    assert env["wsgi.url_scheme"] == "https"
    assert (env["SCRIPT_NAME"], env["PATH_INFO"], env["QUERY_STRING"]) == ("/mounted", "/environ", "x=1")
    assert env["SERVER_PORT"] == str(nginx[1])


def test_bodies_and_streams_through_nginx(nginx: tuple[str, int]) -> None:
    body = bytes(range(256)) * 2000
    assert get(nginx, "/echo", method="POST", body=body)[2] == body
    status, _, streamed = get(nginx, "/stream")
    assert status == 200 and streamed.endswith(b"part 4\n")
    statuses = {get(nginx, "/")[0] for _ in range(30)}  # nginx keeps upstream connections alive
    assert statuses == {200}
