"""``ckptlab.analyze``: every progress measure over every checkpoint, with Dask, as xarray.

Orchestration only, and the same for every model: the options are validated, the model is
obtained (the caller's ``model=``, or a ckptlab model rebuilt from the archive's spec) and its
layers resolved into taps; each measure family (:mod:`ckptlab.analysis.families`) prepares its
fixed inputs once; checkpoints are split into blocks, each a Dask task that reads its own
checkpoints from the archive (:func:`~ckptlab.analysis.compute.compute_block`); results are
written back to the archive as blocks finish, so an interrupted analysis resumes where it
stopped; the labelled Dataset is assembled from the families' output descriptions.
"""

from __future__ import annotations

import functools
import json
import math
import os
import warnings

import dask
import numpy as np
import xarray as xr

from .._checks import check_choice, check_int
from .._progress import progress_bar
from ..errors import CkptlabError, SchedulerError, ValidationError
from ..store import Run
from ..store import format as fmt
from .batched_mlp import batched_model
from .cache import FamilyCache
from .capture import (
    CapturedModel,
    ModelSource,
    check_state_fits,
    narrow_dummy_ok,
    resolve_layer_map,
    user_source,
)
from .compute import Plan, compute_block
from .families import DATASET_HOOKS, FAMILIES, INTERNAL, NotApplicable, Setup
from .memory import BLOCK_BYTES, FREE_SHARE, block_budget
from .options import METRICS, SUBSET_CAPS, AnalysisOptions, family_key

__all__ = ["analyze", "load_analysis", "VAR_META", "DEFAULT_ESTIMATORS", "BLOCK_BYTES"]


#: MI estimators computed unless told otherwise (see ``analyze``'s ``estimators``).
DEFAULT_ESTIMATORS = ("binning", "kde", "kde_rel", "renyi_norm", "pca_binning")

_CURVES = {
    "train_loss": ("train loss", "nats"),
    "test_loss": ("test loss", "nats"),
    "train_acc": ("train accuracy", "1"),
    "test_acc": ("test accuracy", "1"),
}

#: long_name and units of every output variable (the families' and the run's curves).
VAR_META = {
    **{(o.var or name): (o.long_name, o.units)
       for cls in FAMILIES.values() for name, o in cls.outputs.items()},
    **_CURVES,
}


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


def _names(arg: str, value):
    """None, one name or a sequence of names (str or dict entries) for the layer options."""
    if value is None:
        return None
    if isinstance(value, (str, dict)):
        return [value]
    try:
        out = list(value)
    except TypeError:
        raise ValidationError(f"{arg} must be a module name or a list of them, got {value!r}")
    if not out:
        raise ValidationError(f"{arg} must not be empty")
    return out


def _family_options(options: dict) -> dict:
    """Validate the options that belong to one family (declared in its ``options``)."""
    known = {}
    for cls in FAMILIES.values():
        known.update(cls.options)
    unknown = [k for k in options if k not in known]
    if unknown:
        raise TypeError(
            f"analyze() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}")
    return {k: (opt.check(k, options[k]) if k in options else opt.default)
            for k, opt in known.items()}


