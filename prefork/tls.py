"""TLS: the server's context, and the handshake a worker does before the handler runs.

The master loads the context once per settings value: at start, and on each
reload (HUP), where files that do not load refuse the reload and the running
generation keeps serving. Workers inherit their generation's context through
fork; they read no certificate file themselves. A reload thus picks up rotated
certificate files without a restart. Only imported when TLS is configured.
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from .settings import Settings


def load_context(settings: Settings) -> ssl.SSLContext | None:
    """The context ``settings`` ask for (None without --certfile); ConfigError names the file that failed."""
    if not settings.certfile:
        return None
    return make_context(settings.certfile, settings.keyfile, settings.ca_certs, settings.verify_client)


def make_context(certfile: str, keyfile: str | None, ca_certs: str | None, verify_client: bool) -> ssl.SSLContext:
    """A server context from the settings' files; ConfigError names the file that failed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Renegotiation lets a client restart the costly part of the handshake at will.
    context.options |= ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        where = f"certfile {certfile!r}" + (f" / keyfile {keyfile!r}" if keyfile else "")
        raise ConfigError(f"{where}: cannot load the certificate and key: {_reason(exc)}") from None
    if ca_certs:
        try:
            context.load_verify_locations(cafile=ca_certs)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"ca_certs {ca_certs!r}: cannot load CA certificates: {_reason(exc)}") from None
        # With CAs but without --verify-client, a client certificate is asked for and
        # checked when sent, and the handler sees it; none at all is accepted.
        context.verify_mode = ssl.CERT_REQUIRED if verify_client else ssl.CERT_OPTIONAL
    return context


def _reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    return exc.strerror or str(exc)


def handshake(context: ssl.SSLContext, conn: socket.socket, deadline: float) -> ssl.SSLSocket:
    """Wrap ``conn`` and complete the server handshake before ``deadline`` (time.monotonic()).

    ``conn`` is detached by the wrapping; on failure the TLS socket is closed and
    the error (ssl.SSLError, OSError, TimeoutError) raised. The socket's timeout
    bounds the whole handshake call, not each read, so a client trickling one
    byte at a time cannot stretch it.
    """
    tls = context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
    try:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("handshake timeout")
        tls.settimeout(remaining)
        tls.do_handshake()
    except BaseException:
        tls.close()
        raise
    return tls
