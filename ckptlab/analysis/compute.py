"""Per-block computation: rebuild the model, load each checkpoint, capture layers, run kernels.

:func:`compute_block` is what one Dask task runs. It receives the archive *path* (never the
parameters: the worker reads its block of checkpoints itself) and a :class:`Plan` holding the
small fixed inputs shared by all blocks (probe indices, LC directions, binning ranges), and
returns small numpy arrays of results. It has no side effects.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from ..metrics import lmn as lmn_k
from ..metrics import local_complexity as lc_k
from ..metrics import mi as mi_k
from ..metrics import weights as w_k
from ..models import build_model
from ..store import Run

__all__ = ["Plan", "compute_block", "FAMILY_VARS"]

#: Variables each family produces, with their dims after "step".
FAMILY_VARS: dict[str, dict[str, tuple[str, ...]]] = {
    "mi-binning": {"mi_xt": ("layer",), "mi_ty": ("layer",)},
    "mi-adaptive": {"mi_xt": ("layer",), "mi_ty": ("layer",)},
    "mi-kde": {
        "mi_xt_upper": ("layer",),
        "mi_ty_upper": ("layer",),
        "mi_xt_lower": ("layer",),
        "mi_ty_lower": ("layer",),
    },
    "mi-renyi": {"mi_xt": ("layer",), "mi_ty": ("layer",)},
    "lc": {
        "lc": ("split", "radius", "lc_layer"),
        "lc_std": ("split", "radius", "lc_layer"),
        "lc_total": ("split", "radius"),
        "lc_total_std": ("split", "radius"),
    },
    "lmn": {"lmn": ()},
    "weights": {
        "weight_norm": (),
        "frobenius_norm": ("matrix",),
        "spectral_norm": ("matrix",),
        "stable_rank": ("matrix",),
        "effective_rank": ("matrix",),
    },
    "rank": {"rep_effective_rank": ("layer",)},
    "range": {"act_min": ("layer",), "act_max": ("layer",)},
}


@dataclass
class Plan:
    """Fixed inputs shared by every block of one analysis (small; shipped to workers)."""

    path: str
    params: dict  # family -> its parameter dict (as cached)
    layer_names: list
    preact_names: list
    matrix_names: list
    x_probe: np.ndarray  # probe inputs (tokens or floats)
    y_probe: np.ndarray
    x_renyi: np.ndarray | None = None  # float input representation for the Renyi I(X;T)
    kde_idx: np.ndarray | None = None
    renyi_idx: np.ndarray | None = None
    lmn_x: np.ndarray | None = None
    lc_x: dict = field(default_factory=dict)  # split -> inputs (train/test) ; "random" -> u in [0,1]^D
    directions: np.ndarray | None = None
    input_bounds: tuple | None = None  # clip box for continuous inputs, else None
    ranges: dict = field(default_factory=dict)  # layer -> (lo, hi) for fixed binning
    threads: int = 1
    device: str = "cpu"


@functools.lru_cache(maxsize=4)
def _open(path: str, n_hint: int) -> Run:
    # one Run per worker process and archive state; n_hint keys it to the archive's length
    return Run(path)


def _finite(sd: dict) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in sd.values() if t.is_floating_point())


def compute_block(plan: Plan, start: int, stop: int, families: tuple, n_hint: int = 0) -> dict:
    """Results of ``families`` for checkpoints [start, stop) of the archive ``plan.path``.

    Returns ``{"finite": bool (m,), family: {var: ndarray (m, ...)}}``. A checkpoint whose
    parameters hold NaN or Inf yields NaN for every measure (the orchestrator warns).
    """
    torch.set_num_threads(plan.threads)
    run = _open(plan.path, n_hint)
    block = run.params(start, stop)
    m = stop - start
    dev = torch.device(plan.device)
    model = build_model(run.model_spec).to(dev)
    names = list(block)
    sds = [{k: torch.from_numpy(block[k][i]) for k in names} for i in range(m)]
    finite = np.array([_finite(sd) for sd in sds])
    out: dict = {"finite": finite}
    fams = set(families)

    need_hidden = fams & {"mi-binning", "mi-adaptive", "mi-kde", "mi-renyi", "rank", "range"}
    hidden = {name: [] for name in plan.layer_names}
    lc_rows: list = []
    lmn_vals: list = []
    x_probe = _as_input(plan.x_probe, model, dev)
    for i, sd in enumerate(sds):
        model.load_state_dict(sd)
        model.train(False)  # inference mode: no dropout or batch-norm updates
        with torch.no_grad():
            if need_hidden:
                o = model.trunk(model.embed(x_probe))
                for name in plan.layer_names:
                    hidden[name].append(o.hidden[name].double().cpu().numpy())
            if "lc" in fams:
                lc_rows.append(_lc_one(plan, model, dev, finite[i]))
        if "lmn" in fams:
            lmn_vals.append(_lmn_one(plan, model, dev) if finite[i] else np.nan)

    if need_hidden:
        hid = {k: np.stack(v) for k, v in hidden.items()}  # (m, N, d) per layer
        y = plan.y_probe
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if "range" in fams:
                out["range"] = {
                    "act_min": np.stack([_nanmin(hid[k]) for k in plan.layer_names], 1),
                    "act_max": np.stack([_nanmax(hid[k]) for k in plan.layer_names], 1),
                }
            if "mi-binning" in fams:
                p = plan.params["mi-binning"]
                xt, ty = zip(*(
                    mi_k.mi_binning(hid[k], y, n_bins=p["n_bins"], lo=plan.ranges[k][0],
                                    hi=plan.ranges[k][1])
                    for k in plan.layer_names
                ))
                out["mi-binning"] = {"mi_xt": _col(xt, m), "mi_ty": _col(ty, m)}
            if "mi-adaptive" in fams:
                p = plan.params["mi-adaptive"]
                xt, ty = zip(*(mi_k.mi_adaptive(hid[k], y, n_bins=p["n_bins"])
                               for k in plan.layer_names))
                out["mi-adaptive"] = {"mi_xt": _col(xt, m), "mi_ty": _col(ty, m)}
            if "mi-kde" in fams:
                p = plan.params["mi-kde"]
                idx, yk = plan.kde_idx, y[plan.kde_idx]
                # both bounds from one distance computation per layer
                per_layer = [mi_k.mi_kde_bounds(hid[k][:, idx], yk, sigma2=p["sigma2"])
                             for k in plan.layer_names]
                names = ("mi_xt_upper", "mi_ty_upper", "mi_xt_lower", "mi_ty_lower")
                out["mi-kde"] = {v: _col([r[j] for r in per_layer], m)
                                 for j, v in enumerate(names)}
            if "mi-renyi" in fams:
                p = plan.params["mi-renyi"]
                idx = plan.renyi_idx
                xt, ty = zip(*(mi_k.mi_renyi(plan.x_renyi, hid[k][:, idx], y[idx],
                                             alpha=p["alpha"], gamma=p["gamma"])
                               for k in plan.layer_names))
                out["mi-renyi"] = {"mi_xt": _col(xt, m), "mi_ty": _col(ty, m)}
            if "rank" in fams:
                out["rank"] = {"rep_effective_rank": np.array(
                    [[w_k.representation_effective_rank(hid[k][i]) for k in plan.layer_names]
                     for i in range(m)])}
        # a diverged checkpoint: NaN everywhere, whatever the kernels made of it
        for fam in need_hidden:
            for arr in out[fam].values():
                arr[~finite] = np.nan
    if "lc" in fams:
        keys = ("lc", "lc_std", "lc_total", "lc_total_std")
        out["lc"] = {k: np.stack([r[k] for r in lc_rows]) for k in keys}
    if "lmn" in fams:
        out["lmn"] = {"lmn": np.array(lmn_vals, dtype=np.float64)}
    if "weights" in fams:
        out["weights"] = _weights(plan, block, finite)
    return out


def _col(values, m) -> np.ndarray:
    """Per-layer kernel outputs (each a scalar or an (m,) array) -> (m, n_layers)."""
    return np.stack([np.broadcast_to(np.asarray(v, dtype=np.float64), (m,)) for v in values], 1)


def _nanmin(a):
    return np.nanmin(np.where(np.isfinite(a), a, np.nan).reshape(len(a), -1), axis=1)


def _nanmax(a):
    return np.nanmax(np.where(np.isfinite(a), a, np.nan).reshape(len(a), -1), axis=1)


def _as_input(x: np.ndarray, model, dev) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(x))
    if model.input_kind == "tokens":
        return t.long().to(dev)
    return t.to(dev, next(iter(model.parameters())).dtype)


def _preact_fn(model):
    def fn(v):
        o = model.trunk(v)
        return [*o.preacts.values(), o.logits]

    return fn


def _lc_one(plan: Plan, model, dev, finite: bool) -> dict:
    p = plan.params["lc"]
    splits, radii = p["splits"], p["radii"]
    n_layers = len(plan.preact_names) + (1 if p["include_output"] else 0)
    shape = (len(splits), len(radii))
    res = {
        "lc": np.full(shape + (n_layers,), np.nan),
        "lc_std": np.full(shape + (n_layers,), np.nan),
        "lc_total": np.full(shape, np.nan),
        "lc_total_std": np.full(shape, np.nan),
    }
    if not finite:
        return res
    dtype = next(iter(model.parameters())).dtype
    directions = torch.from_numpy(plan.directions).to(dev, dtype)
    lower = upper = None
    if plan.input_bounds is not None:
        lower, upper = plan.input_bounds
    fn = _preact_fn(model)
    emb_box = None
    for si, split in enumerate(splits):
        if split == "random":
            u = torch.from_numpy(plan.lc_x["random"]).to(dev, dtype)
            if emb_box is None:
                e = model.embed(_as_input(plan.x_probe, model, dev))
                emb_box = (e.amin(0), e.amax(0))
            points = emb_box[0] + u * (emb_box[1] - emb_box[0])
        else:
            points = model.embed(_as_input(plan.lc_x[split], model, dev))
        for ri, r in enumerate(radii):
            counts = lc_k.local_complexity(
                points, fn, directions=directions, radius=r, lower=lower, upper=upper,
                include_output=p["include_output"],
            ).double()
            total = counts.sum(1)
            res["lc"][si, ri] = counts.mean(0).cpu().numpy()
            res["lc_std"][si, ri] = counts.std(0).cpu().numpy()
            res["lc_total"][si, ri] = total.mean().item()
            res["lc_total_std"][si, ri] = total.std().item()
    return res


def _lmn_one(plan: Plan, model, dev) -> float:
    p = plan.params["lmn"]
    to_h, head = model.lmn_split()
    with torch.no_grad():
        h = to_h(_as_input(plan.lmn_x, model, dev))
        return float(lmn_k.linear_mapping_number(h, head, constant_rule=p["constant_rule"]))


def _weights(plan: Plan, block: dict, finite: np.ndarray) -> dict:
    m = len(finite)
    stats = {k: np.full((m, len(plan.matrix_names)), np.nan)
             for k in ("frobenius_norm", "spectral_norm", "stable_rank", "effective_rank")}
    for j, name in enumerate(plan.matrix_names):
        s = w_k.matrix_stats(block[name], batch_ndim=1)
        for k in stats:
            stats[k][:, j] = s[k]
    floats = [v for v in block.values() if np.issubdtype(v.dtype, np.floating)]
    res = {"weight_norm": np.asarray(w_k.total_l2_norm(floats), dtype=np.float64), **stats}
    for arr in res.values():
        arr[~finite] = np.nan
    return res
