"""Scale-aware MI estimators through the whole pipeline: invariance, ceilings, saturation flags,
segment's reasons and the figures that pick what to show."""

import math

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

from ckptlab.analysis import analyze
from ckptlab.metrics import mi_relative as rel
from ckptlab.phases import segment
from ckptlab.plot import plot_information_plane, plot_overview, plot_resolution_curve
from ckptlab.store import Run


class Mul(nn.Module):
    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x):
        return self.k * x


class Scaled(nn.Module):
    """ckptlab's MLP parameter names (so the relu_run checkpoints load), with the first hidden
    layer read after a fixed factor: T and k T must measure the same."""

    def __init__(self, k=1.0):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(64, 12), nn.Linear(12, 8)])
        self.acts = nn.ModuleList([nn.ReLU(), nn.ReLU()])
        self.scale = Mul(k)
        self.readout = nn.Linear(8, 10)

    def forward(self, x):
        h = self.acts[0](self.layers[0](x))
        h = self.scale(h) / self.scale.k  # the tap sees k T; the network is unchanged
        return self.readout(self.acts[1](self.layers[1](h)))


SCALED = ("kde_rel", "renyi_norm", "pca_binning", "pca_knn")
KW = dict(metrics=("mi",), layers=["scale"], kde_samples=120, renyi_samples=60,
          store=False, scheduler="synchronous")


def test_relative_estimators_do_not_see_a_rescaled_layer(relu_run):
    one = analyze(relu_run, model=lambda: Scaled(1.0), estimators=SCALED + ("kde",), **KW)
    seven = analyze(relu_run, model=lambda: Scaled(7.0), estimators=SCALED + ("kde",), **KW)
    for var in ("mi_xt_rel", "mi_ty_rel"):
        # float32 activations: 7 T rounds differently from T, hence 1e-6 and not 1e-12
        xr.testing.assert_allclose(one[var], seven[var], rtol=1e-6, atol=1e-6)
    for est in ("renyi_norm", "pca_binning"):
        np.testing.assert_allclose(one.mi_xt.sel(estimator=est), seven.mi_xt.sel(estimator=est),
                                   rtol=1e-6, atol=1e-6)
    # the fixed-noise KDE does see it: rescaling reads as a change of information
    assert not np.allclose(one.mi_xt.sel(estimator="kde_upper"),
                           seven.mi_xt.sel(estimator="kde_upper"))
    np.testing.assert_allclose(seven.kde_rel_scale, 7 * one.kde_rel_scale, rtol=1e-6)


def test_kde_rel_equals_the_kernel_on_the_subset(relu_run):
    ds = analyze(relu_run, estimators=("kde_rel",), metrics=("mi",), kde_samples=100,
                 resolutions=(0.2, 2.0), store=False, scheduler="synchronous")
    run = Run(relu_run)
    d = run.data()
    x = np.concatenate([d["x_train"], d["x_test"]])
    y = np.concatenate([d["y_train"], d["y_test"]])
    idx = np.sort(np.random.default_rng([0, __import__("zlib").crc32(b"kde")])
                  .permutation(len(x))[:100])
    from ckptlab.models import build_model

    net = build_model(run.model_spec)
    i = run.n - 1
    net.load_state_dict(run.state_dict(i))
    with torch.no_grad():
        h = net.trunk(net.embed(torch.from_numpy(x[idx]))).hidden["hidden1"].double().numpy()
    r = rel.mi_kde_relative(h, y[idx], resolutions=(0.2, 2.0))
    got = ds.mi_xt_rel.sel(rel_estimator="kde_rel_upper", layer="hidden1").isel(step=i)
    np.testing.assert_allclose(got.values, r.xt_upper, rtol=1e-9)
    assert list(ds.resolution.values) == [0.2, 2.0]
    assert ds.mi_xt_rel.attrs["kde_rel_scale_rule"] == "knn"


def test_ceilings_and_saturation_fractions(relu_run):
    ds = analyze(relu_run, metrics=("mi",), estimators=("binning", "kde", "kde_rel"),
                 kde_samples=100, store=False, scheduler="synchronous")
    n_probe = ds.mi_xt.attrs["probe_n"]
    assert ds.mi_xt_ceiling.sel(estimator="binning") == pytest.approx(math.log2(n_probe))
    assert ds.mi_xt_ceiling.sel(estimator="kde_upper") == pytest.approx(math.log2(100))
    assert ds.mi_xt_rel_ceiling.sel(rel_estimator="kde_rel_upper") == pytest.approx(
        math.log2(100))
    run = Run(relu_run)
    d = run.data()
    y = np.concatenate([d["y_train"], d["y_test"]])
    p = np.bincount(y) / len(y)
    p = p[p > 0]
    assert ds.mi_ty_ceiling.sel(estimator="binning") == pytest.approx(-(p * np.log2(p)).sum())
    # the fraction, recomputed here from its stated rule
    for est in ("binning", "kde_upper"):
        for layer in ds.layer.values:
            v = ds.mi_xt.sel(estimator=est, layer=layer).values
            c = float(ds.mi_xt_ceiling.sel(estimator=est))
            frac = np.mean((v >= 0.99 * c) | (v <= 0.01 * c))
            assert ds.mi_xt_saturated.sel(estimator=est, layer=layer) == pytest.approx(frac)
    # finer resolution: closer to log2 N, more often saturated; the estimate falls with c
    sat = ds.mi_xt_rel_saturated.sel(rel_estimator="kde_rel_upper")
    assert (sat.sel(resolution=0.1) >= sat.sel(resolution=1.0)).all()
    assert (ds.mi_xt_rel.sel(rel_estimator="kde_rel_upper", resolution=3.0)
            < ds.mi_xt_rel.sel(rel_estimator="kde_rel_upper", resolution=1.0) + 1e-9).all()


