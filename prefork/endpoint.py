"""Tiny request/answer servers run inside the master's loop: the control socket and /metrics.

The master must never block, so an endpoint is a non-blocking listening socket
registered in the master's selector, and each of its connections a small state
machine: read a short request (up to a terminator, a size limit or EOF), build
the whole answer at once, write it as fast as the client takes it, close. A
client that stalls costs one descriptor; past :data:`MAX_CONNECTIONS` the oldest
is dropped, so no timer is needed to bound what stalled clients hold.
"""

from __future__ import annotations

import logging
import selectors
import socket
from collections.abc import Callable
from functools import partial

log = logging.getLogger("prefork")

MAX_REQUEST = 8192  # bytes; a status query or a scrape is a few hundred
MAX_CONNECTIONS = 32
ACCEPTS_PER_WAKEUP = 16  # leave the loop to the master's other duties under a flood

Answer = Callable[[bytes], bytes]  # the request's bytes -> the whole answer


class Connection:
    """One client: what it has sent so far, then what is left to send it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received = b""
        self.outgoing: memoryview | None = None


class Endpoint:
    """A listening socket answered from the master's selector, one short exchange per connection."""

    def __init__(self, sock: socket.socket, name: str, selector: selectors.BaseSelector,
                 answer: Answer, terminator: bytes, on_close: Callable[[], None] | None = None) -> None:
        self.sock = sock
        self.name = name
        self.on_close = on_close  # removes a unix socket file, say
        self.selector = selector
        self.answer = answer
        self.terminator = terminator
        self.connections: dict[int, Connection] = {}  # by descriptor, oldest first
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, self.accept_clients)

    def fds(self) -> list[int]:
        """Every descriptor we hold, for a forked worker to close (it must not keep a client waiting)."""
        return [self.sock.fileno(), *self.connections]

    def accept_clients(self) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ECONNABORTED, EMFILE...: this client, not the endpoint
                log.warning("%s: accept() failed: %s", self.name, exc.strerror)
                return
            conn.setblocking(False)
            if len(self.connections) >= MAX_CONNECTIONS:
                self.drop(next(iter(self.connections.values())))
            client = Connection(conn)
            self.connections[conn.fileno()] = client
            self.selector.register(conn, selectors.EVENT_READ, partial(self.read_request, client))

    def read_request(self, client: Connection) -> None:
        try:
            data = client.sock.recv(MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.drop(client)
            return
        client.received += data
        if data and self.terminator not in client.received and len(client.received) < MAX_REQUEST:
            return
        try:
            answer = self.answer(client.received)
        except Exception:  # a bug in a report must not take the master down
            log.exception("%s: building the answer failed", self.name)
            self.drop(client)
            return
        client.outgoing = memoryview(answer)
        self.selector.modify(client.sock, selectors.EVENT_WRITE, partial(self.write_answer, client))
        self.write_answer(client)

    def write_answer(self, client: Connection) -> None:
        assert client.outgoing is not None
        try:
            sent = client.sock.send(client.outgoing)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.drop(client)
            return
        client.outgoing = client.outgoing[sent:]
        if not client.outgoing:
            self.drop(client)

    def drop(self, client: Connection) -> None:
        """Forget and close one connection (done, failed, or the oldest of too many)."""
        fd = client.sock.fileno()
        if self.connections.pop(fd, None) is None:
            return
        self.selector.unregister(client.sock)
        client.sock.close()

    def close(self) -> None:
        for client in list(self.connections.values()):
            self.drop(client)
        self.selector.unregister(self.sock)
        self.sock.close()
        if self.on_close is not None:
            self.on_close()
