"""Suite registry, machine description, table printing and the JSON report shared by every suite."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Row = dict[str, Any]
SuiteFn = Callable[[bool], list[Row]]


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    run: SuiteFn  # run(quick) -> result rows
    columns: Sequence[str]
    # Lines printed after the table, e.g. targets met or missed with their figures.
    summarize: Callable[[list[Row]], list[str]] = lambda rows: []
    # Takes this suite's own command-line options (e.g. soak's --minutes) before ``run``.
    configure: Callable[[argparse.Namespace], None] | None = None
    # Results that are CPU capacity: measure the machine's speed against DESIGN.md's planning figures first
    # (bench/calibration.py) and keep it with the rows.
    calibrate: bool = False


_SUITES: dict[str, Suite] = {}


def register(suite: Suite) -> Suite:
    _SUITES[suite.name] = suite
    return suite


def suites() -> dict[str, Suite]:
    # Imported lazily so that `python -m bench --help` stays fast and one broken suite cannot hide the others.
    from bench.suites import load_all

    load_all()
    return dict(_SUITES)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def machine_info() -> dict[str, Any]:
    return {
        "hostname": platform.node(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": _git_commit(),
    }


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return "" if value is None else str(value)


def format_table(rows: Sequence[Row], columns: Sequence[str]) -> str:
    cols = list(columns) or sorted({k for r in rows for k in r})
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def report(suite: str, rows: list[Row], calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    document: dict[str, Any] = {"suite": suite, "machine": machine_info(), "results": rows}
    if calibration is not None:
        document["calibration"] = calibration
    return document


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
