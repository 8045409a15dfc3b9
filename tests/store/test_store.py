"""Archive round trips, plain-xarray readability, resume, and every bad-input error."""

import json
import shutil

import numpy as np
import pytest
import torch
import xarray as xr

import ckptlab
from ckptlab.errors import (
    ArchiveExistsError,
    ArchiveNotFoundError,
    CkptlabError,
    CorruptArchiveError,
    FormatVersionError,
    NotAnArchiveError,
    ShapeMismatchError,
    StepOrderError,
    ValidationError,
)
from ckptlab.store import Recorder, Run, open_run, run_info


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))


def _train(path, steps=range(0, 50, 3), **kw):
    m = _model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    y = (x[:, 0] > 0).long()
    saved = {}
    data = {"x_train": x.numpy(), "y_train": y.numpy(), "x_test": x[:8].numpy(), "y_test": y[:8].numpy()}
    with Recorder(path, model_spec={"name": "mlp", "kwargs": {}}, data=data, config={"lr": 1e-2},
                  task={"name": "toy"}, seed=3, **kw) as rec:
        for s in range(max(steps) + 1):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
            if s in steps:
                rec.save(s, m, metrics={"train_loss": loss.item(), "lr": 1e-2}, optimizer=opt,
                         keep_state=True if s == max(steps) else None)
                saved[s] = {k: v.clone() for k, v in m.state_dict().items()}
    return saved, data, opt


def test_round_trip_is_bit_identical(tmp_path):
    path = tmp_path / "run.zarr"
    saved, data, opt = _train(path)
    run = Run(path)
    assert run.n == len(saved)
    np.testing.assert_array_equal(run.steps, sorted(saved))
    for i, s in enumerate(sorted(saved)):
        sd = run.state_dict(i)
        for k, v in saved[s].items():
            assert sd[k].dtype == v.dtype and torch.equal(sd[k], v)
    for k, v in run.data().items():
        np.testing.assert_array_equal(v, data[k])
    state = run.training_state()
    ref = opt.state_dict()
    for pid, st in ref["state"].items():
        for key, t in st.items():
            assert torch.equal(state["optimizer"]["state"][pid][key], t)
    assert state["optimizer"]["param_groups"][0]["lr"] == ref["param_groups"][0]["lr"]
    assert run.model_spec == {"name": "mlp", "kwargs": {}} and run.config == {"lr": 1e-2}


def test_dataset_is_lazy_and_labelled(tmp_path):
    path = tmp_path / "run.zarr"
    saved, *_ = _train(path)
    ds = open_run(path)
    assert ds.sizes["step"] == len(saved)
    assert ds["0.weight"].dims == ("step", "0.weight_0", "0.weight_1")
    assert hasattr(ds["0.weight"].data, "dask")
    np.testing.assert_array_equal(ds["0.weight"].values[-1], saved[max(saved)]["0.weight"].numpy())
    assert ds["step"].attrs["long_name"] == "training step"
    assert ds.attrs["model_spec"]["name"] == "mlp"
    # the lazy graph pickles (workers reopen the archive themselves)
    import pickle

    ds2 = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(ds2["train_loss"].values, ds["train_loss"].values)


def test_plain_xarray_reads_without_ckptlab(tmp_path):
    path = tmp_path / "run.zarr"
    saved, *_ = _train(path)
    p = xr.open_zarr(path, group="params", consolidated=False)
    m = xr.open_zarr(path, group="metrics", consolidated=False)
    d = xr.open_zarr(path, group="data", consolidated=False)
    np.testing.assert_array_equal(p["step"].values, sorted(saved))
    np.testing.assert_array_equal(m["step"].values, sorted(saved))
    assert p["2.weight"].shape == (len(saved), 2, 6)
    assert d["x_train"].dims == ("sample_train", "x_train_1")
    attrs = json.loads((path / "zarr.json").read_text())["attributes"]["ckptlab"]
    assert attrs["format_version"] == ckptlab.store.FORMAT_VERSION


def test_files_per_checkpoint_are_few(tmp_path):
    path = tmp_path / "run.zarr"
    _train(path, steps=range(200))
    files = [p for p in path.rglob("*") if p.is_file()]
    assert len(files) < 40  # not one file per tensor per step (4 tensors x 200 steps)


