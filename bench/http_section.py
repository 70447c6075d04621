"""HTTP: hands over to ``bench/http_bench.py`` (wrk against prefork, gunicorn, granian, uWSGI) when it can run."""

from __future__ import annotations

import importlib
import importlib.util
import shutil
from typing import Any

from .plan import Plan
from .report import Section, Table

NEEDS = ("httptools", "gunicorn")


def missing() -> list[str]:
    """What http_bench needs and this machine lacks."""
    absent = [name for name in NEEDS if importlib.util.find_spec(name) is None]
    if shutil.which("wrk") is None:
        absent.append("wrk")
    if importlib.util.find_spec("bench.http_bench") is None:
        absent.append("bench/http_bench.py")
    return absent


def run(plan: Plan) -> Section:
    section = Section("HTTP: prefork vs gunicorn, granian, uWSGI (wrk)")
    absent = missing()
    if plan.smoke:
        section.skipped = "not run by --smoke (wrk and six servers take minutes on their own)"
        return section
    if absent:
        section.skipped = "needs " + ", ".join(absent)
        return section
    module: Any = importlib.import_module("bench.http_bench")
    rows: list[dict[str, Any]] = module.run(plan.duration, plan.rounds)
    section.tables.append(table_of(rows))
    return section


def table_of(rows: list[dict[str, Any]]) -> Table:
    """Whatever keys http_bench reports become the columns, in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    table = Table("HTTP: hello world (-c50, -c8, mixed load) and Flask, wrk", columns, summary=True)
    for row in rows:
        table.add(*(row.get(column, "") for column in columns))
    return table
