"""``make stress``: SIGKILL writers and analyses at random moments; check what everyone sees after.

Not part of ``make test`` (minutes, not seconds). Each *scenario* is a function registered with
:func:`scenario` that runs one trial and returns its figures (a dict); the table sums them.
The ``writer`` scenario: the deterministic MLP writer of ``_mlp_writer.py`` (a checkpoint every
step, commits back to back, so most kills land inside a write) is killed at a random moment,
then

1. plain ``xarray.open_zarr(path, group=g)`` of params and metrics (consolidated metadata, the
   default): did it open, do the arrays agree on one length, is it the committed count, are the
   rows bit-identical to an uninterrupted run; the same with ``consolidated=False``
   (per-array metadata);
2. ``ckptlab.store.verify``: no errors (notes allowed);
3. a resume (``Recorder(mode="a")`` from the newest resume state) to the end, compared bit for
   bit with the uninterrupted run, then verified again.

The ``analysis`` scenario: ``ckptlab.analyze`` (MI by binning and KDE, weight statistics,
blocks of two checkpoints, one cache chunk each) on a copy of a small trained run is killed at
a random moment, then

1. the analysis cache is counted: rows left not done, leftover ``.partial`` groups;
2. ``ckptlab.store.verify``: no errors (notes allowed), and ``Recorder(mode="a")`` reopens
   the archive (a writer resuming beside a killed analysis);
3. the analysis is run again: it must complete (every row done), computing only what the
   kill left (block x family computations counted against an analysis from scratch), and
   equal the uninterrupted analysis (run by the same child code) within 1e-12, as returned
   and as ``load_analysis`` reads it back; then verified again.

Add a scenario with ``@scenario("name", rows=...)`` and a function
``(trial, rng, workdir, ctx) -> dict`` whose dict holds counts (summed over trials) and a
``failure`` string (or None); ``rows`` lists its table rows.

    python tests/store/_stress.py [--trials 100] [--analysis-trials 30] [--steps 250]
                                  [--scenario writer|analysis] [--seed 0]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

SCENARIOS: dict = {}
#: per scenario: (label, figure key, denominator key or None) rows of the table
ROWS: dict[str, list[tuple[str, str, str | None]]] = {}


def scenario(name: str, rows: list[tuple[str, str, str | None]]):
    def register(fn):
        SCENARIOS[name] = fn
        ROWS[name] = rows
        return fn
    return register


# ---------------------------------------------------------------------------------- writer
def _child(path: str, steps: int, conn) -> None:
    import _mlp_writer

    _mlp_writer.train(path, steps=steps, on_ready=lambda: conn.send("ready"))
    conn.send("done")


def _reference(work: Path, steps: int) -> dict:
    import _mlp_writer

    from ckptlab.store import Run

    path = work / "reference.zarr"
    t0 = time.perf_counter()
    _mlp_writer.train(path, steps=steps)
    seconds = time.perf_counter() - t0
    run = Run(path)
    return {"params": run.params(0, run.n), "metrics": run.metrics(), "steps": run.steps,
            "seconds": seconds, "steps_total": steps}


def _plain(path, consolidated) -> tuple[bool, int | None, int | None, object]:
    """(opened, params length, metrics length, params Dataset) of plain xarray."""
    import xarray as xr

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = xr.open_zarr(path, group="params", consolidated=consolidated)
            m = xr.open_zarr(path, group="metrics", consolidated=consolidated)
        return True, p.sizes.get("step", 0), m.sizes.get("step", 0), (p, m)
    except Exception as exc:  # "conflicting sizes for dimension 'step'", ...
        return False, None, None, exc


def _same_as_reference(ref, params: dict, metrics: dict, n: int) -> bool:
    if n == 0:
        return True
    for name, rows in ref["params"].items():
        if name not in params or np.asarray(params[name]).tobytes() != rows[:n].tobytes():
            return False
    for name in ("loss", "lr"):
        if np.asarray(metrics[name]).tobytes() != ref["metrics"][name][:n].tobytes():
            return False
    return True


@scenario("writer", rows=[
    ("trials", "trials", None),
    ("writer still running when killed", "killed_running", "trials"),
    ("plain xarray.open_zarr opened params and metrics", "opened", "trials"),
    ("  ... every array of both groups on one length", "agree", "trials"),
    ("  ... and that length is the committed count", "exact", "trials"),
    ("  ... rows bit-identical to the uninterrupted run", "plain_intact", "trials"),
    ("per-array readers (consolidated=False) opened", "pa_opened", "trials"),
    ("  ... length is the committed count", "pa_exact", "trials"),
    ("kills between a batch's shapes and its commit (per-array ahead)", "ahead", "trials"),
    ("kills that left a temporary key file (inside a key write)", "partial", "trials"),
    ("committed checkpoints intact (bit-identical)", "intact_ckpts", "committed_ckpts"),
    ("verify: no errors", "verify_ok", "trials"),
    ("  ... with notes (uncommitted rows, leftovers)", "verify_notes", "trials"),
    ("resumed to the end, identical to the uninterrupted run", "resumed_same", "trials"),
    ("  ... and verify finds nothing after", "post_clean", "trials"),
])
def writer_trial(trial: int, rng, work: Path, ctx: dict) -> dict:
    import _mlp_writer

    from ckptlab.store import Run, verify

    ref = ctx.get("ref")
    if ref is None:
        ref = ctx["ref"] = _reference(work, ctx["steps"])
    steps = ref["steps_total"]
    path = work / f"writer{trial}.zarr"
    out = dict.fromkeys(
        ["killed_running", "opened", "agree", "exact", "plain_intact", "pa_opened", "pa_exact",
         "ahead", "partial", "intact_ckpts", "committed_ckpts", "verify_ok", "verify_notes",
         "resumed_same", "post_clean"], 0)
    out.update(trials=1, failure=None)
    fails = []
    parent, child = ctx["mp"].Pipe()
    proc = ctx["mp"].Process(target=_child, args=(str(path), steps, child), daemon=True)
    proc.start()
    if not parent.poll(120) or parent.recv() != "ready":
        proc.kill()
        out["failure"] = "the writer did not start"
        return out
    if "seconds" not in ctx:  # calibration: how long a writer runs from "ready" to "done"
        t0 = time.perf_counter()
        parent.recv()
        ctx["seconds"] = time.perf_counter() - t0
    time.sleep(float(rng.uniform(0.0, 0.95 * ctx["seconds"])))
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # it had finished
        pass
    proc.join()
    out["killed_running"] = int(not (parent.poll() and parent.recv() == "done"))
    try:
        run = Run(path)
        n = run.n
        out["committed_ckpts"] = n
        if _same_as_reference(ref, run.params(0, n) if n else {}, run.metrics(), n):
            out["intact_ckpts"] = n
        else:
            fails.append("committed checkpoints differ from the reference")
        store_len = max((a.shape[0] for a in run._arrays.values()), default=0)
        out["ahead"] = int(store_len > n)
        out["partial"] = int(any(Path(path).rglob("*.partial")))
        ok, lp, lm, ds = _plain(path, None)
        out["opened"] = int(ok)
        if ok:
            out["agree"] = int(lp == lm)
            out["exact"] = int(lp == lm == n)
            p, m = ds
            out["plain_intact"] = int(_same_as_reference(
                ref, {k: p[k].values for k in p.data_vars}, {k: m[k].values for k in
                                                             m.data_vars}, lp))
        else:
            fails.append(f"plain xarray: {type(ds).__name__}: {ds}")
        if not out["exact"]:
            fails.append(f"plain xarray lengths {lp}/{lm}, committed {n}")
        ok, lp, lm, _ = _plain(path, False)
        out["pa_opened"] = int(ok)
        out["pa_exact"] = int(ok and lp == lm == n)
        report = verify(path)
        out["verify_ok"] = int(report.ok)
        out["verify_notes"] = int(bool(report.notes))
        if not report.ok:
            fails.append("verify: " + "; ".join(str(f) for f in report.errors))
        _mlp_writer.train(path, steps=steps, resume=True)
        run = Run(path)
        same = run.n == steps and np.array_equal(run.steps, ref["steps"]) and \
            _same_as_reference(ref, run.params(0, steps), run.metrics(), steps)
        out["resumed_same"] = int(same)
        if not same:
            fails.append("the resumed run differs from the uninterrupted one")
        after = verify(path)
        ok, lp, lm, _ = _plain(path, None)
        ok2, lp2, _, _ = _plain(path, False)
        out["post_clean"] = int(after.ok and not after.findings and ok and ok2
                                and lp == lm == lp2 == steps)
        if not out["post_clean"]:
            fails.append("after the resume: " + after.summary().replace("\n", " | "))
    except Exception as exc:
        fails.append(f"{type(exc).__name__}: {exc} ({traceback.format_exc(limit=3)})")
    finally:
        shutil.rmtree(path, ignore_errors=True)
    out["failure"] = "; ".join(fails) or None
    return out


# ---------------------------------------------------------------------------------- analysis
#: what each analysis computes: two MI estimators and the weight statistics, in blocks of two
#: checkpoints (one cache chunk each), so a kill lands between block writes
ANALYSIS = dict(metrics=("mi", "weights"), estimators=("binning", "kde"), block_size=2,
                scheduler="threads", progress=False)


def _analysis_child(path: str, conn) -> None:
    import ckptlab

    conn.send("ready")
    ckptlab.analyze(path, **ANALYSIS)
    conn.send("done")


def _analysis_base(work: Path, ctx: dict) -> None:
    """A small trained run (digits, ReLU MLP: the binning range pre-pass is cached too) and
    the uninterrupted analysis of a copy, run by the same child code as the trials (timed)."""
    from ckptlab.analysis import load_analysis
    from trainers import TrainConfig, train

    base = work / "analysis-base.zarr"
    train(TrainConfig(task="digits", task_args={"n_train": 120},
                      model_args={"widths": [12, 8]}, steps=120, lr=0.01, ckpt_per_decade=16,
                      ckpt_dense_until=8), base)
    ref = work / "analysis-reference.zarr"
    shutil.copytree(base, ref)
    parent, child = ctx["mp"].Pipe()
    proc = ctx["mp"].Process(target=_analysis_child, args=(str(ref), child), daemon=True)
    proc.start()
    assert parent.poll(120) and parent.recv() == "ready", "the analysis child did not start"
    t0 = time.perf_counter()
    assert parent.poll(600) and parent.recv() == "done", "the reference analysis failed"
    ctx["seconds"] = time.perf_counter() - t0
    proc.join()
    ctx["base"], ctx["reference"] = base, load_analysis(ref)
    groups = _cache_rows(ref)
    ctx["n_groups"] = len(groups)
    ctx["n"] = next(iter(groups.values()))[1]
    ctx["n_blocks"] = -(-ctx["n"] // ANALYSIS["block_size"])


def _cache_rows(path) -> dict[str, tuple[int, int]]:
    """Each analysis cache group (leftover temporaries excluded): (rows done, rows)."""
    import zarr

    from ckptlab.store import format as fmt

    root = zarr.open_group(fmt.open_store(path, read_only=True), mode="r")
    if fmt.ANALYSIS not in root:
        return {}
    g = root[fmt.ANALYSIS]
    out = {}
    for key in fmt.group_names(g):
        if key.startswith(".") or "done" not in g[key]:
            continue
        done = np.asarray(g[key]["done"][...])
        out[key] = (int(done.sum()), len(done))
    return out


def _same_analysis(ds, ref) -> str | None:
    """None when every variable of ``ref`` is in ``ds`` and equal within 1e-12, else why."""
    if sorted(ds.data_vars) != sorted(ref.data_vars):
        return f"variables {sorted(set(ds.data_vars) ^ set(ref.data_vars))} differ"
    for name, var in ref.data_vars.items():
        a, b = np.asarray(ds[name].values, float), np.asarray(var.values, float)
        if a.shape != b.shape:
            return f"{name}: shape {a.shape} != {b.shape}"
        if not np.array_equal(np.isnan(a), np.isnan(b)):
            return f"{name}: NaN at other places"
        ok = ~np.isnan(b)
        if ok.any() and np.max(np.abs(a[ok] - b[ok])) > 1e-12:
            return f"{name}: differs by {np.max(np.abs(a[ok] - b[ok])):.3g}"
    return None


@scenario("analysis", rows=[
    ("trials", "trials", None),
    ("analysis still running when killed", "killed_running", "trials"),
    ("kills that left a temporary .partial cache group", "partial", "trials"),
    ("cache rows left not done by the kill (recomputed)", "rows_not_done", "rows_total"),
    ("block x family computations of the resume (vs from scratch)", "units", "units_full"),
    ("verify after the kill: no errors", "verify_ok", "trials"),
    ("  ... with notes (leftovers, snapshot not yet rewritten)", "verify_notes", "trials"),
    ("  ... errors all 'missing chunk' of cache rows not done", "verify_unwritten", "trials"),
    ("Recorder(mode='a') reopens the archive after the kill", "reopened", "trials"),
    ("analyses resumed to completion (every row done)", "resumed", "trials"),
    ("results equal to the uninterrupted analysis (1e-12)", "equal", "trials"),
    ("  ... and load_analysis of the archive too", "stored_equal", "trials"),
    ("verify after the resume: no errors", "post_ok", "trials"),
])
def analysis_trial(trial: int, rng, work: Path, ctx: dict) -> dict:
    import ckptlab.analysis.api as api
    from ckptlab.analysis import analyze, load_analysis
    from ckptlab.store import Recorder, verify

    if "base" not in ctx:
        _analysis_base(work, ctx)
    path = work / f"analysis{trial}.zarr"
    shutil.copytree(ctx["base"], path)
    out = dict.fromkeys(
        ["killed_running", "partial", "rows_not_done", "rows_total", "units", "units_full",
         "verify_ok", "verify_notes", "verify_unwritten", "reopened", "resumed", "equal",
         "stored_equal", "post_ok"], 0)
    out.update(trials=1, failure=None)
    fails = []
    parent, child = ctx["mp"].Pipe()
    proc = ctx["mp"].Process(target=_analysis_child, args=(str(path), child), daemon=True)
    proc.start()
    if not parent.poll(120) or parent.recv() != "ready":
        proc.kill()
        out["failure"] = "the analysis did not start"
        return out
    time.sleep(float(rng.uniform(0.0, 0.95 * ctx["seconds"])))
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.join()
    out["killed_running"] = int(not (parent.poll() and parent.recv() == "done"))
    try:
        out["partial"] = int(any(Path(path, "analysis").glob(".*.partial")))
        rows = _cache_rows(path)
        out["rows_total"] = ctx["n_groups"] * ctx["n"]
        out["rows_not_done"] = out["rows_total"] - sum(d for d, _ in rows.values())
        report = verify(path)
        out["verify_ok"] = int(report.ok)
        out["verify_notes"] = int(bool(report.notes))
        if not report.ok:
            out["verify_unwritten"] = int(_only_unwritten_rows(report, path))
            fails.append("verify: " + _errors_in_brief(report))
        try:
            Recorder(path, mode="a").close()
            out["reopened"] = 1
        except Exception as exc:
            fails.append(f"Recorder(mode='a') after the kill: {type(exc).__name__}: {exc}")
        calls = []
        real = api.compute_block
        api.compute_block = lambda *a, **k: calls.append(len(a[3])) or real(*a, **k)
        try:
            ds = analyze(path, **ANALYSIS)
        finally:
            api.compute_block = real
        out["units"] = sum(calls)
        out["units_full"] = ctx["n_groups"] * ctx["n_blocks"]
        rows = _cache_rows(path)
        out["resumed"] = int(len(rows) == ctx["n_groups"]
                             and all(d == n == ctx["n"] for d, n in rows.values()))
        if not out["resumed"]:
            fails.append(f"after the resume, cache rows done: {rows}")
        why = _same_analysis(ds, ctx["reference"])
        out["equal"] = int(why is None)
        if why:
            fails.append(f"the resumed analysis: {why}")
        why = _same_analysis(load_analysis(path), ctx["reference"])
        out["stored_equal"] = int(why is None)
        if why:
            fails.append(f"load_analysis after the resume: {why}")
        after = verify(path)
        out["post_ok"] = int(after.ok)
        if not after.ok:
            fails.append("verify after the resume: " + _errors_in_brief(after))
    except Exception as exc:
        fails.append(f"{type(exc).__name__}: {exc} ({traceback.format_exc(limit=3)})")
    finally:
        shutil.rmtree(path, ignore_errors=True)
    out["failure"] = "; ".join(fails) or None
    return out


def _only_unwritten_rows(report, path) -> bool:
    """Whether every error is an analysis-cache chunk that was never written and covers only
    rows whose ``done`` is False (rows the kill left uncomputed; they read as NaN, not done)."""
    import zarr

    from ckptlab.store import format as fmt

    root = zarr.open_group(fmt.open_store(path, read_only=True), mode="r")
    for f in report.errors:
        if not (f.array or "").startswith(fmt.ANALYSIS + "/") or "is missing" not in f.message:
            return False
        group = "/".join(f.array.split("/")[:2])
        arr = root[f.array]
        i = int(f.chunk.split("/c/")[1].split("/")[0])
        c = arr.chunks[0]
        if np.asarray(root[group]["done"][...])[i * c : (i + 1) * c].any():
            return False
    return True


def _errors_in_brief(report) -> str:
    """'N error(s) [kinds] in groups ..., e.g. <the first>' (a kill can leave hundreds)."""
    errors = report.errors
    kinds = sorted({f.kind for f in errors})
    groups = sorted({"/".join((f.array or "-").split("/")[:2]) for f in errors})
    return (f"{len(errors)} error(s) [{', '.join(kinds)}] in {', '.join(groups)}, e.g. "
            f"{errors[0].message}")


# ---------------------------------------------------------------------------------- driver
def _table(name: str, totals: dict, seconds: float) -> str:
    rows = [(label, totals.get(key, 0), totals.get(den) if den else None)
            for label, key, den in ROWS[name]]
    rows.append(("failures", totals.get("failures", 0), None))
    width = max(len(r[0]) for r in rows)
    lines = [f"scenario {name!r} ({seconds:.0f} s)",
             f"| {'figure'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    for label, value, den in rows:
        text = f"{value}/{den}" if den is not None else f"{value}"
        lines.append(f"| {label.ljust(width)} | {text} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=100, help="trials of the writer scenario")
    ap.add_argument("--analysis-trials", type=int, default=30,
                    help="trials of the analysis scenario")
    ap.add_argument("--steps", type=int, default=250, help="checkpoints of the writer run")
    ap.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                    help="scenario(s) to run (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args(argv)
    # numcodecs' blosc takes a multiprocessing lock in each writer; the resource tracker
    # would warn about the ones of killed writers at exit (harmless). Flags in warnoptions
    # reach the tracker process.
    sys.warnoptions.append("ignore::UserWarning:multiprocessing.resource_tracker")
    # Writers are forked from a server that imported torch and ckptlab once: a trial costs
    # its own work, not an interpreter start.
    ctx_mp = mp.get_context("forkserver")
    ctx_mp.set_forkserver_preload(["torch", "ckptlab.store", "ckptlab.analysis", "_mlp_writer"])
    work = Path(tempfile.mkdtemp(prefix="ckptlab-stress-"))
    status = 0
    try:
        for name in a.scenario or sorted(SCENARIOS):
            rng = np.random.default_rng(a.seed)
            ctx = {"mp": ctx_mp, "steps": a.steps}
            trials = a.analysis_trials if name == "analysis" else a.trials
            totals: dict = {"failures": 0}
            failures = []
            t0 = time.perf_counter()
            for trial in range(trials):
                fig = SCENARIOS[name](trial, rng, work, ctx)
                fail = fig.pop("failure", None)
                for k, v in fig.items():
                    totals[k] = totals.get(k, 0) + v
                if fail:
                    totals["failures"] += 1
                    failures.append(f"  trial {trial}: {fail}")
                if (trial + 1) % 10 == 0:
                    print(f"  {name}: {trial + 1}/{trials} trials, "
                          f"{totals['failures']} failures", file=sys.stderr, flush=True)
            print(_table(name, totals, time.perf_counter() - t0))
            if failures:
                print("failures:\n" + "\n".join(failures))
                status = 1
    finally:
        if a.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
