"""HTTP/1.1 for WSGI applications: ``prefork run --wsgi module:application``.

The worker hands each accepted connection to a :class:`~.handler.WSGIHandler`,
which serves requests on it until the connection should end:

- ``handler.py``    the per-worker handler and the keep-alive loop of one connection
- ``parser.py``     bytes in, :class:`~.parser.Request` objects out (httptools), with the limits and rules
- ``framing.py``    the request bodies prefork reads itself: chunked, and after an Upgrade head
- ``body.py``       ``wsgi.input``: reads exactly the request body, as the application asks
- ``response.py``   one request's exchange: environ, ``start_response``/``write``, framing, sendfile
- ``environ.py``    the WSGI environ, trusted proxy headers, ``SCRIPT_NAME``
- ``accesslog.py``  one line per request, gunicorn's format atoms (Apache combined by default)

httptools is an optional dependency (the ``http`` extra): it is imported only with --wsgi.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import AppImportError

if TYPE_CHECKING:
    from ..peer import Handler
    from ..settings import Settings


def wsgi_handler(app: Any, settings: Settings) -> Handler:
    """The connection handler serving the WSGI application ``app`` over HTTP/1.1."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        raise AppImportError("--wsgi needs httptools: pip install 'prefork[http]'") from None
    from .handler import WSGIHandler

    return WSGIHandler(app, settings)