def analyze(
    path,
    *,
    model=None,
    layers=None,
    embedding=None,
    lmn_from=None,
    preacts=None,
    position: int | None = None,
    metrics=None,
    estimators=DEFAULT_ESTIMATORS,
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
    lc_activations: str = "piecewise_linear",
    include_output: bool = False,
    clip: bool = True,
    lmn_samples: int | None = None,
    constant_rule: str = "one",
    seed: int = 0,
    block_size: int | None = None,
    batched: bool | None = None,
    scheduler: str = "threads",
    n_workers: int | None = None,
    device: str = "cpu",
    store: bool = True,
    compute: bool = True,
    progress: bool | None = None,
    **options,
) -> xr.Dataset:
    """Compute progress measures on every checkpoint of a run; return one labelled Dataset.

    Parameters
    ----------
    path : str or path-like
        The run archive (directory or fsspec URL). Workers open it themselves.
    model : torch.nn.Module or callable, optional
        The model the checkpoints belong to: a module instance or a zero-argument factory
        returning one; each checkpoint's state dict is loaded into (a copy of) it. Default: a
        ckptlab model rebuilt from the archive's spec. An archive recorded from a model of
        another class needs it (the error says which class was recorded).
    layers : sequence of str, optional
        Modules whose outputs are the hidden representations T (MI, representation rank), as
        in ``model.named_modules()``; ``"name[k]"`` is the k-th call of a module that runs
        several times. Default: every call of an activation module (``nn.ReLU``, ``nn.GELU``,
        ``nn.Tanh``, ``nn.SiLU``, ...) in the order they run (ckptlab's models: their named
        hidden layers).
    embedding : str, optional
        Module whose output is the first continuous representation, where local-complexity
        neighbourhoods and LMN paths live for token inputs. Default: the first
        ``nn.Embedding`` for integer inputs, the input itself otherwise.
    lmn_from : str, optional
        Module whose output is where the linear mapping number cuts the network. Default: the
        embedding for token inputs, the first hidden layer otherwise.
    preacts : sequence of str, optional
        Modules whose *inputs* local complexity counts. Default: the activation modules.
    position : int, optional
        For sequence models: read only this position (e.g. -1) of every hidden layer with
        3 or more dims and of the logits.
    metrics : sequence of str, optional
        Families to compute: ``"mi"`` (mutual information per layer), ``"lc"`` (local
        complexity), ``"lmn"`` (linear mapping number), ``"weights"`` (norms and ranks of the
        weight matrices), ``"rank"`` (effective rank of each layer's representation). Default:
        every family that applies to the model (one that does not is skipped with a warning
        saying why); a family asked for by name that does not apply is an error.
    estimators : sequence of str, default DEFAULT_ESTIMATORS
        MI estimators. The sources': ``"binning"`` (Shwartz-Ziv & Tishby), ``"adaptive"``
        (equal-mass bins, Chelombiev et al.), ``"kde"`` (Kolchinsky-Tracey upper and lower
        bounds, Saxe et al.), ``"renyi"`` (matrix-based Renyi alpha-entropy); at a resolution
        relative to the layer (they measure something on wide layers, where the sources'
        sit at log2 N): ``"kde_rel"`` (KDE bounds with noise ``c x`` the mean k-th-neighbour
        distance, for each ``c`` in ``resolutions``), ``"renyi_norm"`` (Renyi on z-scored
        units, Tapia and Estevez), ``"pca_binning"`` and ``"pca_knn"`` (whitened PCA to
        ``pca_dims`` dimensions, then equal-mass bins, or noise of ``c`` units and a
        Kozachenko-Leonenko estimate). ``mi_xt`` / ``mi_ty`` hold the estimators without a
        resolution (dim ``estimator``: ``binning``, ``adaptive``, ``kde_upper``,
        ``kde_lower``, ``renyi``, ``renyi_norm``, ``pca_binning``); ``mi_xt_rel`` /
        ``mi_ty_rel`` the others (dims ``rel_estimator``, ``resolution``). Every MI variable
        comes with ``<var>_ceiling`` (log2 N, or H(Y)) and ``<var>_saturated``, the fraction
        of checkpoints at the ceiling or at 0. Default: binning, kde, kde_rel, renyi_norm,
        pca_binning (adaptive, renyi and pca_knn on request: the first two measured saturated
        or flat wherever binning and KDE are, pca_knn costs the most).
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
    lc_activations : {"piecewise_linear", "any"}, default "piecewise_linear"
        Which activations' pre-activations local complexity counts. Linear regions exist only
        where activations are piecewise linear (ReLU, LeakyReLU, Hardtanh, ...): smooth ones
        (GELU, tanh, SiLU) are left out, and a model with none has no local complexity.
        ``"any"`` counts sign changes of every activation's pre-activation (the zero set).
        Explicit ``preacts`` are counted as given.
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
    block_size : int, optional
        Checkpoints per Dask task; memory is bounded by one block per worker. Default: from
        the model's size and the probe set (a block's parameters and hidden representations
        within :data:`BLOCK_BYTES`, or within a quarter of the free memory shared by the
        workers where that is less: see :mod:`ckptlab.analysis.memory`), at most 128, and
        small enough that every worker gets at least 4 blocks. An archive analysed before
        keeps its cached block size.
    batched : bool, optional
        Evaluate a block's checkpoints together (``torch.func.functional_call`` under
        ``vmap``: m checkpoints x N inputs as a few large batched matmuls) or one at a time.
        Default: batched when the model allows it (checked on the first and last checkpoint
        against the one-at-a-time result); a model that cannot be vmapped (data-dependent
        control flow) falls back with one warning. Both give the same numbers up to float
        rounding.
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
        A progress bar over blocks; by default only on a terminal or in a notebook.
    **options
        Options of one family only: ``resolutions`` (default (0.1, 0.3, 1, 3): the relative
        resolutions of ``kde_rel`` and ``pca_knn``), ``scale_rule`` ("knn", "rms" or
        "median": the spread ``kde_rel`` is relative to), ``scale_k`` (10), ``s0`` (1.0, the
        width factor of ``renyi_norm``), ``pca_dims`` (4), ``pca_bins`` (4).

    Returns
    -------
    xarray.Dataset
        Dims ``step``, ``layer``, ``estimator``, ``split``, ``radius``, ``matrix``; every
        variable has ``long_name`` and ``units`` and its parameters in attrs; the run's own
        train/test loss and accuracy are included. ``attrs["layer_modules"]`` and
        ``attrs["preact_modules"]`` say which module each layer label was read from.

    Raises
    ------
    ValidationError
        Unknown metric or estimator, an impossible parameter, a subset larger than its set, a
        model that does not fit the checkpoints, a layer name the model does not have, a
        family asked for by name that does not apply to the model.
    SchedulerError
        The scheduler address does not answer.
    ArchiveError
        The archive cannot be read, or holds no checkpoints or no data.
    """
    explicit = dict(probe_size=probe_size, kde_samples=kde_samples, renyi_samples=renyi_samples,
                    n_directions=n_directions, lc_points=lc_points, lmn_samples=lmn_samples)
    opts = AnalysisOptions(
        metrics=METRICS if metrics is None else metrics, estimators=estimators, n_bins=n_bins,
        binning_range=binning_range, sigma2=sigma2, alpha=alpha, gamma=gamma, probe=probe,
        radii=radii, lc_splits=lc_splits, include_output=include_output, clip=clip,
        constant_rule=constant_rule, lc_activations=lc_activations, position=position,
        seed=seed, **{k: v for k, v in explicit.items() if v is not None},
    ).validated(tuple(c.estimator for c in FAMILIES.values() if c.estimator))
    extra = _family_options(options)
    taps = {"layers": _names("layers", layers), "preacts": _names("preacts", preacts),
            "embedding": embedding, "lmn_from": lmn_from}
    for k in ("embedding", "lmn_from"):
        if taps[k] is not None and not isinstance(taps[k], (str, dict)):
            raise ValidationError(f"{k} must be a module name, got {taps[k]!r}")
    explicit["preacts"] = taps["preacts"]
    if block_size is not None:
        check_int("block_size", block_size, min=1)
    if batched is not None and not isinstance(batched, bool):
        raise ValidationError(f"batched must be None or a bool, got {batched!r}")
    check_choice("device", device, ("cpu", "cuda"))
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValidationError("device 'cuda' was asked for but torch sees no CUDA device")
    for name, v in (("store", store), ("compute", compute)):
        if not isinstance(v, bool):
            raise ValidationError(f"{name} must be a bool, got {v!r}")
    kind, client = _resolve_scheduler(scheduler, n_workers)
    _refuse_worker_bootstrap()
    try:
        return _analyze(path, opts, extra, explicit, taps, model, metrics is not None,
                        block_size, batched, kind, client, n_workers, device, store, compute,
                        progress)
    finally:
        if client is not None:
            client.close()


