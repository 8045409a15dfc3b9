"""Every command turns OS errors on its inputs and outputs into one ``Error:`` line.

An unwritable or missing output folder, a path that is a file, a folder without permission:
exit code 1, one ``Error: ...`` line naming the path, and no exception escaping the command
(CliRunner swallows tracebacks, so ``res.exception`` must be click's ``SystemExit``).

Permission cases need a user that ``chmod`` restricts. Run as root, they run in a child
process that becomes ``nobody`` (uid 65534), on a folder both can reach; where that is not
possible they are skipped.
"""

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli.main import cli

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = "/proc/forbidden"  # missing, and nothing can be created in /proc
NOBODY = 65534


def _check(args, code, output, exc_type, *, names=None) -> str:
    where = f"ckptlab {' '.join(args)}:\n{output}"
    assert exc_type == "SystemExit", f"{exc_type} escaped from {where}"
    assert code == 1, where
    errors = [ln for ln in output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and output.rstrip().splitlines()[-1] == errors[0], where
    assert "Traceback" not in output, where
    if names is not None:
        assert names in errors[0], where
    return errors[0]


def _error(args, *, names=None) -> str:
    args = [str(a) for a in args]
    res = CliRunner().invoke(cli, args)
    return _check(args, res.exit_code, res.output, type(res.exception).__name__, names=names)


@pytest.fixture(scope="module")
def analysed_run(tmp_path_factory, tanh_run):
    """The tanh run with MI stored (plot --plane and --resolution-curve need it)."""
    from ckptlab import analyze

    p = tmp_path_factory.mktemp("os-errors") / "analysed.zarr"
    shutil.copytree(tanh_run, p)
    analyze(p, metrics=("mi",), estimators=("binning", "kde_rel"), probe_size=256,
            scheduler="synchronous")
    return p


@pytest.fixture
def run_copy(tmp_path, analysed_run):
    p = tmp_path / "run.zarr"
    shutil.copytree(analysed_run, p)
    return p


@pytest.fixture
def ckpt_folder(tmp_path):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for s in (1, 2):
        torch.save({"fc.weight": torch.ones(2, 2) * s}, folder / f"step_{s}.pt")
    return folder


# ------------------------------------------------------------------- missing or odd paths
def test_plot_outputs_that_cannot_be_written(run_copy, tmp_path):
    _error(["plot", run_copy, "-o", f"{FORBIDDEN}/x.png"], names=f"{FORBIDDEN}/x.png")
    ok = tmp_path / "ok.png"
    line = _error(["plot", run_copy, "-o", ok, "--plane", f"{FORBIDDEN}/p.png"],
                  names=f"{FORBIDDEN}/p.png")
    assert "No such file or directory" in line and ok.exists()
    _error(["plot", run_copy, "-o", ok, "--resolution-curve", f"{FORBIDDEN}/r.png"],
           names=f"{FORBIDDEN}/r.png")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    line = _error(["plot", run_copy, "-o", a_file / "x.png"], names=str(a_file))
    assert "Not a directory" in line


def test_train_and_import_into_a_missing_folder(ckpt_folder):
    _error(["train", "quick-grok", "--out", f"{FORBIDDEN}/run.zarr", "--set", "steps=5"],
           names=FORBIDDEN)
    _error(["import", ckpt_folder, f"{FORBIDDEN}/run.zarr", "--no-progress"], names=FORBIDDEN)


def test_inputs_that_are_files_or_missing(tmp_path):
    a_file = tmp_path / "run.zarr"
    a_file.write_text("not an archive")
    for cmd in (["analyze"], ["info"], ["phases"], ["verify"], ["train", "--resume"]):
        _error([*cmd, a_file], names=str(a_file))
    _error(["plot", a_file, "-o", tmp_path / "x.png"], names=str(a_file))
    missing = tmp_path / "missing.zarr"
    for cmd in (["analyze"], ["info"], ["phases"], ["verify"], ["train", "--resume"]):
        assert "does not exist" in _error([*cmd, missing], names=str(missing))
    _error(["phases", missing, missing], names=str(missing))
    _error(["import", tmp_path / "nothing-here", tmp_path / "dest.zarr"],
           names=str(tmp_path / "nothing-here"))
    _error(["import", a_file, tmp_path / "dest.zarr"], names=str(a_file))


# ------------------------------------------------------------------- permissions
# (args, text the Error line must hold); {d} is the shared folder
PERMISSION_CASES = [
    (["info", "{d}/locked.zarr"], "{d}/locked.zarr"),
    (["analyze", "{d}/locked.zarr", "--metrics", "weights"], "{d}/locked.zarr"),
    (["phases", "{d}/locked.zarr"], "{d}/locked.zarr"),
    (["verify", "{d}/locked.zarr"], "{d}/locked.zarr"),
    (["plot", "{d}/locked.zarr", "-o", "{d}/w/x.png"], "{d}/locked.zarr"),
    (["import", "{d}/noread", "{d}/w/imported.zarr", "--no-progress"], "{d}/noread"),
    (["import", "{d}/ckpts", "{d}/ro/imported.zarr", "--no-progress"], "{d}/ro"),
    (["train", "quick-grok", "--out", "{d}/ro/run.zarr", "--set", "steps=5"], "{d}/ro"),
    (["plot", "{d}/run.zarr", "-o", "{d}/ro/x.png"], "{d}/ro/x.png"),
    (["plot", "{d}/run.zarr", "-o", "{d}/w/ok.png", "--plane", "{d}/ro/p.png"], "{d}/ro/p.png"),
    # a read-only archive: analysis stores its results in it
    (["analyze", "{d}/readonly.zarr", "--metrics", "weights"], "{d}/readonly.zarr"),
    # a leftover to repair in it (the lock beside it cannot be created either)
    (["verify", "{d}/readonly.zarr", "--repair", "--yes"], "{d}/readonly.zarr"),
]
# readers need no write access (and never the writer lock): these succeed
READ_ONLY_OK = [
    ["info", "{d}/readonly.zarr"],
    ["verify", "{d}/readonly.zarr"],
    ["phases", "{d}/readonly.zarr"],
    ["analyze", "{d}/readonly.zarr", "--metrics", "weights", "--no-store", "--no-progress"],
]

# Runs the cases in a child process as `nobody`. It starts as root (the interpreter may live
# under /root, which `nobody` cannot reach), runs each command once successfully so that
# everything the commands import is imported, then drops to uid/gid 65534.
CHILD = """
import json, os, sys, traceback
from click.testing import CliRunner
from cli.main import cli
cases, warm, uid = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
for args in warm:
    res = CliRunner().invoke(cli, args)
    if res.exit_code != 0:
        sys.exit(f"warm-up {args} failed: {res.output}")
os.setgroups([])
os.setgid(uid)
os.setuid(uid)
out = []
for args in cases:
    res = CliRunner().invoke(cli, args)
    exc = type(res.exception).__name__
    text = res.output
    if exc != "SystemExit" and res.exc_info:
        text += "".join(traceback.format_exception(*res.exc_info))
    out.append([res.exit_code, text, exc])
print(json.dumps(out))
"""

WARM_UP = [
    ["info", "{d}/run.zarr"], ["phases", "{d}/run.zarr"], ["verify", "{d}/run.zarr"],
    ["analyze", "{d}/scratch.zarr", "--metrics", "weights", "--no-progress"],
    ["plot", "{d}/run.zarr", "-o", "{d}/home/a.png", "--plane", "{d}/home/b.png"],
    ["import", "{d}/ckpts", "{d}/home/imported.zarr", "--no-progress"],
    ["train", "quick-grok", "--out", "{d}/home/run.zarr", "--set", "steps=2"],
    ["verify", "{d}/scratch.zarr", "--repair", "--yes"],
]


@pytest.fixture
def shared(tanh_run, analysed_run, ckpt_folder):
    """A folder outside pytest's private tmp dirs (so that `nobody` can reach it) holding a
    run, a locked (chmod 000) copy, a read-only copy, an unreadable checkpoint folder, a
    writable folder `w` and a read-only folder `ro`."""
    d = Path(tempfile.mkdtemp(prefix="ckptlab-perm-"))
    try:
        os.chmod(d, 0o755)
        shutil.copytree(analysed_run, d / "run.zarr")
        for name in ("locked.zarr", "readonly.zarr", "scratch.zarr"):
            shutil.copytree(tanh_run, d / name)
        shutil.copytree(ckpt_folder, d / "ckpts")
        shutil.copytree(ckpt_folder, d / "noread")
        for sub in ("w", "ro", "home"):
            (d / sub).mkdir()
        os.chmod(d / "w", 0o777)
        os.chmod(d / "home", 0o777)
        (d / "readonly.zarr" / "params" / ".zarr.json.x1.partial").write_text("")
        for p in [d / "readonly.zarr", *(d / "readonly.zarr").rglob("*")]:
            mode = p.stat().st_mode
            p.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        os.chmod(d / "locked.zarr", 0)
        os.chmod(d / "noread", 0)
        os.chmod(d / "ro", 0o555)
        yield d
    finally:
        for p in (d / "locked.zarr", d / "noread"):
            os.chmod(p, 0o755)
        for p in [d, *d.rglob("*")]:
            try:
                p.chmod(0o755 if p.is_dir() else 0o644)
            except OSError:
                pass
        shutil.rmtree(d, ignore_errors=True)


def _run_cases(cases, d: Path) -> list:
    if os.geteuid() != 0:
        out = []
        for args in cases:
            res = CliRunner().invoke(cli, args)
            out.append([res.exit_code, res.output, type(res.exception).__name__])
        return out
    warm = [[a.format(d=d) for a in args] for args in WARM_UP]
    env = {**os.environ, "HOME": str(d / "home"), "MPLCONFIGDIR": str(d / "home")}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(cases), json.dumps(warm), str(NOBODY)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "Operation not permitted" in proc.stderr:
        pytest.skip(f"root, but cannot become uid {NOBODY}: {proc.stderr[-200:]}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_permission_errors_are_one_line(shared):
    d = str(shared)
    cases = [[a.format(d=d) for a in args] for args, _ in PERMISSION_CASES]
    ok = [[a.format(d=d) for a in args] for args in READ_ONLY_OK]
    results = _run_cases(cases + ok, shared)
    for (args, names), (code, output, exc) in zip(PERMISSION_CASES, results):
        line = _check(args, code, output, exc, names=names.format(d=d))
        assert "ermission" in line, line  # "Permission denied", or (PermissionError)
    for args, (code, output, exc) in zip(ok, results[len(cases):]):
        assert code == 0 and exc == "NoneType", f"ckptlab {' '.join(args)}:\n{output}"
    # nothing was left behind in the folders that could not be written
    assert not any((shared / "ro").iterdir())
