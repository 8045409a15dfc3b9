"""`ckptlab import` through CliRunner: the summary line, options, one-line errors."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ckptlab.store import Run
from cli.main import cli


def _sd(seed, rows=3):
    g = torch.Generator().manual_seed(seed)
    return {"fc.weight": torch.randn(rows, 2, generator=g),
            "fc.bias": torch.randn(rows, generator=g)}


@pytest.fixture
def ckpts(tmp_path):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for s in (10, 20, 30):
        torch.save({"state_dict": _sd(s), "global_step": s, "epoch": 0},
                   folder / f"epoch=0-step={s}.ckpt")
    return folder


def _invoke(args):
    res = CliRunner().invoke(cli, args)
    assert "Traceback" not in res.output
    return res


def _error(args):
    res = _invoke(args)
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    return lines[0]


def test_import_summary_and_append(ckpts, tmp_path):
    dest = str(tmp_path / "run.zarr")
    res = _invoke(["import", str(ckpts), dest, "--no-progress"])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == (
        f"{dest}: imported 3 checkpoint(s) (steps 10..30) from {ckpts.resolve()} [torch]; "
        "3 in the archive")
    assert Run(dest).steps.tolist() == [10, 20, 30]
    torch.save({"state_dict": _sd(40), "global_step": 40}, ckpts / "epoch=1-step=40.ckpt")
    res = _invoke(["import", str(ckpts), dest])
    assert res.exit_code == 0, res.output
    assert "imported 1 checkpoint(s) (steps 40..40)" in res.output
    assert "skipped 3 already in the archive; 4 in the archive" in res.output
    info = _invoke(["info", dest])
    assert info.exit_code == 0 and "import" in info.output and str(ckpts.resolve()) in info.output


def test_import_options(ckpts, tmp_path):
    metrics = tmp_path / "m.jsonl"
    metrics.write_text(
        "\n".join(json.dumps({"step": s, "train_loss": 1 / s}) for s in (10, 30, 50)))
    rng = np.random.default_rng(0)
    npz = tmp_path / "probe.npz"
    np.savez(npz, x_train=rng.normal(size=(6, 2)), y_train=np.arange(6) % 2,
             x_test=rng.normal(size=(2, 2)), y_test=np.array([0, 1]))
    dest = str(tmp_path / "run.zarr")
    res = _invoke(["import", str(ckpts), dest, "--metrics", str(metrics), "--data", str(npz),
                   "--step-pattern", r"step=(\d+)", "--progress"])
    assert res.exit_code == 0, res.output
    assert "1 metric step(s) match no checkpoint" in res.output
    run = Run(dest)
    np.testing.assert_array_equal(run.metrics()["train_loss"], [0.1, np.nan, 1 / 30])
    assert set(run.data()) == {"x_train", "y_train", "x_test", "y_test"}
    res = _invoke(["import", str(ckpts), dest, "--overwrite", "--no-progress"])
    assert res.exit_code == 0 and "imported 3" in res.output


def test_import_errors_are_one_line(ckpts, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "is empty" in _error(["import", str(empty), str(tmp_path / "a.zarr")])
    missing = _error(["import", str(tmp_path / "no"), str(tmp_path / "a.zarr")])
    assert "src must be an existing" in missing
    torch.save(_sd(99, rows=5), ckpts / "epoch=0-step=99.ckpt")
    line = _error(["import", str(ckpts), str(tmp_path / "b.zarr")])
    assert "epoch=0-step=99.ckpt" in line and "(5, 2)" in line and "(3, 2)" in line
    assert Run(tmp_path / "b.zarr").steps.tolist() == [10, 20, 30]
    other = tmp_path / "other"
    other.mkdir()
    torch.save(_sd(1), other / "step_1.pt")
    assert "overwrite" in _error(["import", str(other), str(tmp_path / "b.zarr")])
    assert "step_pattern must be a valid" in _error(
        ["import", str(other), str(tmp_path / "c.zarr"), "--step-pattern", "("])
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "c.zarr").exists()
