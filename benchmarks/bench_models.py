"""Analysis speed on realistic models: batched checkpoints against the per-checkpoint loop.

Models: Omnigrok's MLP shapes (digits 64-200-200-10; 784-200-200-10 on synthetic 784-dim
inputs, as MNIST is not on this machine), the two-phase paper's transformer (2 layers, 4 heads,
d_model 128, MLP 512) on division mod 97, and a user's CNN read through forward hooks. Each run
has a few hundred checkpoints (perturbed initial parameters: speed does not depend on training).
Baseline: what a user writes without ckptlab: ``torch.load`` of one file per checkpoint, then
the plain per-checkpoint code of the original repositories (one forward per point's vertices for
local complexity, one per pair for the LMN, numpy binning and KDE). Both sides compute the same
measures with the same subset sizes, in one run, on the same machine. Each side's time is its
least disturbed measurement: the baseline's fastest checkpoint (the same work for each), ours
the faster of two runs. ``--device cuda`` runs both sides' model passes on a GPU (the numpy
parts stay on the CPU) and adds the peak GPU allocation to the memory rows; ``benchmarks/gpu.sh``
runs it after the CUDA tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .bench_analysis import _baseline_binning, _baseline_kde
from .common import Row, Target, format_table, make_parser, report, write_json

COMMON = dict(metrics=("mi", "lc", "lmn", "weights"), estimators=("binning", "kde"),
              probe_size=1024, kde_samples=512, lc_points=64, lc_splits=("train", "test"),
              radii=(0.05,), lmn_samples=40, lc_activations="any", n_directions=25)


# ----------------------------------------------------------------------------- the models
class UserCNN(nn.Module):
    """A user's model: conv -> ReLU -> pool -> flatten -> linear -> ReLU -> linear (digits)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 16, 128)
        self.relu2 = nn.ReLU()
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        return self.head(self.relu2(self.fc(self.pool(self.relu1(self.conv(x))).flatten(1))))

    def plain(self, x):  # what a user writes to get the layers: hidden, pre-activations, logits
        z1 = self.conv(x)
        a1 = torch.relu(z1)
        z2 = self.fc(self.pool(a1).flatten(1))
        a2 = torch.relu(z2)
        return [a1.flatten(1), a2], [z1.flatten(1), z2], self.head(a2)


def _digits(images: bool):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    x = x[:, None] if images else x.reshape(len(x), -1)
    y = d.target.astype(np.int64)
    return {"x_train": x[:1000], "y_train": y[:1000], "x_test": x[1000:], "y_test": y[1000:]}


def _synthetic784():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(2000, 784)).astype(np.float32)
    y = rng.integers(0, 10, 2000)
    return {"x_train": x[:1000], "y_train": y[:1000], "x_test": x[1000:], "y_test": y[1000:]}


def _division97():
    a, b = np.meshgrid(np.arange(97), np.arange(1, 97), indexing="ij")
    x = np.stack([a.ravel(), b.ravel()], 1).astype(np.int64)
    y = (x[:, 0] * np.array([pow(int(v), -1, 97) for v in x[:, 1]])) % 97
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm], y[perm]
    k = int(0.4 * len(x))
    return {"x_train": x[:k], "y_train": y[:k], "x_test": x[k:], "y_test": y[k:]}


MODELS = {
    "digits-mlp": ("Omnigrok MLP 64-200-200-10 (digits)",
                   {"name": "mlp", "kwargs": {"widths": [200, 200], "n_classes": 10,
                                              "in_dim": 64}}, lambda: _digits(False)),
    "mnist-mlp": ("Omnigrok MLP 784-200-200-10 (synthetic 784-dim inputs)",
                  {"name": "mlp", "kwargs": {"widths": [200, 200], "n_classes": 10,
                                             "in_dim": 784}}, _synthetic784),
    "transformer": ("paper transformer (2 layers, 4 heads, d 128, MLP 512) on x/y mod 97",
                    {"name": "transformer", "kwargs": {"vocab_size": 97, "n_classes": 97}},
                    _division97),
    "user-cnn": ("user CNN through forward hooks (digits 8x8)", None, lambda: _digits(True)),
}


def _module(name):
    from ckptlab.models import build_model

    spec = MODELS[name][1]
    return UserCNN() if spec is None else build_model(spec, seed=0)