def test_segment_skips_saturated_curves_with_the_reason(relu_run):
    ds = analyze(relu_run, metrics=("mi",), estimators=("kde", "kde_rel"), sigma2=1e-6,
                 kde_samples=100, store=False, scheduler="synchronous")
    assert (ds.mi_xt_saturated.sel(estimator="kde_upper") == 1).all()  # noise 1e-3: nothing
    seg = segment(ds)
    notes = dict(zip(seg.event.values.tolist(), seg.event_note.values.tolist()))
    note = notes["mi_peak[kde_upper,hidden0]"]
    assert note.startswith("saturated at the ceiling log2 N = 6.64 bits (100% of checkpoints")
    assert "saturated" in notes["plane_settled[kde_upper]"]
    assert "saturated" in notes["mi_peak[kde_rel_upper,0.1,hidden0]"]
    assert not notes["mi_peak[kde_rel_upper,1,hidden0]"].startswith("saturated")


def test_figures_show_what_measures_and_say_so(relu_run, tmp_path):
    ds = analyze(relu_run, metrics=("mi",), estimators=("kde", "kde_rel"), sigma2=1e-6,
                 kde_samples=100, store=False, scheduler="synchronous")
    seg = segment(ds)
    fig = plot_overview(ds, seg)
    mi_ax = [a for a in fig.axes if "I(X;T)" in a.get_title(loc="left")][0]
    assert "kde_rel" in mi_ax.get_title(loc="left")  # never the flat, saturated kde_upper
    fig = plot_overview(ds, seg, estimator="kde_upper")
    mi_ax = [a for a in fig.axes if "I(X;T)" in a.get_title(loc="left")][0]
    assert "ceiling log2 N" in mi_ax.get_title(loc="left")
    assert any("saturated" in t.get_text() for t in mi_ax.texts)
    layer_lines = [ln for ln in mi_ax.get_lines() if ln.get_label().startswith("hidden")]
    assert layer_lines and all("(saturated)" in ln.get_label() for ln in layer_lines)
    ax = plot_information_plane(ds, estimator="kde_rel_upper", resolution=1.0)
    assert "kde_rel_upper, c=1" in ax.get_title()
    fig = plot_resolution_curve(ds, seg)
    fig.savefig(tmp_path / "res.png")
    first = fig.axes[0]
    assert first.get_xscale() == "log" and len(first.get_lines()) >= 3  # steps + ceiling
    with pytest.raises(Exception, match="estimator must be one of"):
        plot_resolution_curve(ds, estimator="binning")


def test_renyi_cache_keys_do_not_hash_the_eigensolver_ceiling(relu_run, tmp_path, monkeypatch):
    # S_alpha(A_X) comes from eigvalsh, whose last bits change with the BLAS thread count:
    # were it in the key, a study's worker processes and the user's own process would each
    # store (and recompute) their own copy of the Renyi analyses.
    import shutil

    import ckptlab.analysis.families.mi as mi_fam
    import ckptlab.analysis.families.mi_scaled as mi_scaled

    path = tmp_path / "run.zarr"
    shutil.copytree(relu_run, path)
    kw = dict(metrics=("mi",), estimators=("renyi", "renyi_norm"), renyi_samples=60,
              scheduler="synchronous", progress=False)
    first = analyze(path, **kw)
    groups = sorted(p.name for p in (path / "analysis").iterdir() if p.is_dir())
    real = mi_fam.renyi_ceilings

    def nudged(*args):
        return {k: v * (1 + 1e-13) for k, v in real(*args).items()}

    monkeypatch.setattr(mi_fam, "renyi_ceilings", nudged)
    monkeypatch.setattr(mi_scaled, "renyi_ceilings", nudged)
    calls = []
    for fam in (mi_fam.MIRenyi, mi_scaled.MIRenyiNormalised):
        monkeypatch.setattr(fam, "compute", lambda self, block: calls.append(1))
    again = analyze(path, **kw)
    assert not calls, "a stored Renyi analysis was recomputed"
    assert sorted(p.name for p in (path / "analysis").iterdir() if p.is_dir()) == groups
    xr.testing.assert_allclose(first["mi_xt"], again["mi_xt"])
