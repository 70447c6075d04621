"""``python -m prefork`` and the ``prefork`` script.

``--version`` is answered before the command line interface (click, the settings
declaration) is imported: a packaging script or a health check asking for it
should not pay for the whole CLI. Nor does ``prefork run`` with a plain command line
(quickstart.py): click is imported only when it must read the line.
"""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from . import __version__

        print(f"prefork, version {__version__}")  # as click's version_option says it
        return
    if sys.argv[1:2] == ["run"]:
        from .quickstart import run

        run(sys.argv[2:])  # serves and exits, unless click must read this command line
    from .cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
