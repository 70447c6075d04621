"""Does ``systemctl reload`` on systemd 252 wait for prefork's READY=1? Measured in the test container.

    python bench/systemd_reload.py [--reloads N]      (as root; see tests/nspawn.py)

Boots the container of tests/test_systemd_container.py (same app, config and unit files),
starts prefork.service, then runs ``systemctl reload`` N times in a row. For each, it
prints how long the command took and whether the new generation was already serving
when it returned (prefork's Status line, which it sets with READY=1), then waits for it
before the next reload. The README's systemd section quotes the last run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import nspawn
import test_systemd_container as suite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reloads", type=int, default=20)
    args = parser.parse_args()
    with nspawn.booted_container() as container:
        container.write("/srv/app/app.py", suite.APP)
        container.write("/etc/prefork/prefork.toml", suite.CONFIG)
        container.run("systemctl", "daemon-reload")
        container.run("systemctl", "start", suite.SOCKET, suite.SERVICE)
        waited = 0
        for number in range(1, args.reloads + 1):
            before = suite.generation(container)
            started = time.monotonic()
            container.run("systemctl", "reload", suite.SERVICE)
            took = time.monotonic() - started
            status = suite.status_text(container)
            serving = suite.generation(container) == before + 1 and "booting" not in status
            state = container.show(suite.SERVICE, "ActiveState")["ActiveState"]
            waited += serving
            print(f"reload {number}: returned after {took:.2f}s; {state}; new generation serving: {serving}")
            suite.wait_for(lambda before=before: suite.generation(container) == before + 1  # type: ignore[misc]
                           and "booting" not in suite.status_text(container), 30, what="the new generation")
        version = container.run("systemctl", "--version").stdout.splitlines()[0]
        print(f"{version}: systemctl reload returned with the new generation serving in {waited} of {args.reloads}")


if __name__ == "__main__":
    main()
