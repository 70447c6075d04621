"""A real systemd (Debian 12's, as PID 1) in a systemd-nspawn container, for the operator tests.

The root file system comes from ``debootstrap --variant=minbase`` and is cached under
CACHE, one directory per package list (built in a temporary directory beside it and
renamed into place, so a build that is killed never leaves a half cache behind). Each
run boots a throw-away copy of it with prefork installed from this worktree into a
venv, and the project's unit files installed unmodified. prefork's dependencies are
copied from the interpreter running the tests when it is a CPython 3.11 like the
container's (their compiled modules load there; nothing is fetched), else the host's pip
fetches CPython 3.11 wheels of them (PREFORK_TEST_CONTAINER_DEPS=pypi forces that).

The container boots with ``--register=no --keep-unit`` (the host's PID 1 is not
systemd, so there is no machined to register with), ``--private-network`` (only a
loopback: the tests' load runs inside the container), ``--console=pipe``. Commands run
inside with ``nsenter -t <container's PID 1> -a``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from conftest import ROOT

CACHE = Path(os.environ.get("PREFORK_TEST_ROOTFS_CACHE", "/var/cache/prefork-tests"))
SUITE = "bookworm"
MIRROR = os.environ.get("PREFORK_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "procps")
VENV = "/opt/prefork"
DEPENDENCIES = ("psutil", "setproctitle", "click", "httptools")
CONTAINER_PYTHON = (3, 11)  # Debian 12's python3
BUILD_TIMEOUT = 240.0
COPY_TIMEOUT = 120.0  # the cached root, copied for each run (about 300 MB)
BOOT_TIMEOUT = 60.0


class Unavailable(Exception):
    """This machine cannot run the container (the message is the one-line skip reason)."""


def missing_requirement() -> str | None:
    """Why the container cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn, debootstrap)"
    for tool, package in (("systemd-nspawn", "systemd-container"), ("debootstrap", "debootstrap"),
                          ("nsenter", "util-linux")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package: {package})"
    return None


# --- the cached root file system ---

def rootfs_path() -> Path:
    key = hashlib.sha256(" ".join((SUITE, "minbase", *sorted(PACKAGES))).encode()).hexdigest()[:12]
    return CACHE / f"rootfs-{SUITE}-{key}"


def cached_rootfs() -> Path:
    """The debootstrapped root file system, built on first use (Unavailable if it cannot be)."""
    final = rootfs_path()
    if (final / "usr/lib/systemd/systemd").exists():
        return final
    reach_mirror()
    CACHE.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".build-", dir=CACHE))
    try:
        argv = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(build), MIRROR]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise Unavailable(f"debootstrap {SUITE} did not finish in {BUILD_TIMEOUT:.0f}s") from None
        if done.returncode != 0:  # with the mirror reachable: a real failure, not a reason to skip
            raise RuntimeError(f"debootstrap {SUITE} from {MIRROR} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        prepare_rootfs(build)
        try:
            build.rename(final)
        except OSError:
            if not (final / "usr/lib/systemd/systemd").exists():  # not a concurrent build that won
                raise
    finally:
        if build.exists():
            shutil.rmtree(build, ignore_errors=True)
    return final


def reach_mirror() -> None:
    """Unavailable, with the reason, if the Debian mirror cannot be reached (no network here)."""
    url = urllib.parse.urlsplit(MIRROR)
    try:
        socket.create_connection((url.hostname or "", url.port or 80), timeout=10).close()
    except OSError as exc:
        raise Unavailable(f"no cached root file system, and the mirror {MIRROR} is unreachable: {exc}") from None


def prepare_rootfs(root: Path) -> None:
    """What every boot needs, done once: a venv, no getty, no units that wait for hardware."""
    root.chmod(0o755)  # mkdtemp made it 0700: the service's dynamic user could not even reach /usr
    subprocess.run(["chroot", str(root), "python3", "-m", "venv", "--without-pip", VENV], check=True,
                   capture_output=True)
    (root / "etc/hostname").write_text("prefork-test\n")
    (root / "etc/machine-id").write_text("")  # systemd makes one up at boot
    wants = root / "etc/systemd/system"
    for unit in ("console-getty.service", "getty@.service", "systemd-networkd-wait-online.service",
                 "systemd-timesyncd.service", "apt-daily.timer", "apt-daily-upgrade.timer"):
        mask = wants / unit
        mask.unlink(missing_ok=True)
        mask.symlink_to("/dev/null")


def site_packages(root: Path) -> Path:
    found = sorted(root.glob(f"{VENV.lstrip('/')}/lib/python3*/site-packages"))
    if not found:
        raise Unavailable(f"no venv site-packages under {root / VENV.lstrip('/')}")
    return found[0]


def install_prefork(root: Path) -> None:
    """prefork from this worktree and its dependencies into the venv; the unit files, unmodified."""
    target = site_packages(root)
    install_dependencies(target)
    shutil.copytree(ROOT / "prefork", target / "prefork", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    command = root / "usr/local/bin/prefork"
    command.write_text(f"#!{VENV}/bin/python3\nimport sys\nfrom prefork.cli import main\nsys.exit(main())\n")
    command.chmod(0o755)
    for unit in (ROOT / "systemd").iterdir():
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)


def install_dependencies(target: Path) -> None:
    """Copied from this interpreter if it is Debian 12's CPython 3.11 too (no network); else CPython 3.11 wheels."""
    if sys.version_info[:2] == CONTAINER_PYTHON and os.environ.get("PREFORK_TEST_CONTAINER_DEPS") != "pypi":
        for name in DEPENDENCIES:
            package = Path(__import__(name).__file__ or "").parent
            shutil.copytree(package, target / name, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "tests"))
        return
    version = "".join(map(str, CONTAINER_PYTHON))
    argv = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--only-binary=:all:",
            "--target", str(target), "--python-version", version, "--implementation", "cp",
            "--abi", f"cp{version}", "--abi", "abi3", "--abi", "none",
            "--platform", f"manylinux2014_{platform.machine()}", *DEPENDENCIES]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    if done.returncode != 0:
        raise Unavailable(f"cannot fetch CPython {version} wheels of {', '.join(DEPENDENCIES)}: "
                          f"{(done.stderr.strip().splitlines() or ['pip failed'])[-1]}")


