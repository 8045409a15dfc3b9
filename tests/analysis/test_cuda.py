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
from torch import nn

from ckptlab.analysis import analyze
from ckptlab.store import Recorder
from trainers import TrainConfig, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

KW = dict(metrics=("mi", "lc", "lmn", "weights", "rank"), estimators=("binning", "kde"),
          kde_samples=40, lc_points=12, lmn_samples=12, radii=(0.05,), store=False,
          scheduler="synchronous", block_size=4)
TOL = dict(rtol=1e-9, atol=1e-10)


class UserCNN(nn.Module):
    """A user's model through forward hooks: conv -> ReLU -> pool -> linear -> ReLU -> head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 16)
        self.relu2 = nn.ReLU()
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.relu2(self.fc(self.pool(self.relu1(self.conv(x))).flatten(1))))


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
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0)[:, None]
    y = digits.target.astype(np.int64)
    data = {"x_train": x[:120], "y_train": y[:120], "x_test": x[120:240], "y_test": y[120:240]}
    torch.manual_seed(0)
    net = UserCNN().double()
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    xt, yt = torch.as_tensor(data["x_train"]), torch.as_tensor(data["y_train"])
    out["cnn"] = d / "cnn.zarr"
    with Recorder(out["cnn"], model=net, data=data) as rec:
        for step in range(10):
            loss = nn.functional.cross_entropy(net(xt), yt)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 2 == 0:
                rec.save(step, net)
    return out


def _analyze(runs, name, **kw):
    model = UserCNN if name == "cnn" else None
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
