"""Archive integrity: checksums, plain readers after crashes, the writer lock, `ckptlab verify`."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from click.testing import CliRunner

from ckptlab.errors import (
    ArchiveExistsError,
    ArchiveLockedError,
    ChecksumError,
    CkptlabError,
    CorruptArchiveError,
)
from ckptlab.store import Recorder, Run, open_run
from ckptlab.store import format as fmt
from ckptlab.store.lock import lock_path
from ckptlab.store.verify import repair, verify
from cli.verify import verify_cmd

sys.path.insert(0, str(Path(__file__).parent))
import _mlp_writer  # noqa: E402

WRITER = Path(__file__).with_name("_mlp_writer.py")


class _Group(click.Group):
    """As the ckptlab group: library errors become one `Error: ...` line."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CkptlabError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group)
def cli():
    pass


cli.add_command(verify_cmd)


def _write(path, n=40, *, big=False, **kw):
    """n checkpoints at steps 0, 5, 10, ...; ``big`` adds a 64x64 tensor (64 rows per chunk)."""
    torch.manual_seed(0)
    sd = {"w": torch.randn(6, 4), "b": torch.zeros(6)}
    if big:
        sd["big"] = torch.randn(64, 64)
    data = {"x_train": np.arange(40.0).reshape(10, 4), "y_train": np.arange(10)}
    with Recorder(path, model_spec={"name": "x"}, data=data, **kw) as rec:
        for i in range(n):
            rec.save(5 * i, {k: v + i for k, v in sd.items()}, metrics={"loss": 1.0 / (i + 1)},
                     state={"i": i}, keep_state=i == n - 1)
    return sd


def _flip(path: Path) -> None:
    b = bytearray(path.read_bytes())
    mid = len(b) // 2
    b[mid : mid + 8] = bytes(x ^ 0xFF for x in b[mid : mid + 8])
    path.write_bytes(bytes(b))


def _chunk(path, array, index=0):
    arr = zarr.open_array(fmt.open_store(path, read_only=True), path=array, mode="r")
    key = [k for k, (r0, _) in fmt.chunks(arr) if r0 == index * (arr.chunks[0] if arr.ndim else 0)]
    return Path(path) / key[0], key[0]


# ---------------------------------------------------------------------------------- checksums
@pytest.mark.parametrize("array", ["params/w", "metrics/loss", "data/x_train"])
def test_flipped_bytes_are_detected_and_named(tmp_path, array):
    path = tmp_path / "run.zarr"
    _write(path)
    file, key = _chunk(path, array)
    _flip(file)
    run = Run(path)  # opening reads no chunk of params/metrics
    read = {"params/w": lambda: run.params(0, run.n), "metrics/loss": run.metrics,
            "data/x_train": run.data}[array]
    with pytest.raises(ChecksumError, match=f"array '{array}' .* chunk '{key}'") as info:
        read()
    e = info.value
    assert e.array == array and e.chunk == key
    if array != "data/x_train":
        assert e.rows == (0, 39) and e.steps == (0, 195)
        assert "checkpoints 0..39, steps 0..195" in str(e)
        with pytest.raises(ChecksumError, match=f"chunk '{key}'"):
            open_run(path).compute()
    else:
        assert e.rows is None and "cannot be recovered" in str(e)
    assert isinstance(e, CorruptArchiveError)
    # plain xarray readers get zarr's own checksum error: no silent wrong numbers for them
    with pytest.raises(ValueError, match="checksum"):
        xr.open_zarr(path, group=array.split("/")[0])[array.split("/")[1]].load()
    report = verify(path)
    assert not report.ok
    (f,) = report.errors
    assert f.kind == "checksum" and f.array == array and f.chunk == key
    res = CliRunner().invoke(cli, ["verify", str(path)])
    assert res.exit_code == 1 and array in res.output and key in res.output
    assert "FAILED: 1 error" in res.output


def test_verify_clean_archive(tmp_path):
    path = tmp_path / "run.zarr"
    _write(path)
    report = verify(path)
    assert report.ok and not report.findings and report.valid == report.committed == 40
    assert report.arrays == 8 and report.chunks == 7 and report.nbytes > 0
    res = CliRunner().invoke(cli, ["verify", str(path)])
    assert res.exit_code == 0, res.output
    assert "40 checkpoints committed" in res.output and "ok: no problems found" in res.output
    res = CliRunner().invoke(cli, ["verify", str(path), "--json"])
    assert json.loads(res.output)["ok"] is True
    res = CliRunner().invoke(cli, ["verify", str(tmp_path / "missing.zarr")])
    assert res.exit_code == 1 and res.output.startswith("Error: no archive at")