def test_memory_url(tmp_path):
    url = f"memory://ckptlab-test-{tmp_path.name}/run.zarr"
    saved, *_ = _train(url)
    assert Run(url).n == len(saved)
    np.testing.assert_array_equal(open_run(url)["step"].values, sorted(saved))


def test_resume_appends_after_last_commit(tmp_path):
    path = tmp_path / "run.zarr"
    _train(path, steps=range(0, 10))
    m = _model(1)
    with Recorder(path, mode="a") as rec:
        assert rec.last_step == 9 and rec.n_committed == 10
        with pytest.raises(StepOrderError, match="step must increase.*got step 9 after step 9"):
            rec.save(9, m)
        rec.save(10, m, metrics={"other": 1.0})
    run = Run(path)
    assert run.n == 11 and run.steps[-1] == 10
    assert np.isnan(run.metrics()["other"][:10]).all() and run.metrics()["other"][10] == 1.0
    assert np.isnan(run.metrics()["train_loss"][10])


def test_reader_sees_committed_while_writing(tmp_path):
    path = tmp_path / "run.zarr"
    m = _model()
    seen = []
    with Recorder(path, model_spec={"name": "x"}) as rec:
        for s in range(300):
            rec.save(s, m)
            if s % 50 == 49:
                rec.flush()
                seen.append(Run(path).n)
    assert seen == [50, 100, 150, 200, 250, 300]


def test_save_rejects_bad_input(tmp_path):
    path = tmp_path / "run.zarr"
    rec = Recorder(path, model_spec={"name": "x"})
    m = _model()
    rec.save(5, m)
    with pytest.raises(StepOrderError, match="got step 5 after step 5"):
        rec.save(5, m)
    with pytest.raises(ValidationError, match="step must be an integer >= 0, got -1"):
        rec.save(-1, m)
    bigger = torch.nn.Sequential(torch.nn.Linear(4, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2))
    with pytest.raises(ShapeMismatchError, match="parameter '0.weight' at step 6 has shape \\(7, 4\\)"):
        rec.save(6, bigger)
    with pytest.raises(ShapeMismatchError, match="parameters changed at step 6"):
        rec.save(6, {"other": torch.zeros(3)})
    with pytest.raises(ValidationError, match="metric 'loss' must be a real number"):
        rec.save(6, m, metrics={"loss": "high"})
    rec.save(6, m)
    rec.close()
    assert Run(path).n == 2


def test_open_errors(tmp_path):
    with pytest.raises(ArchiveNotFoundError, match="no archive at .*missing.zarr"):
        open_run(tmp_path / "missing.zarr")
    import zarr

    zarr.open_group(tmp_path / "plain.zarr", mode="w").attrs["x"] = 1
    with pytest.raises(NotAnArchiveError, match="not a ckptlab archive"):
        open_run(tmp_path / "plain.zarr")
    (tmp_path / "dir").mkdir()
    with pytest.raises(NotAnArchiveError):
        open_run(tmp_path / "dir")
    path = tmp_path / "run.zarr"
    _train(path)
    with pytest.raises(ArchiveExistsError, match="already exists"):
        Recorder(path, model_spec={})
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["ckptlab"]["format_version"] = 99
    (path / "zarr.json").write_text(json.dumps(meta))
    newest = ckptlab.store.FORMAT_VERSION
    with pytest.raises(FormatVersionError, match=f"format version 99.*reads versions <= {newest}"):
        open_run(path)


def test_missing_and_corrupt_chunks(tmp_path):
    path = tmp_path / "run.zarr"
    _train(path)
    chunk = path / "params" / "0.weight" / "c" / "0" / "0" / "0"
    assert chunk.is_file()
    backup = chunk.read_bytes()
    chunk.unlink()
    with pytest.raises(CorruptArchiveError, match="chunk 'params/0.weight/c/0/0/0' .* is missing"):
        open_run(path)
    chunk.write_bytes(b"garbage" * 3)
    with pytest.raises(CorruptArchiveError, match="cannot read array 'params/0.weight'"):
        open_run(path)["0.weight"].values
    with pytest.raises(CorruptArchiveError):
        Run(path).state_dict(0)
    chunk.write_bytes(backup)
    assert open_run(path)["0.weight"].values.shape[0] == Run(path).n


