"""SIGKILL a writer at random moments: the archive always opens with exactly the committed steps."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ckptlab.store import Recorder, Run

sys.path.insert(0, str(Path(__file__).parent))
from _crash_writer import params  # noqa: E402

WRITER = Path(__file__).with_name("_crash_writer.py")


def _run_and_kill(path, mode, delay):
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(path), mode],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    committed = [int(line.split()[1]) for line in out.splitlines() if line.startswith("committed")]
    return max(committed, default=0)


def _check(path, at_least):
    run = Run(path)
    n = run.n
    assert n >= at_least
    np.testing.assert_array_equal(run.steps, np.arange(n))
    if n:
        block = run.params(0, n)
        for k in range(n):
            for name, t in params(k).items():
                assert block[name][k].tobytes() == t.numpy().tobytes(), (name, k)
        np.testing.assert_array_equal(run.metrics()["loss"], 1.0 / (np.arange(n) + 1))
        state = run.training_state()
        assert state is not None and 0 <= state["k"] < n
        assert state["t"].numpy().tobytes() == params(state["k"])["a.bias"].numpy().tobytes()
    ds = run.dataset()
    assert ds.sizes["step"] == n
    return n


def test_sigkill_at_random_moments_keeps_committed_checkpoints(tmp_path):
    rng = np.random.default_rng(0)
    total_seen = 0
    for trial in range(8):
        path = tmp_path / f"run{trial}.zarr"
        at_least = _run_and_kill(path, "w-", float(rng.uniform(0.0, 0.6)))
        n = _check(path, at_least)
        total_seen += n
        # resume after the kill, kill again, and the archive is still exact and contiguous
        at_least2 = _run_and_kill(path, "a", float(rng.uniform(0.0, 0.4)))
        _check(path, max(at_least2, n))
    assert total_seen > 0  # the kills did land after some commits


def test_resume_after_kill_continues_exactly(tmp_path):
    path = tmp_path / "run.zarr"
    _run_and_kill(path, "w-", 0.5)
    n = Run(path).n
    with Recorder(path, mode="a") as rec:
        assert rec.n_committed == n
        for k in range(n, n + 5):
            rec.save(k, params(k), metrics={"loss": 1.0 / (k + 1)})
    assert _check(path, n + 5) == n + 5
    assert not list(Path(path).rglob("*.partial"))
