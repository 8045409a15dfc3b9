"""Analysis throughput: ckptlab.analyze vs. the per-checkpoint loop users write today.

A run with a few hundred checkpoints (Tishby's 12-bit task, the 12-10-7-5-4-3-2 tanh network,
one checkpoint per step) is analysed by ``ckptlab.analyze`` (1 and 2 workers) and by a
straightforward baseline written as in the original papers' repositories: ``torch.load`` of one
file per checkpoint, a Python loop over checkpoints and layers, Tishby-style binning with
``np.unique`` on void-viewed rows, Kolchinsky-Tracey KDE with dense numpy distances, local
complexity one point at a time, the linear mapping number one pair at a time with
``np.corrcoef``, weight SVDs one matrix at a time. Slow baselines run on a subset of the
checkpoints; throughput (checkpoints per second) is what is compared.

Also: peak memory (max RSS of a fresh process) analysing 100 vs 1000 checkpoints, and the FLOP
rate of the local-complexity and LMN forward passes as a fraction of this machine's measured
float32 matmul rate.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.special import logsumexp

from .common import Row, Target, format_table, make_parser, report, write_json

FAMILIES = {  # family -> analyze() keywords
    "mi (binning)": dict(metrics=("mi",), estimators=("binning",)),
    "mi (kde)": dict(metrics=("mi",), estimators=("kde",)),
    "lc": dict(metrics=("lc",)),
    "lmn": dict(metrics=("lmn",)),
    "weights": dict(metrics=("weights",)),
}
COMMON = dict(probe_size=1024, kde_samples=512, radii=(0.05,), lc_points=64,
              lc_splits=("train", "test"), lmn_samples=40, sigma2=0.1,
              lc_activations="any")  # a tanh network: zero-set counts (no linear regions)


# ----------------------------------------------------------------------------- set-up
def _make_run(path: Path, steps: int) -> None:
    from trainers import TrainConfig, train

    cfg = TrainConfig(task="ib12", model_args={"widths": [10, 7, 5, 4, 3], "activation": "tanh"},
                      batch_size=256, steps=steps, lr=4e-3, ckpt_every=1, ckpt_per_decade=0)
    train(cfg, path)


def _export_torch_files(run_path: Path, out: Path) -> list[Path]:
    from ckptlab.store import Run

    run = Run(run_path)
    out.mkdir()
    files = []
    for i in range(run.n):
        f = out / f"step{int(run.steps[i]):07d}.pt"
        torch.save(run.state_dict(i), f)
        files.append(f)
    return files


# ----------------------------------------------------------------------------- baseline
def _tishby_entropy(data: np.ndarray) -> float:
    b = np.ascontiguousarray(data).view(np.dtype((np.void, data.dtype.itemsize * data.shape[1])))
    _, counts = np.unique(b, return_counts=True)
    p = counts / counts.sum()
    return float(-np.sum(p * np.log2(p)))


def _baseline_binning(t, y, lo, hi, n_bins=30):
    bins = np.linspace(lo, hi, n_bins + 1)
    digitized = np.clip(np.digitize(t, bins) - 1, 0, n_bins - 1)
    h = _tishby_entropy(digitized)
    h_cond = sum((y == c).mean() * _tishby_entropy(digitized[y == c]) for c in np.unique(y))
    return h, h - h_cond


def _kde_entropy(x, var):
    n, d = x.shape
    x2 = np.sum(x ** 2, axis=1, keepdims=True)
    dists = x2 + x2.T - 2 * x @ x.T
    lprobs = logsumexp(-dists / (2 * var), axis=1) - np.log(n)
    return -np.mean(lprobs)


def _baseline_kde(t, y, sigma2):
    h = _kde_entropy(t, sigma2)
    h_cond = sum((y == c).mean() * _kde_entropy(t[y == c], sigma2) for c in np.unique(y))
    return h / math.log(2), (h - h_cond) / math.log(2)


def _baseline_lc(model, points, dirs, r):
    counts = []
    for x in points:  # one point at a time, as a per-sample loop would
        verts = torch.cat([x + r * dirs, x - r * dirs])
        o = model.trunk(verts)
        n = 0
        for pre in o.preacts.values():
            n += int(((pre > 0).any(0) & (pre < 0).any(0)).sum())
        counts.append(n)
    return float(np.mean(counts))


def _baseline_lmn(h, head, n_interp=21):
    n = len(h)
    lam = np.linspace(0, 1, n_interp)
    L = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            path = h[i] + torch.from_numpy(lam).float()[:, None] * (h[j] - h[i])
            out = head(path).double().numpy()
            r2 = []
            for k in range(out.shape[1]):
                c = np.corrcoef(lam, out[:, k])[0, 1]
                r2.append(1.0 if not np.isfinite(c) else c * c)
            L[i, j] = L[j, i] = np.mean(r2)
    ev = np.abs(np.linalg.eigvalsh(L))
    p = ev / ev.sum()
    p = p[p > 0]
    return 2 ** float(-(p * np.log2(p)).sum())


def _baseline(files, run_path, family, n_ckpt):
    """Seconds per checkpoint of the plain loop for ``family`` (over the first n_ckpt files)."""
    from ckptlab.models import build_model
    from ckptlab.store import Run

    run = Run(run_path)
    data = run.data()
    x = torch.from_numpy(np.concatenate([data["x_train"], data["x_test"]])[: COMMON["probe_size"]])
    y = np.concatenate([data["y_train"], data["y_test"]])[: COMMON["probe_size"]]
    model = build_model(run.model_spec)
    rng = np.random.default_rng(0)
    dirs = torch.from_numpy(np.linalg.qr(rng.standard_normal((12, 12)))[0][:, :12].T).float()
    pts = torch.from_numpy(data["x_train"][: COMMON["lc_points"]]).float()
    t0 = time.perf_counter()
    for f in files[:n_ckpt]:
        sd = torch.load(f, weights_only=True)
        model.load_state_dict(sd)
        with torch.no_grad():
            if family.startswith("mi"):
                hidden = model.trunk(model.embed(x)).hidden
                for t in hidden.values():
                    t = t.double().numpy()
                    if family == "mi (binning)":
                        _baseline_binning(t, y, -1.0, 1.0)
                    else:
                        idx = slice(0, COMMON["kde_samples"])
                        _baseline_kde(t[idx], y[idx], COMMON["sigma2"])
            elif family == "lc":
                for split in ("x_train", "x_test"):
                    p = torch.from_numpy(data[split][: COMMON["lc_points"]]).float()
                    _baseline_lc(model, p, dirs, COMMON["radii"][0])
            elif family == "lmn":
                to_h, head = model.lmn_split()
                _baseline_lmn(to_h(pts[: COMMON["lmn_samples"]]), head)
            elif family == "weights":
                for v in sd.values():
                    if v.ndim == 2:
                        s = np.linalg.svd(v.double().numpy(), compute_uv=False)
                        _ = (s ** 2).sum() / s[0] ** 2
                np.sqrt(sum(float((v.double() ** 2).sum()) for v in sd.values()))
    return (time.perf_counter() - t0) / n_ckpt


# ----------------------------------------------------------------------------- ours
def _ours(run_path, family_kw, workers):
    from ckptlab.analysis import analyze

    t0 = time.perf_counter()
    ds = analyze(run_path, store=False, scheduler="threads" if workers > 1 else "synchronous",
                 n_workers=workers, block_size=16, **COMMON, **family_kw)
    return (time.perf_counter() - t0) / ds.sizes["step"]


_MEM_CHILD = r"""
import resource, sys
from ckptlab.analysis import analyze
analyze(sys.argv[1], metrics=("mi", "weights"), estimators=("binning",), store=False,
        scheduler="synchronous", block_size=16, probe_size=1024)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def _synthetic_run(path: Path, src: Path, n: int) -> None:
    """A run of n checkpoints: the source run's last parameters, perturbed (no training)."""
    from ckptlab.store import Recorder, Run

    run = Run(src)
    sd = run.state_dict(-1)
    g = torch.Generator().manual_seed(0)
    with Recorder(path, model_spec=run.model_spec, data=run.data(), config=run.config) as rec:
        for i in range(n):
            rec.save(i, {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in sd.items()})


