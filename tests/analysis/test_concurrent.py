"""Concurrent analyses of one archive: two at once agree with one, partial cache groups are
never read as complete, and an analysis runs beside an open writer.

The analyses run in two worker processes, each the ckptlab CLI (what ``python -m cli`` runs)
started once, taking one ``ckptlab analyze`` command line per trial from its stdin: both get
their command at the same moment (process start-up, ~1 s apart from one start to the next,
would otherwise decide who reaches the cache first), and a trial costs its analysis, not two
interpreter starts. One test also runs a plain ``python -m cli analyze`` process. Results are
compared with one ``analyze(..., store=False)`` in this process.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from ckptlab.analysis import analyze, load_analysis
from ckptlab.analysis import api as api_mod
from ckptlab.store import Recorder, Run
from ckptlab.store import format as fmt
from ckptlab.store.verify import verify

ROOT = Path(__file__).resolve().parents[2]
KW = dict(metrics=("mi", "weights"), estimators=("binning", "kde"))
ARGS = ["--metrics", "mi,weights", "--estimators", "binning,kde", "--no-progress"]

# stdin lines "PATH DELAY BLOCK_SIZE" -> `ckptlab analyze PATH ARGS --block-size BLOCK_SIZE`,
# each block slowed by DELAY seconds (a run to catch mid-way); prints {"rc", "out"} per line.
WORKER = """
import contextlib, io, json, sys, time, traceback
import ckptlab.analysis.api as api
from cli.main import cli
ARGS = json.loads(sys.argv[1])
real, delay = api.compute_block, 0.0
def compute_block(*a, **k):
    time.sleep(delay)
    return real(*a, **k)
api.compute_block = compute_block
print("ready", flush=True)
for line in sys.stdin:
    path, delay, bs = line.split()
    delay, buf = float(delay), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            cli(["analyze", path, *ARGS, "--block-size", bs], prog_name="ckptlab")
            rc = 0
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else int(e.code is not None)
        except BaseException:
            traceback.print_exc()
            rc = 99
    print(json.dumps({"rc": rc, "out": buf.getvalue()}), flush=True)
