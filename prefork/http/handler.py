"""The handler a worker runs per connection with --wsgi, and the requests of one connection.

Two ways to serve a connection, chosen by the worker:

- kept in the worker's epoll set between requests (prefork/keepalive.py, the
  default): the worker calls :meth:`HTTPConnection.first` on a new connection,
  then :meth:`~HTTPConnection.receive` and :meth:`~HTTPConnection.resume` each
  time it has a request, and closes it when one returns False;
- one connection per thread until it ends (:meth:`HTTPConnection.serve`, with
  --max-per-source or a handler not bound to a worker): a request is answered
  ``Connection: close`` when other connections wait in the worker's accept
  queue or the worker is stopping (decided as the head goes out, see
  response.py), and between requests the worker waits for the client at most
  --keepalive seconds, giving it up as soon as another connection queues
  (:meth:`~prefork.worker.Worker.await_next`).

Pipelined requests already received are answered in order first, either way.
The handler holds no per-connection state: each connection gets its own
:class:`HTTPConnection`, so threads (--threads) share the handler safely.
"""

from __future__ import annotations

import logging
import select
import socket
import sys
import time
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard

from ..settings import Settings
from .accesslog import AccessLog
from .body import Body, BodyError
from .environ import HTTPConfig, connection_environ, is_trusted, request_environ
from .parser import HTTPError, Request, RequestReader
from .response import AppHeads, Exchange, FileWrapper, error_response

if TYPE_CHECKING:
    from ssl import SSLSocket

    from ..log import AccessLogFile

log = logging.getLogger("prefork")

RECV_SIZE = 65536
DRAIN_LIMIT = 1 << 20  # unread body bytes we read and drop to keep the connection; beyond, close it
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
HEAD_TIMEOUT = 10.0  # a request head must arrive whole this soon after its first bytes
LINGER_SECONDS = 2.0  # after an error answer, how long we still read what the client sends


class Host(Protocol):
    """What the handler asks its worker between requests (prefork.worker.Worker), and the access log file
    the master opened for the worker's generation."""

    access_log: AccessLogFile | None

    def should_release(self) -> bool: ...

    def await_next(self, conn: socket.socket, addr: Any, timeout: float) -> bool: ...


class Alone:
    """The host of a handler not bound to a worker: nobody else waits, never stopping; no file inherited."""

    access_log: AccessLogFile | None = None

    def should_release(self) -> bool:
        return False

    def await_next(self, conn: socket.socket, addr: Any, timeout: float) -> bool:
        return wait_readable(conn, timeout)


def is_tls(sock: socket.socket) -> TypeGuard[SSLSocket]:
    """Whether ``sock`` speaks TLS. Without TLS configured ssl is never imported (nor any
    SSLSocket made): this module does not import it either, a --wsgi worker stays without it."""
    ssl = sys.modules.get("ssl")
    return ssl is not None and isinstance(sock, ssl.SSLSocket)


def tls_pending(sock: socket.socket) -> bool:
    """Whether TLS already decrypted bytes that poll() cannot see."""
    return is_tls(sock) and sock.pending() > 0


def wait_readable(sock: socket.socket, timeout: float) -> bool:
    """Whether ``sock`` has bytes (or EOF) to read within ``timeout`` seconds."""
    if tls_pending(sock):
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


class WSGIHandler:
    """Serves a WSGI application on each connection a worker hands over."""

    def __init__(self, app: Any, settings: Settings, host: Host | None = None) -> None:
        self.app = app
        self.settings = settings
        self.config = HTTPConfig.from_settings(settings)
        self.host: Host = host or Alone()
        self.access = make_access_log(settings, self.host.access_log)
        self.date_cache: list[Any] = [0, b""]  # [second, Date line]: replaced whole, safe across threads
        self.heads = AppHeads()
        self.header_keys: dict[bytes, str] = {}  # field name -> environ key (environ.add_headers)

    def bind_worker(self, worker: Host) -> WSGIHandler:
        """This handler, asking ``worker`` about keep-alive (called once in each worker)."""
        return WSGIHandler(self.app, self.settings, worker)

    def __call__(self, conn: socket.socket, addr: Any) -> None:
        HTTPConnection(self, conn, addr).serve()

    def open(self, conn: socket.socket, addr: Any) -> HTTPConnection:
        """The connection, for a worker that keeps it between requests (prefork.keepalive)."""
        return HTTPConnection(self, conn, addr)


def make_access_log(settings: Settings, inherited: AccessLogFile | None) -> AccessLog | None:
    """Where this handler writes its access log: the file its worker inherited from the master, if any (the
    master opens it, so --user needs no right to create it); else stdout (``-``), or the file ``settings`` name
    opened by this process (a handler not bound to a worker)."""
    as_json = settings.log_format == "json"
    if inherited is not None:
        return AccessLog(inherited.path, settings.access_log_format, as_json, inherited.fd)
    if settings.access_log:
        return AccessLog(settings.access_log, settings.access_log_format, as_json)
    return None


