"""align_runs across seeds, and the text / JSON views of a segmentation."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import xarray as xr

from ckptlab.errors import ValidationError
from ckptlab.phases import align_runs, format_phase_table, seg_to_json, segment
from ckptlab.phases.report import format_alignment_table, format_runs, format_shift_table
from ckptlab.phases.runs import bootstrap_mean_interval, compare_conditions

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


# ----------------------------------------------------------------------------- verdicts' basis

def flat_mi(ds: xr.Dataset) -> xr.Dataset:
    """The same run with an I(X;T) curve that never peaks (noise around a constant)."""
    out = ds.copy(deep=True)
    rng = np.random.default_rng(0)
    out["mi_xt"] = out["mi_xt"].copy(data=3 + rng.normal(0, 0.05, out["mi_xt"].shape))
    return out


def saturated_mi(ds: xr.Dataset) -> xr.Dataset:
    """The same run with I(X;T) at its ceiling: the estimator measured nothing."""
    out = ds.copy(deep=True)
    out["mi_xt"] = out["mi_xt"].copy(data=np.full(out["mi_xt"].shape, 11.0))
    out["mi_xt_ceiling"] = (("estimator",), [11.0])
    out["mi_xt_saturated"] = (("estimator", "layer"), [[1.0]])
    return out


def test_verdict_names_the_events_it_could_not_compare():
    seg = segment(flat_mi(make_run(1, 0.0)))
    assert np.isnan(seg["event_step"].sel(event="mi_peak[binning,hidden0]"))
    assert np.isfinite(seg["alignment_spread"].item())  # fit_end and test_loss_peak happened
    assert seg["alignment_verdict"].item() == "undetermined"
    assert not bool(seg["aligned"])  # two of three events within tolerance is not "aligned"
    a = seg["alignment_verdict"].attrs
    assert a["compared"] == "fit_end, test_loss_peak"
    assert a["did_not_happen"] == "mi_peak[binning,hidden0]"
    assert a["saturated"] == "" and a["not_measured"] == ""
    summary = seg["aligned"].attrs["summary"]
    assert summary.startswith("undetermined for the events it could not compare: did not "
                              "happen (mi_peak[binning,hidden0])")
    assert "the 2 compared events fit_end, test_loss_peak span" in summary
    line = format_phase_table(seg).splitlines()[-1]
    assert line.startswith("alignment: undetermined") and "mi_peak[binning,hidden0]" in line
    js = seg_to_json(seg)["alignment"]
    assert js["verdict"] == "undetermined" and js["did_not_happen"] == ["mi_peak[binning,hidden0]"]


def test_saturated_events_are_named_as_saturated():
    seg = segment(saturated_mi(make_run(2, 0.0)))
    assert seg["alignment_verdict"].item() == "undetermined"
    assert seg["alignment_verdict"].attrs["saturated"] == "mi_peak[binning,hidden0]"
    assert "saturated (the estimator at its ceiling or at 0) (mi_peak[binning,hidden0])" in \
        seg["aligned"].attrs["summary"]


def test_events_apart_are_not_aligned_whatever_the_missing_ones():
    seg = segment(flat_mi(make_run(1, 0.0)), align_events=["fit_end", "generalisation_end",
                                                           "mi_peak"])
    # generalisation_end: test_acc is absent -> not measured; fit_end alone -> undetermined
    assert seg["alignment_verdict"].item() == "undetermined"
    assert "only 1 of the 3 alignment events happened (fit_end)" in seg["aligned"].attrs["summary"]
    assert seg["alignment_verdict"].attrs["not_measured"] == "generalisation_end"
    seg = segment(flat_mi(make_run(1, 0.0)), tolerance_decades=0.01)
    assert seg["alignment_verdict"].item() == "not aligned"
    assert "not compared: did not happen (mi_peak[binning,hidden0])" in \
        seg["aligned"].attrs["summary"]


def test_align_runs_does_not_count_undetermined_runs_as_aligned():
    segs = [segment(flat_mi(make_run(seed, shift))) for seed, shift in zip((1, 2, 3), SHIFTS)]
    out = align_runs(segs)
    assert out["alignment_verdict"].values.tolist() == ["undetermined"] * 3
    assert np.isnan(out["aligned_fraction"].item())  # was 100% before verdicts named a basis
    s = out["alignment_summary"].item()
    assert s.startswith("aligned in 0, not aligned in 0, undetermined in 3 of 3 runs")
    assert "compared in every run: fit_end, test_loss_peak" in s
    assert "compared in no run: mi_peak[binning,hidden0] did not happen in 3 of 3 runs" in s
    assert out["status"].sel(event="mi_peak[binning,hidden0]").values.tolist() == \
        ["did not happen"] * 3
    assert out["status"].sel(event="lmn_peak").values.tolist() == ["not measured"] * 3
    text = format_runs(out)
    assert "no run has a determined alignment verdict" in text
    assert re.search(r"^mi_peak\[binning,hidden0\]\s+0/3 .* did not happen in 3$", text, re.M)


def test_pair_table_intervals_and_verdicts(segs):
    out = align_runs(segs, n_boot=500, seed=3)
    a, b = "fit_end", "test_loss_peak"
    seps = np.array([abs(s["event_log10_step"].sel(event=a).item()
                         - s["event_log10_step"].sel(event=b).item()) for s in segs])
    lo, hi = out["separation_ci"].sel(event=a, event_b=b).values
    assert lo <= seps.mean() <= hi and seps.min() <= lo and hi <= seps.max()
    np.testing.assert_array_equal(out["separation_ci"].sel(event=b, event_b=a).values, [lo, hi])
    again = align_runs(segs, n_boot=500, seed=3)
    xr.testing.assert_identical(out, again)  # seeded: reproducible
    assert out["pair_verdict"].sel(event=a, event_b=b).item() == ("aligned" if hi <= 0.5 else
                                                                  "undetermined")
    offset = np.mean([s["event_log10_step"].sel(event=b).item()
                      - s["event_log10_step"].sel(event=a).item() for s in segs])
    assert out["offset_mean"].sel(event=a, event_b=b).item() == pytest.approx(offset)
    # plane_settled lies > 1 decade after fit_end in every run: not aligned
    far = "plane_settled[binning]"
    assert out["pair_verdict"].sel(event=a, event_b=far).item() == "not aligned"
    note = out["pair_note"].sel(event="fit_end", event_b="lmn_peak").item()
    assert note == "undetermined: no run has both events (lmn_peak not measured in 3 of 3 runs)"
    assert out["pair_verdict"].sel(event=a, event_b=a).item() == ""
    lo, hi = out["log10_step_ci"].sel(event=a).values
    assert lo <= out["log10_step_mean"].sel(event=a).item() <= hi
    assert out["separation_ci"].attrs["units"] == "decades"
    text = format_alignment_table(out, title="demo")
    assert text.splitlines()[0] == "demo"
    assert re.search(r"^fit_end\s+test_loss_peak\s+3 ", text, re.M)
    assert "  lmn_peak: not measured in 3" in text


def test_align_runs_with_a_fixed_event_list(segs):
    out = align_runs(segs, events=["test_loss_peak", "fit_end", "made_up[x]"])
    assert out["event"].values.tolist() == ["test_loss_peak", "fit_end", "made_up[x]"]
    assert out["event_type"].values.tolist() == ["test_loss_peak", "fit_end", "made_up"]
    assert int(out["n"].sel(event="made_up[x]")) == 0
    assert out["status"].sel(event="made_up[x]").values.tolist() == ["absent"] * 3
    with pytest.raises(ValidationError, match=r"n_boot must be an integer >= 100, got 5"):
        align_runs(segs, n_boot=5)
    with pytest.raises(ValidationError, match=r"confidence must be a finite number > 0 and < 1"):
        align_runs(segs, confidence=1.0)


def test_bootstrap_interval_is_seeded_and_order_free():
    rng = np.random.default_rng(5)
    v = rng.normal(size=(6, 5))
    v[1, 2] = np.nan
    v[4, :4] = np.nan  # one finite value: no interval
    lo, hi = bootstrap_mean_interval(v, n_boot=1000, seed=7)
    lo2, hi2 = bootstrap_mean_interval(v[::-1], n_boot=1000, seed=7)
    np.testing.assert_array_equal(lo, lo2[::-1])
    np.testing.assert_array_equal(hi, hi2[::-1])
    assert np.isnan(lo[4]) and np.isnan(hi[4])
    means = np.nanmean(np.where(np.isnan(v), np.nan, v), axis=1)
    ok = np.isfinite(lo)
    assert np.all(lo[ok] <= means[ok]) and np.all(means[ok] <= hi[ok])
    lo90, hi90 = bootstrap_mean_interval(v, n_boot=1000, confidence=0.5, seed=7)
    assert np.all(hi90[ok] - lo90[ok] < hi[ok] - lo[ok])
    # two values: the bootstrap means are a, (a+b)/2, b -> the 95% interval is [a, b]
    lo, hi = bootstrap_mean_interval([[1.0, 3.0]], n_boot=2000)
    assert (lo[0], hi[0]) == (1.0, 3.0)
    # the percentile interval of a mean of 5 iid normals is about mean +- 1.96 sd / sqrt(5)
    x = np.random.default_rng(1).normal(size=(400, 5))
    lo, hi = bootstrap_mean_interval(x, n_boot=1000)
    cover = np.mean((lo <= 0) & (0 <= hi))
    assert 0.75 < cover < 0.97  # the percentile bootstrap undercovers for n = 5


def test_compare_conditions_shifts_paired_by_seed(segs):
    later = [segment(make_run(seed, shift + 0.4)) for seed, shift in zip((1, 2, 3), SHIFTS)]
    cmp = compare_conditions({"control": segs, "treated": later}, n_boot=500)
    assert cmp["contrast"].values.tolist() == ["treated vs control"]
    assert cmp.attrs["reference"] == "control"
    d = [b["event_log10_step"].sel(event="fit_end").item()
         - a["event_log10_step"].sel(event="fit_end").item() for a, b in zip(segs, later)]
    row = cmp.sel(contrast="treated vs control", event="fit_end")
    assert row["shift_mean"].item() == pytest.approx(np.mean(d))
    assert row["shift_std"].item() == pytest.approx(np.std(d, ddof=1))
    assert int(row["shift_n"]) == 3
    lo, hi = row["shift_ci"].values
    assert 0 < lo <= np.mean(d) <= hi
    assert row["shift_verdict"].item() == "later"
    assert row["shift_note"].item().startswith("later: mean shift +0.4")
    none = cmp.sel(contrast="treated vs control", event="lmn_peak")
    assert none["shift_verdict"].item() == "undetermined"
    assert "happened in 0 of 3 seeds under control, 0 under treated" in none["shift_note"].item()
    same = compare_conditions({"a": segs, "b": segs}, n_boot=500)
    assert same["shift_verdict"].sel(event="fit_end").item() == "no shift resolved"
    text = format_shift_table(cmp)
    assert re.search(r"^fit_end\s+3\s+3\s+3\s+\+0\.4\d", text, re.M)
    with pytest.raises(ValidationError, match=r"conditions must be a mapping of at least 2"):
        compare_conditions({"a": segs})
    with pytest.raises(ValidationError, match=r"same number of runs \(paired by seed\)"):
        compare_conditions({"a": segs, "b": segs[:2]})
    with pytest.raises(ValidationError, match=r"reference must be one of 'a', 'b'; got 'c'"):
        compare_conditions({"a": segs, "b": segs}, reference="c")
