"""Closing a TCP listener without dropping a connection the kernel completed.

Closing a listening socket resets every connection in its accept queue: the
clients had been told "connected" and lose their request. Keeping it open while
the workers drain the queue never ends under load: clients keep arriving. So a
graceful stop first makes the listener stop *completing* handshakes, and only
then drains and closes it:

1. :func:`refuse_handshakes` attaches a classic BPF socket filter that drops a
   segment with SYN set and ACK clear (a new handshake) and passes everything
   else. The final ACK of a handshake already under way still passes, so that
   connection is completed and queued as usual (a filter dropping everything
   would leave such a client believing it is connected, then reset it). A new
   client's SYN goes unanswered: it retransmits, and finds the socket closed
   (a refusal) or another instance (``SO_REUSEPORT``, a load balancer).
2. The workers accept what is queued, without blocking, and serve it; a worker
   with nothing queued waits while :func:`handshakes_under_way` sees one of our
   handshakes still in SYN-RECV (its final ACK in flight), for at most
   ``HANDSHAKE_SETTLE`` seconds.
3. The last copy of the socket closes; :func:`queued` counts what the kernel
   still held then (only where ``--graceful-timeout`` ran out).

The filter is attached to the socket, not to a descriptor: every process that
shares the socket sees it at once. So it is never attached to a socket that
someone else also serves (systemd's, or during a binary upgrade).
"""

from __future__ import annotations

import ctypes
import socket
import struct

SO_ATTACH_FILTER = 26  # <asm-generic/socket.h>, not exported by the socket module
# At offset 0 of what a TCP socket filter sees is the TCP header; byte 13 holds its flags.
TCP_FLAGS_OFFSET, SYN, ACK = 13, 0x02, 0x10
SYN_WITHOUT_ACK_DROPPED = (  # (code, jt, jf, k) of struct sock_filter
    (0x30, 0, 0, TCP_FLAGS_OFFSET),  # ldb [13]            A = the flags byte
    (0x54, 0, 0, SYN | ACK),  # and #0x12                  A &= SYN|ACK
    (0x15, 0, 1, SYN),  # jeq #0x02, drop, pass            SYN alone: a new handshake
    (0x06, 0, 0, 0),  # drop: ret #0
    (0x06, 0, 0, 0xFFFFFFFF),  # pass: ret #-1 (the whole segment)
)
TCP_INFO_UNACKED = 24  # struct tcp_info: u32 tcpi_unacked; on a listener, the accept queue's length
TCP_SYN_RECV = "03"  # the state column of /proc/net/tcp
HANDSHAKE_SETTLE = 1.0  # at most this long a stopping worker waits for the final ACK of a handshake


def refuse_handshakes(sock: socket.socket) -> None:
    """Attach the filter that stops new handshakes on ``sock`` (OSError if the kernel refuses it)."""
    program = b"".join(struct.pack("HBBI", *insn) for insn in SYN_WITHOUT_ACK_DROPPED)
    buffer = ctypes.create_string_buffer(program)
    fprog = struct.pack("HL", len(SYN_WITHOUT_ACK_DROPPED), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies the program


def queued(sock: socket.socket) -> int:
    """How many completed connections wait in the accept queue of TCP listener ``sock``; 0 if unknown."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_UNACKED + 4)
    except OSError:
        return 0
    return int(struct.unpack_from("I", info, TCP_INFO_UNACKED)[0]) if len(info) >= TCP_INFO_UNACKED + 4 else 0


def handshakes_under_way(ports: set[int]) -> bool:
    """Whether a handshake to one of our local ``ports`` waits for its final ACK (SYN-RECV).

    Read from /proc/net/tcp and tcp6 (this network namespace): request sockets are
    listed there with their local address. Only read while stopping.
    """
    wanted = {f"{port:04X}" for port in ports}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as rows:
                next(rows, None)
                for row in rows:
                    fields = row.split(None, 4)
                    if len(fields) > 3 and fields[3] == TCP_SYN_RECV and fields[1].rpartition(":")[2] in wanted:
                        return True
        except OSError:
            continue
    return False
