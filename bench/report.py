"""The result table, for the terminal and for docs/benchmarks.md, with the machine it ran on."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata

from .servers import REPO
from .stats import Row, Section

COLUMNS = ("Jarvis", "server", "reference", "direct")


@dataclass
class Meta:
    command: str
    machine: str
    software: str
    revision: str
    started: str
    seconds: float = 0.0
    note: str = ""
    load_start: str = ""
    load_end: str = ""


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass  # not Linux: the model stays unknown
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    system = f"{platform.system()} {platform.release()}"
    return f"{cores} cores ({model}), {system}, Python {platform.python_version()}"


def load() -> str:
    """The 1-minute load average: other work on the machine shows up in the tails."""
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "?"


def software() -> str:
    names = ("flask", "waitress", "requests", "urllib3")
    versions = []
    for name in names:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    return ", ".join(versions)


def revision() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "--", "jarvis"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return f"{head} with uncommitted changes to jarvis/" if dirty else head or "unknown"


def _columns(rows: list[Row]) -> list[str]:
    present = {name for row in rows for name in row.cells}
    return [c for c in COLUMNS if c in present] + sorted(present - set(COLUMNS))


def _verdict(holds: bool | None) -> str:
    return "" if holds is None else ("holds" if holds else "MISS")


def _cells(row: Row, columns: list[str]) -> list[str]:
    return [row.cells[c].show(row.digits) if c in row.cells else "" for c in columns]


def text(sections: list[Section], meta: Meta) -> str:
    """A plain table for the terminal: each cell is p50 / p99 / max (n), or one value."""
    rows = [r for s in sections for r in s.rows]
    columns = _columns(rows)
    header = ["measure", "unit", *columns, "ratio", "target", ""]
    lines_: list[list[str]] = []
    for section in sections:
        lines_.append([f"{section.number}. {section.title} ({section.seconds:.0f} s)"])
        for row in section.rows:
            lines_.append(
                [
                    "  " + row.measure,
                    row.unit,
                    *_cells(row, columns),
                    row.ratio,
                    row.target,
                    _verdict(row.holds),
                ]
            )
    rows_ = [x for x in lines_ if len(x) == len(header)]
    widths = [max(len(x[i]) for x in [header, *rows_]) for i in range(len(header))]
    widths[0] = min(widths[0], 64)
    out = [
        f"command:  {meta.command}",
        f"machine:  {meta.machine}; load average {meta.load_start} at start, {meta.load_end} at end",
        f"software: {meta.software}; Jarvis {meta.revision}",
        "cells:    p50 / p99 / max (n) in the row's unit, or one value; '> x' = did not happen within x",
        "",
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
    ]
    for line in lines_:
        if len(line) == 1:  # a section title, as long as it is
            out.append(line[0])
            continue
        out.append("  ".join(c[:w].ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    for section in sections:
        notes = section.notes + [f"{r.measure}: {r.note}" for r in section.rows if r.note]
        if notes:
            out.append(f"\n{section.number}. {section.title}")
            out += [f"  - {n}" for n in notes]
    out.append(
        f"\n{sum(1 for r in rows if r.holds)} targets hold, {sum(1 for r in rows if r.holds is False)} miss"
    )
    out.append(f"took {meta.seconds:.0f} s")
    return "\n".join(out)


def markdown(sections: list[Section], meta: Meta, about: str) -> str:
    """docs/benchmarks.md: how to reproduce, the machine, one table per section, then the method."""
    out = [
        "# Jarvis benchmarks",
        "",
        "What a user of Jarvis waits for, measured: a second prompt that supersedes the first, Stop, a",
        "client that hangs up, the cost of relaying a stream, many streams at once, and a long mixed run.",
        "Each row shows Jarvis beside a reference server built the way the replaced design was built",
        "(see *How it is measured*), and where it means something, the upstream read directly.",
        "",
        f"- Reproduce: `{meta.command}` from the repository root",
        f"- Machine: {meta.machine}; load average {meta.load_start} at the start, {meta.load_end} at the end",
        f"- Software: {meta.software}; Jarvis at {meta.revision}",
        f"- Run: {meta.started}, {meta.seconds:.0f} s",
    ]
    if meta.note:
        out.append(f"- {meta.note}")
    out += [
        "",
        "Cells are *p50 / p99 / max (n)* in the row's unit, or a single value; `> x` means it did not",
        "happen within x (for the reference: an upstream connection nobody closed).",
        "",
    ]
    rows = [r for s in sections for r in s.rows]
    columns = _columns(rows)
    for section in sections:
        out += [f"## {section.number}. {section.title}", ""]
        if section.rows:
            header = ["measure", "unit", *columns, "ratio", "target", "holds"]
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "|".join("---" for _ in header) + "|")
            for row in section.rows:
                verdict = {True: "yes", False: "**no**", None: ""}[row.holds]
                cells = [row.measure, row.unit, *_cells(row, columns), row.ratio, row.target, verdict]
                out.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
            out.append("")
        notes = section.notes + [f"{r.measure}: {r.note}" for r in section.rows if r.note]
        out += [f"- {n}" for n in notes]
        if notes:
            out.append("")
    out.append(about.strip())
    out.append("")
    return "\n".join(out)
