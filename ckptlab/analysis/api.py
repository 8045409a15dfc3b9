"""``ckptlab.analyze``: every progress measure over every checkpoint, with Dask, as xarray.

Orchestration only: options are validated and the fixed inputs (probe sets, LC directions,
binning ranges) built once; checkpoints are split into blocks, each a Dask task that reads its
own checkpoints from the archive (:func:`~ckptlab.analysis.compute.compute_block`); results are
written back to the archive as blocks finish, so an interrupted analysis resumes where it
stopped; the labelled Dataset is assembled from what is stored.
"""

from __future__ import annotations

import json
import os
import zlib
import warnings

import dask
import numpy as np
import xarray as xr

from .._checks import check_choice, check_int
from .._progress import ProgressLine
from ..errors import CkptlabError, SchedulerError, ValidationError
from ..metrics.local_complexity import cross_polytope_directions
from ..models import build_model
from ..store import Run
from ..store import format as fmt
from .cache import FamilyCache
from .compute import FAMILY_VARS, Plan, compute_block
from .options import SUBSET_CAPS, AnalysisOptions, family_key

__all__ = ["analyze", "load_analysis", "VAR_META"]

#: long_name and units of every output variable.
VAR_META = {
    "mi_xt": ("I(X;T)", "bits"),
    "mi_ty": ("I(T;Y)", "bits"),
    "lc": ("local complexity", "count"),
    "lc_std": ("local complexity spread over points", "count"),
    "lc_total": ("local complexity, all layers", "count"),
    "lc_total_std": ("local complexity spread over points, all layers", "count"),
    "lmn": ("linear mapping number", "1"),
    "weight_norm": ("total parameter L2 norm", "1"),
    "frobenius_norm": ("Frobenius norm", "1"),
    "spectral_norm": ("spectral norm", "1"),
    "stable_rank": ("stable rank", "1"),
    "effective_rank": ("effective rank of the weights", "1"),
    "rep_effective_rank": ("effective rank of the representation", "1"),
    "train_loss": ("train loss", "nats"),
    "test_loss": ("test loss", "nats"),
    "train_acc": ("train accuracy", "1"),
    "test_acc": ("test accuracy", "1"),
}
_CURVES = ("train_loss", "test_loss", "train_acc", "test_acc")
_MI_FAMILIES = {"binning": "mi-binning", "adaptive": "mi-adaptive", "kde": "mi-kde",
                "renyi": "mi-renyi"}


# ----------------------------------------------------------------------------- scheduling
def _resolve_scheduler(scheduler: str, n_workers):
    """(kind, client) with kind in synchronous/threads/processes/distributed; checks first."""
    if not isinstance(scheduler, str) or not scheduler:
        raise ValidationError(f"scheduler must be a non-empty string, got {scheduler!r}")
    if n_workers is not None:
        check_int("n_workers", n_workers, min=1)
    if scheduler in ("synchronous", "threads", "processes"):
        return scheduler, None
    if "://" not in scheduler and ":" not in scheduler:
        raise ValidationError(
            f"scheduler must be 'threads', 'processes', 'synchronous' or the address of a "
            f"running Dask scheduler (tcp://host:port), got {scheduler!r}"
        )
    from distributed import Client

    try:
        client = Client(scheduler, timeout="10s", set_as_default=False)
    except Exception as exc:  # OSError / TimeoutError, whichever the comm raises
        raise SchedulerError(
            f"no Dask scheduler answers at {scheduler}: {type(exc).__name__}: {exc}"
        ) from None
    return "distributed", client


# ----------------------------------------------------------------------------- plan
def _rng(seed: int, purpose: str) -> np.random.Generator:
    """A generator of its own per fixed choice: one subset never shifts when another changes
    size (their cache keys would not notice)."""
    return np.random.default_rng([seed, zlib.crc32(purpose.encode())])


def _pick(rng, n: int, k: int) -> np.ndarray:
    return np.sort(rng.permutation(n)[:k])


def _size(name: str, value, default_cap: int, available: int, what: str) -> int:
    if value is None:
        return min(default_cap, available)
    v = check_int(name, value, min=2 if name != "lc_points" else 1)
    if v > available:
        raise ValidationError(
            f"{name} must be <= the number of {what} ({available}), got {v}"
        )
    return v


