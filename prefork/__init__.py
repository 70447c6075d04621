"""prefork: a preforking multi-process server for any TCP or Unix-socket protocol."""

__version__ = "0.1.0"