def test_overwrite_refuses_non_archive(tmp_path):
    victim = tmp_path / "precious"
    victim.mkdir()
    (victim / "thesis.tex").write_text("do not delete")
    with pytest.raises(CkptlabError, match="refusing to replace"):
        Recorder(victim, model_spec={}, mode="w")
    assert (victim / "thesis.tex").read_text() == "do not delete"


def test_write_error_surfaces_on_close(tmp_path):
    path = tmp_path / "run.zarr"
    rec = Recorder(path, model_spec={})
    rec.save(0, _model())
    rec.flush()
    shutil.rmtree(path)
    path.write_text("now a file")  # the next write cannot create chunks
    rec.save(1, _model())
    with pytest.raises(CkptlabError, match="writing to .* failed"):
        rec.close()


def test_info(tmp_path):
    path = tmp_path / "run.zarr"
    saved, *_ = _train(path)
    info = run_info(path)
    assert info["checkpoints"] == len(saved) and info["last_step"] == max(saved)
    assert info["bytes_on_disk"] > 0 and "train_loss" in info["metrics"] and info["resumable"]


def test_state_snapshots_are_throttled_and_truncate_after_resumes_from_them(tmp_path):
    path = tmp_path / "run.zarr"
    m = _model()
    with Recorder(path, model_spec={"name": "x"}, state_interval=3600) as rec:
        for s in range(10):
            rec.save(s, m, state={"step": s})  # only the first is due within the hour
    run = Run(path)
    assert run.n == 10 and run.training_state()["step"] == 0
    with Recorder(path, model_spec={"name": "x"}, mode="a", truncate_after=4) as rec:
        assert rec.n_committed == 5 and rec.last_step == 4
        rec.save(5, m, state={"step": 5}, keep_state=True)
    run = Run(path)
    np.testing.assert_array_equal(run.steps, np.arange(6))
    assert run.training_state()["step"] == 5
    with pytest.raises(ValidationError, match="truncate_after needs mode='a'"):
        Recorder(tmp_path / "other.zarr", model_spec={}, truncate_after=3)


def test_block_reads_in_any_order_return_the_stored_rows(tmp_path):
    # chunks of 4 (a 256x256 tensor), 64 and 256 rows; blocks that start and end anywhere,
    # in order (the kept rest of a chunk serves the next block), backwards, and repeated
    path = tmp_path / "run.zarr"
    g = torch.Generator().manual_seed(0)
    sd = {"big": torch.randn(256, 256, generator=g), "mid": torch.randn(64, 64, generator=g),
          "b": torch.randn(6, generator=g)}
    data = {"x_train": np.zeros((4, 2)), "y_train": np.zeros(4, dtype=np.int64)}
    with Recorder(path, model_spec={"name": "x"}, data=data) as rec:
        for i in range(150):
            rec.save(i, {k: v + i for k, v in sd.items()})
    want = {k: np.stack([(v + i).numpy() for i in range(150)]) for k, v in sd.items()}
    run = Run(path)
    chunks = {k: run._arrays[f"params/{k}"].chunks[0] for k in sd}
    assert chunks["big"] < 9 < chunks["mid"] < chunks["b"]
    spans = [(0, 9), (9, 18), (18, 30), (30, 31), (31, 70), (70, 150), (5, 12), (0, 150),
             (64, 65), (65, 66), (63, 129), (140, 150), (149, 150)]
    for a, b in spans:
        got = run.params(a, b)
        for k in sd:
            np.testing.assert_array_equal(got[k], want[k][a:b], err_msg=f"{k} [{a}, {b})")
        got["b"][:] = -1.0  # the caller's rows are its own: the next read is unaffected
    for i in range(150):  # one checkpoint at a time, as state_dict reads
        assert torch.equal(run.state_dict(i)["mid"], sd["mid"] + i)
    # blocks in either order decode each chunk once: the bias (one chunk) in one zarr call
    for order in (range(0, 150, 5), range(145, -1, -5)):
        fresh = Run(path)
        calls = []
        real = fresh._read
        fresh._read = lambda key, sel: calls.append(key) or real(key, sel)
        for a in order:
            got = fresh.params(a, a + 5)
            np.testing.assert_array_equal(got["mid"], want["mid"][a:a + 5])
            np.testing.assert_array_equal(got["big"], want["big"][a:a + 5])
        assert calls.count("params/b") == 1
        assert calls.count("params/mid") == -(-150 // chunks["mid"])
