"""Turn ``module:attribute`` (or ``module:factory()``) into the handler callable."""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

from .errors import AppImportError
from .peer import Handler

if TYPE_CHECKING:
    from .settings import Settings

def import_app(spec: str) -> Handler:
    """Import the handler named by ``spec``; raise :class:`AppImportError` naming what failed."""
    module_name, _, attr = spec.partition(":")
    is_factory = attr.endswith("()")
    if is_factory:
        attr = attr[:-2]
    if not module_name or not attr or not all(part.isidentifier() for part in attr.split(".")):
        raise AppImportError(f"{spec!r} is not of the form module:attribute or module:factory()")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            # The app module (or its package) itself is missing: one line says it all.
            raise AppImportError(f"cannot import app {spec!r}: no module named {exc.name!r}") from None
        raise AppImportError(f"cannot import app {spec!r}: {exc}", show_traceback=True) from exc
    except Exception as exc:  # the app's own code raised while importing
        raise AppImportError(
            f"cannot import app {spec!r}: {type(exc).__name__}: {exc}", show_traceback=True
        ) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppImportError(
                f"cannot import app {spec!r}: module {module_name!r} has no attribute {attr!r}"
            ) from None
    if is_factory:
        try:
            obj = obj()
        except Exception as exc:
            raise AppImportError(
                f"app factory {spec!r} raised {type(exc).__name__}: {exc}", show_traceback=True
            ) from exc
    if not callable(obj):
        raise AppImportError(f"app {spec!r} is not callable (it is a {type(obj).__name__})")
    return obj  # type: ignore[no-any-return]


def load_handler(settings: Settings) -> Handler:
    """The callable a worker runs per connection, as the settings describe it.

    With --wsgi, APP is a WSGI application and the handler speaks HTTP/1.1 to it.
    With --exec, the handler runs a program per connection (inetd.py).
    """
    if settings.exec:
        from .inetd import exec_handler  # the master imported it already, to check PROGRAM (cli.serve)

        return exec_handler(settings)
    app = import_app(settings.app or "")
    if settings.wsgi:
        from .http import wsgi_handler  # late: httptools is an optional dependency

        return wsgi_handler(app, settings)
    return app


def add_to_path(directory: str) -> None:
    """Make modules in ``directory`` importable, first."""
    if directory not in sys.path:
        sys.path.insert(0, directory)
