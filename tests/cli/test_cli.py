"""The CLI end to end through CliRunner: exit codes, output, one-line errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli


@pytest.fixture
def run_copy(tmp_path, tanh_run):
    p = tmp_path / "run.zarr"
    shutil.copytree(tanh_run, p)
    return str(p)


def _ok(args):
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    return res.output


def _err(args, code=1):
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    return res.output


def test_help_and_version():
    out = _ok(["-h"])
    for cmd in ("train", "analyze", "phases", "plot", "info", "presets"):
        assert cmd in out
    assert "ckptlab, version" in _ok(["--version"])
    proc = subprocess.run([sys.executable, "-m", "cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "analyze" in proc.stdout


def test_analyze_phases_plot_info(run_copy, tmp_path):
    out = _ok(["analyze", run_copy, "--metrics", "mi,weights", "--estimators", "binning,kde",
               "--scheduler", "synchronous"])
    assert "checkpoints analysed" in out and "mi_xt" in out and "I(X;T) [bits]" in out
    info = _ok(["info", run_copy])
    assert "analyses" in info and "mi-binning" in info
    table = _ok(["phases", run_copy])
    assert "fit_end" in table and "phases:" in table
    data = json.loads(_ok(["phases", run_copy, "--json"]))
    assert run_copy in data
    fig = tmp_path / "fig.png"
    plane = tmp_path / "plane.png"
    _ok(["plot", run_copy, "-o", str(fig), "--plane", str(plane)])
    assert fig.stat().st_size > 10_000 and plane.read_bytes()[:4] == b"\x89PNG"
    runs = _ok(["phases", run_copy, run_copy])
    assert "across runs" in runs


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA device is here")
def test_analyze_on_cuda_without_a_device_is_a_one_line_error(run_copy):
    out = _err(["analyze", run_copy, "--device", "cuda", "--metrics", "weights"])
    assert out == "Error: device 'cuda' was asked for but torch sees no CUDA device\n"
    out = _err(["train", "quick-grok", "--out", run_copy + "-x", "--set", "device=cuda"])
    assert out == "Error: device 'cuda' was asked for but torch sees no CUDA device\n"
    assert not Path(run_copy + "-x").exists()  # refused before anything was written


def test_cli_errors_are_one_line(run_copy, tmp_path):
    out = _err(["analyze", run_copy, "--metrics", "mi,entropy"])
    assert out.startswith("Error: metrics must be one of") and out.count("\n") == 1
    out = _err(["analyze", str(tmp_path / "missing.zarr")])
    assert out.startswith("Error: no archive at")
    out = _err(["analyze", run_copy, "--radii", "0.1,x"], code=2)
    assert "expected comma-separated numbers" in out
    out = _err(["analyze", run_copy, "--scheduler", "tcp://127.0.0.1:9"])
    assert out.startswith("Error: no Dask scheduler answers at tcp://127.0.0.1:9")
    (tmp_path / "plain").mkdir()
    out = _err(["info", str(tmp_path / "plain")])
    assert "is not a ckptlab archive" in out
    out = _err(["plot", run_copy, "-o", str(tmp_path / "x.png"), "--plane", str(tmp_path / "p.png")])
    assert "no mutual information stored" in out
