"""``device="cuda"``: the same analysis on a GPU as on the CPU, batched where the CPU batches.

Skipped without a CUDA device (CI has none); run these where one is lent
(``benchmarks/gpu.sh`` runs them first). float64 runs keep the comparison tight: the GPU's
matmuls sum in another order, so values agree to rounding, and counts and bins exactly (no
pre-activation or representation value here lies within rounding of a zero or a bin edge).
"""

import warnings

import numpy as np
import pytest
import torch
import xarray as xr

from ckptlab.analysis import analyze
from trainers import TrainConfig, train

# pytest puts this folder on the import path (no __init__.py here)
from test_user_models import SmallCNN, _digits, _record

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

KW = dict(metrics=("mi", "lc", "lmn", "weights", "rank"), estimators=("binning", "kde"),
          kde_samples=40, lc_points=12, lmn_samples=12, radii=(0.05,), store=False,
          scheduler="synchronous", block_size=4)
TOL = dict(rtol=1e-9, atol=1e-10)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("cuda")
    out = {}
    out["mlp"] = d / "mlp.zarr"
    train(TrainConfig(task="digits", task_args={"n_train": 120}, model_args={"widths": [12, 8]},
                      steps=40, lr=0.01, dtype="float64", ckpt_per_decade=5,
                      ckpt_dense_until=3), out["mlp"])
    out["transformer"] = d / "trf.zarr"
    train(TrainConfig(task="modular", task_args={"p": 7, "train_fraction": 0.5},
                      model="transformer", model_args={"n_layers": 1, "d_model": 16,
                                                       "n_heads": 2, "d_mlp": 32,
                                                       "activation": "relu"},
                      steps=20, lr=3e-3, dtype="float64", ckpt_per_decade=3,
                      ckpt_dense_until=2), out["transformer"])
    # a user's model through forward hooks, trained in float64 by a plain loop
    data = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in _digits().items()}
    out["cnn"] = _record(d / "cnn.zarr", SmallCNN().double(), data)
    return out


def _analyze(runs, name, **kw):
    model = SmallCNN if name == "cnn" else None
    with warnings.catch_warnings():
        # the batched path, not the fallback: its warning would fail the test
        warnings.filterwarnings("error", message=".*checkpoints batched", category=RuntimeWarning)
        return analyze(runs[name], model=model, **{**KW, **kw})


@pytest.mark.parametrize("name", ["mlp", "transformer", "cnn"])
def test_cuda_equals_cpu(runs, name):
    cpu = _analyze(runs, name, device="cpu")
    gpu = _analyze(runs, name, device="cuda")
    assert gpu.sizes["step"] > KW["block_size"]  # several blocks
    for v in ("lc", "lmn", "mi_xt", "mi_ty"):
        assert np.isfinite(gpu[v]).any(), v  # measured, not NaN throughout
    xr.testing.assert_allclose(cpu, gpu, **TOL)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_cuda_batched_equals_one_at_a_time(runs, name):
    one = _analyze(runs, name, device="cuda", batched=False)
    many = _analyze(runs, name, device="cuda", batched=True)
    xr.testing.assert_allclose(one, many, **TOL)


def test_cuda_leaves_the_callers_default_device_and_tensors_alone(runs):
    before = torch.empty(0).device
    _analyze(runs, "mlp", device="cuda", metrics=("lc",))
    assert torch.empty(0).device == before