def _onehot_tokens(x: np.ndarray, vocab: int) -> np.ndarray:
    n, t = x.shape
    out = np.zeros((n, t * vocab), np.float64)
    out[np.arange(n)[:, None], np.arange(t) * vocab + x] = 1.0
    return out


def analyze(
    path,
    *,
    metrics=("mi", "lc", "lmn", "weights", "rank"),
    estimators=("binning", "adaptive", "kde", "renyi"),
    n_bins: int = 30,
    binning_range="trajectory",
    sigma2: float = 0.1,
    alpha: float = 1.01,
    gamma: float = 1.0,
    probe: str = "all",
    probe_size: int | None = None,
    kde_samples: int | None = None,
    renyi_samples: int | None = None,
    radii=(0.005, 0.05, 0.5),
    n_directions: int | None = None,
    lc_points: int | None = None,
    lc_splits=("train", "test", "random"),
    include_output: bool = False,
    clip: bool = True,
    lmn_samples: int | None = None,
    constant_rule: str = "one",
    seed: int = 0,
    block_size: int = 16,
    scheduler: str = "threads",
    n_workers: int | None = None,
    device: str = "cpu",
    store: bool = True,
    compute: bool = True,
    progress: bool | None = None,
) -> xr.Dataset:
    """Compute progress measures on every checkpoint of a run; return one labelled Dataset.

    Parameters
    ----------
    path : str or path-like
        The run archive (directory or fsspec URL). Workers open it themselves.
    metrics : sequence of str, default all
        Families to compute: ``"mi"`` (mutual information per layer), ``"lc"`` (local
        complexity), ``"lmn"`` (linear mapping number), ``"weights"`` (norms and ranks of the
        weight matrices), ``"rank"`` (effective rank of each layer's representation).
    estimators : sequence of str, default all
        MI estimators: ``"binning"`` (Shwartz-Ziv & Tishby), ``"adaptive"`` (equal-mass bins,
        Chelombiev et al.), ``"kde"`` (Kolchinsky-Tracey upper and lower bounds), ``"renyi"``
        (matrix-based Renyi alpha-entropy). Output dim ``estimator`` holds ``binning``,
        ``adaptive``, ``kde_upper``, ``kde_lower``, ``renyi``.
    n_bins : int, default 30
        Bins (intervals) per unit for both binning estimators.
    binning_range : "trajectory" or (lo, hi), default "trajectory"
        Range of the fixed bins. ``"trajectory"``: a bounded activation's own range (tanh:
        [-1, 1]); for unbounded layers the min and max over *all checkpoints* of the run, so a
        bin means the same thing at every step (the range is recorded; new checkpoints that
        widen it make the binning results be computed anew).
    sigma2 : float, default 0.1
        Noise variance of the KDE bounds (Saxe et al. used 0.1).
    alpha, gamma : float, default 1.01, 1.0
        Renyi order and the factor of Silverman's kernel-width rule.
    probe : {"all", "train", "test"}, default "all"
        Inputs pushed through every checkpoint for MI and representation rank.
    probe_size, kde_samples, renyi_samples : int, optional
        Fixed, seeded subsets for binning (default: all, at most 4096), the KDE bounds (at most
        1024) and Renyi (at most 512; its cost is cubic). Explicit values larger than the probe
        set are errors.
    radii : sequence of float, default (0.005, 0.05, 0.5)
        Neighbourhood radii of local complexity (the source used 0.005).
    n_directions : int, optional
        Cross-polytope directions P (2P vertices); default min(25, input width).
    lc_points : int, optional
        Points per split for local complexity (default: up to 256).
    lc_splits : sequence of str, default ("train", "test", "random")
        Point sets: training points, test points, uniform points in the data's bounding box.
    include_output : bool, default False
        Count the logits as a layer in local complexity (the source did).
    clip : bool, default True
        Clip the vertices into the data's value range (continuous inputs only).
    lmn_samples : int, optional
        Fixed training subset for the linear mapping number (default: up to 100).
    constant_rule : {"one", "zero", "nan"}, default "one"
        r^2 of an output constant along an interpolation path (see ckptlab.metrics.lmn).
    seed : int, default 0
        Seeds every fixed random choice (subsets, directions, random points).
    block_size : int, default 16
        Checkpoints per Dask task; memory is bounded by one block per worker.
    scheduler : str, default "threads"
        ``"threads"``, ``"processes"``, ``"synchronous"``, or a Dask scheduler address.
    n_workers : int, optional
        Workers of the local schedulers (default: the number of CPUs).
    device : {"cpu", "cuda"}, default "cpu"
        Where the forward passes run.
    store : bool, default True
        Keep results in the archive's ``analysis`` group and reuse those already there.
    compute : bool, default True
        False returns a lazy (dask-backed) Dataset whose computation runs the analysis (no
        storing, no reuse).
    progress : bool, optional
        A progress bar over blocks; by default only on a terminal.

    Returns
    -------
    xarray.Dataset
        Dims ``step``, ``layer``, ``estimator``, ``split``, ``radius``, ``matrix``; every
        variable has ``long_name`` and ``units`` and its parameters in attrs; the run's own
        train/test loss and accuracy are included.

    Raises
    ------
    ValidationError
        Unknown metric or estimator, an impossible parameter, a subset larger than its set.
    SchedulerError
        The scheduler address does not answer.
    ArchiveError
        The archive cannot be read, or holds no checkpoints or no data.
    """
    explicit = dict(probe_size=probe_size, kde_samples=kde_samples, renyi_samples=renyi_samples,
                    n_directions=n_directions, lc_points=lc_points, lmn_samples=lmn_samples)
    opts = AnalysisOptions(
        metrics=metrics, estimators=estimators, n_bins=n_bins, binning_range=binning_range,
        sigma2=sigma2, alpha=alpha, gamma=gamma, probe=probe, radii=radii,
        lc_splits=lc_splits, include_output=include_output, clip=clip,
        constant_rule=constant_rule, seed=seed,
        **{k: v for k, v in explicit.items() if v is not None},
    ).validated()
    check_int("block_size", block_size, min=1)
    check_choice("device", device, ("cpu", "cuda"))
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValidationError("device 'cuda' was asked for but torch sees no CUDA device")
    for name, v in (("store", store), ("compute", compute)):
        if not isinstance(v, bool):
            raise ValidationError(f"{name} must be a bool, got {v!r}")
    kind, client = _resolve_scheduler(scheduler, n_workers)
    try:
        return _analyze(path, opts, explicit, block_size, kind, client, n_workers, device,
                        store, compute, progress)
    finally:
        if client is not None:
            client.close()


