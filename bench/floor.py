"""The floor: the least a preforking echo server can do in Python.

The master binds and forks N workers; each loops on blocking accept(), then
recv/sendall until the client closes, then close(). No supervision, no
signals, no bookkeeping: whatever prefork spends above this is its overhead.

    python -m bench.floor 127.0.0.1:9000 4
    python -m bench.floor unix:/tmp/floor.sock 4
"""

from __future__ import annotations

import os
import signal
import socket
import sys


def serve(listener: socket.socket) -> None:
    while True:
        conn, _ = listener.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)


def main() -> None:
    where, workers = sys.argv[1], int(sys.argv[2])
    if where.startswith("unix:"):
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(where[5:])
        listener.listen(2048)  # same backlog as prefork
    else:
        host, _, port = where.rpartition(":")
        listener = socket.create_server((host, int(port)), backlog=2048)
    for _ in range(workers):
        if os.fork() == 0:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            try:
                serve(listener)
            finally:
                os._exit(1)
    print("ready", flush=True)
    try:
        while True:
            os.wait()  # the harness kills the whole process group when done
    except (ChildProcessError, KeyboardInterrupt):
        pass


if __name__ == "__main__":
    main()
