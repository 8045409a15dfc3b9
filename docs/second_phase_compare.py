"""Tables and figure of README "Shortening the second phase", from `ckptlab study` folders.

    python docs/second_phase_compare.py [--events REGEX] OUT.md FIG.png NAME=STUDY_DIR [...]

For each study (one `--vary` key, the first value the reference) and each condition, over the
seeds: steps to fit (the study's ``fit_end``), steps to 95% test accuracy (its
``test_acc_reached``), the delay between them in decades, and every progress-measure event of
the study (I(X;T) peaks and settling, LC peaks, LMN peak, the weight-norm turn
``weight_norm_peak``) as mean log10 step with a 95% bootstrap interval over seeds, with its
shift against the reference condition (paired by seed). The figure puts every condition's test
accuracy, one I(X;T) curve (kde_rel upper bound at c = 1) and the total parameter norm of each
study on one log-step axis (every seed). ``--events REGEX`` keeps the events whose name
matches in the event tables.
"""

from __future__ import annotations

import os
import re
import sys
import warnings

import numpy as np
import xarray as xr

import ckptlab
from ckptlab.phases.runs import bootstrap_mean_interval
from ckptlab.store import Run

EVENT_PREFIXES = ("mi_peak[", "plane_settled[", "lc_peak[", "lmn_peak", "weight_norm_peak")
ACC = 0.95


def _interval(logs):
    logs = np.asarray(logs, dtype=float)
    lo, hi = bootstrap_mean_interval(logs[None, :])
    k = int(np.isfinite(logs).sum())
    mean = float(np.nanmean(logs)) if k else np.nan
    return mean, float(lo[0]), float(hi[0]), k


def _fmt_steps(mean, lo, hi, k, n):
    if not k:
        return f"never (0/{n})"
    core = f"{10 ** mean:,.0f}"
    if np.isfinite(lo):
        core += f" [{10 ** lo:,.0f}, {10 ** hi:,.0f}]"
    return core + ("" if k == n else f" ({k}/{n})")


def _fmt_dec(mean, lo, hi, k, n, sign=False):
    if not k:
        return f"- (0/{n})"
    f = "{:+.2f}" if sign else "{:.2f}"
    core = f.format(mean)
    if np.isfinite(lo):
        core += f" [{f.format(lo)}, {f.format(hi)}]"
    return core + ("" if k == n else f" ({k}/{n})")


def study_rows(name: str, root: str):
    ev = xr.open_zarr(os.path.join(root, "events.zarr")).load()
    conds = ev["condition"].values.tolist()
    seeds = ev["seed"].values.tolist()
    n = len(seeds)
    events = [e for e in ev["event"].values.tolist() if e.startswith(EVENT_PREFIXES)]
    per = {}
    curves = {}
    for c in conds:
        fit, acc = [], []
        cur = []
        for s in seeds:
            path = os.path.join(root, str(ev["archive"].sel(condition=c, seed=s).item()))
            run = Run(path)
            m = run.metrics()
            fit.append(float(ev["event_step"].sel(condition=c, seed=s, event="fit_end")))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = ckptlab.load_analysis(path)
            if "test_acc_reached" in ev["event"].values:
                acc.append(float(ev["event_step"].sel(condition=c, seed=s,
                                                      event="test_acc_reached")))
            else:  # a study segmented before that event existed: segment the stored analysis
                seg = ckptlab.segment(ds, test_acc_level=ACC)
                acc.append(10 ** float(seg["event_log10_step"].sel(event="test_acc_reached")))
            mi = None
            wn = ds["weight_norm"].values if "weight_norm" in ds else None
            if "mi_xt_rel" in ds:
                mi = ds["mi_xt_rel"].sel(rel_estimator="kde_rel_upper", resolution=1.0)
                mi = mi.isel(layer=0).values
            cur.append((run.steps, m["test_acc"], mi, wn))
        fit, acc = (np.asarray(a, dtype=float) for a in (fit, acc))
        with np.errstate(divide="ignore", invalid="ignore"):
            delay = np.log10(acc) - np.log10(fit)
        ev_logs = {e: np.log10(ev["event_step"].sel(condition=c, event=e).values.astype(float))
                   for e in events}
        per[c] = {"fit": np.log10(fit), "acc": np.log10(acc), "delay": delay, "events": ev_logs}
        curves[c] = cur
    return {"name": name, "root": root, "conds": conds, "n": n, "per": per, "curves": curves,
            "events": events, "ev": ev}