def test_repair_asks_first_and_keeps_the_intact_prefix(tmp_path):
    path = tmp_path / "run.zarr"
    sd = _write(path, n=150, big=True)  # params/big: 64 checkpoints per chunk
    file, key = _chunk(path, "params/big", index=1)
    _flip(file)
    report = verify(path)
    assert report.valid == 64 and report.to_drop == 86 and report.steps_dropped == (320, 745)
    res = CliRunner().invoke(cli, ["verify", str(path), "--repair"], input="n\n")
    assert res.exit_code == 1 and "dropping 86 of 150 (steps 320..745)" in res.output
    assert "nothing changed" in res.output and Run(path).n == 150
    res = CliRunner().invoke(cli, ["verify", str(path), "--repair"], input="y\n")
    assert res.exit_code == 0, res.output
    assert "repaired: dropped 86 committed checkpoint(s) (steps 320..745)" in res.output
    run = Run(path)
    assert run.n == 64 and run.steps[-1] == 315
    assert np.array_equal(run.params(63)["big"][0], (sd["big"] + 63).numpy())
    assert run.training_state() is None  # it was of the last step, which is gone
    assert xr.open_zarr(path, group="params").sizes["step"] == 64
    assert xr.open_zarr(path, group="params", consolidated=False).sizes["step"] == 64
    assert verify(path).ok and not verify(path).needs_repair
    # --yes: no question
    path2 = tmp_path / "run2.zarr"
    _write(path2, n=150, big=True)
    _flip(_chunk(path2, "params/big", index=2)[0])
    res = CliRunner().invoke(cli, ["verify", str(path2), "--repair", "--yes"])
    assert res.exit_code == 0 and "?" not in res.output and Run(path2).n == 128


def test_analysis_cache_chunk_is_named_and_repair_deletes_the_entry(tmp_path):
    path = tmp_path / "run.zarr"
    _write(path)
    root = zarr.open_group(fmt.open_store(path, read_only=False), mode="r+")
    g = root.require_group("analysis").create_group("mi-abc")
    g.create_array("mi_xt", shape=(40, 3), chunks=(16, 3), dtype="f8", fill_value=np.nan,
                   dimension_names=["step", "layer"], **fmt.plain_codecs(8))
    g["mi_xt"][...] = np.ones((40, 3))
    _flip(Path(path) / "analysis/mi-abc/mi_xt/c/1/0")
    report = verify(path)
    (f,) = report.errors
    assert f.array == "analysis/mi-abc/mi_xt" and f.chunk == "analysis/mi-abc/mi_xt/c/1/0"
    after = verify(path, repair=True)
    assert after.ok and after.dropped == 0
    assert after.actions[0] == "deleted the damaged analysis cache analysis/mi-abc"
    assert "mi-abc" not in zarr.open_group(fmt.open_store(path, read_only=True), mode="r")[
        "analysis"]