"""


class _Worker:
    def __init__(self):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, json.dumps(ARGS)], cwd=ROOT, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", line + self.proc.stdout.read()

    def send(self, path, *, delay: float = 0.0, block_size: int = 2) -> None:
        self.proc.stdin.write(f"{path} {delay} {block_size}\n")
        self.proc.stdin.flush()

    def result(self, n: int) -> str:
        line = self.proc.stdout.readline()
        res = json.loads(line)
        assert res["rc"] == 0, res["out"]
        assert "Traceback" not in res["out"], res["out"]
        assert f"{n} checkpoints analysed" in res["out"], res["out"]
        return res["out"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def workers():
    pair = (_Worker(), _Worker())
    yield pair
    for w in pair:
        w.close()


@pytest.fixture(scope="module")
def reference(relu_run):
    """One analysis alone, nothing stored (relu: the `range` pre-pass is cached too)."""
    return analyze(relu_run, store=False, scheduler="synchronous", **KW)


def _copy(src, tmp_path, name="run.zarr") -> str:
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return str(dst)


def _assert_same(ds, ref) -> None:
    assert sorted(ds.data_vars) == sorted(ref.data_vars)
    for name, var in ref.data_vars.items():
        got = ds[name]
        assert got.dims == var.dims, name
        for d in var.dims:
            assert list(got[d].values) == list(var[d].values), (name, d)
        np.testing.assert_allclose(got.values, var.values, rtol=0, atol=1e-12, equal_nan=True,
                                   err_msg=name)


def _assert_clean(path) -> None:
    report = verify(path)
    assert report.ok, report.summary()
    assert not list(Path(path, fmt.ANALYSIS).glob(".*.partial"))


def _done(path) -> dict[str, np.ndarray]:
    root = zarr.open_group(fmt.open_store(path, read_only=True), mode="r")
    if fmt.ANALYSIS not in root:
        return {}
    g = root[fmt.ANALYSIS]
    out = {}
    for key in fmt.group_names(g):
        if not key.startswith(".") and "done" in g[key]:
            try:
                out[key] = np.asarray(g[key]["done"][...])
            except Exception:  # a chunk replaced while we read it: ask again
                pass
    return out


def _computed_blocks(fn):
    """(result of fn(), [(start, stop, families)] of the blocks computed meanwhile)."""
    calls = []
    real = api_mod.compute_block
    try:
        api_mod.compute_block = lambda *a, **k: calls.append(a[1:4]) or real(*a, **k)
        return fn(), calls
    finally:
        api_mod.compute_block = real


def test_two_analyses_started_together_store_what_one_does(relu_run, reference, tmp_path,
                                                           workers):
    for trial, sizes in enumerate([(2, 2), (2, 2), (3, 3)]):
        path = _copy(relu_run, tmp_path, f"run{trial}.zarr")
        n = Run(path).n
        for w, bs in zip(workers, sizes):
            w.send(path, block_size=bs)
        for w in workers:
            w.result(n)
        _assert_same(load_analysis(path), reference)
        _assert_clean(path)
        # a third analysis finds everything done: it computes nothing
        ds, calls = _computed_blocks(lambda: analyze(path, scheduler="synchronous", **KW))
        _assert_same(ds, reference)
        assert calls == [], f"trial {trial}"


#: cache groups of an analysis of the relu run: the range pre-pass, mi-binning, mi-kde, weights
GROUPS = 4


def _wait_mid_way(path, worker, what) -> dict:
    """Until every cache group exists (none is being created) and some blocks of each are
    stored, not all of them."""
    deadline = time.monotonic() + 120
    while True:
        done = _done(path)
        if len(done) == GROUPS and all(d.any() for d in done.values()) and not all(
                d.all() for d in done.values()):
            return done
        assert worker.proc.poll() is None, f"{what} ended"
        assert time.monotonic() < deadline, f"{what} was not caught mid-way"
        time.sleep(0.05)


def test_second_analysis_started_while_the_first_is_mid_way(relu_run, reference, tmp_path,
                                                            workers):
    path = _copy(relu_run, tmp_path)
    n = Run(path).n
    slow, fast = workers
    slow.send(path, delay=0.4)
    _wait_mid_way(path, slow, "the slow analysis")
    fast.send(path)
    fast.result(n)
    slow.result(n)
    _assert_same(load_analysis(path), reference)
    _assert_clean(path)


def test_analysis_beside_an_open_writer(relu_run, reference, tmp_path, workers):
    """Analysis takes no writer lock: a Recorder holding it does not refuse an analysis, the
    analysis reads the committed checkpoints, and a writer opened while an analysis runs is
    not refused either."""
    path = _copy(relu_run, tmp_path)
    run = Run(path)
    n, last = run.n, int(run.steps[-1])
    rec = Recorder(path, mode="a")  # holds the writer lock, not closed during the analyses
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "cli", "analyze", path, *ARGS, "--block-size", "2"],
            cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"{n} checkpoints analysed" in proc.stdout
        _assert_same(load_analysis(path), reference)
        # in-process too (the lock registry of this very process)
        _assert_same(analyze(path, scheduler="synchronous", **KW), reference)
        # the writer goes on: one more checkpoint, committed while the analysis cache exists
        metrics = {k: float(v[-1]) for k, v in run.metrics().items()}
        rec.save(last + 7, run.state_dict(n - 1), metrics=metrics)
    finally:
        rec.close()
    assert Run(path).n == n + 1
    grown = analyze(path, scheduler="synchronous", **KW)  # extends the cache by one row
    fresh = analyze(path, store=False, scheduler="synchronous", **KW)
    _assert_same(grown, fresh)
    _assert_same(load_analysis(path), fresh)
    for name, var in reference.data_vars.items():  # the old rows are unchanged
        if "step" in var.dims:
            np.testing.assert_allclose(grown[name].isel(step=slice(0, n)).values, var.values,
                                       rtol=0, atol=1e-12, equal_nan=True, err_msg=name)

    # a writer opened while an analysis runs (between its block writes) is not refused
    path2 = _copy(relu_run, tmp_path, "run2.zarr")
    slow = workers[0]
    slow.send(path2, delay=0.3)
    _wait_mid_way(path2, slow, "the slow analysis")
    with Recorder(path2, mode="a") as rec2:
        assert rec2.n_committed == n
    slow.result(n)
    _assert_same(load_analysis(path2), reference)


def _stored(path) -> dict[str, str]:
    """family name -> key of its cache group."""
    root = zarr.open_group(fmt.open_store(path, read_only=True), mode="r")
    g = root[fmt.ANALYSIS]
    return {g[k].attrs["family"]: k for k in fmt.group_names(g) if not k.startswith(".")}


def _corrupt_rows(path, key: str, rows: slice) -> None:
    """Rows that an interrupted analysis may leave: values written (here: nonsense), not done."""
    g = zarr.open_group(fmt.open_store(path, read_only=False), path=f"{fmt.ANALYSIS}/{key}",
                        mode="r+")
    for name in fmt.array_names(g):
        if name not in ("step", "done"):
            arr = g[name]
            arr[rows] = np.full((len(range(*rows.indices(arr.shape[0]))),) + arr.shape[1:],
                                1e300)
    done = np.asarray(g["done"][...])
    done[rows] = False
    g["done"][...] = done


def test_not_done_rows_are_never_read_and_are_recomputed(relu_run, reference, tmp_path):
    path = _copy(relu_run, tmp_path)
    analyze(path, scheduler="synchronous", block_size=2, **KW)
    keys = _stored(path)
    n = Run(path).n
    # mi-kde: a group whose done is all False (killed before its first block was stored);
    # weights: the second half not done
    _corrupt_rows(path, keys["mi-kde"], slice(None))
    _corrupt_rows(path, keys["weights"], slice(n // 2, None))
    ds = load_analysis(path)
    assert np.isnan(ds.mi_xt.sel(estimator=["kde_upper", "kde_lower"]).values).all()
    assert not np.isnan(ds.mi_xt.sel(estimator="binning").values).any()
    w = ds.frobenius_norm.values
    assert np.isnan(w[n // 2:]).all() and not np.isnan(w[: n // 2]).any()
    assert not (np.abs(np.nan_to_num(ds.mi_xt.values)) > 1e100).any()
    ds, calls = _computed_blocks(
        lambda: analyze(path, scheduler="synchronous", block_size=2, **KW))
    _assert_same(ds, reference)
    # every block for mi-kde; weights only from the first block not done on
    recomputed = {(a, b): set(f) for a, b, f in calls}
    assert all("mi-kde" in f for f in recomputed.values()) and len(recomputed) == -(-n // 2)
    assert all(("weights" in f) == (b > n // 2) for (a, b), f in recomputed.items())
    assert not any("mi-binning" in f for f in recomputed.values())
    _assert_same(load_analysis(path), reference)


def _leave_partial(path, key: str, *, created: str) -> Path:
    """What a killed (or racing) analysis leaves while building a group: ``.<key>.<id>.partial``
    beside the entries, its arrays created, nothing done."""
    src = Path(path, fmt.ANALYSIS, key)
    dst = src.with_name(f".{key}.deadbeef.partial")
    shutil.copytree(src, dst)
    g = zarr.open_group(fmt.open_store(path, read_only=False), path=f"{fmt.ANALYSIS}/{dst.name}",
                        mode="r+")
    g["done"][...] = np.zeros(g["done"].shape, bool)
    g.attrs["created"] = created
    return dst


def test_partial_group_without_an_entry_is_not_used(relu_run, reference, tmp_path):
    """Killed before the rename: only the ``.partial`` group exists for mi-kde."""
    path = _copy(relu_run, tmp_path)
    analyze(path, scheduler="synchronous", block_size=2, **KW)
    key = _stored(path)["mi-kde"]
    _leave_partial(path, key, created="2000-01-01T00:00:00+00:00")
    shutil.rmtree(Path(path, fmt.ANALYSIS, key))
    ds = load_analysis(path)
    assert "kde_upper" not in ds.estimator or np.isnan(
        ds.mi_xt.sel(estimator=["kde_upper", "kde_lower"]).values).all()
    assert not np.isnan(ds.mi_xt.sel(estimator="binning").values).any()
    # analyze builds the entry anew (it never adopts the partial one)
    _assert_same(analyze(path, scheduler="synchronous", **KW), reference)
    _assert_same(load_analysis(path), reference)
    assert verify(path).ok


def test_partial_group_beside_a_complete_entry_is_not_read(relu_run, reference, tmp_path):
    """The loser of a creation race (or one killed just before cleaning up) leaves a
    ``.partial`` group, newer than the winner's entry, with nothing done: readers must keep
    using the complete entry."""
    path = _copy(relu_run, tmp_path)
    analyze(path, scheduler="synchronous", block_size=2, **KW)
    for fam, key in _stored(path).items():
        _leave_partial(path, key, created="2999-01-01T00:00:00+00:00")
    _assert_same(load_analysis(path), reference)
    _assert_same(analyze(path, scheduler="synchronous", **KW), reference)
