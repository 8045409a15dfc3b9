"""Importing checkpoints already on disk: every source format, steps, safety, append, errors."""

import json
import pathlib
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import ckptlab
from ckptlab._progress import progress_bar
from ckptlab.errors import (
    ArchiveExistsError,
    CheckpointSourceError,
    DataError,
    DuplicateStepError,
    NoCheckpointsError,
    ShapeMismatchError,
    StepMismatchError,
    StepParseError,
    UnsafeCheckpointError,
    ValidationError,
)
from ckptlab.store import Run, import_checkpoints
from ckptlab.store.importer import _step_from_name

STEPS = [5, 40, 300]  # listed by name: step_300, step_40, step_5 -- not step order


def _sd(seed, rows=3):
    """A tiny state dict: float32 weights, a bfloat16 and an integer buffer."""
    g = torch.Generator().manual_seed(seed)
    return {
        "layer.weight": torch.randn(rows, 2, generator=g),
        "layer.bias": torch.randn(rows, generator=g),
        "norm.half": torch.randn(2, generator=g).to(torch.bfloat16),
        "norm.num_batches_tracked": torch.tensor(seed, dtype=torch.int64),
    }


def _bits(t):
    t = t.detach().contiguous()
    return (t.reshape(1) if t.ndim == 0 else t).view(torch.uint8)


def _assert_archive(dest, expected):
    """The archive holds exactly `expected` [(step, state dict)], bit for bit."""
    run = Run(dest)
    assert run.steps.tolist() == [s for s, _ in expected]
    for i, (_, sd) in enumerate(expected):
        got = run.state_dict(i)
        assert set(got) == set(sd)
        for k, v in sd.items():
            assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
            assert torch.equal(_bits(got[k]), _bits(v)), k


