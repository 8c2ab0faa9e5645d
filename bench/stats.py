"""Percentiles and the rows of the result table.

A sample of ``None`` means "did not happen within the bound" (an upstream
never closed, an event never came): it sorts above every number, so a p99
over such samples reads "> bound" instead of quietly dropping the worst.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class Cell:
    """What one server scored on one row: a distribution (p50/p99/max) or a single value."""

    p50: float | None = None
    p99: float | None = None
    max: float | None = None
    n: int = 0
    value: float | None = None  # single-valued rows (throughput, bytes per stream, counts)
    text: str | None = None  # shown as is, overriding the numbers
    bound: float | None = None  # a None sample means "more than this"

    @classmethod
    def of(cls, samples: list[float | None], bound: float | None = None) -> Cell:
        values = sorted(math.inf if s is None else s for s in samples)
        if not values:
            return cls(text="no samples")
        return cls(
            p50=percentile(values, 50), p99=percentile(values, 99), max=values[-1], n=len(values), bound=bound
        )

    def minus(self, base: Cell) -> Cell:
        """What this distribution adds to ``base``: p50 − p50, p99 − p99, and the worst case − base p50."""
        return Cell(
            p50=_sub(self.p50, base.p50),
            p99=_sub(self.p99, base.p99),
            max=_sub(self.max, base.p50),
            n=self.n,
            bound=self.bound,
        )

    @property
    def missing(self) -> bool:
        return self.text is not None and self.value is None and self.p99 is None

    def key(self) -> float | None:
        """The number a target is judged on: p99, or the single value."""
        return self.value if self.value is not None else self.p99

    def show(self, digits: int = 1) -> str:
        if self.text is not None:
            return self.text
        if self.value is not None:
            return _num(self.value, digits, None)
        if self.p99 is None:
            return "–"
        parts = (_num(v, digits, self.bound) for v in (self.p50, self.p99, self.max))
        return " / ".join(parts) + f" (n={self.n})"


def _sub(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return a - b if math.isfinite(a) else a


def _num(v: float | None, digits: int, bound: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if math.isinf(v):
        return f"> {bound:g}" if bound is not None else "never"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


@dataclass
class Row:
    """One line of the table: a measure, each server's cell, the ratio, and the target."""

    section: str
    measure: str
    unit: str
    cells: dict[str, Cell]  # "Jarvis", "reference", "direct"
    target: str = ""
    holds: bool | None = None  # None: informational, no target
    ratio: str = ""
    note: str = ""
    digits: int = 1


@dataclass
class Section:
    """One scenario's rows and what they mean."""

    number: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def judge(cell: Cell | None, limit: float, higher_is_better: bool = False) -> bool | None:
    if cell is None or cell.key() is None:
        return None
    v = cell.key()
    return v >= limit if higher_is_better else v <= limit


def ratio(numerator: Cell | None, denominator: Cell | None, label: str) -> str:
    """``label`` ×r on the judged numbers; empty when either side is missing."""
    if numerator is None or denominator is None:
        return ""
    a, b = numerator.key(), denominator.key()
    if a is None or b is None or b == 0:
        return ""
    if math.isinf(a) and numerator.bound is not None and b > 0:
        return f"{label} > ×{numerator.bound / b:,.0f}"
    if math.isinf(a) or math.isinf(b) or math.isnan(a) or math.isnan(b):
        return ""
    r = a / b
    return f"{label} ×{r:,.2f}" if r < 10 else f"{label} ×{r:,.0f}"


def beside_direct(section: str, measure: str, unit: str, jarvis: Cell, direct: Cell, label: str, **kw) -> Row:
    """A row of Jarvis's cell beside the model read directly in the benchmark process, with their ratio."""
    cells = {"Jarvis": jarvis, "direct": direct}
    return Row(section, measure, unit, cells, ratio=ratio(jarvis, direct, label), **kw)


def within(
    section: str, measure: str, unit: str, cells: dict[str, Cell], judged: str, limit: float, **kw
) -> Row:
    """A row that holds when the ``judged`` server's cell is at most ``limit``; ``target`` (in
    ``kw``) says so in words, p99 ≤ limit ms when it is left out."""
    kw.setdefault("target", f"p99 ≤ {limit:g} ms")
    return Row(section, measure, unit, cells, holds=judge(cells.get(judged), limit), **kw)
