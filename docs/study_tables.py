"""The README's alignment tables, from `ckptlab study` folders (plain xarray on events.zarr).

    python docs/study_tables.py [--events REGEX] NAME=STUDY_DIR [NAME=STUDY_DIR ...]

Per study: every event that happened in at least one seed, with its mean log10 step over the
seeds that had it, the 95% bootstrap interval, how many seeds had it, and its separation from
the end of fitting (mean signed offset; mean |offset| with its interval, on which the verdict at the study's
tolerance rests); then, compactly, the events that happened in no seed and why (saturated / did not
happen). ``--events REGEX`` keeps the events whose name matches (the README's short tables).
"""

from __future__ import annotations

import re
import sys

import numpy as np
import xarray as xr

REF = "fit_end"


def _ci(lo, hi):
    return "-" if not (np.isfinite(lo) and np.isfinite(hi)) else f"[{lo:.2f}, {hi:.2f}]"


def table(name: str, root: str, keep: str | None = None) -> str:
    ev = xr.open_zarr(f"{root}/events.zarr").load().isel(condition=0)
    n_seeds = ev.sizes["seed"]
    out = [f"**{name}** ({n_seeds} seeds, tolerance {ev.attrs['tolerance_decades']:g} decades; "
           f"log10 step: mean over the seeds that had the event, 95% bootstrap interval)", "",
           f"| event | seeds | log10 step | interval | offset from {REF} (decades) | "
           "separation: mean, interval | verdict |", "|---|---|---|---|---|---|---|"]
    absent = {}
    for e in ev["event"].values.tolist():
        if keep and not re.search(keep, e):
            continue
        k = int(ev["n"].sel(event=e))
        if k == 0:
            st = ev["status"].sel(event=e).values.tolist()
            why = max(set(st), key=st.count)
            absent.setdefault(why, []).append(e)
            continue
        m = float(ev["log10_step_mean"].sel(event=e))
        lo, hi = ev["log10_step_ci"].sel(event=e).values
        if e == REF:
            off = sep = verdict = "-"
        else:
            pair = dict(event=REF, event_b=e)
            off = f"{float(ev['offset_mean'].sel(**pair)):+.2f}"
            sep = (f"{float(ev['separation_mean'].sel(**pair)):.2f} "
                   f"{_ci(*ev['separation_ci'].sel(**pair).values)}")
            verdict = str(ev["pair_verdict"].sel(**pair).item())
        out.append(f"| {e} | {k}/{n_seeds} | {m:.2f} | {_ci(lo, hi)} | {off} | {sep} | "
                   f"{verdict} |")
    for why, names in absent.items():
        out.append("")
        out.append(f"In no seed ({why}): " + ", ".join(f"`{e}`" for e in names) + ".")
    return "\n".join(out)


if __name__ == "__main__":
    args = sys.argv[1:]
    keep = None
    if args[:1] == ["--events"]:
        keep, args = args[1], args[2:]
    print("\n\n".join(table(*a.split("=", 1), keep=keep) for a in args))