# ----------------------------------------------------------------------------- plan
def _selected(opts) -> list[type]:
    """The family classes the options ask for, in registry order."""
    out = []
    for cls in FAMILIES.values():
        if cls.metric not in opts.metrics:
            continue
        if cls.estimator is not None and cls.estimator not in opts.estimators:
            continue
        out.append(cls)
    return out


def _archive_source(run: Run) -> ModelSource:
    """A ckptlab model rebuilt from the archive's spec, through the fixed registry only."""
    from ..models import build_model

    spec = run.model_spec
    if not spec:
        info = run.model_info
        recorded = (f"it was recorded from a model of class {info['class']}, which ckptlab "
                    "does not import from an archive" if info.get("class")
                    else "it records no model")
        raise ValidationError(
            f"{run.path}: {recorded}: pass the model: ckptlab.analyze(path, model=...) with "
            "the module or a factory returning it (CLI: --model MODULE:FACTORY); "
            "metrics=('weights',) needs no model")
    probe_model = build_model(spec)
    return ModelSource(functools.partial(build_model, spec), f"ckptlab.{spec.get('name')}",
                       probe_model.analysis_taps())


def _probe(opts, explicit, data) -> dict:
    parts = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}
    names = ("train", "test") if opts.probe == "all" else (opts.probe,)
    x_all = np.concatenate([data[parts[s][0]] for s in names])
    y_all = np.concatenate([data[parts[s][1]] for s in names]).astype(np.int64)
    n = len(x_all)
    k = explicit["probe_size"]
    if k is None:
        k = min(SUBSET_CAPS["probe_size"], n)
    elif k > n:
        raise ValidationError(f"probe_size must be <= the number of probe examples ({n}), got {k}")
    if k < n:
        rng = np.random.default_rng([opts.seed, __import__("zlib").crc32(b"probe")])
        idx = np.sort(rng.permutation(n)[:k])
    else:
        idx = np.arange(n)
    return {"x": x_all[idx], "y": y_all[idx],
            "params": {"probe": opts.probe, "n": int(k), "seed": opts.seed}}


