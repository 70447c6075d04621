"""Tables, statistics, the markdown report and the optional plots."""

from __future__ import annotations

import os
import platform
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Table:
    """One markdown table with a title and notes that say how to read it."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    summary: bool = False  # also shown in the README's summary

    def add(self, *row: Any) -> None:
        self.rows.append(list(row))

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(fmt(cell) for cell in row) + " |" for row in self.rows]
        if self.notes:
            lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


@dataclass
class Section:
    """A benchmark's tables plus the data its plot needs."""

    name: str
    tables: list[Table] = field(default_factory=list)
    plot_data: dict[str, Any] = field(default_factory=dict)
    skipped: str = ""  # why the section did not run


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "n/a"
        if value == float("inf"):
            return "∞"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = os.cpu_count() or 1
    return f"{cores} cores ({model or platform.machine()}), Linux {platform.release()}, Python {sys.version.split()[0]}"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def write_markdown(path: Path, header: list[str], sections: list[Section]) -> None:
    parts = ["# prefork benchmarks", "", *header, ""]
    for section in sections:
        parts.append(f"## {section.name}\n")
        if section.skipped:
            parts.append(f"Skipped: {section.skipped}\n")
        for table in section.tables:
            parts.append(table.markdown())
    path.write_text("\n".join(parts))


def write_plots(out: Path, sections: list[Section]) -> list[str]:
    """PNG plots of the fairness and recovery figures; nothing (and no error) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    for section in sections:
        data = section.plot_data
        if "fairness" in data:
            written.append(_plot_fairness(plt, out / "fairness.png", data["fairness"]))
        if "recovery" in data:
            written.append(_plot_recovery(plt, out / "recovery.png", data["recovery"]))
    return written


def _plot_fairness(plt: Any, path: Path, shares: dict[str, list[float]]) -> str:
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(1, len(shares))
    for offset, (label, values) in enumerate(shares.items()):
        xs = [i + offset * width for i in range(len(values))]
        ax.bar(xs, [100 * v for v in values], width=width, label=label)
    workers = max((len(values) for values in shares.values()), default=0)
    ax.set_xticks([i + width * (len(shares) - 1) / 2 for i in range(workers)], [str(i) for i in range(workers)])
    ax.set_xlabel("worker index")
    ax.set_ylabel("% of connections")
    ax.set_title("Connections served per worker")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def _plot_recovery(plt: Any, path: Path, samples: dict[str, list[float]]) -> str:
    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [label for label, values in samples.items() if values]
    ax.boxplot([samples[label] for label in labels], vert=False)
    ax.set_yticks(range(1, len(labels) + 1), labels)
    ax.set_xlabel("milliseconds")
    ax.set_title("Recovery and startup times")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name
