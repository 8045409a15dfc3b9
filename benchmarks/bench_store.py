"""Archive benchmark: the Recorder against what users do today (``torch.save`` per step).

One small MLP (64-128-128-10, 26,122 parameters) is trained full batch on scikit-learn's
bundled digits (1797 samples) with AdamW on one torch thread, and EVERY step is checkpointed.
Side by side in one process, the variants interleaved and each repeated:

- training time with no checkpointing, with ``torch.save(model.state_dict(), file)`` per step,
  and with :class:`ckptlab.store.Recorder` (model, a metric and the optimizer state, as the
  trainers save them), up to the last ``save`` and up to ``close()`` (everything written);
- bytes and files on disk per checkpoint, and a bit-for-bit check of sampled checkpoints
  against copies taken in memory while training;
- time to read every checkpoint of one parameter back: ``open_run(path)[name].values``,
  :meth:`Run.params` (a block read of every parameter) and ``torch.load(weights_only=True)``
  of every file.

Ratios of times are medians of the ratios within each repeat (the variants of one repeat run
back to back, so a neighbour's load that drifts over a minute cancels out); values are medians
over repeats. Process CPU time is reported beside wall time: on a shared machine it is the
steadier of the two. Reads hit a warm page cache (the files were just written): they measure
decoding and per-file overhead, not the disk. Nothing is fsync'ed, by either side.

Run it as ``python -m benchmarks store`` (``-h`` for options).
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ckptlab._checks import check_float, check_int
from ckptlab.models import build_model
from ckptlab.store import Recorder, Run, open_run

from .common import Row, Target, format_table, make_parser, median, report, timed, tree_usage
from .common import write_json

__all__ = ["SPEC", "main", "run"]

#: The benchmarked model: a full-batch step costs a few milliseconds on one CPU thread, so
#: the per-checkpoint cost of the archive is plainly visible.
SPEC = {"name": "mlp", "kwargs": {"in_dim": 64, "widths": [128, 128], "n_classes": 10}}
#: The parameter read back in the read benchmark (the largest tensor, 128 x 128).
READ_PARAM = "layers.1.weight"
NONE, TORCH, REC, REC_NO_OPT = "none", "torch_save", "recorder", "recorder_no_opt"


def _task() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.from_numpy((x / 16.0).astype(np.float32)), torch.from_numpy(y.astype(np.int64))


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    # Bytes, not values: NaN == NaN and -0.0 != 0.0, as a lossless archive must guarantee.
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _same_state(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(_same_bits(np.asarray(a[k]), np.asarray(b[k])) for k in a)


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process
    return r.ru_utime + r.ru_stime


def _written_bytes() -> int | None:
    """Bytes this process has passed to write() so far (Linux), to see write amplification."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _train_once(variant: str, where: Path, x, y, *, steps: int, seed: int, lr: float,
                snapshot_steps: frozenset[int]) -> dict:
    """Train ``steps`` full-batch steps, checkpointing after each the way ``variant`` says."""
    model = build_model(SPEC, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    snaps: dict[int, dict[str, np.ndarray]] = {}
    rec = None
    w0, c0, t0 = _written_bytes(), _cpu_s(), time.perf_counter()
    if variant == TORCH:
        where.mkdir()
    elif variant in (REC, REC_NO_OPT):
        rec = Recorder(where, model_spec=SPEC, data={"x_train": x, "y_train": y}, seed=seed,
                       mode="w")
    for step in range(1, steps + 1):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = loss.item()  # every variant pays it: the Recorder stores it as a metric
        if variant == TORCH:
            torch.save(model.state_dict(), where / f"step_{step:07d}.pt")
        elif rec is not None:
            rec.save(step, model, metrics={"loss": value},
                     optimizer=opt if variant == REC else None)
        if step in snapshot_steps:
            snaps[step] = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    t_loop = time.perf_counter() - t0
    if rec is not None:
        rec.close()
    t_total, cpu = time.perf_counter() - t0, _cpu_s() - c0
    w1 = _written_bytes()
    return {
        "loop_s": t_loop,
        "total_s": t_total,
        "cpu_s": cpu,
        "written_bytes": None if w0 is None or w1 is None else w1 - w0,
        "snapshots": snaps,
    }


def _time_training(work: Path, variants, x, y, *, steps, repeats, warmup, snapshot_steps, kw):
    """Every variant ``repeats`` times, interleaved; keeps the last archive and torch dir."""
    for v in variants if warmup else ():
        _train_once(v, work / f"warm_{v}", x, y, steps=warmup, snapshot_steps=frozenset(), **kw)
        shutil.rmtree(work / f"warm_{v}", ignore_errors=True)
    fields = ("loop_s", "total_s", "cpu_s", "written_bytes")
    times = {v: {k: [] for k in fields} for v in variants}
    kept: dict[str, dict] = {}
    for r in range(repeats):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for v in order:
            path = work / (f"{v}.zarr" if v in (REC, REC_NO_OPT) else v)
            out = _train_once(v, path, x, y, steps=steps, snapshot_steps=snapshot_steps, **kw)
            for k in fields:
                times[v][k].append(out[k])
            if r == repeats - 1 and v in (TORCH, REC):
                kept[v] = {"path": path, "snapshots": out["snapshots"]}
            else:
                shutil.rmtree(path, ignore_errors=True)
    return times, kept


def _verify(kept: dict, steps: int) -> dict:
    """Sampled checkpoints of both stores against the copies taken in memory while training."""
    run_ = Run(kept[REC]["path"])
    pos = {int(s): i for i, s in enumerate(run_.steps)}
    steps_ok = bool(np.array_equal(run_.steps, np.arange(1, steps + 1)))
    arch_ok = sum(
        s in pos
        and _same_state({k: v.numpy() for k, v in run_.state_dict(pos[s]).items()}, snap)
        for s, snap in kept[REC]["snapshots"].items()
    )
    tdir = kept[TORCH]["path"]
    torch_ok = sum(
        _same_state(
            {k: v.numpy() for k, v in
             torch.load(tdir / f"step_{s:07d}.pt", weights_only=True).items()},
            snap,
        )
        for s, snap in kept[TORCH]["snapshots"].items()
    )
    return {"steps_ok": steps_ok, "archive": arch_ok if steps_ok else 0, "torch": torch_ok,
            "sampled": len(kept[REC]["snapshots"]), "names": run_.param_names}


def _read_torch(files: list[Path], names: list[str]) -> dict[str, np.ndarray]:
    sds = [torch.load(f, weights_only=True) for f in files]
    return {n: np.stack([sd[n].numpy() for sd in sds]) for n in names}


def _time_reads(arch: Path, tdir: Path, names: list[str], *, steps: int, repeats: int):
    """Read every checkpoint back through each path, interleaved; also compare the results."""
    files = sorted(tdir.glob("step_*.pt"))
    readers = {
        "torch_one": lambda: _read_torch(files, [READ_PARAM])[READ_PARAM],
        "torch_all": lambda: _read_torch(files, names),
        "open_run": lambda: open_run(arch)[READ_PARAM].values,
        "run_params": lambda: Run(arch).params(0, steps),
    }
    times = {k: [] for k in readers}
    got = {}
    for r in range(repeats):
        keys = list(readers)
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            t, got[k] = timed(readers[k])
            times[k].append(t)
    # Both runs trained from one seed: where CPU training is deterministic the two stores hold
    # the same trajectory, a check of every checkpoint beyond the sampled ones.
    same = _same_bits(got["open_run"], got["torch_one"]) and all(
        _same_bits(got["run_params"][n], got["torch_all"][n]) for n in names
    )
    return times, same


def _paired(times: dict, a: str, b: str, key: str, key_b: str | None = None, *,
            fn=lambda x, y: x / y) -> float:
    """Median over repeats of ``fn(a's key, b's key_b)`` within each repeat."""
    return median(fn(x, y) for x, y in zip(times[a][key], times[b][key_b or key]))


def _rows(times, disk, check, reads, same, n) -> list[Row]:
    med = {v: {k: median(t) for k, t in d.items() if None not in t} for v, d in times.items()}
    per = lambda a, key: _paired(times, a, NONE, key, fn=lambda x, y: (x - y) / n)  # noqa: E731
    rows = [
        Row("train, no checkpoints", med[NONE]["total_s"], "s"),
        Row("train + torch.save every step", med[TORCH]["total_s"], "s", med[NONE]["total_s"],
            "none", ratio=_paired(times, TORCH, NONE, "total_s")),
        Row("train + Recorder, until last save()", med[REC]["loop_s"], "s",
            med[NONE]["total_s"], "none", Target("<=", 1.25),
            ratio=_paired(times, REC, NONE, "loop_s", "total_s")),
        Row("train + Recorder, until close()", med[REC]["total_s"], "s", med[NONE]["total_s"],
            "none", Target("<=", 1.25), ratio=_paired(times, REC, NONE, "total_s"),
            note="close() returns once every checkpoint is committed"),
        Row("train + Recorder, until close()", med[REC]["total_s"], "s", med[TORCH]["total_s"],
            "torch.save", Target("<", 1.0), ratio=_paired(times, REC, TORCH, "total_s")),
    ]
    if REC_NO_OPT in times:
        rows.append(Row("train + Recorder w/o optimizer, until close()",
                        med[REC_NO_OPT]["total_s"], "s", med[NONE]["total_s"], "none",
                        ratio=_paired(times, REC_NO_OPT, NONE, "total_s"),
                        note="model and metric only: the share of the optimizer state"))
    rows += [
        Row("CPU time, Recorder until close()", med[REC]["cpu_s"], "s", med[NONE]["cpu_s"],
            "none", ratio=_paired(times, REC, NONE, "cpu_s"),
            note="user + system time of every thread of the process"),
        Row("checkpoint cost per step, wall", per(REC, "total_s"), "s", per(TORCH, "total_s"),
            "torch.save", note="(time with checkpoints - time without) / checkpoints, "
            "median over repeats"),
        Row("checkpoint cost per step, CPU", per(REC, "cpu_s"), "s", per(TORCH, "cpu_s"),
            "torch.save"),
        Row("bytes per checkpoint, whole archive", disk["archive"]["bytes"] / n, "B",
            disk["torch_save"]["bytes"] / n, "torch.save", Target("<=", 0.8),
            note="whole archive: params, metrics, data and the newest optimizer state"),
        Row("bytes per checkpoint, params/ only", disk["archive_params"]["bytes"] / n, "B",
            disk["torch_save"]["bytes"] / n, "torch.save"),
        Row("allocated bytes per checkpoint", disk["archive"]["allocated"] / n, "B",
            disk["torch_save"]["allocated"] / n, "torch.save",
            note="file system blocks (st_blocks)"),
        Row("files per checkpoint", disk["archive"]["files"] / n, "files",
            disk["torch_save"]["files"] / n, "torch.save"),
    ]
    if "written_bytes" in med[REC] and "written_bytes" in med[TORCH]:
        rows.append(Row("bytes written while training / ckpt", med[REC]["written_bytes"] / n,
                        "B", med[TORCH]["written_bytes"] / n, "torch.save",
                        note="write() calls of the process (/proc/self/io wchar): rewrites of "
                        "partial chunks, metadata and optimizer state included"))
    rows += [
        Row("sampled checkpoints bit-identical, archive", check["archive"], "count",
            check["sampled"], "sampled", Target("==", 1.0),
            note="Run.state_dict(i) against copies taken in memory while training; the "
            "archive's steps are checked too"),
        Row("sampled checkpoints bit-identical, torch.save", check["torch"], "count",
            check["sampled"], "sampled"),
        Row("every checkpoint equal, archive vs torch.save", n if same else 0, "count", n,
            "checkpoints", note="both runs train from one seed; equal only where CPU training "
            "is deterministic"),
        Row(f"read {READ_PARAM}, all ckpts: open_run()[name].values", median(reads["open_run"]),
            "s", median(reads["torch_one"]), "torch.load", Target("<", 1.0),
            note="every checkpoint of one (128, 128) tensor, archive opened inside the timing; "
            "baseline: torch.load(weights_only=True) of every file"),
        Row("read all params, all ckpts: Run(path).params(0, n)", median(reads["run_params"]),
            "s", median(reads["torch_all"]), "torch.load", Target("<", 1.0)),
    ]
    return rows


def run(
    *,
    steps: int = 1000,
    repeats: int = 3,
    sample: int = 16,
    seed: int = 0,
    lr: float = 1e-3,
    warmup: int = 50,
    threads: int = 1,
    without_optimizer: bool = False,
    tmpdir: str | Path | None = None,
) -> tuple[list[Row], dict]:
    """Run the archive benchmark and return its table rows and raw measurements.

    Parameters
    ----------
    steps : int, default 1000
        Training steps, each one checkpointed, >= 10. 1000 fills several chunks of every
        parameter array (at most 256 checkpoints per chunk) and keeps the whole benchmark
        near a minute and a half on two busy cores.
    repeats : int, default 3
        Timed repetitions of every variant (interleaved), >= 1.
    sample : int, default 16
        Checkpoints verified bit for bit against in-memory copies, in [1, steps]; the first
        and the last are always among them.
    seed : int, default 0
        Seed of the model's initialisation and of the sampled checkpoints, >= 0.
    lr : float, default 1e-3
        AdamW learning rate, > 0 (the field's usual setting; it sets how far the weights move
        per step and hence how well the trajectory compresses).
    warmup : int, default 50
        Untimed steps run once per variant first, so imports and thread pools are not timed.
    threads : int, default 1
        torch intra-op threads for training, >= 1. One leaves the second core of a two-core
        machine to the Recorder's writer; more threads on a machine shared with other work
        make step times swing tenfold (spin-waiting OpenMP workers), drowning what is measured.
    without_optimizer : bool, default False
        Also time the Recorder saving the model and metric only (no optimizer state).
    tmpdir : path, optional
        Parent of the temporary working directory (default: the system's temp dir). The
        working directory is removed at the end.

    Returns
    -------
    rows : list of Row
    raw : dict
        Setup, per-repeat timings and disk usage, JSON-able.

    Raises
    ------
    ckptlab.errors.ValidationError
        If an option is out of range.
    """
    steps = check_int("steps", steps, min=10)
    repeats = check_int("repeats", repeats, min=1)
    sample = check_int("sample", sample, min=1, max=steps)
    seed = check_int("seed", seed, min=0)
    lr = check_float("lr", lr, min=0.0, min_inclusive=False)
    warmup = check_int("warmup", warmup, min=0)
    threads = check_int("threads", threads, min=1)

    variants = (NONE, TORCH, REC) + ((REC_NO_OPT,) if without_optimizer else ())
    rng = np.random.default_rng(seed)
    inner = rng.choice(np.arange(2, steps), size=max(0, sample - 2), replace=False)
    snapshot_steps = frozenset({steps, *([1] if sample > 1 else []), *map(int, inner)})
    x, y = _task()
    n_params = sum(p.numel() for p in build_model(SPEC, seed=seed).parameters())
    load0 = _load()
    threads_before = torch.get_num_threads()
    work = Path(tempfile.mkdtemp(prefix="ckptlab-bench-store-", dir=tmpdir))
    try:
        torch.set_num_threads(threads)
        times, kept = _time_training(work, variants, x, y, steps=steps, repeats=repeats,
                                     warmup=warmup, snapshot_steps=snapshot_steps,
                                     kw={"seed": seed, "lr": lr})
        arch = kept[REC]["path"]
        disk = {"archive": tree_usage(arch), "archive_params": tree_usage(arch / "params"),
                "torch_save": tree_usage(kept[TORCH]["path"])}
        check = _verify(kept, steps)
        reads, same = _time_reads(arch, kept[TORCH]["path"], check["names"], steps=steps,
                                  repeats=repeats)
    finally:
        torch.set_num_threads(threads_before)
        shutil.rmtree(work, ignore_errors=True)

    rows = _rows(times, disk, check, reads, same, steps)
    raw = {
        "setup": {
            "model_spec": SPEC, "n_parameters": n_params,
            "task": f"sklearn digits, full batch ({len(x)} samples)",
            "optimizer": f"AdamW lr={lr:g}", "steps": steps, "checkpoints": steps,
            "repeats": repeats, "sample": len(snapshot_steps), "seed": seed,
            "torch_threads": threads, "load_avg_1min": [load0, _load()],
        },
        "train_times": times,
        "read_times_s": reads,
        "disk": disk,
    }
    return rows, raw


def main(argv: list[str] | None = None) -> dict:
    """Command line: print the table, optionally write JSON; returns the results."""
    p = make_parser("python -m benchmarks store", __doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000, help="training steps, each checkpointed")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions per variant")
    p.add_argument("--sample", type=int, default=16, help="checkpoints verified bit for bit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads for training")
    p.add_argument("--without-optimizer", action="store_true",
                   help="also time the Recorder without the optimizer state")
    p.add_argument("--tmpdir", type=Path, default=None, help="parent of the working directory")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    rows, raw = run(steps=a.steps, repeats=a.repeats, sample=a.sample, seed=a.seed,
                    threads=a.threads, without_optimizer=a.without_optimizer, tmpdir=a.tmpdir)
    s = raw["setup"]
    load = ["?" if v is None else f"{v:.1f}" for v in s["load_avg_1min"]]
    title = (
        f"archive benchmark: MLP {s['model_spec']['kwargs']}, {s['n_parameters']:,} parameters, "
        f"{s['task']}, {s['optimizer']}, {s['checkpoints']} checkpoints (one per step), "
        f"{s['repeats']} repeats, {s['torch_threads']} torch thread(s); "
        f"load average {load[0]} -> {load[1]} on {os.cpu_count()} CPUs"
    )
    print(format_table(rows, title=title))
    result = report("store", rows, wall_s=time.perf_counter() - t0, **raw)
    print(f"ratios of times: median of per-repeat ratios; benchmark wall time "
          f"{result['wall_s']:.0f} s")
    if a.json is not None:
        write_json(a.json, result)
    return result


if __name__ == "__main__":
    import sys

    from .__main__ import main as _runner

    sys.exit(_runner(["store", *sys.argv[1:]]))
