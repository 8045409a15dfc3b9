"""Learning-rate warm-up and schedules: TrainConfig fields, the lr of every update, resume."""

import math

import numpy as np
import pytest

from ckptlab.errors import ValidationError
from ckptlab.store import Run
from trainers import TrainConfig, apply_overrides, train
from trainers.config import lr_at


def _tiny(**kw):
    return TrainConfig(task="modular", task_args={"p": 7, "train_fraction": 0.5},
                       model_args={"widths": [8], "embed_dim": 4}, ckpt_per_decade=0,
                       ckpt_dense_until=10_000, **kw)


def test_defaults_are_the_constant_lr():
    cfg = TrainConfig(lr=3e-3, steps=100).validate()
    assert (cfg.warmup_steps, cfg.lr_schedule) == (0, "constant")
    assert {lr_at(cfg, s) for s in range(101)} == {3e-3}


def test_warmup_lr_per_step_is_recorded(tmp_path):
    cfg = _tiny(lr=1e-2, warmup_steps=4, steps=8)
    train(cfg, tmp_path / "run.zarr")
    run = Run(tmp_path / "run.zarr")
    np.testing.assert_array_equal(run.steps, np.arange(9))
    # the lr recorded at step s is that of the update s -> s + 1: 1/4, 2/4, 3/4, 1, 1, ...
    want = [1e-2 * min(1.0, (s + 1) / 4) for s in range(9)]
    np.testing.assert_allclose(run.metrics()["lr"], want, rtol=0, atol=1e-15)
    assert run.config["warmup_steps"] == 4 and run.config["lr_schedule"] == "constant"


def test_warmup_changes_the_first_updates_only_in_size(tmp_path):
    # same init and data: the first update of a 4-step warm-up is a quarter of the plain one
    # (Adam's first step is lr * sign-like, so the parameter change scales with the lr)
    a = train(_tiny(lr=1e-2, steps=1), tmp_path / "a.zarr")
    b = train(_tiny(lr=1e-2, steps=1, warmup_steps=4), tmp_path / "b.zarr")
    ra, rb = Run(a.path), Run(b.path)
    params_a, params_b = ra.params(0, 2), rb.params(0, 2)
    for k in params_a:
        da = params_a[k][1] - params_a[k][0]
        db = params_b[k][1] - params_b[k][0]
        np.testing.assert_allclose(db, da / 4, rtol=1e-4, atol=1e-7)


def test_cosine_schedule_values():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, lr_schedule="cosine", steps=110).validate()
    assert lr_at(cfg, 0) == pytest.approx(0.1) and lr_at(cfg, 9) == pytest.approx(1.0)
    assert lr_at(cfg, 10) == pytest.approx(1.0)
    assert lr_at(cfg, 60) == pytest.approx(0.5)  # half-way through the decay
    assert lr_at(cfg, 110) == pytest.approx(0.0, abs=1e-12)
    lrs = [lr_at(cfg, s) for s in range(10, 111)]
    assert all(x >= y for x, y in zip(lrs, lrs[1:]))  # monotone after warm-up
    # a warm-up as long as the run: nothing left to decay, never a division by zero
    short = TrainConfig(lr=1.0, warmup_steps=5, lr_schedule="cosine", steps=5).validate()
    assert [lr_at(short, s) for s in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    assert math.isfinite(lr_at(short, 5))


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["warmup_steps=-1"], "warmup_steps must be an integer >= 0, got -1"),
        (["warmup_steps=2.5"], "warmup_steps must be an integer >= 0, got 2.5"),
        (["lr_schedule=linear"], "lr_schedule must be one of 'constant', 'cosine'; got 'linear'"),
    ],
)
def test_schedule_fields_are_validated(overrides, match):
    with pytest.raises(ValidationError, match=match):
        apply_overrides(TrainConfig(), overrides)


def test_old_archives_without_schedule_fields_still_load():
    d = TrainConfig().to_dict()
    del d["warmup_steps"], d["lr_schedule"]
    cfg = TrainConfig.from_dict(d)
    assert (cfg.warmup_steps, cfg.lr_schedule) == (0, "constant")
