"""ckptlab.plot figures and the ds.ckpt accessor, rendered headless with Agg."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # tests only: the library never chooses a backend

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import ckptlab.accessor  # noqa: E402,F401  (registers ds.ckpt)
from ckptlab.errors import ValidationError  # noqa: E402
from ckptlab.phases import segment  # noqa: E402
from ckptlab.plot import plot_information_plane, plot_overview  # noqa: E402


def sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def make_run(seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    steps = np.concatenate([[0], np.unique(np.round(np.logspace(0, 4, 61)).astype(np.int64))])
    s = np.log10(np.maximum(steps, 1))
    n = len(steps)
    ds = xr.Dataset(coords={"step": steps, "layer": ["hidden0", "hidden1", "hidden2"],
                            "estimator": ["binning", "kde_upper"], "split": ["train", "test"],
                            "radius": [0.005, 0.05]})

    def put(name, dims, values, long_name, units):
        ds[name] = (dims, values, {"long_name": long_name, "units": units})

    put("train_acc", "step", np.clip(0.1 + 0.9 * sig((s - 2) / 0.15), 0, 1), "train accuracy",
        "1")
    put("test_acc", "step", 0.1 + 0.85 * sig((s - 3) / 0.15), "test accuracy", "1")
    put("train_loss", "step", 2.3 * (1 - sig((s - 2) / 0.2)) + 1e-3, "train loss", "nats")
    put("test_loss", "step", 0.3 + 2.0 * (1 - sig((s - 1.5) / 0.2))
        + 0.6 * np.exp(-0.5 * ((s - 2.5) / 0.25) ** 2), "test loss", "nats")
    mi = 3 + 4 * np.exp(-0.5 * ((s[:, None, None] - np.array([2.3, 2.5, 2.7])) / 0.5) ** 2)
    put("mi_xt", ("step", "estimator", "layer"), mi.repeat(2, 1) + rng.normal(0, 0.03,
                                                                              (n, 2, 3)),
        "I(X;T)", "bits")
    put("mi_ty", ("step", "estimator", "layer"),
        np.broadcast_to(0.9 * sig((s[:, None, None] - 2) / 0.2), (n, 2, 3)).copy(),
        "I(T;Y)", "bits")
    put("lc_total", ("step", "split", "radius"),
        np.broadcast_to((5 + 20 * np.exp(-0.5 * ((s - 1.5) / 0.3) ** 2))[:, None, None],
                        (n, 2, 2)).copy(), "local complexity", "count")
    put("lmn", "step", 10 + 30 * np.exp(-0.5 * ((s - 2.8) / 0.3) ** 2), "linear mapping number",
        "1")
    put("weight_norm", "step", 20 + 5 * sig((s - 2.5) / 0.5), "parameter L2 norm", "1")
    ds.attrs["run_name"] = "plot-test"
    return ds


@pytest.fixture(scope="module")
def run():
    ds = make_run()
    return ds, segment(ds)


def flat(text: str) -> str:
    return " ".join(text.split())  # labels may be wrapped over lines


def png_ok(fig, path) -> None:
    fig.savefig(path, dpi=60)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_overview_panels_labels_log_axis_and_png(run, tmp_path):
    ds, seg = run
    fig = plot_overview(ds, seg)
    assert isinstance(fig, Figure)
    axes = fig.axes
    labels = [flat(ax.get_ylabel()) for ax in axes]
    assert labels == [
        "accuracy [1]", "loss [nats]", "I(X;T) (binning) [bits]",
        "local complexity (r=0.005) [count]", "linear mapping number [1]",
        "parameter L2 norm [1]",
    ]
    assert all(ax.get_xscale() == "log" for ax in axes)
    assert flat(axes[-1].get_xlabel()) == "training step"
    legend0 = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert legend0 == ["train accuracy", "test accuracy"]
    assert [t.get_text() for t in axes[2].get_legend().get_texts()] == [
        "hidden0", "hidden1", "hidden2"]
    assert axes[1].get_yscale() == "log"  # loss spans > 1.5 decades
    # step 0 is not drawn on the log axis
    assert np.all(axes[0].lines[0].get_xdata() > 0)
    png_ok(fig, tmp_path / "overview.png")


def test_overview_marks_phases_and_events_identically_on_every_panel(run):
    ds, seg = run
    fig = plot_overview(ds, seg)
    n_events = int(np.isfinite(seg["event_step"].values).sum())
    n_phases = len(set(seg["phase"].values.tolist()))
    for ax in fig.axes:
        vlines = [ln for ln in ax.lines if len(set(ln.get_xdata())) == 1
                  and len(ln.get_xdata()) == 2]
        assert len(vlines) == n_events
        assert sorted(ln.get_xdata()[0] for ln in vlines) == pytest.approx(
            sorted(seg["event_step"].values[np.isfinite(seg["event_step"].values)]))
        assert len(ax.patches) == n_phases
    legend_texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend_texts[:n_phases] == ["fitting", "compression", "converged"][:n_phases]
    assert "fit_end" in legend_texts
    assert "mi_peak (x6)" in legend_texts
    only = plot_overview(ds, seg, events=["fit_end"])
    assert [t.get_text() for t in only.legends[0].get_texts()][-1] == "fit_end"


def test_overview_skips_absent_panels_and_draws_into_given_figure(run):
    ds, _ = run
    fig = Figure()
    out = plot_overview(ds[["lmn", "test_loss"]], fig=fig)
    assert out is fig
    assert [flat(a.get_ylabel()) for a in fig.axes] == ["test loss [nats]",
                                                        "linear mapping number [1]"]
    fig2 = plot_overview(ds, estimator="kde_upper", radius=0.05)
    assert flat(fig2.axes[2].get_ylabel()) == "I(X;T) (kde_upper) [bits]"
    assert flat(fig2.axes[3].get_ylabel()) == "local complexity (r=0.05) [count]"


def test_overview_bad_input(run):
    ds, seg = run
    with pytest.raises(ValidationError, match=r"ds holds none of the variables plot_overview"):
        plot_overview(ds[["mi_ty"]])
    with pytest.raises(ValidationError, match=r"estimator must be one of 'binning', "
                                               r"'kde_upper'; got 'renyi'"):
        plot_overview(ds, estimator="renyi")
    with pytest.raises(ValidationError, match=r"radius must be one of 0\.005, 0\.05; got 1\.0"):
        plot_overview(ds, radius=1.0)
    with pytest.raises(ValidationError, match=r"seg must be a Dataset returned by segment"):
        plot_overview(ds, ds)
    with pytest.raises(ValidationError, match=r"events entries must be one of .*got 'nope'"):
        plot_overview(ds, seg, events=["nope"])
    with pytest.raises(ValidationError, match=r"ds must be an xarray\.Dataset, got list"):
        plot_overview([1, 2])


def test_information_plane(run, tmp_path):
    ds, _ = run
    ax = plot_information_plane(ds, estimator="kde_upper")
    assert isinstance(ax, Axes)
    assert ax.get_xlabel() == "I(X;T) [bits]" and ax.get_ylabel() == "I(T;Y) [bits]"
    assert "kde_upper" in ax.get_title()
    fig = ax.figure
    assert len(fig.axes) == 2  # the plane and one colour bar
    assert fig.axes[1].get_ylabel() == "log10(step)"
    assert len(ax.lines) == 3 and len(ax.collections) == 3  # one line and scatter per layer
    positive = ds.step.values[ds.step.values > 0]
    np.testing.assert_allclose(ax.collections[1].get_array(), np.log10(positive))
    x_expected = ds["mi_xt"].sel(estimator="kde_upper", layer="hidden1").values[1:]
    np.testing.assert_allclose(ax.lines[1].get_xdata(), x_expected)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["hidden0", "hidden1",
                                                                    "hidden2"]
    png_ok(fig, tmp_path / "plane.png")
    fig2 = Figure()
    given = fig2.add_subplot()
    assert plot_information_plane(ds, ax=given) is given


def test_information_plane_bad_input(run):
    ds, _ = run
    with pytest.raises(ValidationError, match=r"needs variables 'mi_xt' and 'mi_ty' \(or "
                                               r"'mi_xt_rel' and 'mi_ty_rel'\) in ds"):
        plot_information_plane(ds.drop_vars("mi_ty"))
    with pytest.raises(ValidationError, match=r"estimator must be one of 'binning', "
                                               r"'kde_upper'; got 'renyi'"):
        plot_information_plane(ds, estimator="renyi")


def test_no_pyplot_figures_are_left_behind(run):
    ds, seg = run
    before = plt.get_fignums()
    plot_overview(ds, seg)
    plot_information_plane(ds)
    assert plt.get_fignums() == before


def test_accessor_forwards(run):
    ds, seg = run
    via = ds.ckpt.segment(tolerance_decades=0.3)
    direct = segment(ds, tolerance_decades=0.3)
    xr.testing.assert_identical(via, direct)
    fig = ds.ckpt.plot(seg, estimator="kde_upper")
    assert isinstance(fig, Figure) and "kde_upper" in flat(fig.axes[2].get_ylabel())
    ax = ds.ckpt.information_plane(estimator="binning")
    assert isinstance(ax, Axes) and "binning" in ax.get_title()
    assert segment.__doc__ in type(ds.ckpt).segment.__doc__
    assert plot_overview.__doc__ in type(ds.ckpt).plot.__doc__
    assert plot_information_plane.__doc__ in type(ds.ckpt).information_plane.__doc__
    with pytest.raises(ValidationError, match=r"fit_threshold must be"):
        ds.ckpt.segment(fit_threshold=2)
