"""`ckptlab analyze --model MODULE:FACTORY`: a user's own model from the command line."""

import importlib
import sys
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ckptlab.store import Recorder
from cli.main import cli

MODULE = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(6, 8)
            self.act1 = nn.ReLU()
            self.fc2 = nn.Linear(8, 3)

        def forward(self, x):
            return self.fc2(self.act1(self.fc1(x)))

    def make_net():
        return Net()

    def broken():
        raise ValueError("no weights here")

    def not_a_module():
        return 42
''')


@pytest.fixture
def user_run(tmp_path, monkeypatch):
    name = f"usermodels_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module(name)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6)).astype(np.float32)
    y = rng.integers(0, 3, 60)
    data = {"x_train": x[:40], "y_train": y[:40], "x_test": x[40:], "y_test": y[40:]}
    net = mod.make_net()
    path = tmp_path / "user.zarr"
    with Recorder(path, model=net, data=data) as rec:
        for step in range(3):
            with torch.no_grad():
                net.fc1.weight.mul_(1.1)
            rec.save(step, net)
    yield name, str(path)
    sys.modules.pop(name, None)


def _invoke(args):
    return CliRunner().invoke(cli, args)


def test_analyze_with_the_users_model(user_run):
    name, path = user_run
    res = _invoke(["analyze", path, "--model", f"{name}:make_net", "--layers", "act1,fc2",
                   "--metrics", "mi,lmn,weights", "--estimators", "binning"])
    assert res.exit_code == 0, res.output
    assert "mi_xt" in res.output and "lmn" in res.output
    info = _invoke(["info", path])
    assert f"{name}.Net (recorded for information" in info.output


def test_without_model_the_error_names_the_class(user_run):
    name, path = user_run
    res = _invoke(["analyze", path])
    assert res.exit_code == 1
    assert res.output.startswith("Error: ") and res.output.count("\n") == 1
    assert f"class {name}.Net" in res.output and "--model MODULE:FACTORY" in res.output
    assert _invoke(["analyze", path, "--metrics", "weights"]).exit_code == 0


@pytest.mark.parametrize("spec, match", [
    ("nomodule_xyz:make_net", "--model: cannot import module 'nomodule_xyz': ModuleNotFoundError"),
    ("{name}", "--model must look like MODULE:FACTORY"),
    ("{name}:missing", "has no attribute 'missing'"),
    ("{name}:broken", "the factory broken raised ValueError: no weights here"),
    ("{name}:not_a_module", "must return a torch.nn.Module, got int"),
])
def test_bad_model_arguments_are_one_line_errors(user_run, spec, match):
    name, path = user_run
    res = _invoke(["analyze", path, "--model", spec.format(name=name)])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and res.output.count("\n") == 1
    assert match in res.output


def test_layers_naming_a_missing_module(user_run):
    name, path = user_run
    res = _invoke(["analyze", path, "--model", f"{name}:make_net", "--layers", "fc1,fc9"])
    assert res.exit_code == 1
    assert "Error: layers: the model has no module 'fc9'; its modules: fc1 (Linear)" in res.output
