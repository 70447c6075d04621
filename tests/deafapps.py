"""A handler whose worker never writes its stack on ``prefork dump``: it blocks the dump signal.

Imported in the worker at boot (no --preload), so only that worker's mask changes; the
signal stays pending, as it would for a worker that exits before its handler runs.
"""

from __future__ import annotations

import os
import signal
import socket
from typing import Any

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})


def pid(conn: socket.socket, addr: Any) -> None:
    conn.sendall(str(os.getpid()).encode())