def _make_run(path: Path, name: str, n: int) -> list[Path]:
    """n checkpoints (perturbed initial parameters) in an archive and as torch.save files."""
    from ckptlab.store import Recorder

    net = _module(name)
    data = MODELS[name][2]()
    sd = {k: v.detach().clone() for k, v in net.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    files = []
    pt = path.with_suffix(".pt.d")
    pt.mkdir()
    spec = MODELS[name][1]
    with Recorder(path, model=net if spec is None else None, model_spec=spec, data=data) as rec:
        for i in range(n):
            s = {k: (v + 0.01 * torch.randn(v.shape, generator=g)) if v.is_floating_point()
                 else v for k, v in sd.items()}
            rec.save(i, s)
            if i < 16:  # the baseline is timed on the first few
                f = pt / f"step{i:06d}.pt"
                torch.save(s, f)
                files.append(f)
    return files


# ----------------------------------------------------------------------------- baseline
def _plain_views(name, model):
    """hidden(x), preacts+logits(v), (to_h, head) as a user's plain code gets them."""
    if isinstance(model, UserCNN):
        def hidden(x):
            return model.plain(x)[0]

        def pre(v):
            hid, z, logits = model.plain(v.view(-1, 1, 8, 8))
            return z + [logits]

        to_h = lambda x: model.plain(x)[0][1]  # noqa: E731
        head = model.head
        return hidden, pre, (to_h, head), lambda x: x.flatten(1)
    def hidden(x):
        return list(model.trunk(model.embed(x)).hidden.values())

    def pre(v):
        o = model.trunk(v)
        return [*o.preacts.values(), o.logits]

    return hidden, pre, model.lmn_split(), model.embed


def _baseline(files, data, name, model, device="cpu") -> list[float]:
    """Seconds of the plain loop for each checkpoint: load, MI (binning, KDE), LC, LMN,
    weights. On a GPU the model's passes run there and the numpy parts on the CPU, as a
    user's code would."""
    dev = torch.device(device)
    model = model.to(dev)
    x = np.concatenate([data["x_train"], data["x_test"]])[:COMMON["probe_size"]]
    y = np.concatenate([data["y_train"], data["y_test"]])[:COMMON["probe_size"]]
    xt = torch.from_numpy(x).to(dev)
    pts = {s: torch.from_numpy(data[f"x_{s}"][:COMMON["lc_points"]]).to(dev)
           for s in ("train", "test")}
    lmn_x = torch.from_numpy(data["x_train"][:COMMON["lmn_samples"]]).to(dev)
    hidden, pre, (to_h, head), embed = _plain_views(name, model)
    times = []
    for f in files:
        t0 = time.perf_counter()
        sd = torch.load(f, weights_only=True, map_location=dev)
        model.load_state_dict(sd)
        with torch.no_grad():
            for t in hidden(xt):
                t = t.double().cpu().numpy()
                _baseline_binning(t, y, float(t.min()), float(t.max()))
                k = COMMON["kde_samples"]
                _baseline_kde(t[:k], y[:k], 0.1)
            for s in ("train", "test"):
                e = embed(pts[s])
                d = e.shape[1]
                dirs = torch.linalg.qr(torch.randn(d, COMMON["n_directions"], device=dev))[0].T
                for p in e:  # one point at a time, as the source does
                    verts = torch.cat([p + 0.05 * dirs, p - 0.05 * dirs])
                    for z in pre(verts)[:-1]:
                        ((z > 0).any(0) & (z < 0).any(0)).sum()
            h = to_h(lmn_x)
            lam = torch.linspace(0, 1, 21, device=dev)
            n = len(h)
            L = np.eye(n)
            for i in range(n):
                for j in range(i + 1, n):
                    out = head(h[i] + lam[:, None] * (h[j] - h[i])).double().cpu().numpy()
                    c = [np.corrcoef(lam.cpu().numpy(), out[:, k])[0, 1]
                         for k in range(out.shape[1])]
                    L[i, j] = L[j, i] = np.nanmean(np.square(c))
            np.linalg.eigvalsh(L)
            for v in sd.values():
                if v.ndim >= 2 and v.is_floating_point():
                    np.linalg.svd(v.reshape(v.shape[0], -1).double().cpu().numpy(),
                                  compute_uv=False)
        times.append(time.perf_counter() - t0)
    return times


# ----------------------------------------------------------------------------- ours
def _ours(path, name, workers, scheduler=None, device="cpu", **kw) -> float:
    from ckptlab.analysis import analyze

    sched = scheduler or ("threads" if workers > 1 else "synchronous")
    model = UserCNN if MODELS[name][1] is None else None
    t0 = time.perf_counter()
    ds = analyze(path, model=model, store=False, scheduler=sched, n_workers=workers,
                 device=device, **{**COMMON, **kw})
    return (time.perf_counter() - t0) / ds.sizes["step"]


def _forward_flops(path, name) -> tuple[float, float]:
    """FLOPs per checkpoint of the plain LC and LMN forward passes (every vertex, every path
    point through the whole head), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    from ckptlab.analysis.capture import CapturedModel, resolve_layer_map, user_source
    from ckptlab.analysis.api import _archive_source
    from ckptlab.store import Run

    run = Run(path)
    data = run.data()
    src = user_source(UserCNN) if MODELS[name][1] is None else _archive_source(run)
    module = src.build()
    lm = resolve_layer_map(module, data["x_train"][:4], defaults=src.defaults)
    cm = CapturedModel(module, lm, data["x_train"][:1])
    cm.load(run.state_dict(0))
    n_vert = 2 * COMMON["n_directions"]
    rows = len(COMMON["lc_splits"]) * len(COMMON["radii"]) * COMMON["lc_points"] * n_vert
    e = cm.embed(data["x_train"][:1]).repeat(rows, 1)
    with FlopCounterMode(display=False) as fc:  # (its module tracker needs autograd on)
        cm.preact_fn(lm.preacts)(e)
    lc = fc.get_total_flops()
    to_h, head = cm.lmn_split()
    n = COMMON["lmn_samples"]
    h = to_h(data["x_train"][:1]).repeat(n * (n - 1) // 2 * 21, 1)
    with FlopCounterMode(display=False) as fc:  # (its module tracker needs autograd on)
        head(h)
    return float(lc), float(fc.get_total_flops())


def _executed_flops(d: Path, name: str, n: int = 2) -> tuple[float, float, float]:
    """FLOPs per checkpoint that ``analyze`` runs for LC, for the LMN and for the whole
    analysis, counted by torch (matmuls and convolutions) on an archive of n checkpoints
    (set-up checks included: a few rows, a small overestimate)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ckptlab.analysis import analyze

    path = d / f"{name}-flops.zarr"
    _make_run(path, name, n)
    model = UserCNN if MODELS[name][1] is None else None
    out = []
    for metrics in (("lc",), ("lmn",), COMMON["metrics"]):
        with FlopCounterMode(display=False) as fc:
            analyze(path, model=model, store=False, scheduler="synchronous",
                    **{**COMMON, "metrics": metrics})
        out.append(fc.get_total_flops() / n)
    return out[0], out[1], out[2]


def _matmul_rate(device: str = "cpu") -> float:
    """float32 FLOP/s of a square matmul: 1024^2 on 1 CPU thread; 4096^2 on a GPU (TF32 as
    torch's settings leave it: off for matmuls unless a user turns it on)."""
    n = 1024 if device == "cpu" else 4096
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    t0 = time.perf_counter()
    for _ in range(20):
        a @ b
    sync()
    return 2 * n ** 3 * 20 / (time.perf_counter() - t0)


# The child's own peak: VmHWM belongs to the memory map exec made. ru_maxrss does not: Linux
# carries it over exec from the forked parent, so a benchmark process that had grown larger
# than the analysis reported its own size for both archives.
# On a GPU it also prints the peak of torch's allocations there.
_MEM_CHILD = r"""
import json, resource, sys
import ckptlab
device = sys.argv[2]
ckptlab.analyze(sys.argv[1], metrics=("mi", "weights"), estimators=("binning", "kde"),
                store=False, scheduler="synchronous", probe_size=1024, kde_samples=512,
                device=device)
try:
    with open("/proc/self/status") as f:
        rss = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM"))
except OSError:  # no procfs
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
peaks = {"RSS": rss}
if device == "cuda":
    import torch
    peaks["GPU"] = torch.cuda.max_memory_allocated()
print(json.dumps(peaks))
"""


def _peak_memory(path: Path, device: str = "cpu") -> dict[str, int]:
    """``{"RSS": bytes}`` of an analysis in a child, and on a GPU ``"GPU"``: its peak
    allocation there."""
    out = subprocess.run([sys.executable, "-c", _MEM_CHILD, str(path), device],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# checkpoints per model unless --checkpoints says otherwise: a few hundred, the transformer
# fewer (about 0.8 s per checkpoint and analysis on this machine, and it is analysed 8 times)
DEFAULT_CHECKPOINTS = {"transformer": 100}
DEFAULT_CHECKPOINTS_OTHERS = 200


def _n_checkpoints(name: str, checkpoints: int | None) -> int:
    if checkpoints is not None:
        return checkpoints
    return DEFAULT_CHECKPOINTS.get(name, DEFAULT_CHECKPOINTS_OTHERS)


def run(*, checkpoints: int | None, baseline_ckpts: int, models, tmpdir=None, device="cpu",
        memory_sizes=(100, 1000, 3000)):
    torch.set_num_threads(1)
    rows, raw = [], {"device": device}
    rate = _matmul_rate(device)
    raw["matmul_flop_s"] = rate
    mm = "1024^2 matmul, 1 thread" if device == "cpu" else "4096^2 float32 matmul, GPU"
    with tempfile.TemporaryDirectory(dir=tmpdir) as d:
        d = Path(d)
        for name in models:
            path = d / f"{name}.zarr"
            files = _make_run(path, name, _n_checkpoints(name, checkpoints))[:baseline_ckpts]
            from ckptlab.store import Run

            data = Run(path).data()
            # the best checkpoint, as ours are the best of two runs: the same work each time,
            # so the least disturbed one (a mean of 4 moved by 25% between runs of one day)
            base_each = _baseline(files, data, name, _module(name), device)
            base = min(base_each)
            # the best of two runs each; the first processes run of the session also starts
            # the fork server, so it is reported on its own
            o1 = min(_ours(path, name, 1, device=device) for _ in range(2))
            o2t = min(_ours(path, name, 2, "threads", device=device) for _ in range(2))
            first_pool = "first_processes_run" not in raw
            try:
                runs = [_ours(path, name, 2, "processes", device=device) for _ in range(2)]
                proc_error = ""
            except Exception as exc:  # reported in the table, the other rows still measured
                if device == "cpu":
                    raise
                runs, proc_error = [float("nan")] * 2, f"failed: {type(exc).__name__}: {exc}"
            o2p = min(runs)
            if first_pool:
                raw["first_processes_run"] = {"model": name, "s_per_ckpt": runs[0]}
            lc_s = _ours(path, name, 1, device=device, metrics=("lc",))
            lmn_s = _ours(path, name, 1, device=device, metrics=("lmn",))
            lc_f, lmn_f = _forward_flops(path, name)
            lc_x, lmn_x, all_x = _executed_flops(d, name)
            raw[name] = {"baseline_s_per_ckpt": base, "baseline_s_each": base_each,
                         "ours_1": o1, "ours_2_threads": o2t, "ours_2_processes": o2p,
                         "lc_s": lc_s, "lmn_s": lmn_s,
                         "lc_flops": lc_f, "lmn_flops": lmn_f, "lc_flops_executed": lc_x,
                         "lmn_flops_executed": lmn_x, "flops_executed": all_x}
            label = MODELS[name][0]
            rows.append(Row(f"{name}: whole analysis, 1 worker", 1 / o1, "ckpt/s", 1 / base,
                            "plain loop", Target(">=", 20.0),
                            note=f"{label}; baseline: the fastest of {len(files)} checkpoints "
                                 f"(their mean {np.mean(base_each) * 1e3:.0f} ms)"))
            # what 1 worker would reach if every matmul FLOP it executes ran at the matmul rate
            # and nothing else took time: the ceiling of the first row at these FLOPs
            rows.append(Row(f"{name}: ceiling at the matmul rate", rate / all_x, "ckpt/s",
                            1 / base, "plain loop",
                            note=f"{all_x / 1e9:.2f} GFLOP per checkpoint executed (matmuls, "
                                 f"convolutions) over the matmul rate ({mm})"))
            rows.append(Row(f"{name}: 2 workers (threads) vs 1", 1 / o2t, "ckpt/s", 1 / o1,
                            "1 worker", Target(">=", 1.8)))
            rows.append(Row(f"{name}: 2 workers (processes) vs 1", 1 / o2p, "ckpt/s", 1 / o1,
                            "1 worker", Target(">=", 1.8),
                            note=proc_error or ((f"the session's first processes run, which "
                                                 f"starts the fork server: {o1 / runs[0]:.2f}x")
                                                if first_pool else "")))
            rows.append(Row(f"{name}: LC forward FLOP rate", lc_x / lc_s / 1e9, "GFLOP/s",
                            rate / 1e9, mm, Target(">=", 0.3),
                            note="FLOPs analyze executes, counted by torch.utils.flop_counter"))
            rows.append(Row(f"{name}: LMN forward FLOP rate", lmn_x / lmn_s / 1e9, "GFLOP/s",
                            rate / 1e9, mm, Target(">=", 0.3),
                            note=f"executes {lmn_x / lmn_f:.0%} of the plain paths' FLOPs"))
            rows.append(Row(f"{name}: LMN plain-path FLOPs / time", lmn_f / lmn_s / 1e9,
                            "GFLOP/s", rate / 1e9, mm,
                            note="the FLOPs of pushing every path point through the head, "
                                 "over the time the shortcuts take: an effective rate"))
        # memory: 100, 1000 and 3000 checkpoints of the digits MLP (bounded by the block?);
        # on a GPU also the peak of torch's allocations there
        # each peak is the worst moment of the run, and where glibc's heap puts a block's
        # buffers scatters it by tens of MB from run to run: the median of 3, taken in turns
        for n in memory_sizes:
            _make_run(d / f"m{n}.zarr", "digits-mlp", n)
        kinds = ("RSS", "GPU") if device == "cuda" else ("RSS",)
        all_peaks = {k: {n: [] for n in memory_sizes} for k in kinds}
        for _ in range(3):
            for n in memory_sizes:
                for k, v in _peak_memory(d / f"m{n}.zarr", device).items():
                    all_peaks[k][n].append(v)
        for k in kinds:
            peaks = {n: float(np.median(v)) for n, v in all_peaks[k].items()}
            raw["peak_rss" if k == "RSS" else "peak_gpu"] = {
                str(n): v for n, v in all_peaks[k].items()}
            spread = "; ".join(f"{n}: {', '.join(f'{v / 2**20:.0f}' for v in all_peaks[k][n])}"
                               " MiB" for n in memory_sizes)
            what = "peak memory" if k == "RSS" else "peak GPU allocation"
            for i, (small, n) in enumerate(zip(memory_sizes, memory_sizes[1:])):
                rows.append(Row(f"{what}, {n} checkpoints (digits MLP)", peaks[n], "B",
                                peaks[small], f"{small} checkpoints", Target("<=", 1.1),
                                note=f"median of 3 runs each ({spread})" if i == 0 else ""))
    raw["checkpoints"] = {name: _n_checkpoints(name, checkpoints) for name in models}
    return rows, raw


def main(argv: list[str] | None = None) -> dict:
    p = make_parser("python -m benchmarks models", __doc__.splitlines()[0])
    p.add_argument("--checkpoints", type=int, default=None,
                   help=f"checkpoints of every model (default: {DEFAULT_CHECKPOINTS_OTHERS}, "
                        f"the transformer {DEFAULT_CHECKPOINTS['transformer']})")
    p.add_argument("--baseline-ckpts", type=int, default=4,
                   help="checkpoints the plain loop is timed on (it is slow)")
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma-separated subset of {', '.join(MODELS)}")
    p.add_argument("--tmpdir", type=Path, default=None)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the model runs, on both sides (the numpy parts stay on the CPU)")
    p.add_argument("--memory-checkpoints", default="100,1000,3000",
                   help="comma-separated archive sizes whose peak memory is compared, in "
                        "increasing order (empty: no memory rows)")
    a = p.parse_args(argv)
    try:
        memory_sizes = tuple(int(v) for v in a.memory_checkpoints.split(",") if v)
    except ValueError:
        p.error(f"--memory-checkpoints must be comma-separated integers, got "
                f"{a.memory_checkpoints!r}")
    if any(n < 1 for n in memory_sizes) or list(memory_sizes) != sorted(set(memory_sizes)):
        p.error(f"--memory-checkpoints must be increasing positive integers, got "
                f"{a.memory_checkpoints!r}")
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    models = [m for m in a.models.split(",") if m]
    for m in models:
        if m not in MODELS:
            p.error(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
    t0 = time.perf_counter()
    rows, raw = run(checkpoints=a.checkpoints, baseline_ckpts=a.baseline_ckpts, models=models,
                    tmpdir=a.tmpdir, device=a.device, memory_sizes=memory_sizes)
    counts = ", ".join(f"{m} {_n_checkpoints(m, a.checkpoints)}" for m in models)
    title = (f"analysis on realistic models, checkpoints: {counts}; probe "
             f"{COMMON['probe_size']}, KDE {COMMON['kde_samples']}, LC {COMMON['lc_points']} "
             f"points x 2 splits x {2 * COMMON['n_directions']} vertices, LMN "
             f"{COMMON['lmn_samples']} samples; device {a.device}"
             f"{' (' + torch.cuda.get_device_name() + ')' if a.device == 'cuda' else ''}; "
             f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(format_table(rows, title=title))
    result = report("models", rows, wall_s=time.perf_counter() - t0, **raw)
    print(f"benchmark wall time {result['wall_s']:.0f} s")
    if a.json is not None:
        write_json(a.json, result)
    return result