# ---------------------------------------------------------------------------------- crashes
def _spawn(path, *args):
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(path), *args], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _kill(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()


def test_sigkill_mid_write_plain_xarray_sees_exactly_the_commit(tmp_path):
    steps = 150
    ref = tmp_path / "ref.zarr"
    _mlp_writer.train(ref, steps=steps)
    ref_run = Run(ref)
    ref_params = ref_run.params(0, steps)
    rng = np.random.default_rng(0)
    for trial in range(3):
        path = tmp_path / f"run{trial}.zarr"
        proc = _spawn(path, "--steps", str(steps))
        time.sleep(float(rng.uniform(0.1, 0.8)))
        _kill(proc)
        n = Run(path).n
        for g in ("params", "metrics"):
            ds = xr.open_zarr(path, group=g)
            assert ds.sizes["step"] == n, (trial, g)
            np.testing.assert_array_equal(ds["step"].values, np.arange(n))
        if n:
            p = xr.open_zarr(path, group="params")
            for name, ref_rows in ref_params.items():
                assert p[name].values.tobytes() == ref_rows[:n].tobytes()
        report = verify(path)
        assert report.ok, report.summary()
        assert {f.kind for f in report.notes} <= {"uncommitted", "leftover"}
        _mlp_writer.train(path, steps=steps, resume=True)
        run = Run(path)
        assert run.n == steps
        for name, rows in run.params(0, steps).items():
            assert rows.tobytes() == ref_params[name].tobytes(), (trial, name)
        assert verify(path).ok and not verify(path).findings


def _fail_at(monkeypatch, method, calls):
    """Make Recorder.<method> raise from its ``calls``-th call on, as a crash there would."""
    orig = getattr(Recorder, method)
    count = {"n": 0}

    def wrapped(self, *a, **kw):
        count["n"] += 1
        if count["n"] >= calls:
            raise RuntimeError(f"simulated crash in {method}")
        return orig(self, *a, **kw)

    monkeypatch.setattr(Recorder, method, wrapped)


def test_crash_between_shapes_and_commit(tmp_path, monkeypatch):
    path = tmp_path / "run.zarr"
    rec = Recorder(path, model_spec={"name": "x"}, commit_interval=60)
    for s in range(10):
        rec.save(s, {"w": torch.full((3,), float(s))}, metrics={"loss": float(s)})
    rec.flush()
    _fail_at(monkeypatch, "_commit", 1)
    for s in range(10, 15):
        rec.save(s, {"w": torch.full((3,), float(s))}, metrics={"loss": float(s)})
    with pytest.raises(CkptlabError, match="simulated crash in _commit"):
        rec.close()
    monkeypatch.undo()
    # every array's own shape grew, the commit did not
    assert zarr.open_array(fmt.open_store(path, read_only=True), path="params/w").shape[0] == 15
    assert Run(path).n == 10
    assert xr.open_zarr(path, group="params").sizes["step"] == 10  # the snapshot
    assert xr.open_zarr(path, group="params", consolidated=False).sizes["step"] == 15
    report = verify(path)
    assert report.ok and {f.kind for f in report.notes} == {"uncommitted"}
    assert report.needs_repair and report.to_drop == 0
    after = verify(path, repair=True)  # the library call is the confirmation
    assert after.repaired and after.dropped == 0 and not after.findings
    assert xr.open_zarr(path, group="params", consolidated=False).sizes["step"] == 10


def test_crash_while_writing_chunks_changes_no_visible_shape(tmp_path, monkeypatch):
    path = tmp_path / "run.zarr"
    rec = Recorder(path, model_spec={"name": "x"}, commit_interval=0)
    for s in range(10):
        rec.save(s, {"w": torch.full((3,), float(s))}, metrics={"loss": float(s)})
    rec.flush()
    _fail_at(monkeypatch, "_grow", 1)
    rec.save(10, {"w": torch.zeros(3)})
    with pytest.raises(CkptlabError, match="simulated crash in _grow"):
        rec.close()
    monkeypatch.undo()
    for consolidated in (None, False):
        for g in ("params", "metrics"):
            assert xr.open_zarr(path, group=g, consolidated=consolidated).sizes["step"] == 10
    with Recorder(path, mode="a") as rec:  # resume brings it back to the commit and goes on
        assert rec.n_committed == 10
        rec.save(10, {"w": torch.full((3,), 10.0)})
    assert xr.open_zarr(path, group="params", consolidated=False)["w"].values[-1, 0] == 10.0


# ---------------------------------------------------------------------------------- the lock
def test_second_writer_refused_and_stale_lock_taken_over(tmp_path):
    path = tmp_path / "run.zarr"
    proc = _spawn(path, "--steps", "5", "--hold")
    assert proc.stdout.readline().strip() == "done"
    assert proc.stdout.readline().split()[0] == "holding"
    try:
        for mode in ("a", "w"):
            with pytest.raises(ArchiveLockedError, match=f"pid {proc.pid} on host .* since") as e:
                Recorder(path, model_spec={}, mode=mode)
            assert e.value.holder["pid"] == proc.pid and "_mlp_writer.py" in str(e.value)
        assert Run(path).n == 5  # readers need no lock
        report = verify(path)
        assert report.ok and [f.kind for f in report.notes] == ["writer"]
        with pytest.raises(ArchiveLockedError):
            repair(path, report)
    finally:
        _kill(proc)
    assert lock_path(path).exists()  # the dead holder's record is left, its flock is not
    with Recorder(path, mode="a") as rec:
        assert rec._wlock.previous["pid"] == proc.pid
        assert json.loads(lock_path(path).read_text())["pid"] == os.getpid()
    assert not lock_path(path).exists()


def test_lock_within_one_process_and_release_on_errors(tmp_path):
    path = tmp_path / "run.zarr"
    rec = Recorder(path, model_spec={})
    with pytest.raises(ArchiveLockedError, match="this very process"):
        Recorder(path, mode="a")
    rec.save(0, {"w": torch.zeros(2)})
    rec.close()
    with pytest.raises(ArchiveExistsError):
        Recorder(path, model_spec={})  # failed in __init__: the lock is released
    Recorder(path, mode="a").close()
    url = f"memory://ckptlab-lock-{tmp_path.name}/run.zarr"
    rec = Recorder(url, model_spec={})
    with pytest.raises(ArchiveLockedError):
        Recorder(url, mode="a")
    rec.save(0, {"w": torch.zeros(2)})
    rec.close()
    with Recorder(url, mode="a") as rec:
        rec.save(1, {"w": torch.ones(2)})
    assert Run(url).n == 2 and verify(url).ok


# ---------------------------------------------------------------------------------- formats
def test_format_1_archive_still_opens_reads_and_appends(tmp_path, monkeypatch):
    from zarr.codecs import BloscCodec, TransposeCodec

    def old_traj(ndim, itemsize):
        kw = {"compressors": [BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle",
                                         typesize=itemsize)]}
        if ndim > 1:
            kw["filters"] = [TransposeCodec(order=tuple(range(1, ndim)) + (0,))]
        return kw

    def old_plain(itemsize):
        return {"compressors": [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle",
                                           typesize=itemsize)]}

    path = tmp_path / "old.zarr"
    with monkeypatch.context() as m:
        m.setattr(fmt, "FORMAT_VERSION", 1)
        m.setattr(fmt, "trajectory_codecs", old_traj)
        m.setattr(fmt, "plain_codecs", old_plain)
        sd = _write(path, n=20)
    root_doc = json.loads((path / "zarr.json").read_text())
    assert root_doc["attributes"]["ckptlab"]["format_version"] == 1
    assert "consolidated_metadata" not in root_doc
    codecs = json.loads((path / "params/w/zarr.json").read_text())["codecs"]
    assert "crc32c" not in [c["name"] for c in codecs]
    run = Run(path)
    assert run.n == 20 and np.array_equal(run.params(19)["w"][0], (sd["w"] + 19).numpy())
    assert open_run(path).compute().sizes["step"] == 20
    report = verify(path)
    assert report.ok and [f.kind for f in report.notes] == ["format"]
    with Recorder(path, mode="a") as rec:
        rec.save(100, {k: v for k, v in sd.items()}, metrics={"loss": 0.5, "new": 1.0})
    root_doc = json.loads((path / "zarr.json").read_text())
    assert root_doc["attributes"]["ckptlab"]["format_version"] == 1  # kept, no snapshot added
    assert "consolidated_metadata" not in root_doc
    assert Run(path).n == 21 and verify(path).ok
    assert xr.open_zarr(path, group="metrics", consolidated=False).sizes["step"] == 21


