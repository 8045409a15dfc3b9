"""The training loop: schedules, presets, resume bit-identity after a kill, divergence, CLI."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ckptlab.errors import ArchiveExistsError, TrainingDivergedError, ValidationError
from ckptlab.models import build_model
from ckptlab.store import Run
from cli.main import cli
from trainers import PRESETS, TrainConfig, apply_overrides, checkpoint_steps, get_preset, train
from trainers.loop import build_task, model_spec_for

TINY = {
    "modular": TrainConfig(task="modular", task_args={"p": 7, "train_fraction": 0.5},
                           model_args={"widths": [16], "embed_dim": 4}, steps=20),
    "permutation": TrainConfig(task="permutation", task_args={"n": 3}, model="transformer",
                               model_args={"n_layers": 1, "n_heads": 2, "d_model": 8, "d_mlp": 16},
                               steps=10),
    "digits": TrainConfig(task="digits", task_args={"n_train": 100}, model_args={"widths": [8]},
                          loss="mse", batch_size=32, steps=10),
    "ib12": TrainConfig(task="ib12", model_args={"widths": [6, 4], "activation": "tanh"},
                        batch_size=64, steps=10, optimizer="sgd", lr=0.1, momentum=0.9),
}


def test_checkpoint_schedule():
    s = checkpoint_steps(1000, per_decade=10, dense_until=5, every=0)
    assert s[:6] == [0, 1, 2, 3, 4, 5] and s[-1] == 1000
    assert 100 in s and 158 in s and 251 in s  # 10**(2.2), 10**(2.4) rounded
    assert s == sorted(set(s))
    logs = np.log10([x for x in s if x >= 100])
    assert np.diff(logs).max() <= 0.1 + 0.005  # 10 per decade (up to integer rounding)
    assert checkpoint_steps(10, per_decade=0, dense_until=0, every=4) == [0, 4, 8, 10]


def test_overrides_and_errors():
    cfg = apply_overrides(get_preset("quick-grok"), ["steps=50", "model_args.widths=[8]", "lr=0.01"])
    assert cfg.steps == 50 and cfg.model_args["widths"] == [8] and cfg.lr == 0.01
    with pytest.raises(ValidationError, match="unknown config key 'stepz'"):
        apply_overrides(cfg, ["stepz=1"])
    with pytest.raises(ValidationError, match="--set expects key=value"):
        apply_overrides(cfg, ["steps"])
    with pytest.raises(ValidationError, match="steps must be an integer >= 1, got 0"):
        apply_overrides(cfg, ["steps=0"])
    with pytest.raises(ValidationError, match="unknown preset 'nope'"):
        get_preset("nope")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds(name):
    cfg = get_preset(name).validate()
    if name == "omnigrok-mnist":
        return  # needs IDX files; covered in the task tests
    task = build_task(cfg)
    model = build_model(model_spec_for(cfg, task), seed=0)
    x = torch.from_numpy(task.x_train[:4])
    logits = model(x if task.input_kind == "tokens" else x.float())
    assert logits.shape == (4, task.n_classes)


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_runs_train_and_record(tmp_path, name):
    cfg = TINY[name]
    res = train(cfg, tmp_path / "run.zarr")
    run = Run(tmp_path / "run.zarr")
    assert res.checkpoints == run.n == len(checkpoint_steps(cfg.steps, per_decade=cfg.ckpt_per_decade,
                                                            dense_until=cfg.ckpt_dense_until, every=0))
    m = run.metrics()
    for k in ("train_loss", "test_loss", "train_acc", "test_acc", "lr", "wall_time"):
        assert np.isfinite(m[k]).all()
    assert run.config["task"] == name and run.data()["x_train"].shape[0] > 0
    # the archive alone rebuilds the model at any checkpoint
    model = build_model(run.model_spec)
    model.load_state_dict(run.state_dict(-1))


def test_full_batch_training_is_deterministic(tmp_path):
    a = train(TINY["modular"], tmp_path / "a.zarr")
    b = train(TINY["modular"], tmp_path / "b.zarr")
    assert a.final["train_loss"] == b.final["train_loss"]


def _resume_cfg():
    # warm-up and a cosine schedule: the lr changes at every update, so a resumed run that
    # got it wrong at any step would differ
    return TrainConfig(task="modular", task_args={"p": 11, "train_fraction": 0.5},
                       model_args={"widths": [32], "embed_dim": 8}, batch_size=16,
                       steps=2500, ckpt_every=1, lr=3e-3, weight_decay=0.5, seed=4,
                       warmup_steps=100, lr_schedule="cosine")


def test_resume_after_kill_is_bit_identical(tmp_path):
    cfg = _resume_cfg()
    ref = tmp_path / "ref.zarr"
    train(cfg, ref)
    out = tmp_path / "killed.zarr"
    code = (
        "import sys; from trainers import TrainConfig, train;"
        f"train(TrainConfig.from_dict({cfg.to_dict()!r}), sys.argv[1])"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)])
    deadline = time.time() + 120
    n = 0
    while time.time() < deadline:
        try:
            n = Run(out).n
        except Exception:
            n = 0
        if n >= 50 or proc.poll() is not None:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = Run(out).n
    assert 0 < killed_at < cfg.steps + 1, "the kill must land mid-run"
    train(None, out, resume=True)
    a, b = Run(ref), Run(out)
    np.testing.assert_array_equal(a.steps, b.steps)
    pa, pb = a.params(0, a.n), b.params(0, b.n)
    for k in pa:
        assert pa[k].tobytes() == pb[k].tobytes(), k
    for k in ("train_loss", "test_acc", "lr"):
        np.testing.assert_array_equal(a.metrics()[k], b.metrics()[k])


def test_divergence_keeps_checkpoints(tmp_path):
    cfg = TrainConfig(task="digits", task_args={"n_train": 50}, model_args={"widths": [8]},
                      optimizer="sgd", lr=1e12, steps=50)
    with pytest.raises(TrainingDivergedError, match="training diverged at step \\d+: train loss is"):
        train(cfg, tmp_path / "run.zarr")
    run = Run(tmp_path / "run.zarr")
    assert run.n >= 1 and np.isfinite(run.metrics()["train_loss"]).all()


def test_existing_archive_is_never_damaged(tmp_path):
    out = tmp_path / "run.zarr"
    train(TINY["modular"], out)
    before = Run(out).params(0, Run(out).n)
    with pytest.raises(ArchiveExistsError, match="already exists"):
        train(TINY["modular"], out)
    with pytest.raises(ValidationError, match="resume and overwrite exclude each other"):
        train(TINY["modular"], out, resume=True, overwrite=True)
    after = Run(out).params(0, Run(out).n)
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_cli_train_presets_and_errors(tmp_path):
    r = CliRunner()
    res = r.invoke(cli, ["presets"])
    assert res.exit_code == 0 and "quick-grok" in res.output and "paper-mod96" in res.output
    out = str(tmp_path / "run.zarr")
    res = r.invoke(cli, ["train", "quick-grok", "--out", out, "--set", "steps=20"])
    assert res.exit_code == 0, res.output
    assert "checkpoints over 20 steps" in res.output
    res = r.invoke(cli, ["train", "quick-grok", "--out", out, "--set", "steps=20"])
    assert res.exit_code == 1 and res.output.startswith("Error: an archive already exists")
    assert "Traceback" not in res.output
    res = r.invoke(cli, ["train", "nope", "--out", out])
    assert res.exit_code == 1 and "Error: unknown preset 'nope'" in res.output
    res = r.invoke(cli, ["train", "quick-grok", "--out", out, "--set", "task_args.p=1", "--overwrite"])
    assert res.exit_code == 1 and "Error: p must be an integer >= 2, got 1" in res.output
    res = r.invoke(cli, ["train", "quick-grok", "--out", out, "--set", "task_args.train_fraction=1.5",
                         "--overwrite"])
    assert res.exit_code == 1 and "train_fraction" in res.output
    res = r.invoke(cli, ["train", "omnigrok-mnist", "--out", out])
    assert res.exit_code == 2 and "--data-dir" in res.output
    res = r.invoke(cli, ["train", "--resume", out, "--out", out])
    assert res.exit_code == 2 and "--resume PATH takes everything from the archive" in res.output
    res = r.invoke(cli, ["train", "--resume", out])  # a finished run: nothing left to do
    assert res.exit_code == 0, res.output
    res = r.invoke(cli, ["train", "--resume", str(tmp_path / "none.zarr")])
    assert res.exit_code == 1 and res.output.startswith("Error: no archive at")
    res = r.invoke(cli, ["info", out])
    assert res.exit_code == 0 and "checkpoints" in res.output
    res = r.invoke(cli, ["--version"])
    assert res.exit_code == 0 and "ckptlab, version" in res.output
