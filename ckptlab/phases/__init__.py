"""Event and change-point detection over metric curves, on log10(step).

Reads analysis Datasets only (no torch, no archives): :func:`segment` one run,
:func:`align_runs` several seeds, and plain-text / JSON views of the result.
"""

from __future__ import annotations

from .report import format_mi_summary, format_phase_table, mi_summary, seg_to_json
from .runs import align_runs
from .segmentation import DEFAULT_CHANGE_POINT_VARS, EVENT_TYPES, PHASES, segment

__all__ = [
    "segment",
    "align_runs",
    "format_phase_table",
    "seg_to_json",
    "mi_summary",
    "format_mi_summary",
    "EVENT_TYPES",
    "PHASES",
    "DEFAULT_CHANGE_POINT_VARS",
]
