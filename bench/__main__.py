"""``python -m bench``: run every benchmark side by side and write the report to bench/results/.

    python -m bench                 # the full run (a few minutes)
    python -m bench --smoke         # seconds: proves the harness works (CI)
    python -m bench --readme        # also rewrite the README's Performance section
"""

from __future__ import annotations

import argparse
import compileall
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from . import fairness, footprint, hosts, http_section, plan, recovery, report, startup, stop, throughput
from .report import Section

RESULTS = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- BEGIN performance -->", "<!-- END performance -->"

SECTIONS: dict[str, Callable[[plan.Plan], Section]] = {
    "throughput": throughput.run,
    "fairness": fairness.run,
    "recovery": recovery.run,
    "footprint": footprint.run,
    "http": http_section.run,
    "startup": startup.run,
    "stop": stop.section,
    "hosts": hosts.section,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny run that only proves the harness works")
    parser.add_argument("--out", type=Path, help="directory for results.md and plots (default: bench/results, "
                        "or bench/results/smoke.tmp with --smoke)")
    parser.add_argument("--workers", type=int, help="N for the throughput comparison (default: CPUs, at least 2)")
    parser.add_argument("--rounds", type=int, default=5, help="side-by-side rounds (default 5)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement (default 3)")
    parser.add_argument("--only", action="append", choices=list(SECTIONS), help="run only this section (repeatable)")
    parser.add_argument("--readme", action="store_true", help="rewrite the README's Performance section")
    return parser.parse_args(argv)


def compile_sources() -> str:
    """Compile prefork's and the bench's modules, as installing a package does (gunicorn's are).

    Under PYTHONDONTWRITEBYTECODE (this sandbox sets it) every server start would otherwise
    compile prefork's whole source again: start-up and memory figures would measure the compiler.
    """
    root = Path(__file__).resolve().parent.parent
    done = all(compileall.compile_dir(root / name, quiet=1) for name in ("prefork", "bench"))
    return "prefork and bench compiled before the runs" if done else "compiling prefork or bench failed"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    chosen = plan.smoke() if args.smoke else plan.full(args.workers, args.rounds, args.duration)
    out = args.out or (RESULTS / "smoke.tmp" if args.smoke else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    header = [f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
              f"- machine: {report.machine()}",
              f"- command: `{command.strip()}`",
              f"- prefork: {git_version()}",
              f"- load average before: {report.load_average()}",
              f"- bytecode: {compile_sources()}"]
    sections, failed = [], []
    for name, run in SECTIONS.items():
        if args.only and name not in args.only:
            continue
        started = time.monotonic()
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        try:
            sections.append(run(chosen))
        except Exception as exc:  # one broken section must not lose the others' figures
            traceback.print_exc()
            failed.append(name)
            sections.append(Section(name, skipped=f"failed: {type(exc).__name__}: {exc}"))
        print(f"bench: {name} done in {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)
    header.append(f"- load average after: {report.load_average()}")
    report.write_markdown(out / "results.md", header, sections)
    plots = report.write_plots(out, sections)
    print(f"bench: wrote {out / 'results.md'}" + "".join(f", {out / p}" for p in plots), file=sys.stderr)
    if args.readme:
        update_readme(header, sections)
    if failed:
        print(f"bench: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def git_version() -> str:
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              cwd=README.parent, timeout=10)
        return done.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def update_readme(header: list[str], sections: list[Section], readme: Path = README) -> None:
    """Replace what is between the performance markers with the header and the summary tables."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme}: no {BEGIN} / {END} markers")
    lines = ["## Performance", "",
             "Every figure comes from one command, `python -m bench` (details, more tables and plots in "
             "[bench/results/results.md](bench/results/results.md)). The machine is small and shared, so absolute "
             "numbers are noisy; compare the ratios, measured side by side in the same run.", "",
             "How to read them: the echo test runs the same handler loop in prefork and in the floor, so it shows "
             "what prefork adds per round trip (nothing: it is out of the way once a connection is handed over); "
             "new connections per second is where prefork's per-connection bookkeeping (scoreboard slot, peer "
             "name) shows, and the server CPU per operation shows it without the client's share of the cores.",
             "", *header, ""]
    for section in sections:
        for table in section.tables:
            if table.summary:
                lines.append(table.markdown().replace("### ", "#### ", 1))
        if section.skipped:
            lines.append(f"#### {section.name}\n\nSkipped: {section.skipped}\n")
    body = "\n".join(lines)
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    readme.write_text(f"{head}{BEGIN}\n{body}\n{END}{tail}")


if __name__ == "__main__":
    sys.exit(main())