def _peak_rss(path: Path) -> int:
    out = subprocess.run([sys.executable, "-c", _MEM_CHILD, str(path)], capture_output=True,
                         text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def _matmul_rate(threads: int) -> float:
    torch.set_num_threads(threads)
    a = torch.randn(1024, 1024)
    b = torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    reps = 20
    for _ in range(reps):
        a @ b
    return 2 * 1024 ** 3 * reps / (time.perf_counter() - t0)


def _forward_flops(run_path) -> tuple[float, float]:
    """FLOPs of one checkpoint's LC and LMN forward passes (2 * sum in*out per row)."""
    from ckptlab.models import build_model
    from ckptlab.store import Run

    model = build_model(Run(run_path).model_spec)
    mats = [p for n, p in model.named_parameters() if p.ndim == 2]
    per_row = 2 * sum(m.shape[0] * m.shape[1] for m in mats)
    lc_rows = len(COMMON["lc_splits"]) * len(COMMON["radii"]) * COMMON["lc_points"] * 2 * 12
    head = 2 * sum(m.shape[0] * m.shape[1] for m in mats[1:])
    n = COMMON["lmn_samples"]
    lmn_rows = n * (n - 1) // 2 * 21
    return lc_rows * per_row, lmn_rows * head


def run(*, steps: int, baseline_ckpts: int, tmpdir=None):
    torch.set_num_threads(1)
    rows = []
    raw: dict = {}
    with tempfile.TemporaryDirectory(dir=tmpdir) as d:
        d = Path(d)
        run_path = d / "run.zarr"
        _make_run(run_path, steps)
        files = _export_torch_files(run_path, d / "pt")
        n = len(files)
        tot_ours1 = tot_ours2 = tot_base = 0.0
        for fam, kw in FAMILIES.items():
            nb = n if fam in ("mi (binning)", "weights") else min(baseline_ckpts, n)
            base = _baseline(files, run_path, fam, nb)
            o1 = _ours(run_path, kw, 1)
            o2 = _ours(run_path, kw, 2)
            raw[fam] = {"baseline_s_per_ckpt": base, "ours_1_s_per_ckpt": o1,
                        "ours_2_s_per_ckpt": o2, "baseline_ckpts": nb}
            tot_ours1 += o1
            tot_ours2 += o2
            tot_base += base
            rows.append(Row(f"{fam}: checkpoints/s, 1 worker", 1 / o1, "ckpt/s", 1 / base,
                            "plain loop", note=f"baseline timed on {nb} checkpoints"
                            if nb < n else ""))
            rows.append(Row(f"{fam}: checkpoints/s, 2 workers", 1 / o2, "ckpt/s", 1 / o1,
                            "1 worker"))
        # the whole analysis as a user runs it: one call, every family computed per block
        whole = dict(metrics=("mi", "lc", "lmn", "weights"), estimators=("binning", "kde"))
        w1 = min(_ours(run_path, whole, 1) for _ in range(2))
        w2 = min(_ours(run_path, whole, 2) for _ in range(2))
        raw["whole"] = {"ours_1_s_per_ckpt": w1, "ours_2_s_per_ckpt": w2,
                        "baseline_s_per_ckpt": tot_base,
                        "sum_of_family_runs_1": tot_ours1, "sum_of_family_runs_2": tot_ours2}
        rows.append(Row("whole analysis: checkpoints/s, 2 workers", 1 / w2, "ckpt/s",
                        1 / tot_base, "plain loop", Target(">=", 10.0),
                        note="one analyze() call with every family; baseline: the sum of the "
                             "per-family loops"))
        rows.append(Row("whole analysis: checkpoints/s, 1 worker", 1 / w1, "ckpt/s",
                        1 / tot_base, "plain loop", Target(">=", 10.0)))
        rows.append(Row("whole analysis: 2 workers vs 1", 1 / w2, "ckpt/s",
                        1 / w1, "1 worker", Target(">=", 1.7)))
        # memory: 100 vs 1000 checkpoints
        p100, p1000 = d / "r100.zarr", d / "r1000.zarr"
        _synthetic_run(p100, run_path, 100)
        _synthetic_run(p1000, run_path, 1000)
        m100, m1000 = _peak_rss(p100), _peak_rss(p1000)
        raw["peak_rss"] = {"100": m100, "1000": m1000}
        rows.append(Row("peak memory, 1000 checkpoints", m1000, "B", m100, "100 checkpoints",
                        Target("<=", 1.1)))
        # FLOP rates
        lc_flops, lmn_flops = _forward_flops(run_path)
        rate = _matmul_rate(1)
        lc_rate = lc_flops / raw["lc"]["ours_1_s_per_ckpt"]
        lmn_rate = lmn_flops / raw["lmn"]["ours_1_s_per_ckpt"]
        raw["flops"] = {"matmul_flop_s": rate, "lc_flop_s": lc_rate, "lmn_flop_s": lmn_rate}
        rows.append(Row("LC forward FLOP rate", lc_rate / 1e9, "GFLOP/s", rate / 1e9,
                        "1024^2 matmul, 1 thread",
                        note="tiny layers (width <= 12): per-op overhead, not arithmetic, bounds it"))
        rows.append(Row("LMN forward FLOP rate", lmn_rate / 1e9, "GFLOP/s", rate / 1e9,
                        "1024^2 matmul, 1 thread"))
        raw["checkpoints"] = n
    return rows, raw


def main(argv: list[str] | None = None) -> dict:
    p = make_parser("python -m benchmarks analysis", __doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=299, help="training steps (one checkpoint each)")
    p.add_argument("--baseline-ckpts", type=int, default=10,
                   help="checkpoints the slow baselines (kde, lc, lmn) are timed on")
    p.add_argument("--tmpdir", type=Path, default=None)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    rows, raw = run(steps=a.steps, baseline_ckpts=a.baseline_ckpts, tmpdir=a.tmpdir)
    title = (f"analysis benchmark: 12-bit task, 12-10-7-5-4-3-2 tanh MLP, {raw['checkpoints']} "
             f"checkpoints, probe {COMMON['probe_size']}, KDE {COMMON['kde_samples']}, "
             f"LC {COMMON['lc_points']} points x {len(COMMON['lc_splits'])} splits, "
             f"LMN {COMMON['lmn_samples']} samples; load average {os.getloadavg()[0]:.1f} "
             f"on {os.cpu_count()} CPUs")
    print(format_table(rows, title=title))
    result = report("analysis", rows, wall_s=time.perf_counter() - t0, **raw)
    print(f"benchmark wall time {result['wall_s']:.0f} s")
    if a.json is not None:
        write_json(a.json, result)
    return result