def test_publish_shows_new_groups_to_plain_readers(tmp_path):
    path = tmp_path / "run.zarr"
    _write(path)
    root = zarr.open_group(fmt.open_store(path, read_only=False), mode="r+")
    g = root.require_group("analysis").create_group("weights-1")
    g.create_array("norm", shape=(40,), chunks=(40,), dtype="f8", fill_value=0.0,
                   dimension_names=["step"], **fmt.plain_codecs(8))
    g["norm"][...] = np.arange(40.0)
    with pytest.raises(KeyError):
        xr.open_zarr(path, group="analysis/weights-1")
    assert [f.kind for f in verify(path).notes] == ["snapshot"]
    with Recorder(path, mode="a"):
        assert fmt.publish(path) is False  # a writer holds the lock; its commits publish
    assert xr.open_zarr(path, group="analysis/weights-1").sizes["step"] == 40
    root["analysis"].create_group("weights-2")
    assert fmt.publish(path) is True
    xr.open_zarr(path, group="analysis/weights-2")
    assert verify(path).ok and not verify(path).findings


def test_leftover_temporary_file_is_noted_and_removed(tmp_path):
    import warnings

    path = tmp_path / "run.zarr"
    _write(path)
    junk = Path(path) / "params" / "zarr.0123abcd.partial"  # a key write killed half-way
    junk.write_bytes(b"{")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Run(path).n == 40
        report = verify(path)
    assert report.ok and [f.kind for f in report.notes] == ["leftover"]
    after = verify(path, repair=True)
    assert not junk.exists() and not after.findings
    assert "removed 1 temporary file(s)" in after.actions
