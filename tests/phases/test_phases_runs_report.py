"""align_runs across seeds, and the text / JSON views of a segmentation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import xarray as xr

from ckptlab.errors import ValidationError
from ckptlab.phases import align_runs, format_phase_table, seg_to_json, segment

SHIFTS = (0.0, 0.1, 0.25)  # decades by which each seed's transitions move right


def sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def make_run(seed: int, shift: float) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    steps = np.concatenate([[0], np.unique(np.round(np.logspace(0, 5, 101)).astype(np.int64))])
    s = np.log10(np.maximum(steps, 1)) - shift
    n = len(steps)
    ds = xr.Dataset(coords={"step": steps, "layer": ["hidden0"], "estimator": ["binning"]})
    ds["train_acc"] = ("step", np.clip(0.1 + 0.9 * sig((s - 2.5) / 0.15)
                                       + rng.normal(0, 0.005, n), 0, 1))
    ds["test_loss"] = ("step", 0.2 + 2.1 * (1 - sig((s - 2.0) / 0.2))
                       + 0.8 * np.exp(-0.5 * ((s - 3.2) / 0.25) ** 2) + rng.normal(0, 0.02, n))
    ds["mi_xt"] = (("step", "estimator", "layer"),
                   (3 + 4 * np.exp(-0.5 * ((s - 3.1) / 0.5) ** 2))[:, None, None]
                   + rng.normal(0, 0.05, (n, 1, 1)))
    ds.attrs["run_name"] = "seedrun"
    return ds


@pytest.fixture(scope="module")
def segs():
    return [segment(make_run(seed, shift)) for seed, shift in zip((1, 2, 3), SHIFTS)]


def test_align_runs_mean_std_n(segs):
    out = align_runs(segs)
    assert out.sizes["run"] == 3
    assert len(set(out["run"].values.tolist())) == 3  # equal run_names kept apart
    per_run = np.stack([s["event_log10_step"].values for s in segs])
    for j, name in enumerate(segs[0]["event"].values.tolist()):
        vals = per_run[:, j][np.isfinite(per_run[:, j])]
        assert int(out["n"].sel(event=name)) == len(vals)
        if len(vals):
            assert out["log10_step_mean"].sel(event=name).item() == pytest.approx(vals.mean())
            assert out["event_step_geomean"].sel(event=name).item() == pytest.approx(
                10 ** vals.mean())
        if len(vals) > 1:
            assert out["log10_step_std"].sel(event=name).item() == pytest.approx(
                vals.std(ddof=1))
    # and against the truth: fit_end at 2.5 + 0.15 ln 89 plus each seed's shift
    truth = 2.5 + 0.15 * math.log(89) + np.mean(SHIFTS)
    assert abs(out["log10_step_mean"].sel(event="fit_end").item() - truth) < 0.1
    assert out["log10_step_std"].sel(event="fit_end").item() == pytest.approx(
        np.std(SHIFTS, ddof=1), abs=0.05)
    assert int(out["n"].sel(event="lmn_peak")) == 0  # absent in every run


def test_align_runs_separation_and_missing_events(segs):
    broken = segs[2].copy(deep=True)
    broken["event_log10_step"].loc[{"event": "test_loss_peak"}] = np.nan
    out = align_runs([segs[0], segs[1], broken])
    assert int(out["n"].sel(event="test_loss_peak")) == 2
    a, b = "fit_end", "test_loss_peak"
    seps = [abs(s["event_log10_step"].sel(event=a).item()
                - s["event_log10_step"].sel(event=b).item()) for s in segs[:2]]
    assert out["separation_mean"].sel(event=a, event_b=b).item() == pytest.approx(np.mean(seps))
    assert out["separation_std"].sel(event=a, event_b=b).item() == pytest.approx(
        np.std(seps, ddof=1))
    assert int(out["separation_n"].sel(event=a, event_b=b)) == 2
    sm = out["separation_mean"].values
    np.testing.assert_allclose(sm, sm.T, equal_nan=True)
    spreads = [s["alignment_spread"].item() for s in segs]
    assert out["alignment_spread_mean"].item() == pytest.approx(np.mean(spreads))
    assert out["aligned_fraction"].item() == pytest.approx(
        np.mean([bool(s["aligned"]) for s in segs]))
    assert out["log10_step_std"].attrs["ddof"] == 1


def test_align_runs_unions_events_of_different_runs(segs):
    other = segment(make_run(4, 0.0).drop_vars("mi_xt"))  # has "mi_peak" placeholder only
    out = align_runs([segs[0], other])
    names = out["event"].values.tolist()
    assert "mi_peak[binning,hidden0]" in names and "mi_peak" in names
    assert int(out["n"].sel(event="mi_peak[binning,hidden0]")) == 1


def test_align_runs_rejects_bad_input(segs):
    with pytest.raises(ValidationError, match=r"segments must be a non-empty sequence"):
        align_runs([])
    with pytest.raises(ValidationError, match=r"segments must be a non-empty sequence"):
        align_runs(segs[0])
    with pytest.raises(ValidationError, match=r"segments\[1\] must be a Dataset returned by "):
        align_runs([segs[0], xr.Dataset()])


def test_format_phase_table(segs):
    text = format_phase_table(segs[0])
    lines = text.splitlines()
    assert lines[0] == "run: seedrun"
    assert lines[1].split()[:3] == ["event", "step", "log10"]
    for name, step in zip(segs[0]["event"].values.tolist(), segs[0]["event_step"].values):
        row = next(ln for ln in lines if ln.startswith(name + " "))
        if np.isfinite(step):
            assert f"{round(step):,}" in row and f"{math.log10(step):.2f}" in row
        else:
            assert row.split()[1:3] == ["-", "-"]
    assert any(ln.startswith("phases: fitting 0..") for ln in lines)
    assert lines[-1].startswith("alignment: aligned")


def test_seg_to_json_is_json_with_none_for_nan(segs):
    d = seg_to_json(segs[0])
    text = json.dumps(d, allow_nan=False)  # would raise on NaN
    back = json.loads(text)
    by_name = {e["name"]: e for e in back["events"]}
    for name, step in zip(segs[0]["event"].values.tolist(), segs[0]["event_step"].values):
        if np.isfinite(step):
            assert by_name[name]["step"] == pytest.approx(step)
        else:
            assert by_name[name]["step"] is None and by_name[name]["note"]
    assert back["phases"]["label"] == segs[0]["phase"].values.tolist()
    assert back["alignment"]["aligned"] is bool(segs[0]["aligned"])
    assert back["alignment"]["tolerance_decades"] == 0.5
    assert len(back["separation"]["decades"]) == segs[0].sizes["event"]
    with pytest.raises(ValidationError, match=r"seg must be a Dataset returned by segment\(\)"):
        seg_to_json(xr.Dataset())
    with pytest.raises(ValidationError, match=r"seg must be a Dataset returned by segment\(\)"):
        format_phase_table("not a seg")
