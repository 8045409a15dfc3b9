"""analyze(): numbers against independent oracles, schedulers agree, caching, bad input."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
import xarray as xr
from sklearn.metrics import mutual_info_score

from ckptlab.analysis import analyze, load_analysis
from ckptlab.analysis import api as api_mod
from ckptlab.errors import CkptlabError, SchedulerError, ValidationError
from ckptlab.metrics.lmn import linear_mapping_number
from ckptlab.metrics.local_complexity import cross_polytope_directions, local_complexity
from ckptlab.models import build_model
from ckptlab.store import Recorder, Run

FAST = dict(metrics=("mi", "weights", "rank"), estimators=("binning", "kde"), kde_samples=200)


def _hidden(run, i, x):
    model = build_model(run.model_spec)
    model.load_state_dict(run.state_dict(i))
    with torch.no_grad():
        out = model.trunk(model.embed(torch.from_numpy(x)))
    return model, {k: v.double().numpy() for k, v in out.hidden.items()}


def _rows(codes):
    ids = {}
    return np.array([ids.setdefault(tuple(r), len(ids)) for r in codes])


def _oracle_binning(t, y, lo, hi, n_bins=30):
    codes = np.clip(np.floor((t - lo) / ((hi - lo) / n_bins)), 0, n_bins - 1).astype(int)
    ids = _rows(codes)
    return (mutual_info_score(ids, np.arange(len(ids))) / math.log(2),
            mutual_info_score(ids, y) / math.log(2))


def test_binning_mi_equals_sklearn_oracle(tanh_run):
    ds = analyze(tanh_run, metrics=("mi",), estimators=("binning",), store=False,
                 scheduler="synchronous")
    run = Run(tanh_run)
    d = run.data()
    x = np.concatenate([d["x_train"], d["x_test"]])
    y = np.concatenate([d["y_train"], d["y_test"]])
    assert len(x) == 4096
    for i in (0, run.n // 2, run.n - 1):
        _, hid = _hidden(run, i, x)
        for layer, t in hid.items():
            xt, ty = _oracle_binning(t, y, -1.0, 1.0)
            got = ds.mi_xt.sel(estimator="binning", layer=layer).isel(step=i).item()
            np.testing.assert_allclose(got, xt, rtol=1e-12)
            np.testing.assert_allclose(ds.mi_ty.sel(estimator="binning", layer=layer).isel(step=i).item(),
                                       ty, rtol=1e-9, atol=1e-12)


def test_unbounded_layers_bin_over_the_trajectory_range(relu_run):
    ds = analyze(relu_run, metrics=("mi",), estimators=("binning",), store=False,
                 scheduler="synchronous")
    run = Run(relu_run)
    d = run.data()
    x = np.concatenate([d["x_train"], d["x_test"]])
    y = np.concatenate([d["y_train"], d["y_test"]])
    per_step = [_hidden(run, i, x)[1] for i in range(run.n)]
    for layer in ("hidden0", "hidden1"):
        lo = min(h[layer].min() for h in per_step)
        hi = max(h[layer].max() for h in per_step)
        rng = ds.mi_xt.attrs["binning_range_" + layer]
        np.testing.assert_allclose(json.loads(rng), [lo, hi], rtol=1e-6)
        for i in (1, run.n - 1):
            xt, _ = _oracle_binning(per_step[i][layer], y, lo, hi)
            np.testing.assert_allclose(ds.mi_xt.sel(estimator="binning", layer=layer).isel(step=i).item(),
                                       xt, rtol=1e-6)


def test_labelled_output(tanh_run):
    ds = analyze(tanh_run, store=False, scheduler="synchronous", kde_samples=200,
                 renyi_samples=64, lc_points=16, lmn_samples=12, radii=(0.1,),
                 lc_activations="any")  # tanh: zero-set counts, not linear regions
    assert set(ds.estimator.values) == {"binning", "kde_upper", "kde_lower", "renyi_norm",
                                        "pca_binning"}
    assert set(ds.rel_estimator.values) == {"kde_rel_upper", "kde_rel_lower"}
    assert list(ds.resolution.values) == [0.1, 0.3, 1.0, 3.0]
    assert list(ds.layer.values) == ["hidden0", "hidden1"]
    assert ds.mi_xt.dims == ("step", "estimator", "layer")
    assert ds.mi_xt_rel.dims == ("step", "rel_estimator", "resolution", "layer")
    assert ds.lc.dims == ("step", "split", "radius", "layer")
    for name, var in ds.data_vars.items():
        assert var.attrs.get("long_name") and var.attrs.get("units"), name
    assert ds.mi_xt.attrs["kde_sigma2"] == 0.1 and ds.mi_xt.attrs["binning_n_bins"] == 30
    assert ds.mi_xt.attrs["renyi_norm_alpha"] == 1.01
    assert ds.lc.attrs["n_directions"] == 12  # min(25, input width 12)
    assert np.isfinite(ds.mi_xt.values).all() and np.isfinite(ds.lmn.values).all()
    # basic truths: I(T;Y) <= I(X;T) <= log2 N; KDE lower <= upper
    assert (ds.mi_ty <= ds.mi_xt + 1e-9).all()
    assert (ds.mi_xt <= math.log2(4096) + 1e-9).all()
    assert (ds.mi_xt.sel(estimator="kde_lower") <= ds.mi_xt.sel(estimator="kde_upper") + 1e-9).all()
    np.testing.assert_array_equal(ds.train_acc.values, Run(tanh_run).metrics()["train_acc"])


def test_weights_against_numpy(relu_run):
    ds = analyze(relu_run, metrics=("weights",), store=False, scheduler="synchronous")
    run = Run(relu_run)
    for i in (0, run.n - 1):
        sd = {k: v.numpy().astype(np.float64) for k, v in run.state_dict(i).items()}
        np.testing.assert_allclose(ds.weight_norm.isel(step=i).item(),
                                   math.sqrt(sum((v ** 2).sum() for v in sd.values())), rtol=1e-6)
        w = sd["layers.0.weight"] if "layers.0.weight" in sd else sd[str(ds.matrix.values[0])]
        name = "layers.0.weight" if "layers.0.weight" in sd else str(ds.matrix.values[0])
        s = np.linalg.svd(w, compute_uv=False)
        np.testing.assert_allclose(ds.spectral_norm.sel(matrix=name).isel(step=i).item(), s[0], rtol=1e-6)
        np.testing.assert_allclose(ds.stable_rank.sel(matrix=name).isel(step=i).item(),
                                   (s ** 2).sum() / s[0] ** 2, rtol=1e-6)


def test_lc_and_lmn_plumbing_in_embedding_space(token_run):
    run = Run(token_run)
    d = run.data()
    n_train = len(d["x_train"])
    ds = analyze(token_run, metrics=("lc", "lmn"), lc_splits=("train",), lc_points=n_train,
                 lmn_samples=n_train, radii=(0.05, 0.5), n_directions=5, store=False,
                 scheduler="synchronous")
    i = run.n - 1
    model = build_model(run.model_spec)
    model.load_state_dict(run.state_dict(i))
    x = torch.from_numpy(d["x_train"])
    with torch.no_grad():
        e = model.embed(x)  # the neighbourhood lives in embedding space (width 2 * 4)
        assert e.shape[1] == 8
        dirs = cross_polytope_directions(8, n_directions=5, seed=0)

        def fn(v):
            o = model.trunk(v)
            return [*o.preacts.values(), o.logits]

        for r in (0.05, 0.5):
            counts = local_complexity(e, fn, directions=dirs, radius=r).double()
            np.testing.assert_allclose(
                ds.lc.sel(split="train", radius=r, layer="hidden0").isel(step=i).item(),
                counts[:, 0].mean().item())
        to_h, head = model.lmn_split()
        ref = linear_mapping_number(to_h(x), head)
    np.testing.assert_allclose(ds.lmn.isel(step=i).item(), ref, rtol=1e-9)
    # larger neighbourhoods cut at least as many neurons on average
    assert (ds.lc.sel(radius=0.5) >= ds.lc.sel(radius=0.05) - 1e-12).all()


def test_lazy_equals_eager_and_schedulers_agree(tanh_run):
    kw = dict(FAST, store=False, block_size=4)
    eager = analyze(tanh_run, scheduler="synchronous", **kw)
    lazy = analyze(tanh_run, compute=False, **kw)
    assert hasattr(lazy.mi_xt.data, "dask")
    xr.testing.assert_allclose(eager, lazy.compute(), rtol=1e-10)
    xr.testing.assert_allclose(eager, analyze(tanh_run, scheduler="threads", n_workers=2, **kw),
                               rtol=1e-10)
    xr.testing.assert_allclose(eager, analyze(tanh_run, scheduler="processes", n_workers=2, **kw),
                               rtol=1e-10)


def test_blocks_run_in_archive_order(relu_run, monkeypatch):
    """One block after the one beside it (the reader keeps the chunks at a block's ends for
    its neighbours): with more than 10 blocks, unpadded task keys sorted 10-11 before 2-3."""
    calls = []
    real = api_mod.compute_block

    def recording(plan, a, b, fams, n_hint=0):
        calls.append(a)
        return real(plan, a, b, fams, n_hint)

    monkeypatch.setattr(api_mod, "compute_block", recording)
    analyze(relu_run, metrics=("weights",), scheduler="synchronous", block_size=1, store=False)
    n = Run(relu_run).n
    assert n > 10 and sorted(calls) == list(range(n))
    assert calls in (list(range(n)), list(range(n))[::-1])


def test_incremental_new_checkpoints_and_resume(tmp_path, tanh_run, monkeypatch):
    path = tmp_path / "run.zarr"
    shutil.copytree(tanh_run, path)
    calls = []
    real = api_mod.compute_block

    def counting(plan, a, b, fams, n_hint=0):
        calls.append((a, b, tuple(sorted(fams))))
        return real(plan, a, b, fams, n_hint)

    monkeypatch.setattr(api_mod, "compute_block", counting)
    kw = dict(metrics=("mi", "weights"), estimators=("binning",), scheduler="synchronous",
              block_size=4)
    first = analyze(path, **kw)
    n = Run(path).n
    assert len(calls) == math.ceil(n / 4)
    calls.clear()
    again = analyze(path, **kw)  # everything cached
    assert calls == []
    xr.testing.assert_identical(first, again)
    # a run still training: two new checkpoints -> only the last block(s) are computed
    last = Run(path)
    sd = last.state_dict(-1)
    with Recorder(path, mode="a") as rec:
        for k in (1, 2):
            rec.save(int(last.steps[-1]) + k, {name: v * (1 + 0.1 * k) for name, v in sd.items()},
                     metrics={"train_acc": 1.0})
    ext = analyze(path, **kw)
    assert ext.sizes["step"] == n + 2
    assert all(a >= (n // 4) * 4 for a, _, _ in calls) and calls
    xr.testing.assert_allclose(ext.weight_norm.isel(step=slice(0, n)), first.weight_norm)
    # a changed parameter is never served from the old results
    calls.clear()
    ten = analyze(path, **{**kw, "metrics": ("mi",)}, n_bins=10)
    assert calls and not np.allclose(ten.mi_xt.values, ext.mi_xt.values)
    assert load_analysis(path).mi_xt.attrs["binning_n_bins"] == 10  # the newest


def test_interrupted_analysis_finishes_only_the_rest(tmp_path, tanh_run, monkeypatch):
    path = tmp_path / "run.zarr"
    shutil.copytree(tanh_run, path)
    real = api_mod.compute_block
    seen = []

    def flaky(plan, a, b, fams, n_hint=0):
        seen.append(a)
        if len(seen) == 3:
            raise KeyboardInterrupt
        return real(plan, a, b, fams, n_hint)

    monkeypatch.setattr(api_mod, "compute_block", flaky)
    kw = dict(metrics=("weights",), scheduler="synchronous", block_size=4)
    with pytest.raises(KeyboardInterrupt):
        analyze(path, **kw)
    done_before = set(seen[:2])
    seen.clear()
    monkeypatch.setattr(api_mod, "compute_block", real)
    full = analyze(path, **kw)
    ref = analyze(tanh_run, store=False, **kw)
    xr.testing.assert_allclose(full, ref)
    assert np.isfinite(full.weight_norm.values).all()
    assert done_before  # two blocks had been stored before the interruption


def test_diverged_checkpoint_is_nan_with_warning(tmp_path, relu_run):
    path = tmp_path / "nan.zarr"
    run = Run(relu_run)
    with Recorder(path, model_spec=run.model_spec, data=run.data(), config=run.config) as rec:
        for i in range(4):
            sd = run.state_dict(i)
            if i == 2:
                sd = {k: torch.full_like(v, float("nan")) for k, v in sd.items()}
            rec.save(i, sd)
    with pytest.warns(RuntimeWarning, match=r"1 checkpoint\(s\) hold NaN/Inf parameters \(steps \[2\]"):
        ds = analyze(path, metrics=("mi", "weights", "lc", "lmn", "rank"),
                     estimators=("binning", "adaptive", "kde"), store=False,
                     scheduler="synchronous", lc_points=8, lmn_samples=8, kde_samples=100,
                     radii=(0.1,))
    for name, var in ds.data_vars.items():
        if "step" in var.dims and name not in ("train_loss", "test_loss", "train_acc", "test_acc"):
            v = var.isel(step=2).values
            assert np.isnan(v).all(), name
            other = var.isel(step=[0, 1, 3]).values
            assert np.isfinite(other[~np.isnan(other)]).all()


@pytest.mark.parametrize("kwargs, match", [
    ({"metrics": ("mi", "entropy")}, "metrics must be one of 'mi', 'lc', 'lmn', 'weights', 'rank'; got 'entropy'"),
    ({"estimators": ("binning", "ksg")}, "estimators must be one of .*got 'ksg'"),
    ({"n_bins": 1}, "n_bins must be an integer >= 2, got 1"),
    ({"sigma2": 0.0}, "sigma2 must be a finite number > 0, got 0.0"),
    ({"radii": (0.1, -1.0)}, "radii must be a finite number > 0, got -1.0"),
    ({"alpha": 1}, "alpha must be != 1"),
    ({"lmn_samples": 10**6}, r"lmn_samples must be <= the number of training examples \(\d+\), got 1000000"),
    ({"probe_size": 10**6}, r"probe_size must be <= the number of probe examples \(4096\), got 1000000"),
    ({"n_directions": 13, "lc_activations": "any"}, "n_directions must be <= the input .* width 12, got 13"),
    ({"scheduler": "gpu"}, "scheduler must be 'threads', 'processes', 'synchronous' or the address"),
    ({"block_size": 0}, "block_size must be an integer >= 1, got 0"),
])
def test_bad_options_fail_before_any_work(tmp_path, tanh_run, kwargs, match):
    path = tmp_path / "run.zarr"
    shutil.copytree(tanh_run, path)
    with pytest.raises(ValidationError, match=match):
        analyze(path, **kwargs)
    assert not (path / "analysis").exists()


def test_unreachable_scheduler_and_empty_archives(tmp_path, tanh_run):
    with pytest.raises(SchedulerError, match="no Dask scheduler answers at tcp://127.0.0.1:9"):
        analyze(tanh_run, scheduler="tcp://127.0.0.1:9")
    empty = tmp_path / "empty.zarr"
    Recorder(empty, model_spec=Run(tanh_run).model_spec).close()
    with pytest.raises(CkptlabError, match="holds no checkpoints"):
        analyze(empty)
    nodata = tmp_path / "nodata.zarr"
    run = Run(tanh_run)
    with Recorder(nodata, model_spec=run.model_spec) as rec:
        rec.save(0, run.state_dict(0))
    with pytest.raises(CkptlabError, match="holds no x_train, y_train, x_test, y_test"):
        analyze(nodata)


def test_memory_archive_with_processes_is_refused(tanh_run):
    with pytest.raises(ValidationError, match="memory:// archive lives in this process only"):
        analyze("memory://nowhere/run.zarr", scheduler="processes")


def test_unguarded_script_with_processes_fails_with_the_fix(tmp_path, tanh_run):
    # each worker imports the script that started it: an unguarded call must say so, not
    # leave a bare BrokenProcessPool
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text("from ckptlab.analysis import analyze\n"
                      f"analyze({str(tanh_run)!r}, metrics=('weights',), store=False, "
                      "scheduler='processes', n_workers=1)\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0
    assert "SchedulerError: a worker process died" in out.stderr
    assert "if __name__ == '__main__':" in out.stderr


def test_each_fixed_subset_has_its_own_generator(tanh_run):
    # the LMN and LC subsets must not shift when the MI probe subset changes size: their cache
    # keys do not include the probe, so a shift would silently reuse results of other subsets
    kw = dict(metrics=("lmn", "lc"), lmn_samples=10, lc_points=8, radii=(0.1,), store=False,
              lc_splits=("train", "test"), lc_activations="any",
              scheduler="synchronous")
    a = analyze(tanh_run, probe_size=100, **kw)
    b = analyze(tanh_run, probe_size=300, **kw)
    xr.testing.assert_identical(a, b)
