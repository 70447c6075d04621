"""Relay between a client's TLS connection and a program's plain socket, as stunnel does (exec mode).

The program holds one end of a socketpair as its stdin and stdout; the worker
holds the other and the TLS socket, both non-blocking, and moves bytes each
way through a bounded buffer, so neither side can make the worker block nor
grow its memory. End of stream is passed on as a half-close: the client's
close_notify (or FIN) becomes EOF on the program's stdin, the program's EOF
ends what is sent to the client once its buffer is written. A client that
vanishes closes the program's end both ways (it then sees EOF and EPIPE).
"""

from __future__ import annotations

import select
import socket
import ssl

LIMIT = 256 * 1024  # bytes buffered each way before we stop reading that side
CHUNK = 16 * 1024  # one TLS record


class Relay:
    def __init__(self, tls: ssl.SSLSocket, plain: socket.socket) -> None:
        tls.setblocking(False)
        plain.setblocking(False)
        self.tls = tls
        self.plain = plain
        self.to_plain = bytearray()  # from the client, for the program
        self.to_tls = bytearray()  # from the program, for the client
        self.client_eof = False  # the client sent everything it will
        self.program_eof = False  # the program wrote everything it will
        self.client_gone = False  # reset, or a TLS error: nothing more goes either way
        self.program_closed_input = False  # the program will read no more: drop what the client sends
        self.told_program_eof = False
        # What the TLS layer waits for to read, and to write (a TLS 1.3 key update may swap them).
        self.read_wait = select.POLLIN
        self.write_wait = select.POLLOUT

    @property
    def done(self) -> bool:
        """Everything the program wrote has reached the client (or the client is gone)."""
        return self.client_gone or (self.program_eof and not self.to_tls)

    def register(self, poller: select.poll) -> None:
        tls_events = plain_events = 0
        if self.client_gone:
            return
        if not self.client_eof and len(self.to_plain) < LIMIT:
            tls_events |= self.read_wait
        if self.to_tls:
            tls_events |= self.write_wait
        if not self.program_eof and len(self.to_tls) < LIMIT:
            plain_events |= select.POLLIN
        if self.to_plain:
            plain_events |= select.POLLOUT
        if tls_events:
            poller.register(self.tls, tls_events)
        if plain_events:
            poller.register(self.plain, plain_events)

    def pump(self) -> None:
        """Move what can be moved now without blocking, until nothing more can."""
        while not self.client_gone and (self.read_client() | self.write_program() | self.read_program()
                                        | self.write_client()):
            pass

    def read_client(self) -> bool:
        moved = False
        while not self.client_eof and len(self.to_plain) < LIMIT:
            try:
                data = self.tls.recv(CHUNK)
            except ssl.SSLWantReadError:
                self.read_wait = select.POLLIN
                break
            except ssl.SSLWantWriteError:
                self.read_wait = select.POLLOUT
                break
            except (OSError, ssl.SSLError):
                self.lose_client()
                return False
            if not data:
                self.client_eof = True
                break
            moved = True
            if not self.program_closed_input:
                self.to_plain += data
        return moved

    def write_program(self) -> bool:
        moved = False
        while self.to_plain:
            try:
                sent = self.plain.send(self.to_plain)
            except BlockingIOError:
                break
            except OSError:  # the program closed its stdin (or exited): it wants no more
                self.program_closed_input = True
                self.to_plain.clear()
                break
            del self.to_plain[:sent]
            moved = True
        if self.client_eof and not self.to_plain and not self.told_program_eof:
            self.told_program_eof = True
            try:
                self.plain.shutdown(socket.SHUT_WR)  # EOF on the program's stdin
            except OSError:
                pass
        return moved

    def read_program(self) -> bool:
        moved = False
        while not self.program_eof and len(self.to_tls) < LIMIT:
            try:
                data = self.plain.recv(CHUNK)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                self.program_eof = True
                break
            self.to_tls += data
            moved = True
        return moved

    def write_client(self) -> bool:
        moved = False
        while self.to_tls:
            try:
                sent = self.tls.send(self.to_tls[:CHUNK])
            except ssl.SSLWantWriteError:
                self.write_wait = select.POLLOUT
                break
            except ssl.SSLWantReadError:
                self.write_wait = select.POLLIN
                break
            except (OSError, ssl.SSLError):
                self.lose_client()
                return False
            del self.to_tls[:sent]
            moved = True
        return moved

    def lose_client(self) -> None:
        self.client_gone = True
        self.to_plain.clear()
        self.to_tls.clear()
        try:
            self.plain.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        """Say close_notify to the client (a clean end, not a truncation); close our end of the program's socket.

        The TLS socket itself is the worker's to close.
        """
        if not self.client_gone:
            try:
                self.tls.unwrap()  # non-blocking: sends close_notify, then gives up waiting for the client's
            except (OSError, ssl.SSLError, ValueError):
                pass
        self.plain.close()