class HTTPConnection:
    """One client connection: read requests, answer them in order, until it should end."""

    def __init__(self, handler: WSGIHandler, sock: socket.socket, addr: Any) -> None:
        self.handler = handler
        self.host = handler.host
        self.sock = sock
        self.addr = addr
        self.tls = is_tls(sock)
        self.reader = RequestReader(handler.config.limits)
        self.base = connection_environ(handler.config, addr, self.tls, FileWrapper)
        self.trusted = handler.config.trusted if is_trusted(handler.config, addr) else None

    def serve(self) -> None:
        """Serve the connection to its end, waiting between requests as long as the host lets it."""
        self.set_nodelay()
        if not self.read_first():
            return
        keepalive = self.handler.config.keepalive
        while self.resume() and self.host.await_next(self.sock, self.addr, keepalive):
            pass

    def set_nodelay(self) -> None:
        if self.sock.family in (socket.AF_INET, socket.AF_INET6):
            # Heads and bodies go out in separate sends (streaming, sendfile): no Nagle delay.
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # --- a connection kept in the worker's epoll set between requests (prefork.keepalive) ---

    def first(self) -> bool | None:
        """Read what a new connection already sent: True: bytes came; None: nothing yet; False: it closed."""
        self.set_nodelay()
        if self.tls:
            return True if wait_readable(self.sock, 0) else None
        try:
            return self.receive(socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None

    def resume(self) -> bool:
        """Answer every request whose bytes are here (or on their way); True: wait for the client's next."""
        reader = self.reader
        while True:
            request = self.next_request()
            if request is None or not self.answer(request):
                return False
            reader.queue.popleft()
            if reader.queue or reader.partial or reader.error is not None or (self.tls and tls_pending(self.sock)):
                continue  # pipelined, on its way, or a bad request to answer: no waiting to decide
            return not reader.upgraded

    def read_first(self) -> bool:
        """Wait (at most --keepalive, else 5 s) for the first request's bytes; usually already here."""
        if not self.tls:
            try:
                return self.receive(socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass  # nothing yet: wait below
        return wait_readable(self.sock, self.handler.config.keepalive or 5.0)

    def next_request(self) -> Request | None:
        """The oldest request not yet answered, receiving its head if needed; None: the connection ends."""
        reader = self.reader
        deadline = 0.0
        while not reader.queue:
            if reader.error is not None:
                self.send_error(reader.error)
                return None
            if reader.partial:  # a head begun: it must be whole within HEAD_TIMEOUT (slowloris)
                deadline = deadline or time.monotonic() + HEAD_TIMEOUT
                if not wait_readable(self.sock, max(0.0, deadline - time.monotonic())):
                    log.debug("request head from %s incomplete after %gs; closed", self.addr, HEAD_TIMEOUT)
                    return None
            if reader.upgraded or not self.receive():
                return None
        return reader.queue[0]

    def receive(self, flags: int = 0) -> bool:
        """One recv() into the parser; False when the client closed (or reset) the connection.
        With MSG_DONTWAIT, BlockingIOError when nothing has come yet."""
        try:
            data = self.sock.recv(RECV_SIZE, flags)
        except ConnectionError:
            return False
        if not data:
            return False
        self.reader.feed(data)
        return True

    def answer(self, request: Request) -> bool:
        """Run the application on ``request``; True when the connection may go on."""
        started = time.time() if self.handler.access else 0.0
        environ = request_environ(self.base, request, self.trusted, self.local_address, self.handler.header_keys)
        environ["wsgi.input"] = Body(request, self)
        exchange = Exchange(self, request)
        keep = exchange.run(self.handler.app, environ)
        if self.handler.access is not None:
            self.handler.access.write(environ, exchange, started)
        return keep and self.drain(request)

    def drain(self, request: Request) -> bool:
        """Read and drop what the application left of the body; False: too much, close instead."""
        request.discard = True
        if request.complete and not request.body_chunks:
            return True  # read whole (or no body): the common case
        dropped = sum(len(chunk) for chunk in request.body_chunks)
        request.body_chunks.clear()
        while not request.complete:
            if dropped > DRAIN_LIMIT or not self.reader.usable or not self.receive():
                return False
            dropped += sum(len(chunk) for chunk in request.body_chunks)
            request.body_chunks.clear()
        return True

    # --- for the body and the response ---

    def more_body(self, request: Request) -> None:
        """Receive more of ``request``'s body (asking for it first if the client waits for 100 Continue)."""
        if request.expect_continue and not request.continue_sent:
            request.continue_sent = True
            self.send(CONTINUE)
        if not self.reader.usable or not self.receive():
            raise BodyError("the request body ended early" if self.reader.error is None
                            else f"malformed request body: {self.reader.error.reason}")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_error(self, error: HTTPError) -> None:
        """Answer a request we refuse ourselves; the connection then ends."""
        log.debug("bad request from %s: %d %s", self.addr, error.status, error.reason)
        try:
            self.send(error_response(error.status, error.reason))
            queue = self.reader.queue
            if self.reader.error is not None or (queue and not queue[0].complete):
                self.linger()  # the client may still be sending
        except OSError:
            pass

    def linger(self) -> None:
        """Read and drop what the client still sends, briefly, before closing.

        Closing with unread bytes makes the kernel send a reset, which can destroy
        the error answer before the client reads it (nginx's lingering_close).
        """
        self.sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_SECONDS
        dropped = 0
        while dropped < DRAIN_LIMIT and wait_readable(self.sock, max(0.0, deadline - time.monotonic())):
            data = self.sock.recv(RECV_SIZE)
            if not data:
                return
            dropped += len(data)

    def local_address(self) -> tuple[str, str]:
        """SERVER_NAME and SERVER_PORT when the request has no Host header."""
        try:
            name = self.sock.getsockname()
        except OSError:
            return "localhost", ""
        if isinstance(name, tuple):
            return str(name[0]), str(name[1])
        return "localhost", ""

