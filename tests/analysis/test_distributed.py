"""A real dask.distributed cluster on 127.0.0.1: one scheduler, two worker processes."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xarray as xr

from ckptlab.analysis import analyze


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dask_cli() -> list[str]:
    exe = Path(sys.executable).with_name("dask")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "dask"]


@pytest.fixture
def cluster(tmp_path):
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    logs = [open(tmp_path / f"{n}.log", "w") for n in ("scheduler", "w1", "w2")]
    procs = [subprocess.Popen(
        _dask_cli() + ["scheduler", "--host", "127.0.0.1", "--port", str(port),
                       "--dashboard-address", ":0", "--no-show"],
        stdout=logs[0], stderr=subprocess.STDOUT, env=env)]
    for i in (1, 2):
        procs.append(subprocess.Popen(
            _dask_cli() + ["worker", address, "--nthreads", "1", "--no-nanny",
                           "--host", "127.0.0.1", "--name", f"w{i}",
                           "--local-directory", str(tmp_path / f"w{i}")],
            stdout=logs[i], stderr=subprocess.STDOUT, env=env))
    from distributed import Client

    try:
        deadline = time.time() + 90
        while True:
            try:
                with Client(address, timeout="3s") as c:
                    c.wait_for_workers(2, timeout=max(1, deadline - time.time()))
                    break
            except (OSError, TimeoutError):
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        yield address
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in logs:
            f.close()


def test_cluster_result_equals_eager(cluster, tanh_run):
    kw = dict(metrics=("mi", "weights", "lc"), estimators=("binning", "kde"), kde_samples=200,
              lc_points=8, radii=(0.1,), store=False, block_size=4, lc_activations="any")
    eager = analyze(tanh_run, scheduler="synchronous", **kw)
    remote = analyze(tanh_run, scheduler=cluster, **kw)
    xr.testing.assert_allclose(eager, remote, rtol=1e-10)