def _analyze(path, opts, explicit, block_size, kind, client, n_workers, device, store,
             compute, progress):
    path = str(path)
    if kind == "processes" and fmt.is_url(path) and path.startswith("memory://"):
        raise ValidationError(
            "a memory:// archive lives in this process only: use scheduler 'threads' or "
            "'synchronous' for it"
        )
    run = Run(path)
    if run.n == 0:
        raise CkptlabError(f"{path}: the archive holds no checkpoints to analyse")
    data = run.data()
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in data]
    if missing:
        raise CkptlabError(
            f"{path}: the archive holds no {', '.join(missing)}: analysis needs the run's data "
            "(pass data= to the Recorder)"
        )
    model = build_model(run.model_spec)
    layer_names = list(model.layer_names)
    preact_names = list(model.preact_names)
    sd0 = run.state_dict(0)
    matrix_names = [k for k, v in sd0.items() if v.ndim >= 2 and v.is_floating_point()]

    # --- probe set and its fixed subsets (seeded, identical at every checkpoint)
    parts = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}
    names = ("train", "test") if opts.probe == "all" else (opts.probe,)
    x_all = np.concatenate([data[parts[s][0]] for s in names])
    y_all = np.concatenate([data[parts[s][1]] for s in names]).astype(np.int64)
    n_probe = _size("probe_size", explicit["probe_size"], SUBSET_CAPS["probe_size"], len(x_all), "probe examples")
    probe_idx = (_pick(_rng(opts.seed, "probe"), len(x_all), n_probe) if n_probe < len(x_all)
                 else np.arange(len(x_all)))
    x_probe, y_probe = x_all[probe_idx], y_all[probe_idx]
    n_kde = _size("kde_samples", explicit["kde_samples"], SUBSET_CAPS["kde_samples"], n_probe, "probe examples")
    n_renyi = _size("renyi_samples", explicit["renyi_samples"], SUBSET_CAPS["renyi_samples"], n_probe, "probe examples")
    kde_idx = _pick(_rng(opts.seed, "kde"), n_probe, n_kde)
    renyi_idx = _pick(_rng(opts.seed, "renyi"), n_probe, n_renyi)
    tokens = model.input_kind == "tokens"
    if tokens:
        x_renyi = _onehot_tokens(x_probe[renyi_idx], int(run.model_spec["kwargs"]["vocab_size"]))
    else:
        x_renyi = x_probe[renyi_idx].reshape(n_renyi, -1).astype(np.float64)
    probe_params = {"probe": opts.probe, "n": int(n_probe), "seed": opts.seed}

    n_train = len(data["x_train"])
    n_lmn = _size("lmn_samples", explicit["lmn_samples"], SUBSET_CAPS["lmn_samples"], n_train, "training examples")
    lmn_x = data["x_train"][_pick(_rng(opts.seed, "lmn"), n_train, n_lmn)]
    lc_x = {}
    n_lc = {}
    for split in opts.lc_splits:
        avail = len(data[parts[split][0]]) if split != "random" else 10**9
        k = _size("lc_points", explicit["lc_points"], SUBSET_CAPS["lc_points"], avail,
                  f"{split} examples" if split != "random" else "points")
        n_lc[split] = k
        if split == "random":
            continue
        xs = data[parts[split][0]]
        lc_x[split] = xs[_pick(_rng(opts.seed, f"lc-{split}"), len(xs), k)]
    width = model.embed_width
    n_dir = explicit["n_directions"]
    if n_dir is None:
        n_dir = min(SUBSET_CAPS["n_directions"], width)
    elif n_dir > width:
        raise ValidationError(
            f"n_directions must be <= the input (embedding) width {width}, got {n_dir}"
        )
    if "random" in opts.lc_splits:
        n_rand = n_lc["random"] if explicit["lc_points"] is not None else SUBSET_CAPS["lc_points"]
        lc_x["random"] = _rng(opts.seed, "lc-random").uniform(size=(n_rand, width))
    directions = cross_polytope_directions(width, n_directions=n_dir, seed=opts.seed).numpy()
    bounds = None
    if not tokens and opts.clip:
        bounds = (float(np.min(data["x_train"])), float(np.max(data["x_train"])))

    # --- families and their exact parameters (the cache key)
    fam_params: dict[str, dict] = {}
    if "mi" in opts.metrics:
        for est in opts.estimators:
            fam = _MI_FAMILIES[est]
            p = {"probe": probe_params}
            if est in ("binning", "adaptive"):
                p["n_bins"] = opts.n_bins
            if est == "kde":
                p.update(sigma2=opts.sigma2, n=int(n_kde))
            if est == "renyi":
                p.update(alpha=opts.alpha, gamma=opts.gamma, n=int(n_renyi))
            fam_params[fam] = p
    if "lc" in opts.metrics:
        fam_params["lc"] = {
            "radii": list(opts.radii), "splits": list(opts.lc_splits), "n_directions": n_dir,
            "points": n_lc, "include_output": opts.include_output,
            "clip": None if bounds is None else list(bounds), "seed": opts.seed,
        }
        if "random" in opts.lc_splits:  # random points fill the probe set's bounding box
            fam_params["lc"]["probe"] = probe_params
    if "lmn" in opts.metrics:
        fam_params["lmn"] = {"n": int(n_lmn), "constant_rule": opts.constant_rule,
                             "seed": opts.seed, "n_interp": 21}
    if "weights" in opts.metrics:
        fam_params["weights"] = {}
    if "rank" in opts.metrics:
        fam_params["rank"] = {"probe": probe_params}

    lc_layers = preact_names + (["output"] if opts.include_output else [])
    coords = {"layer": layer_names, "lc_layer": lc_layers, "matrix": matrix_names,
              "split": list(opts.lc_splits), "radius": list(opts.radii)}
    # One torch thread per task: parallelism comes from the Dask workers, and intra-op threads
    # on top of them oversubscribe the cores (several times slower on a shared machine).
    threads = 1
    plan = Plan(
        path=path, params=fam_params, layer_names=layer_names, preact_names=preact_names,
        matrix_names=matrix_names, x_probe=x_probe, y_probe=y_probe, x_renyi=x_renyi,
        kde_idx=kde_idx, renyi_idx=renyi_idx, lmn_x=lmn_x, lc_x=lc_x, directions=directions,
        input_bounds=bounds, threads=threads, device=device,
    )
    runner = _Runner(run, plan, coords, block_size, kind, client, n_workers, store, progress)

    # --- fixed binning needs its range before it can run (and the range is in its key)
    if "mi-binning" in fam_params:
        ranges = runner.binning_ranges(model.layer_bounds, opts.binning_range, probe_params)
        plan.ranges = ranges
        fam_params["mi-binning"]["range"] = {k: list(v) for k, v in ranges.items()}
        fam_params["mi-binning"]["range_rule"] = (
            opts.binning_range if isinstance(opts.binning_range, str) else "fixed"
        )

    if compute:
        results = runner.compute(fam_params)
    else:
        results = runner.lazy(fam_params)
    return _assemble(run, results, fam_params, coords)


