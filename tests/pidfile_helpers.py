from prefork.pidfile import read_pid

__all__ = ["read_pid"]