def _analyze(path, opts, extra, explicit, taps, user_model, explicit_metrics, block_size,
             batched, kind, client, n_workers, device, store, compute, progress):
    path = str(path)
    if kind == "processes" and fmt.is_url(path) and path.startswith("memory://"):
        raise ValidationError(
            "a memory:// archive lives in this process only: use scheduler 'threads' or "
            "'synchronous' for it"
        )
    run = Run(path)
    if run.n == 0:
        raise CkptlabError(f"{path}: the archive holds no checkpoints to analyse")
    wanted = _selected(opts)
    needs = set().union(*(cls.needs for cls in wanted)) if wanted else set()
    data = run.data() if "data" in needs else {}
    if "data" in needs:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in data]
        if missing:
            raise CkptlabError(
                f"{path}: the archive holds no {', '.join(missing)}: analysis needs the run's "
                "data (pass data= to the Recorder, or --data to ckptlab import); "
                "metrics=('weights',) needs none")
    sd0 = run.state_dict(0)
    names_shapes = {k: tuple(v.shape) for k, v in sd0.items()}
    matrix_names = [k for k, v in sd0.items() if v.ndim >= 2 and v.is_floating_point()]
    float_names = [k for k, v in sd0.items() if v.is_floating_point()]

    source = layer_map = first = last = None
    x_ref, narrow = None, False
    probe = {"x": None, "y": None, "params": None}
    if "model" in needs:
        source = user_source(user_model) if user_model is not None else _archive_source(run)
        module = source.build()
        check_state_fits(module, names_shapes, source.description)
        probe = _probe(opts, explicit, data)
        x_ref = np.asarray(data["x_train"][:1])
        layer_map = resolve_layer_map(
            module, data["x_train"][:8], layers=taps["layers"], preacts=taps["preacts"],
            embedding=taps["embedding"], lmn_from=taps["lmn_from"], position=opts.position,
            defaults=source.defaults)
        first = CapturedModel(module, layer_map, x_ref, position=opts.position)
        first.load(sd0)
        if run.n > 1:
            last = CapturedModel(source.build(), layer_map, x_ref, position=opts.position)
            last.load(run.state_dict(run.n - 1))
    elif user_model is not None:
        user_source(user_model)  # still check what was passed
    setup = Setup(opts=opts, extra=extra, explicit=explicit, data=data, layer_map=layer_map,
                  probe=probe, model=first, last_model=last, matrix_names=matrix_names,
                  float_names=float_names, run_header=run.header)

    families = {}
    for cls in wanted:
        try:
            families[cls.name] = cls(setup)
        except NotApplicable as why:
            if explicit_metrics:
                raise ValidationError(f"{cls.name} cannot be computed for this model: {why}") \
                    from None
            warnings.warn(f"{cls.name}: skipped: {why}", RuntimeWarning, stacklevel=3)
    if not families:
        raise ValidationError(
            f"{path}: none of the measures asked for ({', '.join(opts.metrics)}) applies to "
            "this model")
    if first is not None:  # at the cuts the families substitute at, the LMN's as it chose
        lmn_cut = families["lmn"].cut if "lmn" in families else None
        narrow = narrow_dummy_ok([m for m in (first, last) if m is not None],
                                 first.as_input(data["x_train"][:8]),
                                 cuts=(layer_map.embedding, layer_map.lmn_from, lmn_cut))
    internal = {}
    if "mi-binning" in families:
        internal["range"] = INTERNAL["range"](setup)

    if batched is None:
        batched = source is not None and _can_batch(first, last, data["x_train"][:8])
    # One torch thread per task: parallelism comes from the Dask workers, and intra-op threads
    # on top of them oversubscribe the cores (several times slower on a shared machine).
    plan = Plan(path=path, families={**families, **internal}, source=source,
                layer_map=layer_map, x_ref=x_ref, x_probe=probe["x"], y_probe=probe["y"],
                position=opts.position, threads=1, device=device, batched=bool(batched),
                narrow=narrow)
    if block_size is None:
        block_size = _auto_block_size(run.n, sd0, first, probe["x"], kind, n_workers,
                                      device, client)
    runner = _Runner(run, plan, block_size, kind, client, n_workers, store, progress)
    try:
        for fam in families.values():
            fam.prepare(runner)
        results = runner.compute(families) if compute else runner.lazy(families)
    finally:
        runner.close()
    described = {name: (type(f), f.params, f.coords) for name, f in families.items()}
    ds = _assemble(run, results, described)
    if layer_map is not None:
        def where(t):
            call = f"[{t.call}]" if t.call else ""
            pos = "" if t.position is None else f", position {t.position}"
            return f"{t.module}{call}{'' if t.side == 'output' else ' (input)'}{pos}"

        ds.attrs["layer_modules"] = json.dumps({t.label: where(t) for t in layer_map.layers})
        ds.attrs["preact_modules"] = json.dumps({t.label: where(t) for t in layer_map.preacts})
        if not run.model_spec:
            ds.attrs["model"] = source.description
    return ds


