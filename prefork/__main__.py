"""``python -m prefork`` and the ``prefork`` script.

``--version`` is answered before the command line interface (click, the settings
declaration) is imported: a packaging script or a health check asking for it
should not pay for the whole CLI.
"""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from . import __version__

        print(f"prefork, version {__version__}")  # as click's version_option says it
        return
    from .cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