class _Runner:
    """Blocks -> Dask tasks -> results (cached in the archive as they finish)."""

    def __init__(self, run, plan, coords, block_size, kind, client, n_workers, store, progress):
        self.run, self.plan, self.coords = run, plan, coords
        self.kind, self.client, self.n_workers = kind, client, n_workers
        self.store, self.progress = store, progress
        self.chunk = block_size
        self.n = run.n
        self.run_id = str(run.header.get("created")) + ":" + str(run.steps[0])

    def _caches(self, fam_params):
        import zarr

        root = zarr.open_group(fmt.open_store(self.run.path, read_only=False), mode="r+")
        caches = {}
        for fam, params in fam_params.items():
            key = family_key(fam, params)
            caches[fam] = FamilyCache(root, key, fam, params, self.coords, self.run.steps,
                                      self.chunk, self.run_id)
        return caches

    def _blocks(self):
        return [(a, min(a + self.chunk, self.n)) for a in range(0, self.n, self.chunk)]

    def compute(self, fam_params: dict) -> dict:
        if self.store:
            caches = self._caches(fam_params)
            if caches:
                self.chunk = next(iter(caches.values())).group["done"].chunks[0]
        else:
            caches = {}
        out = {fam: {v: np.full((self.n,) + tuple(len(self.coords[d]) for d in dims), np.nan)
                     for v, dims in FAMILY_VARS[fam].items()} for fam in fam_params}
        todo = []
        for a, b in self._blocks():
            fams = tuple(f for f in fam_params if not (f in caches and caches[f].done[a:b].all()))
            if fams:
                todo.append((a, b, fams))
        nonfinite: list = []

        def accept(a, b, res):
            if not res["finite"].all():
                nonfinite.extend(self.run.steps[a:b][~res["finite"]].tolist())
            for fam, vals in res.items():
                if fam == "finite":
                    continue
                if fam in caches:
                    caches[fam].write(a, vals)
                for v, arr in vals.items():
                    out[fam][v][a:b] = arr

        self._execute(todo, accept)
        for fam, cache in caches.items():  # everything, cached and new
            out[fam] = cache.read()
        if nonfinite:
            warnings.warn(
                f"{len(nonfinite)} checkpoint(s) hold NaN/Inf parameters (steps "
                f"{nonfinite[:10]}{' ...' if len(nonfinite) > 10 else ''}): their measures are NaN",
                RuntimeWarning,
                stacklevel=4,
            )
        return out

    def _execute(self, todo, accept) -> None:
        if not todo:
            return
        bar = ProgressLine(self.progress)
        total = len(todo)
        done = [0]

        def tick():
            done[0] += 1
            bar.show(f"analyze: block {done[0]}/{total} | {bar.elapsed:6.1f} s", force=done[0] == total)
        tasks = {
            f"ckptlab-block-{a}-{b}": dask.delayed(compute_block, pure=False)(
                self.plan, a, b, fams, self.n, dask_key_name=f"ckptlab-block-{a}-{b}")
            for a, b, fams in todo
        }
        spans = {f"ckptlab-block-{a}-{b}": (a, b) for a, b, _ in todo}
        if self.kind == "distributed":
            from distributed import as_completed

            futures = self.client.compute(list(tasks.values()))
            keys = {f.key: k for f, k in zip(futures, tasks)}
            for fut, res in as_completed(futures, with_results=True, loop=self.client.loop):
                accept(*spans[keys[fut.key]], res)
                tick()
            bar.close()
            return
        from dask.callbacks import Callback

        class _Collect(Callback):
            def _posttask(self, key, result, dsk, state, id):
                if key in spans:
                    accept(*spans[key], result)
                    tick()

        kw = {"scheduler": self.kind}
        if self.n_workers is not None and self.kind != "synchronous":
            kw["num_workers"] = self.n_workers
        with _Collect():
            dask.compute(*tasks.values(), **kw)
        bar.close()

    def binning_ranges(self, layer_bounds, rule, probe_params) -> dict:
        """Per-layer (lo, hi) of the fixed bins; trajectory-wide min/max for unbounded layers."""
        if not isinstance(rule, str):
            return {k: tuple(rule) for k in self.plan.layer_names}
        ranges = {k: layer_bounds.get(k) for k in self.plan.layer_names}
        if all(v is not None for v in ranges.values()):
            return {k: tuple(map(float, v)) for k, v in ranges.items()}
        res = self.compute({"range": {"probe": probe_params}})
        lo = np.nanmin(res["range"]["act_min"], axis=0)
        hi = np.nanmax(res["range"]["act_max"], axis=0)
        out = {}
        for j, k in enumerate(self.plan.layer_names):
            if ranges[k] is not None:
                out[k] = tuple(map(float, ranges[k]))
            else:
                a, b = float(lo[j]), float(hi[j])
                if not np.isfinite(a) or not np.isfinite(b):
                    a, b = -1.0, 1.0
                if b <= a:
                    b = a + 1.0
                out[k] = (a, b)
        return out

    def lazy(self, fam_params: dict) -> dict:
        import dask.array as da

        out = {fam: {v: [] for v in FAMILY_VARS[fam]} for fam in fam_params}
        fams = tuple(fam_params)
        for a, b in self._blocks():
            d = dask.delayed(compute_block, pure=True)(self.plan, a, b, fams, self.n)
            for fam in fams:
                for v, dims in FAMILY_VARS[fam].items():
                    shape = (b - a,) + tuple(len(self.coords[x]) for x in dims)
                    out[fam][v].append(da.from_delayed(d[fam][v], shape=shape, dtype=np.float64))
        return {fam: {v: da.concatenate(parts) for v, parts in vs.items()}
                for fam, vs in out.items()}


