"""trainers.study and ``ckptlab study``: seeds as Dask tasks, the folder, the tables, re-runs."""

from __future__ import annotations

import importlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

import trainers
import trainers.loop
from ckptlab.analysis import load_analysis
from ckptlab.errors import CkptlabError, ValidationError
from ckptlab.phases import segment
from ckptlab.store import Run
from cli.main import cli
from trainers import study
from trainers.study import StudyMismatchError

# the module, not the function trainers.study that trainers/__init__ exports under its name
study_mod = importlib.import_module("trainers.study")

# addition mod 23, one hidden layer of 32: fits at ~70-100 steps of 300 in about a second
TINY = ["steps=300", "model_args.widths=[32]", "lr=0.01", "ckpt_per_decade=15", "task_args.p=23"]
FAST = dict(overrides=TINY, metrics=["weights"], scheduler="synchronous", n_boot=500)


class Counter:
    """Wraps trainers.study.train, recording the seed (or None: resumed) of every call."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = study_mod.train

        def counted(cfg, out, **kw):
            self.calls.append((None if cfg is None else cfg.seed, kw))
            return real(cfg, out, **kw)

        monkeypatch.setattr(study_mod, "train", counted)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "grok"
    lines = []
    res = study("quick-grok", out, seeds=3, report=lines.append, **FAST)
    return out, res, lines


def test_folder_layout_and_study_json(done):
    out, res, lines = done
    for name in ("study.json", "events.zarr", "alignment.txt", "timeline.png",
                 "seed0.zarr", "seed1.zarr", "seed2.zarr"):
        assert (out / name).exists(), name
    meta = json.loads((out / "study.json").read_text())
    assert meta["preset"] == "quick-grok" and meta["seeds"] == 3
    assert meta["overrides"] == TINY and meta["vary"] is None
    assert meta["analysis"] == {"metrics": ["weights"]}
    assert meta["configs"]["default"]["steps"] == 300 and "seed" not in meta["configs"]["default"]
    assert meta["report"]["n_boot"] == 500
    assert [Run(out / f"seed{k}.zarr").config["seed"] for k in range(3)] == [0, 1, 2]
    assert res.actions == {"default": {0: "trained", 1: "trained", 2: "trained"}}
    assert len(lines) == 3 and all(re.match(r"seed \d: trained \(", ln) for ln in lines)
    assert (out / "alignment.txt").read_text().strip() == res.table.strip()
    assert (out / "timeline.png").read_bytes()[:4] == b"\x89PNG"


def test_events_dataset_dims_attrs_and_values(done):
    out, res, _ = done
    ds = xr.open_zarr(out / "events.zarr").load()  # plain xarray, nothing of ckptlab
    assert ds.sizes["condition"] == 1 and ds.sizes["seed"] == 3
    assert ds["seed"].values.tolist() == [0, 1, 2]
    assert ds["event_step"].dims == ("condition", "seed", "event")
    assert ds["separation_ci"].dims == ("condition", "event", "event_b", "bound")
    for name, var in ds.data_vars.items():
        assert "long_name" in var.attrs and "units" in var.attrs, name
    assert ds["log10_step"].attrs["units"] == "log10(step)"
    assert ds["separation_mean"].attrs["units"] == "decades"
    assert ds.attrs["preset"] == "quick-grok" and json.loads(ds.attrs["overrides"]) == TINY
    # the per-seed events are those of segment() on each archive
    for k in range(3):
        seg = segment(load_analysis(out / f"seed{k}.zarr"))
        np.testing.assert_allclose(
            ds["event_step"].sel(condition="default", seed=k).values,
            seg["event_step"].values, equal_nan=True)
        assert ds["archive"].sel(condition="default", seed=k).item() == f"seed{k}.zarr"
    fit = ds["log10_step"].sel(condition="default", event="fit_end").values
    assert np.isfinite(fit).all()  # every seed fits in 300 steps
    assert ds["log10_step_mean"].sel(condition="default", event="fit_end").item() == \
        pytest.approx(fit.mean())
    lo, hi = ds["log10_step_ci"].sel(condition="default", event="fit_end").values
    assert lo <= fit.mean() <= hi
    assert ds["phase_start"].sel(condition="default", phase="fitting").values.tolist() == [0] * 3
    assert (ds["last_step"].values == 300).all()
    xr.testing.assert_allclose(ds.load(), res.events.load())


def test_table_text_names_verdicts_and_what_they_rest_on(done):
    text = done[1].table
    assert text.startswith("ckptlab study: preset quick-grok, seeds 0..2, overrides steps=300")
    assert re.search(r"^fit_end\s+3/3\s+\d\.\d{3}", text, re.M)
    assert "not compared with anything (the event happened in no run):" in text
    assert "  mi_peak: not measured in 3" in text  # metrics=weights: no MI
    assert "per-seed verdicts" in text and "seed 2: " in text


def test_bootstrap_intervals_are_reproducible(done, tmp_path):
    out, res, _ = done
    again = study("quick-grok", out, seeds=3, **FAST)  # nothing to train; same intervals
    xr.testing.assert_identical(res.events["separation_ci"], again.events["separation_ci"])
    other = study("quick-grok", out, seeds=3, **{**FAST, "n_boot": 500}, bootstrap_seed=1)
    ci = res.events["log10_step_ci"].sel(condition="default", event="fit_end").values
    ci1 = other.events["log10_step_ci"].sel(condition="default", event="fit_end").values
    mean = res.events["log10_step_mean"].sel(condition="default", event="fit_end").item()
    assert ci1[0] <= mean <= ci1[1] and ci[0] <= mean <= ci[1]


def test_rerun_skips_finished_seeds_and_adds_new_ones(tmp_path, monkeypatch):
    out = tmp_path / "s"
    count = Counter(monkeypatch)
    study("quick-grok", out, seeds=2, figure=False, **FAST)
    assert sorted(c[0] for c in count.calls) == [0, 1]
    count.calls.clear()
    res = study("quick-grok", out, seeds=2, figure=False, **FAST)
    assert count.calls == []
    assert res.actions == {"default": {0: "finished earlier", 1: "finished earlier"}}
    assert res.trained == 0
    res = study("quick-grok", out, seeds=3, figure=False, **FAST)
    assert [c[0] for c in count.calls] == [2]
    assert res.actions["default"] == {0: "finished earlier", 1: "finished earlier",
                                      2: "trained"}
    assert res.events.sizes["seed"] == 3
    assert json.loads((out / "study.json").read_text())["seeds"] == 3


def test_interrupted_seed_is_finished_bit_identical(done, tmp_path, monkeypatch):
    out = tmp_path / "cut"
    calls = {"n": 0}
    real = trainers.loop.evaluate

    def dying(*a, **kw):  # two evaluations per checkpoint: dies after ~12 checkpoints
        calls["n"] += 1
        if calls["n"] > 24:
            raise KeyboardInterrupt("simulated interruption")
        return real(*a, **kw)

    monkeypatch.setattr(trainers.loop, "evaluate", dying)
    with pytest.raises(KeyboardInterrupt):
        study("quick-grok", out, seeds=1, **FAST)
    partial = Run(out / "seed0.zarr")
    assert 0 < partial.n and int(partial.steps[-1]) < 300
    monkeypatch.setattr(trainers.loop, "evaluate", real)
    count = Counter(monkeypatch)
    res = study("quick-grok", out, seeds=1, **FAST)
    assert count.calls == [(None, {"resume": True, "progress": False})]
    assert res.actions == {"default": {0: "resumed"}}
    full, ref = Run(out / "seed0.zarr"), Run(done[0] / "seed0.zarr")
    np.testing.assert_array_equal(full.steps, ref.steps)
    for name, v in ref.params(ref.n - 1).items():  # the same seed, never interrupted
        np.testing.assert_array_equal(full.params(full.n - 1)[name], v)


def test_vary_runs_conditions_and_compares_them(tmp_path):
    out = tmp_path / "wd"
    res = study("quick-grok", out, seeds=2, vary="weight_decay=0.1,1", **FAST)
    for cond in ("weight_decay=0.1", "weight_decay=1"):
        for k in range(2):
            assert Run(out / cond / f"seed{k}.zarr").config["weight_decay"] == float(
                cond.split("=")[1])
    ds = xr.open_zarr(out / "events.zarr").load()
    assert ds["condition"].values.tolist() == ["weight_decay=0.1", "weight_decay=1"]
    assert ds["contrast"].values.tolist() == ["weight_decay=1 vs weight_decay=0.1"]
    assert ds.attrs["reference"] == "weight_decay=0.1"
    assert ds["shift"].dims == ("contrast", "seed", "event")
    log = ds["log10_step"].sel(event="fit_end")
    d = (log.sel(condition="weight_decay=1") - log.sel(condition="weight_decay=0.1")).values
    row = ds.sel(contrast="weight_decay=1 vs weight_decay=0.1", event="fit_end")
    assert row["shift_mean"].item() == pytest.approx(d.mean())
    lo, hi = row["shift_ci"].values
    assert lo <= d.mean() <= hi
    assert row["shift_verdict"].item() in ("later", "earlier", "no shift resolved")
    assert d.mean() > 0  # weight decay 1 slows fitting (measured: +0.16 decades)
    assert "== conditions compared (reference weight_decay=0.1)" in res.table
    assert json.loads((out / "study.json").read_text())["vary"] == {
        "key": "weight_decay", "values": ["0.1", "1"]}


@pytest.mark.parametrize("kwargs, message", [
    (dict(preset="nope"), r"unknown preset 'nope'; choose one of: "),
    (dict(seeds=0), r"seeds must be an integer >= 1, got 0"),
    (dict(vary="nokey=1,2"), r"vary: unknown config key 'nokey'; known: "),
    (dict(vary="weight_decay=1"), r"vary must give at least two non-empty values"),
    (dict(vary="seed=1,2"), r"vary must not be 'seed'"),
    (dict(vary="weight_decay=1,1.0"), r"give the same config"),
    (dict(vary="model_args.activation=relu,nope"), r"\(condition model_args.activation=nope\) "
                                                   r"cannot be built: "),
    (dict(vary="lr=0.01,0.02"), r"vary key 'lr' is also set by an override"),
    (dict(overrides=[*TINY, "seed=4"]), r"overrides must not set 'seed'"),
    (dict(metrics=["nope"]), r"metrics must be one of 'mi', "),
])
def test_bad_input_fails_before_any_training(tmp_path, monkeypatch, kwargs, message):
    count = Counter(monkeypatch)
    opts = {**FAST, **kwargs}
    preset = opts.pop("preset", "quick-grok")
    with pytest.raises(ValidationError, match=message):
        study(preset, tmp_path / "x", **opts)
    assert count.calls == [] and not (tmp_path / "x").exists()


def test_a_folder_holding_something_else_is_refused(done, tmp_path, monkeypatch):
    count = Counter(monkeypatch)
    with pytest.raises(StudyMismatchError, match=r"holds a different study: overrides is "):
        study("quick-grok", done[0], seeds=3, **{**FAST, "overrides": TINY[:-1]})
    with pytest.raises(StudyMismatchError, match=r"holds a different study: preset is "):
        study("quick-ib", done[0], seeds=3, **{**FAST, "overrides": TINY[:-1]})
    with pytest.raises(StudyMismatchError, match=r"holds a different study: analysis is "):
        study("quick-grok", done[0], seeds=3, **{**FAST, "metrics": ["mi"]})
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(StudyMismatchError, match=r"exists and does not hold a study"):
        study("quick-grok", tmp_path / "busy", **FAST)
    assert count.calls == []
    assert isinstance(StudyMismatchError("x"), CkptlabError)


def test_an_archive_of_another_config_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "s"
    study("quick-grok", out, seeds=1, figure=False, **FAST)
    trainers.train(trainers.apply_overrides(trainers.get_preset("quick-grok"),
                                            [*TINY, "seed=1", "lr=0.02"]), out / "seed1.zarr")
    count = Counter(monkeypatch)
    with pytest.raises(StudyMismatchError, match=r"seed1.zarr' was trained with another config "
                                                 r"than this study asks for \(lr: 0.02 there"):
        study("quick-grok", out, seeds=2, **FAST)
    assert count.calls == []


def test_cli_study_and_its_errors(tmp_path):
    runner = CliRunner()
    out = tmp_path / "c"
    args = ["study", "quick-grok", "--seeds", "2", "--out", str(out), "--metrics", "weights",
            "--scheduler", "synchronous", "--n-boot", "200", "--no-figure"]
    for s in TINY:
        args += ["--set", s]
    r = runner.invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "== 2 seeds" in r.output and re.search(r"^fit_end\s+2/2", r.output, re.M)
    assert "2 of 2 runs trained now" in r.output
    assert not (out / "timeline.png").exists()
    r = runner.invoke(cli, args)
    assert r.exit_code == 0 and "0 of 2 runs trained now" in r.output
    for bad, text in [
        (["study", "nope", "--out", str(tmp_path / "n")], "Error: unknown preset 'nope'"),
        (["study", "quick-grok", "--seeds", "0", "--out", str(tmp_path / "n")],
         "Error: seeds must be an integer >= 1, got 0"),
        (["study", "quick-grok", "--out", str(tmp_path / "n"), "--vary", "nokey=1,2"],
         "Error: vary: unknown config key 'nokey'"),
        (["study", "quick-grok", "--out", str(out)], "Error: out "),
    ]:
        r = runner.invoke(cli, bad)
        assert r.exit_code == 1, r.output
        assert r.output.startswith(text) and r.output.count("\n") == 1, r.output
        assert "Traceback" not in r.output
    assert not (tmp_path / "n").exists()


def test_seeds_run_on_a_dask_cluster(done, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster:
        lines = []
        res = study("quick-grok", tmp_path / "d", seeds=2, figure=False, report=lines.append,
                    **{**FAST, "scheduler": cluster.scheduler_address})
    assert res.actions == {"default": {0: "trained", 1: "trained"}}
    assert sorted(ln.split(":")[0] for ln in lines) == ["seed 0", "seed 1"]
    ref = done[1].events.isel(seed=slice(0, 2))
    np.testing.assert_allclose(res.events["event_step"].values, ref["event_step"].values,
                               equal_nan=True)  # the same seeds give the same events


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d))
    return out


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads process parents in /proc")
def test_killed_study_leaves_no_process_workers_training(tmp_path):
    # SIGTERM gives the study no chance to shut its pool down; its workers must still exit
    # (they noticed their parent is gone), so no one goes on writing the archives.
    out = tmp_path / "st"
    cmd = [sys.executable, "-m", "cli", "study", "quick-grok", "--seeds", "2", "--out", str(out),
           "--set", "steps=200000", "--metrics", "weights", "--scheduler", "processes",
           "--workers", "2", "--no-figure"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "seed1.zarr").exists() or len(_children(proc.pid)) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "study did not start"
            time.sleep(0.2)
        workers = [p for p in _children(proc.pid)
                   if "multiprocessing" in open(f"/proc/{p}/cmdline").read()]
        assert workers
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    deadline = time.monotonic() + 30
    while any(os.path.exists(f"/proc/{p}") for p in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = [p for p in workers if os.path.exists(f"/proc/{p}")]
    for p in alive:  # do not leave them to the rest of the suite
        os.kill(p, signal.SIGKILL)
    assert not alive, f"workers {alive} outlived the study"