# ---------------------------------------------------------------------------------- writers
class _Evil:
    """Unpickling this creates `marker`: stands for arbitrary code in a pickle."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _torch_bare(folder, step, sd):
    torch.save(sd, folder / f"step_{step}.pt")
    return sd


def _lightning(folder, step, sd):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
    state = {f"model.{k}": v for k, v in sd.items()}
    torch.save({
        "epoch": 0, "global_step": step, "pytorch-lightning_version": "2.4.0",
        "state_dict": {**state, "model.mask": torch.ones(2, dtype=torch.bool)},  # bool: ignored
        "optimizer_states": [opt.state_dict()], "lr_schedulers": [],
        "hyper_parameters": {"lr": 0.1, "widths": [3, 2]},
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_path": "x.ckpt"}},
    }, folder / f"epoch=0-step={step}.ckpt")
    return state


def _model_state_dict(folder, step, sd):
    torch.save({"model_state_dict": sd, "optimizer_state_dict": {"state": {}, "param_groups": []},
                "epoch": 3, "step": step}, folder / f"ckpt-{step}.pth")
    return sd


def _model_key_bin(folder, step, sd):
    torch.save({"model": sd, "iteration": step}, folder / f"weights_{step}.bin")
    return sd


def _safetensors(folder, step, sd):
    save_file(sd, str(folder / f"model_{step:05d}.safetensors"), metadata={"format": "pt"})
    return sd


def _hf_dir(folder, step, evil=True):
    d = folder / f"checkpoint-{step}"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if evil:  # the Trainer's pickled TrainingArguments: must never be loaded
        torch.save({"args": _Evil(folder / "MARKER")}, d / "training_args.bin")
    return d


def _hf_safetensors(folder, step, sd):
    save_file(sd, str(_hf_dir(folder, step) / "model.safetensors"))
    return sd


def _hf_bin(folder, step, sd):
    torch.save(sd, _hf_dir(folder, step) / "pytorch_model.bin")
    return sd


def _shards(folder, step, sd, ext):
    d = _hf_dir(folder, step)
    names = list(sd)
    parts = {f"model-00001-of-00002.{ext}": names[:2], f"model-00002-of-00002.{ext}": names[2:]}
    for shard, keys in parts.items():
        if ext == "safetensors":
            save_file({k: sd[k] for k in keys}, str(d / shard))
        else:
            torch.save({k: sd[k] for k in keys}, d / shard)
    index = {"metadata": {"total_size": 0},
             "weight_map": {k: s for s, ks in parts.items() for k in ks}}
    base = "model.safetensors" if ext == "safetensors" else "pytorch_model.bin"
    (d / f"{base}.index.json").write_text(json.dumps(index))
    return sd


def _hf_sharded_safetensors(folder, step, sd):
    return _shards(folder, step, sd, "safetensors")


def _hf_sharded_bin(folder, step, sd):
    return _shards(folder, step, sd, "bin")


WRITERS = {
    "torch-bare": (_torch_bare, "torch"),
    "lightning": (_lightning, "torch"),
    "model_state_dict": (_model_state_dict, "torch"),
    "model-key-bin": (_model_key_bin, "torch"),
    "safetensors": (_safetensors, "safetensors"),
    "hf-safetensors": (_hf_safetensors, "hf-safetensors"),
    "hf-bin": (_hf_bin, "hf-torch"),
    "hf-sharded-safetensors": (_hf_sharded_safetensors, "hf-safetensors-sharded"),
    "hf-sharded-bin": (_hf_sharded_bin, "hf-torch-sharded"),
}


def _folder(tmp_path, writer, steps=STEPS, name="ckpts"):
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    return folder, [(s, writer(folder, s, _sd(s))) for s in steps]


# ---------------------------------------------------------------------------------- formats
@pytest.mark.parametrize("kind", list(WRITERS))
def test_every_format_imports_bit_identically(tmp_path, kind):
    writer, fmt_name = WRITERS[kind]
    folder, expected = _folder(tmp_path, writer)
    if kind.startswith("hf"):  # the Trainer's final save next to the checkpoints: ignored
        save_file(_sd(99, rows=5), str(folder / "model.safetensors"))
        torch.save({"args": _Evil(tmp_path / "MARKER")}, folder / "training_args.bin")
    dest = tmp_path / "run.zarr"
    res = import_checkpoints(folder, dest, progress=False)
    assert (res.imported, res.skipped, res.first_step, res.last_step) == (3, 0, 5, 300)
    assert res.checkpoints == 3 and res.format == fmt_name
    _assert_archive(dest, expected)
    task = Run(dest).task
    assert task["name"] == "import" and task["source"] == str(folder.resolve())
    assert task["format"] == fmt_name
    assert not (tmp_path / "MARKER").exists()


def test_single_file_and_single_hf_folder(tmp_path):
    folder, expected = _folder(tmp_path, _lightning, steps=[7])
    res = import_checkpoints(folder / "epoch=0-step=7.ckpt", tmp_path / "a.zarr")
    assert res.imported == 1
    _assert_archive(tmp_path / "a.zarr", expected)
    hf, expected = _folder(tmp_path, _hf_sharded_safetensors, steps=[500], name="hf")
    import_checkpoints(hf / "checkpoint-500", tmp_path / "b.zarr")
    _assert_archive(tmp_path / "b.zarr", expected)


def test_mixed_file_formats_in_one_folder(tmp_path):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    expected = [(1, _torch_bare(folder, 1, _sd(1))), (2, _safetensors(folder, 2, _sd(2)))]
    (folder / "notes.txt").write_text("ignored")
    (folder / "logs").mkdir()
    res = import_checkpoints(folder, tmp_path / "run.zarr")
    assert res.format == "safetensors+torch"
    _assert_archive(tmp_path / "run.zarr", expected)


def test_public_exports():
    assert ckptlab.import_checkpoints is import_checkpoints
    assert ckptlab.ImportResult is ckptlab.store.ImportResult


# ---------------------------------------------------------------------------------- steps
@pytest.mark.parametrize("name, pattern, step", [
    ("step_1000.pt", None, 1000),
    ("ckpt-20.pth", None, 20),
    ("epoch=3-step=120.ckpt", None, 120),
    ("epoch=3-step=120-v1.ckpt", None, 120),
    ("checkpoint-500", None, 500),
    ("model_00042.safetensors", None, 42),
    ("global_step7.pt", None, 7),
    ("final.pt", None, None),
    ("run3_iter250.pt", r"iter(\d+)", 250),
    ("e3-s99.pt", r"e(?P<epoch>\d+)-s(?P<step>\d+)", 99),
    ("a12.pt", r"\d+", 12),
    ("step_5.pt", r"iter(\d+)", None),
])
def test_step_from_name(name, pattern, step):
    import re

    assert _step_from_name(name, None if pattern is None else re.compile(pattern)) == step


def test_custom_step_pattern_and_order(tmp_path):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    expected = []
    for s in (30, 4, 200):  # run7_ is a run id, not a step: the default rule would take it
        torch.save(_sd(s), folder / f"it{s}_run7.pt")
        expected.append((s, _sd(s)))
    with pytest.raises(DuplicateStepError, match="step 7"):
        import_checkpoints(folder, tmp_path / "bad.zarr")
    assert not (tmp_path / "bad.zarr").exists()
    res = import_checkpoints(folder, tmp_path / "run.zarr", step_pattern=r"it(\d+)_")
    assert (res.first_step, res.last_step) == (4, 200)
    _assert_archive(tmp_path / "run.zarr", sorted(expected, key=lambda e: e[0]))
    assert Run(tmp_path / "run.zarr").task["params"]["step_pattern"] == r"it(\d+)_"


def test_step_entry_used_when_the_name_has_none_and_checked_otherwise(tmp_path):
    folder, expected = _folder(tmp_path, _lightning, steps=[10, 20])
    torch.save({"state_dict": {f"model.{k}": v for k, v in _sd(30).items()}, "global_step": 30},
               folder / "last.ckpt")
    expected.append((30, {f"model.{k}": v for k, v in _sd(30).items()}))
    import_checkpoints(folder, tmp_path / "run.zarr")
    _assert_archive(tmp_path / "run.zarr", expected)

    torch.save({"state_dict": _sd(1), "global_step": 41}, folder / "epoch=1-step=40.ckpt")
    with pytest.raises(StepMismatchError, match=r"step=40\.ckpt.*step 40.*41"):
        import_checkpoints(folder, tmp_path / "run.zarr")
    assert Run(tmp_path / "run.zarr").n == 3  # nothing of the bad file


def test_unparseable_and_duplicate_steps_write_nothing(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    torch.save(_sd(0), a / "step_1.pt")
    save_file(_sd(0), str(a / "final.safetensors"))
    with pytest.raises(StepParseError, match="final.safetensors"):
        import_checkpoints(a, tmp_path / "a.zarr")
    b = tmp_path / "b"
    b.mkdir()
    torch.save({"model": _sd(0), "epoch": 2}, b / "best.pt")  # no number, no step entry
    with pytest.raises(StepParseError, match="best.pt.*no integer 'global_step'"):
        import_checkpoints(b, tmp_path / "b.zarr")
    c = tmp_path / "c"
    c.mkdir()
    torch.save(_sd(0), c / "step_5.pt")
    save_file(_sd(1), str(c / "ckpt-5.safetensors"))
    with pytest.raises(DuplicateStepError, match="step 5.*ckpt-5.safetensors|step 5.*step_5.pt"):
        import_checkpoints(c, tmp_path / "c.zarr")
    with pytest.raises(StepParseError, match="not a whole number"):
        import_checkpoints(c, tmp_path / "c.zarr", step_pattern=r"(step|ckpt)")
    with pytest.raises(ValidationError, match="step_pattern must be a valid regular expression"):
        import_checkpoints(c, tmp_path / "c.zarr", step_pattern="(")
    for p in ("a.zarr", "b.zarr", "c.zarr"):
        assert not (tmp_path / p).exists()


def test_empty_or_unrecognised_sources(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NoCheckpointsError, match="is empty"):
        import_checkpoints(empty, tmp_path / "run.zarr")
    (empty / "README.md").write_text("x")
    (empty / "sub").mkdir()
    with pytest.raises(NoCheckpointsError, match="no recognised checkpoint.*README.md"):
        import_checkpoints(empty, tmp_path / "run.zarr")
    with pytest.raises(NoCheckpointsError, match="not a recognised checkpoint file"):
        import_checkpoints(empty / "README.md", tmp_path / "run.zarr")
    with pytest.raises(ValidationError, match="src must be an existing folder"):
        import_checkpoints(tmp_path / "nope", tmp_path / "run.zarr")
    assert not (tmp_path / "run.zarr").exists()


# ---------------------------------------------------------------------------------- safety
def test_malicious_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "MARKER"
    probe = tmp_path / "PROBE"
    pickle.loads(pickle.dumps(_Evil(probe)))  # the payload is real: unpickling runs it
    assert probe.exists()

    folder = tmp_path / "ckpts"
    folder.mkdir()
    torch.save({"state_dict": _sd(1), "hparams": _Evil(marker)}, folder / "step_1.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"step_1\.pt.*pathlib.*Path\.touch|step_1\.pt"):
        import_checkpoints(folder, tmp_path / "run.zarr")
    assert not marker.exists()
    assert not (tmp_path / "run.zarr").exists()  # refused before the archive was made

    # found while importing (second file): the first stays committed
    (folder / "step_1.pt").unlink()
    torch.save(_sd(1), folder / "step_1.pt")
    torch.save({"model": _sd(2), "x": _Evil(marker)}, folder / "step_2.pt")
    with pytest.raises(UnsafeCheckpointError, match="step_2.pt"):
        import_checkpoints(folder, tmp_path / "run.zarr")
    assert not marker.exists()
    _assert_archive(tmp_path / "run.zarr", [(1, _sd(1))])

    # a name without a step: read while planning, refused just the same
    torch.save({"x": _Evil(marker)}, folder / "last.pt")
    with pytest.raises(UnsafeCheckpointError, match="last.pt"):
        import_checkpoints(folder, tmp_path / "other.zarr")
    assert not marker.exists()


def test_garbage_and_tensorless_files(tmp_path):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    (folder / "step_1.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointSourceError, match="step_1.safetensors"):
        import_checkpoints(folder, tmp_path / "a.zarr")
    (folder / "step_1.safetensors").unlink()
    torch.save({"epoch": 3, "lr": 0.1}, folder / "step_1.pt")
    with pytest.raises(CheckpointSourceError, match="no floating or integer tensors"):
        import_checkpoints(folder, tmp_path / "a.zarr")
    (folder / "step_1.pt").write_bytes(b"PK\x03\x04 broken zip")
    with pytest.raises(CheckpointSourceError, match="step_1.pt"):
        import_checkpoints(folder, tmp_path / "a.zarr")


# ---------------------------------------------------------------------------------- shapes
def test_mixed_shapes_stop_with_the_file_named_and_keep_the_rest(tmp_path):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for s in (1, 2):
        torch.save(_sd(s), folder / f"step_{s}.pt")
    torch.save(_sd(3, rows=4), folder / "step_3.pt")
    dest = tmp_path / "run.zarr"
    with pytest.raises(ShapeMismatchError,
                       match=r"step_3\.pt.*'layer.weight'.*\(4, 2\).*\(3, 2\)") as info:
        import_checkpoints(folder, dest)
    assert isinstance(info.value, ckptlab.CkptlabError)
    _assert_archive(dest, [(1, _sd(1)), (2, _sd(2))])

    sd = _sd(3)
    del sd["layer.bias"]
    torch.save(sd, folder / "step_3.pt")
    with pytest.raises(ShapeMismatchError, match=r"step_3\.pt.*missing \['layer.bias'\]"):
        import_checkpoints(folder, dest)  # checked against the archive when appending
    _assert_archive(dest, [(1, _sd(1)), (2, _sd(2))])


def test_unstorable_tensor_is_named(tmp_path):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    torch.save({"w": torch.ones(2), "bad/name": torch.ones(1)}, folder / "step_1.pt")
    with pytest.raises(CheckpointSourceError, match="'bad/name'"):
        import_checkpoints(folder, tmp_path / "run.zarr")


# ---------------------------------------------------------------------------------- append
def test_append_imports_only_new_checkpoints(tmp_path):
    folder, expected = _folder(tmp_path, _safetensors, steps=[1, 2, 3])
    dest = tmp_path / "run.zarr"
    import_checkpoints(folder, dest)
    before = [Run(dest).state_dict(i) for i in range(3)]
    more = [(s, _safetensors(folder, s, _sd(s))) for s in (4, 5)]
    res = import_checkpoints(folder, dest)
    assert (res.imported, res.skipped, res.first_step, res.last_step, res.checkpoints) == (
        2, 3, 4, 5, 5)
    _assert_archive(dest, expected + more)
    _assert_archive(dest, [(s, sd) for (s, _), sd in zip(expected, before)] + more)
    again = import_checkpoints(folder, dest)
    assert (again.imported, again.skipped, again.checkpoints, again.first_step) == (0, 5, 5, None)


def test_existing_archive_from_another_source(tmp_path):
    a, _ = _folder(tmp_path, _torch_bare, steps=[1], name="a")
    b, expected = _folder(tmp_path, _torch_bare, steps=[2, 3], name="b")
    dest = tmp_path / "run.zarr"
    import_checkpoints(a, dest)
    with pytest.raises(ArchiveExistsError, match="not imported from .*b.*overwrite"):
        import_checkpoints(b, dest)
    res = import_checkpoints(b, dest, overwrite=True)
    assert res.checkpoints == 2
    _assert_archive(dest, expected)
    with ckptlab.Recorder(tmp_path / "trained.zarr", task={"name": "modular"}) as rec:
        rec.save(0, _sd(0))
    with pytest.raises(ArchiveExistsError, match="of task 'modular'"):
        import_checkpoints(b, tmp_path / "trained.zarr")


# ---------------------------------------------------------------------------------- metrics, data
def test_metrics_csv_matched_by_step(tmp_path):
    folder, _ = _folder(tmp_path, _torch_bare, steps=[1, 2, 3])
    csv = tmp_path / "metrics.csv"
    csv.write_text(  # Lightning's CSVLogger: one row per logging call, blanks elsewhere
        "step,epoch,train_loss,test_acc,note\n"
        "1,0,0.9,,a\n"
        "1,0,,0.5,b\n"
        "3,0,0.4,0.75,c\n"
        "99,1,0.1,0.9,d\n"
    )
    res = import_checkpoints(folder, tmp_path / "run.zarr", metrics=csv)
    assert res.metrics == ("epoch", "test_acc", "train_loss") and res.unmatched_metric_steps == 1
    m = Run(tmp_path / "run.zarr").metrics()
    assert "note" not in m
    np.testing.assert_array_equal(m["train_loss"], [0.9, np.nan, 0.4])
    np.testing.assert_array_equal(m["test_acc"], [0.5, np.nan, 0.75])


def test_metrics_jsonl_and_bad_files(tmp_path):
    folder, _ = _folder(tmp_path, _torch_bare, steps=[10, 20])
    jl = tmp_path / "log.jsonl"
    jl.write_text('{"step": 10, "train/loss": 1.5, "lr": 0.1}\n\n'
                  '{"step": 20, "train/loss": 0.5, "test_loss": 2, "flag": true}\n')
    import_checkpoints(folder, tmp_path / "run.zarr", metrics=jl)
    m = Run(tmp_path / "run.zarr").metrics()
    np.testing.assert_array_equal(m["train_loss"], [1.5, 0.5])
    np.testing.assert_array_equal(m["test_loss"], [np.nan, 2.0])
    assert "flag" not in m

    bad = tmp_path / "bad.csv"
    bad.write_text("epoch,loss\n1,0.5\n")
    with pytest.raises(DataError, match="no 'step' column"):
        import_checkpoints(folder, tmp_path / "x.zarr", metrics=bad)
    bad.write_text("step,loss\nten,0.5\n")
    with pytest.raises(DataError, match="line 2: 'step' must be a whole number"):
        import_checkpoints(folder, tmp_path / "x.zarr", metrics=bad)
    with pytest.raises(ValidationError, match="metrics must be a .csv"):
        import_checkpoints(folder, tmp_path / "x.zarr", metrics=tmp_path / "m.txt")
    assert not (tmp_path / "x.zarr").exists()


def _probe():
    rng = np.random.default_rng(0)
    return {"x_train": rng.normal(size=(8, 2)).astype(np.float32),
            "y_train": rng.integers(0, 2, 8), "x_test": rng.normal(size=(4, 2)),
            "y_test": rng.integers(0, 2, 4)}


def test_data_npz_and_mapping_are_stored(tmp_path):
    folder, _ = _folder(tmp_path, _torch_bare, steps=[1, 2])
    data = _probe()
    npz = tmp_path / "probe.npz"
    np.savez(npz, **data, extra=np.zeros(3))
    import_checkpoints(folder, tmp_path / "a.zarr", data=npz)
    got = Run(tmp_path / "a.zarr").data()
    assert set(got) == set(data)
    for k, v in data.items():
        np.testing.assert_array_equal(got[k], v)
        assert got[k].dtype == v.dtype
    import_checkpoints(folder, tmp_path / "b.zarr", data={k: torch.as_tensor(v)
                                                          for k, v in data.items()})
    np.testing.assert_array_equal(Run(tmp_path / "b.zarr").data()["y_test"], data["y_test"])

    # appending with the same data is fine; other data is refused
    torch.save(_sd(3), folder / "step_3.pt")
    assert import_checkpoints(folder, tmp_path / "a.zarr", data=npz).imported == 1
    with pytest.raises(ValidationError, match="data differs"):
        import_checkpoints(folder, tmp_path / "b.zarr", data={**data, "y_test": data["y_test"] * 0})


def test_bad_data_is_refused_before_writing(tmp_path):
    folder, _ = _folder(tmp_path, _torch_bare, steps=[1])
    data = _probe()
    npz = tmp_path / "probe.npz"
    np.savez(npz, x_train=data["x_train"], y_train=data["y_train"])
    with pytest.raises(DataError, match="lacks 'x_test', 'y_test'"):
        import_checkpoints(folder, tmp_path / "run.zarr", data=npz)
    with pytest.raises(DataError, match="'y_train' has 3 labels"):
        import_checkpoints(folder, tmp_path / "run.zarr",
                           data={**data, "y_train": np.zeros(3, int)})
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(DataError, match="single array"):
        import_checkpoints(folder, tmp_path / "run.zarr", data=tmp_path / "one.npy")
    with pytest.raises(ValidationError, match="data must be a path"):
        import_checkpoints(folder, tmp_path / "run.zarr", data=3)
    assert not (tmp_path / "run.zarr").exists()


# ---------------------------------------------------------------------------------- progress
def test_progress_bar(tmp_path, capsys):
    folder, _ = _folder(tmp_path, _torch_bare, steps=[1, 2])
    import_checkpoints(folder, tmp_path / "run.zarr", progress=True)
    assert "import" in capsys.readouterr().err
    import_checkpoints(folder, tmp_path / "quiet.zarr")  # default under pytest: silent
    assert capsys.readouterr().err == ""

    with progress_bar(2, enabled=True, desc="shown") as bar:
        bar.update(2)
    assert "shown" in capsys.readouterr().err
    with progress_bar(3, desc="quiet") as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""


def test_large_checkpoints_are_committed_one_at_a_time(tmp_path, monkeypatch):
    from ckptlab.store import importer

    monkeypatch.setattr(importer, "_BATCH_BYTES", 1)  # every checkpoint counts as large
    folder, expected = _folder(tmp_path, _hf_sharded_safetensors)
    import_checkpoints(folder, tmp_path / "run.zarr")
    _assert_archive(tmp_path / "run.zarr", expected)