def load_analysis(path) -> xr.Dataset:
    """The run's curves plus every analysis stored in the archive, without computing anything.

    Where one family was computed with several parameter sets, the newest is used. A run
    that was never analysed gives its train/test curves only.

    Parameters
    ----------
    path : str or path-like
        The run archive.

    Returns
    -------
    xarray.Dataset
        Same layout as :func:`analyze`'s result.
    """
    import zarr

    run = Run(path)
    root = zarr.open_group(fmt.open_store(run.path, read_only=True), mode="r")
    results, fam_params, coords = {}, {}, {}
    if fmt.ANALYSIS in root:
        g = root[fmt.ANALYSIS]
        newest: dict = {}
        for key in g.group_keys():
            a = g[key].attrs
            fam = a.get("family")
            if fam in FAMILY_VARS and fam != "range" and "done" in g[key]:
                if g[key]["done"].shape[0] != run.n:
                    continue  # computed before newer checkpoints: analyze again to extend it
                stamp = a.get("created", "")
                if fam not in newest or stamp >= newest[fam][0]:
                    newest[fam] = (stamp, key)
        for fam, (_, key) in newest.items():
            grp = g[key]
            fam_params[fam] = dict(grp.attrs["params"])
            results[fam] = {v: np.asarray(grp[v][...]) for v in FAMILY_VARS[fam]}
            done = np.asarray(grp["done"][...])
            for arr in results[fam].values():
                arr[~done] = np.nan
            for d, labels in grp.attrs["coords"].items():
                coords.setdefault(d, labels)
    return _assemble(run, results, fam_params, coords)