# --- one booted container ---

class Container:
    """systemd booted in a copy of the cached root; :meth:`run` executes commands inside it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.root = workdir / "root"
        self.console = workdir / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0
        self.cgroups: list[Path] = []

    def boot(self) -> None:
        cached = cached_rootfs()
        subprocess.run(["cp", "-a", "--reflink=auto", str(cached), str(self.root)], check=True, timeout=COPY_TIMEOUT)
        install_prefork(self.root)
        nspawn = ["systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--private-network",
                  "--console=pipe", "--quiet", "-D", str(self.root)]
        # --keep-unit: nspawn makes payload/ and supervisor/ inside its own cgroup. In a cgroup of
        # its own, two containers never share them, and removing it afterwards removes them.
        self.cgroups = make_cgroups(f"prefork-test-{os.getpid()}-{self.workdir.name}")
        enter = "".join(f"echo $$ > {group}/cgroup.procs && " for group in self.cgroups)
        argv = ["sh", "-c", f'{enter}exec "$@"', "sh", *nspawn]
        with open(self.console, "wb") as console:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited ({self.proc.returncode}): {self.console_text()[-2000:]}")
            self.leader = self.leader or container_leader(self.proc.pid)
            if self.leader:
                state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the container did not boot in {BOOT_TIMEOUT:.0f}s: {self.console_text()[-2000:]}")

    def console_text(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def run(self, *argv: str, check: bool = True, timeout: float = 60.0,
            input_: str | None = None) -> subprocess.CompletedProcess[str]:
        """``argv`` inside the container (all its namespaces, its root), as root there."""
        done = subprocess.run(["nsenter", "-t", str(self.leader), "-a", "--", *argv], capture_output=True,
                              text=True, timeout=timeout, input=input_)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {done.returncode}: {done.stdout}{done.stderr}")
        return done

    def popen(self, *argv: str, stdin: bool = False) -> subprocess.Popen[str]:
        """``argv`` inside the container, running on; its stdout and stderr (and stdin if asked) are pipes."""
        return subprocess.Popen(["nsenter", "-t", str(self.leader), "-a", "--", *argv], text=True,
                                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def write(self, path: str, text: str) -> None:
        """A file inside the container, as its root user would write it."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def shutdown(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None and self.leader:
            # SIGRTMIN+4 to systemd as PID 1: poweroff (what machinectl poweroff sends).
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.leader, signal.SIGRTMIN + 4)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for group in self.cgroups:
            remove_cgroup(group)
        shutil.rmtree(self.root, ignore_errors=True)


def container_leader(nspawn_pid: int) -> int:
    """The container's PID 1 (systemd), as a host pid: the child of systemd-nspawn that runs systemd."""
    try:
        children = Path(f"/proc/{nspawn_pid}/task/{nspawn_pid}/children").read_text().split()
    except OSError:
        return 0
    for child in children:
        try:
            exe = os.readlink(f"/proc/{child}/exe")
        except OSError:
            continue
        if exe.endswith("/systemd"):
            return int(child)
    return 0


def make_cgroups(name: str) -> list[Path]:
    """A child ``name`` of this process's cgroup in the hierarchies nspawn uses (cgroup2, name=systemd).

    Empty if they cannot be made (nspawn then works in our own cgroup, as it would anyway).
    """
    groups = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0":
            mounts = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")  # hybrid, then unified-only hosts
        elif controllers == "name=systemd":
            mounts = ("/sys/fs/cgroup/systemd",)
        else:
            continue
        mount = next((Path(m) for m in mounts if (Path(m) / "cgroup.procs").exists()), None)
        if mount is not None:
            groups.append(mount / path.lstrip("/") / name)
    try:
        for group in groups:
            group.mkdir()
    except OSError:
        for group in groups:
            remove_cgroup(group)
        return []
    return groups


def remove_cgroup(group: Path, timeout: float = 10.0) -> None:
    """Remove a cgroup and what nspawn made inside it, deepest first.

    Processes killed at the end of a shutdown may still be leaving (a cgroup with any
    is busy): retry until the tree is gone or ``timeout`` passes.
    """
    deadline = time.monotonic() + timeout
    while group.is_dir():
        for sub in sorted((p for p in group.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                sub.rmdir()
        with contextlib.suppress(OSError):
            group.rmdir()
        if not group.is_dir() or time.monotonic() > deadline:
            return
        time.sleep(0.1)


@contextlib.contextmanager
def booted_container() -> Iterator[Container]:
    """Boot a container for the duration; Unavailable if this machine cannot."""
    reason = missing_requirement()
    if reason:
        raise Unavailable(reason)
    workdir = Path(tempfile.mkdtemp(prefix="prefork-nspawn-"))
    container = Container(workdir)
    try:
        container.boot()
        yield container
    finally:
        container.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
