"""Shared pieces of the benchmarks: result rows with targets, the table, timing, disk usage.

A benchmark module ``bench_<name>.py`` defines ``main(argv: list[str] | None = None) -> dict``
that parses its own options (start from :func:`make_parser`), prints :func:`format_table` of
its :class:`Row` s and returns :func:`report` 's JSON-able dict. ``python -m benchmarks``
collects those dicts into one JSON file when given ``--json PATH``.
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ckptlab.errors import ValidationError

__all__ = [
    "Row",
    "Target",
    "format_table",
    "format_value",
    "make_parser",
    "machine_info",
    "median",
    "report",
    "timed",
    "tree_usage",
    "write_json",
]

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
    "==": operator.eq,
}


@dataclass(frozen=True)
class Target:
    """A goal on the ratio value / baseline, e.g. ``Target("<=", 1.25)``."""

    op: str
    limit: float

    def __post_init__(self):
        if self.op not in _OPS:
            raise ValidationError(
                f"op must be one of {', '.join(map(repr, _OPS))}; got {self.op!r}"
            )

    def met(self, ratio: float | None) -> bool | None:
        if ratio is None or not math.isfinite(ratio):
            return None
        return bool(_OPS[self.op](ratio, self.limit))

    def __str__(self) -> str:
        return f"{self.op} {self.limit:g}x"


@dataclass(frozen=True)
class Row:
    """One measured quantity, optionally against a baseline and a target on their ratio.

    Parameters
    ----------
    name : str
        What was measured (``"train + checkpoint, Recorder"``).
    value : float
        The measurement, in ``unit``.
    unit : str
        ``"s"``, ``"B"`` (bytes), ``"files"`` or ``"count"``; chooses the printed format.
    baseline : float, optional
        The same quantity for what users do today, in the same unit.
    baseline_name : str, default ""
        What the baseline is (``"torch.save per step"``).
    target : Target, optional
        The goal on the ratio.
    note : str, default ""
        A short remark printed under the table.
    ratio : float, optional
        ``value / baseline`` unless given, e.g. as the median of ratios of paired repeats.
    """

    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    target: Target | None = None
    note: str = ""
    ratio: float | None = None

    def __post_init__(self):
        if self.ratio is None and self.baseline is not None:
            if self.baseline == 0:
                r = math.inf if self.value else 1.0
            else:
                r = self.value / self.baseline
            object.__setattr__(self, "ratio", float(r))

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.met(self.ratio)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["target"] = None if self.target is None else str(self.target)
        d["met"] = self.met
        return d


def format_value(value: float | None, unit: str) -> str:
    """Human-readable value: seconds with 3 significant digits, bytes in kB/MB, counts as is."""
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1e3:.3g} ms" if abs(value) < 1 else f"{value:.3g} s"
    if unit == "B":
        for scale, suffix in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
            if abs(value) >= scale:
                return f"{value / scale:.3g} {suffix}"
        return f"{value:.0f} B"
    if float(value).is_integer():
        return f"{int(value)} {unit}".rstrip()
    return f"{value:.3g} {unit}".rstrip()


def format_table(rows: Sequence[Row], *, title: str = "") -> str:
    """The rows as a fixed-width text table, notes numbered below it."""
    header = ("measure", "value", "baseline", "ratio", "target", "met")
    lines_ = []
    notes = []
    for r in rows:
        name = r.name
        if r.note:
            notes.append(r.note)
            name = f"{name} [{len(notes)}]"
        base = "-"
        if r.baseline is not None:
            base = format_value(r.baseline, r.unit)
            if r.baseline_name:
                base = f"{base} ({r.baseline_name})"
        ratio = "-" if r.ratio is None else f"{r.ratio:.3g}x"
        met = {True: "yes", False: "NO", None: "-"}[r.met]
        lines_.append((name, format_value(r.value, r.unit), base, ratio, str(r.target or "-"), met))
    widths = [max(len(row[i]) for row in [header, *lines_]) for i in range(len(header))]
    out = [title] if title else []
    fmt_row = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    out.append(fmt_row(header))
    out.append("  ".join("-" * w for w in widths))
    out.extend(fmt_row(row) for row in lines_)
    out.extend(f"[{i}] {n}" for i, n in enumerate(notes, 1))
    return "\n".join(out)


def median(values: Iterable[float]) -> float:
    """Median of repeated timings (robust to one run disturbed by a neighbour process)."""
    return float(statistics.median(list(values)))


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """Wall-clock seconds of ``fn()`` and its result."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def tree_usage(path: os.PathLike | str) -> dict[str, int]:
    """Files under ``path``: count, summed file sizes and allocated bytes (``st_blocks``).

    Apparent size is what a copy or an upload moves; allocated bytes are what the file system
    spends, which for many small files is rounded up to whole blocks.
    """
    n = size = alloc = 0
    for d, _, files in os.walk(path):
        for f in files:
            st = os.stat(os.path.join(d, f))
            n += 1
            size += st.st_size
            alloc += getattr(st, "st_blocks", 0) * 512
    return {"files": n, "bytes": size, "allocated": alloc}


def machine_info() -> dict:
    """Where the numbers were measured (they mean little without it)."""
    import numpy
    import torch
    import zarr

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads_default": torch.get_num_threads(),
        "numpy": numpy.__version__,
        "zarr": zarr.__version__,
    }
    try:
        info["load_avg_1min"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark shares (``--json PATH``)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--json", metavar="PATH", type=Path, help="also write the results as JSON")
    return p


def report(name: str, rows: Sequence[Row], **extra) -> dict:
    """The JSON-able result of one benchmark: its rows, the machine and any extra fields."""
    return {
        "benchmark": name,
        "machine": machine_info(),
        "rows": [r.to_dict() for r in rows],
        "targets_met": all(r.met is not False for r in rows),
        **extra,
    }


def write_json(path: os.PathLike | str, obj) -> None:
    """Write ``obj`` as indented JSON (non-finite floats become null)."""

    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o

    Path(path).write_text(json.dumps(clean(obj), indent=2, allow_nan=False) + "\n")