# ----------------------------------------------------------------------------- assembly
def _var(name, dims, data, attrs=None):
    long_name, units = VAR_META[name]
    return xr.Variable(("step",) + tuple(dims), data,
                       attrs={"long_name": long_name, "units": units, **(attrs or {})})


def _flat(prefix: str, params: dict) -> dict:
    out = {}
    for k, v in params.items():
        if isinstance(v, dict):
            out.update(_flat(f"{prefix}{k}_", v))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out


def _assemble(run, results, fam_params, coords) -> xr.Dataset:
    ds = xr.Dataset(coords={"step": ("step", run.steps)})
    ds["step"].attrs = {"long_name": "training step", "units": "step"}
    metrics = run.metrics()
    loss_units = "1" if run.config.get("loss") == "mse" else "nats"
    for name in _CURVES:
        if name in metrics:
            ds[name] = _var(name, (), metrics[name])
            if name.endswith("loss"):
                ds[name].attrs["units"] = loss_units
    # MI: one (step, estimator, layer) array per quantity
    mi_parts = []
    for est in ("binning", "adaptive", "kde", "renyi"):
        fam = _MI_FAMILIES[est]
        if fam not in results:
            continue
        r = results[fam]
        if est == "kde":
            mi_parts.append(("kde_upper", r["mi_xt_upper"], r["mi_ty_upper"]))
            mi_parts.append(("kde_lower", r["mi_xt_lower"], r["mi_ty_lower"]))
        else:
            mi_parts.append((est, r["mi_xt"], r["mi_ty"]))
    if mi_parts:
        stack = np.stack if all(isinstance(p[1], np.ndarray) for p in mi_parts) else None
        if stack is None:
            import dask.array as da

            stack = da.stack
        mi_attrs = {}
        present = [e for e in ("binning", "adaptive", "kde", "renyi") if _MI_FAMILIES[e] in fam_params]
        for est in present:
            mi_attrs.update(_flat(f"{est}_", {k: v for k, v in fam_params[_MI_FAMILIES[est]].items()
                                             if k != "probe"}))
        mi_attrs.update(_flat("probe_", fam_params[_MI_FAMILIES[present[0]]]["probe"]))
        mi_attrs["estimator_note"] = (
            "binning/adaptive: plug-in entropy of binned rows; kde_upper/kde_lower: "
            "Kolchinsky-Tracey bounds with noise variance sigma2; renyi: matrix-based alpha-entropy"
        )
        for var, idx in (("mi_xt", 1), ("mi_ty", 2)):
            data = stack([p[idx] for p in mi_parts], 1)
            ds[var] = _var(var, ("estimator", "layer"), data, mi_attrs)
        ds = ds.assign_coords(estimator=("estimator", [p[0] for p in mi_parts]))
    for fam, params in fam_params.items():
        if fam.startswith("mi-") or fam == "range":
            continue
        attrs = _flat("", params)
        for var, dims in FAMILY_VARS[fam].items():
            ds[var] = _var(var, dims, results[fam][var], attrs)
    if "lc" in fam_params:
        ds = ds.assign_coords(split=("split", list(coords["split"])),
                              radius=("radius", np.asarray(coords["radius"], dtype=np.float64)))
        ds["radius"].attrs = {"long_name": "neighbourhood radius", "units": "1"}
    layer_coord = list(coords.get("layer", []))
    if "lc" in fam_params:
        ds = ds.assign_coords(lc_layer=("lc_layer", list(coords["lc_layer"])))
        extra = [c for c in coords["lc_layer"] if c not in layer_coord]
        layer_coord = layer_coord + extra
        lc_vars = [v for v in ("lc", "lc_std") if v in ds]
        moved = ds[lc_vars].rename(lc_layer="layer").reindex(layer=layer_coord)
        ds = ds.drop_vars(lc_vars + ["lc_layer"])
        ds = ds.assign_coords(layer=("layer", layer_coord))
        for v in lc_vars:
            ds[v] = moved[v]
    if "layer" in ds.dims and "layer" not in ds.coords:
        ds = ds.assign_coords(layer=("layer", layer_coord))
    if "matrix" in ds.dims:
        ds = ds.assign_coords(matrix=("matrix", list(coords["matrix"])))
    spec = run.model_spec
    ds.attrs = {
        "run_path": str(run.path),
        "run_name": os.path.basename(str(run.path).rstrip("/")),
        "model": spec.get("name", ""),
        "model_spec": json.dumps(spec),
        "task": json.dumps(run.task),
        "seed": -1 if run.header.get("seed") is None else int(run.header["seed"]),
        "ckptlab_version": __import__("ckptlab").__version__,
    }
    return ds