def _auto_block_size(n: int, sd0: dict, model, x_probe, kind: str, n_workers,
                     device: str = "cpu", client=None) -> int:
    """Checkpoints per block: within the memory budget, <= 128, >= 4 blocks per worker.

    The budget is :data:`BLOCK_BYTES` per worker, less where the free memory of this machine
    (and of the GPU) is short (:func:`~ckptlab.analysis.memory.block_budget`); a Dask
    cluster's workers hold a block per thread within their own memory limits.
    """
    per = sum(v.numel() * v.element_size() for v in sd0.values())
    if model is not None and x_probe is not None and model.map.layers:
        import torch

        with torch.no_grad():
            reps = model.representations(x_probe[:2], model.map.layers)
        # as computed, the kernels' temporaries (binning codes, the KDE subset and tiles,
        # row hashes) and the heap's growth around them: about 32 bytes per value, measured
        # on the digits MLP (peak less the RSS between blocks, 115 MiB for 9 checkpoints)
        per += len(x_probe) * sum(int(v.shape[1]) for v in reps.values()) * 32
    workers = 1 if kind == "synchronous" else (n_workers or os.cpu_count() or 1)
    if kind == "distributed":
        budget, workers = _cluster_budget(client), _cluster_threads(client) or workers
    else:
        budget = block_budget(device, workers)
    by_memory = max(1, budget // max(per, 1))
    by_tasks = max(1, -(-n // (4 * workers)))
    return int(max(1, min(128, by_memory, max(4, by_tasks))))


def _cluster_info(client) -> dict:
    try:
        return dict(client.scheduler_info().get("workers", {}))
    except Exception:  # an old or unusual client: the default budget
        return {}


def _cluster_threads(client) -> int:
    return sum(int(w.get("nthreads", 1)) for w in _cluster_info(client).values())


def _cluster_budget(client) -> int:
    """BLOCK_BYTES, or less: FREE_SHARE of the smallest worker memory limit per thread."""
    budget = BLOCK_BYTES
    for w in _cluster_info(client).values():
        limit = w.get("memory_limit") or 0
        if limit:
            budget = min(budget, int(FREE_SHARE * limit) // max(1, int(w.get("nthreads", 1))))
    return max(1, budget)


def _can_batch(first: CapturedModel, last: CapturedModel | None, x) -> bool:
    """Whether the model evaluates under ``vmap`` with the results of one-at-a-time calls.

    Tried on the first and last checkpoint (a few inputs, every tap the families use); a
    model with data-dependent control flow, in-place updates of its inputs or ``.item()``
    calls fails under vmap and is evaluated one checkpoint at a time instead (one warning).
    """
    import torch

    models = [m for m in (first, last) if m is not None]
    states = [{k: v for k, v in m.module.state_dict().items()} for m in models]
    stacked = {k: torch.stack([s[k] for s in states]) for k in states[0]}
    lm = first.map
    try:
        with torch.no_grad():
            bm = batched_model(first, stacked)
            got = []
            if lm.layers:
                got.append(bm.representations(x, lm.layers))
            if lm.input_kind == "continuous" or lm.embedding is not None:
                e = bm.embed(x)
                got.append({"logits": bm.from_embedding(e, lm.preacts)[0]})
            ok = True
            for j, m in enumerate(models):
                want = []
                if lm.layers:
                    want.append(m.representations(x, lm.layers))
                if lm.input_kind == "continuous" or lm.embedding is not None:
                    want.append({"logits": m.from_embedding(m.embed(x), lm.preacts)[0]})
                for g, w in zip(got, want):
                    for k in w:
                        tol = 1e-4 if w[k].dtype == torch.float32 else 1e-10
                        scale = max(float(w[k].abs().max()), 1.0)
                        ok &= bool(torch.allclose(g[k][j], w[k], rtol=0, atol=tol * scale,
                                                  equal_nan=True))
        first.load(states[0])  # the one-at-a-time calls above reloaded nothing, but be sure
    except Exception as exc:  # anything vmap refuses: fall back, same results
        warnings.warn(
            f"analysis: the model cannot be evaluated with its checkpoints batched "
            f"(torch.func.vmap: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "checkpoints are evaluated one at a time (same results, slower)",
            RuntimeWarning, stacklevel=4)
        return False
    if not ok:
        warnings.warn("analysis: the model gives other results with its checkpoints batched "
                      "than one at a time; checkpoints are evaluated one at a time",
                      RuntimeWarning, stacklevel=4)
    return ok


_GUARD_HINT = ("scheduler='processes' starts workers that import the script which called "
               "analyze; in a script, call it under `if __name__ == '__main__':`")


def _refuse_worker_bootstrap() -> None:
    """Stop at once where a starting worker re-runs an unguarded script's top level: it would
    start workers of its own, and the parent would only see its pool broken."""
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise SchedulerError("analyze was called while a worker process was starting: "
                             + _GUARD_HINT)


def _worker_context(dask_default):
    """Where the user chose none (dask's ``multiprocessing.context``): a fork server that has
    imported the analysis once, so each later pool forks ready workers instead of spawning
    interpreters that import torch again (about 2 s per analysis). Else dask's choice."""
    import multiprocessing

    if dask.config.get("multiprocessing.context", None) is not None or \
            "forkserver" not in multiprocessing.get_all_start_methods():
        return dask_default()
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["ckptlab.analysis.compute"])
    return ctx


class _Runner:
    """Blocks -> Dask tasks -> results (cached in the archive as they finish)."""

    def __init__(self, run, plan, block_size, kind, client, n_workers, store, progress):
        self.run, self.plan = run, plan
        self.kind, self.client, self.n_workers = kind, client, n_workers
        self.store, self.progress = store, progress
        self.chunk = block_size
        self.n = run.n
        self.run_id = str(run.header.get("created")) + ":" + str(run.steps[0])
        self._pool = None

    def _process_pool(self):
        """One pool of worker processes for every pass of this analysis (the pre-pass and the
        main one): dask would start and import torch in a new pool per compute call."""
        if self._pool is None:
            from concurrent.futures import ProcessPoolExecutor
            from functools import partial

            from dask.multiprocessing import get_context, initialize_worker_process

            # dask's own recipe: consistent hashing in the workers, its worker initialiser
            if os.environ.get("PYTHONHASHSEED") in (None, "0"):
                os.environ["PYTHONHASHSEED"] = "6640"
            self._pool = ProcessPoolExecutor(
                self.n_workers or os.cpu_count() or 1, mp_context=_worker_context(get_context),
                initializer=partial(initialize_worker_process, user_initializer=None))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _caches(self, families):
        import zarr

        root = zarr.open_group(fmt.open_store(self.run.path, read_only=False), mode="r+")
        # Blocks must cover whole chunks of every family's cache (a partial-chunk write is a
        # read-modify-write, which a concurrent analysis could interleave): new caches take
        # the chunk of those already stored.
        chunks = set()
        if fmt.ANALYSIS in root:
            g = root[fmt.ANALYSIS]
            for name, fam in families.items():
                key = family_key(name, fam.key_params())
                if key in g and "done" in g[key]:
                    chunks.add(int(g[key]["done"].chunks[0]))
        if chunks:
            lcm = math.lcm(*chunks)
            self.chunk = lcm if lcm <= 1024 else max(chunks)
        caches = {}
        for name, fam in families.items():
            key = family_key(name, fam.key_params())
            caches[name] = FamilyCache(root, key, name, fam.params, fam.coords,
                                       _var_dims(type(fam)), self.run.steps, self.chunk,
                                       self.run_id, path=self.run.path)
        return caches

    def _blocks(self):
        return [(a, min(a + self.chunk, self.n)) for a in range(0, self.n, self.chunk)]

    def compute(self, families: dict) -> dict:
        if self.store:
            caches = self._caches(families)
        else:
            caches = {}
        out = {name: {v: np.full((self.n,) + tuple(len(fam.coords[d]) for d in o.dims), np.nan)
                      for v, o in type(fam).outputs.items()}
               for name, fam in families.items()}
        todo = []
        for a, b in self._blocks():
            fams = tuple(f for f in families if not (f in caches and caches[f].done[a:b].all()))
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
        if caches and todo:
            # plain xarray readers see new analysis groups once the snapshot is rewritten
            fmt.publish(self.run.path)
        if nonfinite:
            warnings.warn(
                f"{len(set(nonfinite))} checkpoint(s) hold NaN/Inf parameters (steps "
                f"{sorted(set(nonfinite))[:10]}{' ...' if len(set(nonfinite)) > 10 else ''}): "
                "their measures are NaN",
                RuntimeWarning,
                stacklevel=4,
            )
        return out

    def _execute(self, todo, accept) -> None:
        if not todo:
            return
        bar = progress_bar(len(todo), enabled=self.progress, desc="analyze", unit="block")

        def tick():
            bar.update(1)
        # zero-padded: dask runs independent tasks in the order of their keys, and unpadded
        # ones sort 90-100 between 900-910 and 890-900, so a block rarely followed the one
        # beside it and the reader's kept chunks were seldom read again
        width = len(str(self.n))

        def key(a, b):
            return f"ckptlab-block-{a:0{width}d}-{b:0{width}d}"
        tasks = {
            key(a, b): dask.delayed(compute_block, pure=False)(
                self.plan, a, b, fams, self.n, dask_key_name=key(a, b))
            for a, b, fams in todo
        }
        spans = {key(a, b): (a, b) for a, b, _ in todo}
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
        if self.kind == "processes":
            # one block per dispatch: dask's default batches 6, which with a few blocks per
            # worker leaves one worker with most of them
            kw.update(pool=self._process_pool(), chunksize=1)
        from concurrent.futures.process import BrokenProcessPool

        try:
            with _Collect():
                dask.compute(*tasks.values(), **kw)
        except BrokenProcessPool as e:  # close() shuts the broken pool down
            raise SchedulerError(
                "a worker process died (killed for memory, or it failed while importing the "
                f"main script: {_GUARD_HINT})") from e
        bar.close()

    def activation_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-layer min and max of the probe set's activations over every checkpoint."""
        res = self.compute({"range": self.plan.families["range"]})["range"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            return np.nanmin(res["act_min"], axis=0), np.nanmax(res["act_max"], axis=0)

    def lazy(self, families: dict) -> dict:
        import dask.array as da

        out = {name: {v: [] for v in type(f).outputs} for name, f in families.items()}
        names = tuple(families)
        for a, b in self._blocks():
            d = dask.delayed(compute_block, pure=True)(self.plan, a, b, names, self.n)
            for name, fam in families.items():
                for v, o in type(fam).outputs.items():
                    shape = (b - a,) + tuple(len(fam.coords[x]) for x in o.dims)
                    out[name][v].append(da.from_delayed(d[name][v], shape=shape,
                                                        dtype=np.float64))
        return {name: {v: da.concatenate(parts) for v, parts in vs.items()}
                for name, vs in out.items()}


def _var_dims(cls) -> dict:
    return {v: o.dims for v, o in cls.outputs.items()}


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
    results, described = {}, {}
    if fmt.ANALYSIS in root:
        g = root[fmt.ANALYSIS]
        newest: dict = {}
        for key in g.group_keys():
            if key.startswith("."):
                continue  # a group still being built (or left by a killed analysis)
            a = g[key].attrs
            fam = a.get("family")
            if fam in FAMILIES and "done" in g[key]:
                if g[key]["done"].shape[0] != run.n:
                    continue  # computed before newer checkpoints: analyze again to extend it
                stamp = a.get("created", "")
                if fam not in newest or stamp >= newest[fam][0]:
                    newest[fam] = (stamp, key)
        for fam in FAMILIES:  # registry order, as analyze assembles them
            if fam not in newest:
                continue
            grp = g[newest[fam][1]]
            cls = FAMILIES[fam]
            if not all(v in grp for v in cls.outputs):
                continue  # written by another version of the family
            results[fam] = {v: np.asarray(grp[v][...]) for v in cls.outputs}
            done = np.asarray(grp["done"][...])
            for arr in results[fam].values():
                arr[~done] = np.nan
            described[fam] = (cls, dict(grp.attrs["params"]), dict(grp.attrs["coords"]))
    return _assemble(run, results, described)


# ----------------------------------------------------------------------------- assembly
def _stack(parts):
    if all(isinstance(p, np.ndarray) for p in parts):
        return np.stack(parts, 1)
    import dask.array as da

    return da.stack(parts, 1)


def _assemble(run, results, described) -> xr.Dataset:
    """One Dataset from per-family results, laid out by the families' output descriptions."""
    ds = xr.Dataset(coords={"step": ("step", run.steps)})
    ds["step"].attrs = {"long_name": "training step", "units": "step"}
    metrics = run.metrics()
    loss_units = "1" if run.config.get("loss") == "mse" else "nats"
    for name, (long_name, units) in _CURVES.items():
        if name in metrics:
            units = loss_units if name.endswith("loss") else units
            ds[name] = xr.Variable(("step",), metrics[name],
                                   attrs={"long_name": long_name, "units": units})
    coords: dict = {}
    # var -> a Variable, or the parts of a stacked one: [(label, data, output, attrs, params)];
    # variables appear in the order their families (then outputs) come
    entries: dict = {}
    for name, (cls, params, fam_coords) in described.items():
        for d, labels in fam_coords.items():
            coords.setdefault(d, list(labels))
        attrs = cls.attrs_of(params)
        for out_name, o in cls.outputs.items():
            data = results[name][out_name]
            var = o.var or out_name
            if o.label is not None:
                entries.setdefault(var, []).append((o.label, data, o, attrs, params))
            else:
                entries[var] = xr.Variable(
                    ("step", *o.dims), data,
                    attrs={"long_name": o.long_name, "units": o.units, **attrs})
    consts: dict = {}  # var -> [(label, value, long_name, units)]
    for name, (cls, params, _) in described.items():
        for (var, label), (value, long_name, units, sdim) in cls.constants(params).items():
            consts.setdefault(var, []).append((label, value, long_name, units, sdim))
    for var, entry in entries.items():
        if isinstance(entry, xr.Variable):
            ds[var] = entry
            continue
        o = entry[0][2]
        attrs = {"long_name": o.long_name, "units": o.units}
        for _, _, _, a, _ in entry:
            attrs.update(a)
        probe = entry[0][4].get("probe")
        if isinstance(probe, dict):
            attrs.update({f"probe_{k}": v for k, v in probe.items()})
        ds[var] = xr.Variable(("step", o.stack_dim, *o.dims), _stack([p[1] for p in entry]),
                              attrs=attrs)
        ds = ds.assign_coords({o.stack_dim: (o.stack_dim, [p[0] for p in entry])})
    for var, parts in consts.items():
        sdim = parts[0][4]
        labels = list(ds[sdim].values) if sdim in ds.coords else [p[0] for p in parts]
        vals = dict((p[0], p[1]) for p in parts)
        ds[var] = xr.Variable((sdim,), np.array([vals.get(lab, np.nan) for lab in labels]),
                              attrs={"long_name": parts[0][2], "units": parts[0][3]})
    for hook in DATASET_HOOKS:
        ds = hook(ds)
    layer_coord = list(coords.get("layer", []))
    if "lc_layer" in coords:
        # local complexity's layers (pre-activations) share the `layer` dim with the hidden
        # layers of the same name; the logits ("output") join it when counted
        extra = [c for c in coords["lc_layer"] if c not in layer_coord]
        layer_coord = layer_coord + extra
        lc_vars = [v for v in ds.data_vars if "lc_layer" in ds[v].dims]
        ds = ds.assign_coords(lc_layer=("lc_layer", list(coords["lc_layer"])))
        moved = ds[lc_vars].rename(lc_layer="layer").reindex(layer=layer_coord)
        ds = ds.drop_vars(lc_vars + ["lc_layer"])
        ds = ds.assign_coords(layer=("layer", layer_coord))
        for v in lc_vars:
            ds[v] = moved[v]
    if "layer" in ds.dims and "layer" not in ds.coords:
        ds = ds.assign_coords(layer=("layer", layer_coord))
    if "split" in coords and "split" in ds.dims:
        ds = ds.assign_coords(split=("split", list(coords["split"])))
    if "radius" in coords and "radius" in ds.dims:
        ds = ds.assign_coords(radius=("radius", np.asarray(coords["radius"], dtype=np.float64)))
        ds["radius"].attrs = {"long_name": "neighbourhood radius", "units": "1"}
    if "matrix" in ds.dims:
        ds = ds.assign_coords(matrix=("matrix", list(coords["matrix"])))
    if "resolution" in ds.dims:
        ds = ds.assign_coords(resolution=("resolution", np.asarray(coords["resolution"], float)))
        ds["resolution"].attrs = {"long_name": "resolution relative to the layer's spread",
                                  "units": "1"}
    spec = run.model_spec
    info = run.model_info
    ds.attrs = {
        "run_path": str(run.path),
        "run_name": os.path.basename(str(run.path).rstrip("/")),
        "model": spec.get("name", "") or info.get("class", ""),
        "model_spec": json.dumps(spec),
        "task": json.dumps(run.task),
        "seed": -1 if run.header.get("seed") is None else int(run.header["seed"]),
        "ckptlab_version": __import__("ckptlab").__version__,
    }
    return ds
