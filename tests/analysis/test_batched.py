"""Checkpoints evaluated together (torch.func.vmap) give the one-at-a-time results."""

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

from ckptlab.analysis import analyze
from trainers import TrainConfig, train

KW = dict(metrics=("mi", "lc", "lmn", "rank"), estimators=("binning", "kde", "kde_rel"),
          kde_samples=40, lc_points=12, lmn_samples=12, radii=(0.05, 0.5), store=False,
          scheduler="synchronous", block_size=5)


@pytest.fixture(scope="module")
def f64_run(tmp_path_factory):
    p = tmp_path_factory.mktemp("b") / "f64.zarr"
    train(TrainConfig(task="modular", task_args={"p": 7, "train_fraction": 0.6},
                      model_args={"widths": [16, 8], "embed_dim": 4}, steps=30, lr=0.01,
                      dtype="float64", ckpt_per_decade=4, ckpt_dense_until=2), p)
    return p


def test_float64_batched_equals_one_at_a_time(f64_run):
    one = analyze(f64_run, batched=False, **KW)
    many = analyze(f64_run, batched=True, **KW)
    assert many.sizes["step"] > 5  # several blocks, the last one partial
    xr.testing.assert_allclose(one, many, rtol=1e-10, atol=1e-12)


def test_float32_batched_equals_one_at_a_time(relu_run):
    one = analyze(relu_run, batched=False, **KW)
    many = analyze(relu_run, batched=True, **KW)
    # float32: batched matmuls round differently in the last bit; counts and bins agree
    xr.testing.assert_allclose(one, many, rtol=1e-5, atol=1e-6)


def _transformer_run(p, n_layers: int):
    """A small ReLU transformer on addition mod 7, a few checkpoints."""
    train(TrainConfig(task="modular", task_args={"p": 7, "train_fraction": 0.5},
                      model="transformer", model_args={"n_layers": n_layers, "d_model": 16,
                                                       "n_heads": 2, "d_mlp": 32,
                                                       "activation": "relu"},
                      steps=20, lr=3e-3, ckpt_per_decade=3, ckpt_dense_until=2), p)
    return p


def test_transformer_batched_equals_one_at_a_time(tmp_path):
    p = _transformer_run(tmp_path / "trf.zarr", n_layers=1)
    kw = {**KW, "kde_samples": 20}
    one = analyze(p, batched=False, **kw)
    many = analyze(p, batched=True, **kw)
    xr.testing.assert_allclose(one, many, rtol=1e-5, atol=1e-5)


class DataDependent(nn.Module):
    """Control flow on a tensor's value: torch.func.vmap cannot batch it."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(64, 12), nn.Linear(12, 8)])
        self.acts = nn.ModuleList([nn.ReLU(), nn.ReLU()])
        self.readout = nn.Linear(8, 10)

    def forward(self, x):
        for lin, act in zip(self.layers, self.acts):
            x = act(lin(x))
        if x.sum() > -1.0:  # always true, but data-dependent
            x = x * 1.0
        return self.readout(x)


def test_a_model_vmap_cannot_batch_falls_back_with_one_warning(relu_run):
    kw = {**KW, "metrics": ("mi", "lmn"), "layers": ["acts.0", "acts.1"]}
    with pytest.warns(RuntimeWarning, match=r"cannot be evaluated with its checkpoints batched"):
        auto = analyze(relu_run, model=DataDependent, **kw)
    one = analyze(relu_run, model=DataDependent, batched=False, **kw)
    xr.testing.assert_identical(auto, one)


def test_bad_batched_option(relu_run):
    from ckptlab.errors import ValidationError

    with pytest.raises(ValidationError, match="batched must be None or a bool, got 'yes'"):
        analyze(relu_run, batched="yes")


def test_transformer_final_block_at_the_last_position_changes_nothing(tmp_path, monkeypatch):
    # passes that read only the last position of the final block (the LMN's head, the MI
    # probes) run it there only; switched off, every number is the same up to rounding
    from ckptlab.models.transformer import Transformer

    p = _transformer_run(tmp_path / "trf2.zarr", n_layers=2)
    kw = {**KW, "kde_samples": 20}
    calls = []
    real = Transformer.last_position_modules

    def counted(self):
        calls.append(self.last_position_only)
        return real(self)

    monkeypatch.setattr(Transformer, "last_position_modules", counted)
    fast = analyze(p, batched=True, **kw)
    assert calls  # the shortcut was asked for
    monkeypatch.setattr(Transformer, "last_position_modules", lambda self: ())
    full = analyze(p, batched=True, **kw)
    xr.testing.assert_allclose(fast, full, rtol=1e-5, atol=1e-5)
    assert int(fast["lc"].count()) > 0 and float(fast["lc"].max()) > 0  # LC read every position


def test_block_hidden_keeps_the_computed_dtype_and_widens_half_precision():
    from ckptlab.analysis.compute import Block

    block = Block.__new__(Block)  # only the representations matter here
    reps = {"a": torch.randn(2, 5, 3), "b": torch.randn(2, 5, 3, dtype=torch.float64),
            "c": torch.randn(2, 5, 3, dtype=torch.bfloat16),
            "d": torch.randn(2, 5, 3, dtype=torch.float16)}
    block._reps, block._hidden = dict(reps), None
    hid = block.hidden
    assert {k: v.dtype for k, v in hid.items()} == {
        "a": np.float32, "b": np.float64, "c": np.float32, "d": np.float32}
    for k, v in reps.items():  # exact: every value as computed
        np.testing.assert_array_equal(hid[k], v.float().numpy() if k != "b" else v.numpy())
    assert block._reps is None  # one copy held at a time