def tables(st, keep=None) -> str:
    n, conds, per = st["n"], st["conds"], st["per"]
    ref = conds[0]
    out = [f"**{st['name']}** ({n} seeds; mean over seeds, 95% bootstrap interval in brackets; "
           "(k/n): seeds where it happened)", "",
           "| condition | fit (step) | 95% test acc (step) | delay (decades) | delay vs "
           f"{ref} |", "|---|---|---|---|---|"]
    for c in conds:
        d = per[c]
        ratio = "1 (reference)"
        if c != ref:
            both = np.isfinite(d["delay"]) & np.isfinite(per[ref]["delay"])
            if both.any():
                diff = d["delay"][both] - per[ref]["delay"][both]
                m, lo, hi, k = _interval(diff)
                ratio = (f"{10 ** -m:.2g}x shorter" if m < 0 else f"{10 ** m:.2g}x longer")
                ratio += (f" ({m:+.2f} dec" + (f" [{lo:+.2f}, {hi:+.2f}]" if np.isfinite(lo)
                                              else "") + ")")
            else:
                ratio = "- (no seed with both)"
        out.append(f"| {c} | {_fmt_steps(*_interval(d['fit']), n)} | "
                   f"{_fmt_steps(*_interval(d['acc']), n)} | "
                   f"{_fmt_dec(*_interval(d['delay']), n)} | {ratio} |")
    out += ["", f"events (mean log10 step [interval]; shift = paired log10 step change vs {ref}):",
            "", "| event | " + " | ".join(conds) + " | " + " | ".join(
                f"shift {c}" for c in conds[1:]) + " |",
            "|---|" + "---|" * (2 * len(conds) - 1)]
    for e in st["events"]:
        if keep and not re.search(keep, e):
            continue
        vals = [per[c]["events"][e] for c in conds]
        if not any(np.isfinite(v).any() for v in vals):
            continue
        cells = [_fmt_dec(*_interval(v), n) for v in vals]
        shifts = []
        for v in vals[1:]:
            both = np.isfinite(v) & np.isfinite(vals[0])
            shifts.append(_fmt_dec(*_interval(v[both] - vals[0][both]), int(both.sum()),
                                   sign=True) if both.any() else "-")
        out.append(f"| {e} | " + " | ".join(cells) + " | " + " | ".join(shifts) + " |")
    return "\n".join(out)


def figure(studies, path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(studies), 8.0), layout="constrained")
    axes = fig.subplots(3, len(studies), sharex=True, squeeze=False)
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    for j, st in enumerate(studies):
        top, bot, low = axes[0, j], axes[1, j], axes[2, j]
        for k, c in enumerate(st["conds"]):
            col = colors[k % len(colors)]
            for i, (steps, acc, mi, wn) in enumerate(st["curves"][c]):
                x = np.maximum(steps, 1)
                top.plot(x, acc, color=col, lw=0.9, alpha=0.8,
                         label=c if i == 0 else None)
                if mi is not None:
                    bot.plot(x, mi, color=col, lw=0.9, alpha=0.8)
                if wn is not None:
                    low.plot(x, wn, color=col, lw=0.9, alpha=0.8)
            fits = 10 ** st["per"][c]["fit"][np.isfinite(st["per"][c]["fit"])]
            for f in fits:
                top.axvline(f, color=col, lw=0.6, ls=":")
        top.set_title(st["name"], fontsize=9)
        top.set_xscale("log")
        top.set_ylim(-0.02, 1.02)
        top.axhline(ACC, color="#888", lw=0.5, ls="--")
        top.legend(fontsize=7, loc="upper left", frameon=False)
        low.set_xlabel("training step")
        if j == 0:
            top.set_ylabel("test accuracy (dotted: end of fitting)")
            bot.set_ylabel("I(X;T), kde_rel upper, c = 1 (bits)")
            low.set_ylabel("total parameter L2 norm")
    fig.suptitle("Interventions on the second phase: every seed, one log-step axis", fontsize=10)
    fig.savefig(path, dpi=110)


def main(argv):
    keep = None
    if argv[:1] == ["--events"]:
        keep, argv = argv[1], argv[2:]
    out_md, out_png, specs = argv[0], argv[1], argv[2:]
    studies = [study_rows(*s.split("=", 1)) for s in specs]
    text = "\n\n".join(tables(st, keep) for st in studies)
    with open(out_md, "w") as fh:
        fh.write(text + "\n")
    figure(studies, out_png)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
