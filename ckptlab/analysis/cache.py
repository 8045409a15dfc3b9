"""Analysis results stored inside the run archive, one group per metric family and parameters.

``analysis/<family>-<hash>/`` holds one array per result variable (dims ``step`` plus the
family's own), a ``done`` mask over checkpoints, and attrs with the family name, its exact
parameters and the coordinate labels. A later analysis computes only the rows whose ``done`` is
false: new checkpoints of a run still training, or blocks an interrupted analysis did not
finish. Different parameters hash to a different group, so they never reuse old results.

Several analyses may run on one archive at once (a notebook beside the CLI): a group appears
whole or not at all (a local one is built under a temporary name and renamed into place; the
first rename wins and the others use it), values are written before the ``done`` mask, and
rows are only ever written with whole chunks of identical, deterministic results, so whichever
analysis finishes first, no partial entry is ever read as complete.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import uuid

import numpy as np
import zarr

from ..store import format as fmt
from ..store.reader import read_rows

__all__ = ["FamilyCache", "list_families"]


def list_families(root: zarr.Group) -> dict[str, dict]:
    """Existing cached families: key -> attrs."""
    if fmt.ANALYSIS not in root:
        return {}
    g = root[fmt.ANALYSIS]
    return {k: dict(g[k].attrs) for k in g.group_keys() if not k.startswith(".")}


class FamilyCache:
    """The stored results of one family (opened or created for ``steps``)."""

    def __init__(self, root: zarr.Group, key: str, family: str, params: dict,
                 coords: dict, var_dims: dict, steps: np.ndarray, chunk: int, run_id: str,
                 path=None):
        self.family, self.key = family, key
        self.var_dims = dict(var_dims)
        self.path = path
        try:
            analysis = root.require_group(fmt.ANALYSIS)
        except zarr.errors.ContainsGroupError:  # another analysis created it just now
            analysis = root[fmt.ANALYSIS]
        n = len(steps)
        coords = {d: list(v) for d, v in coords.items()}
        self.group = None
        if key in analysis:
            g = analysis[key]
            ok = (
                g.attrs.get("run_id") == run_id
                and "done" in g
                and g["done"].shape[0] <= n
                and g.attrs.get("coords") == coords
            )
            if ok:
                old = np.asarray(g["step"][...])
                ok = np.array_equal(old, steps[: len(old)])
            if ok:
                self.group = g
                self._grow(n, steps)
            else:  # a different run or rewritten history: start this family afresh
                del analysis[key]
        if self.group is None:
            self.group = self._create(root, analysis, key, family, params, coords, steps,
                                      chunk, run_id)
        self.done = np.asarray(self.group["done"][...])

    def _create(self, root, analysis, key, family, params, coords, steps, chunk, run_id):
        local = fmt.local_path(self.path) if self.path is not None else None
        name = key if local is None else f".{key}.{uuid.uuid4().hex[:8]}.partial"
        g = analysis.create_group(name)
        n = len(steps)
        kw = dict(config={"write_empty_chunks": True}, **fmt.plain_codecs(8))
        g.create_array("step", shape=(n,), dtype=np.int64, chunks=(chunk,),
                       dimension_names=["step"], fill_value=0, **kw)
        g["step"][...] = steps
        g.create_array("done", shape=(n,), dtype=bool, chunks=(chunk,),
                       dimension_names=["step"], fill_value=False, **kw)
        for var, dims in self.var_dims.items():
            shape = (n,) + tuple(len(coords[d]) for d in dims)
            g.create_array(var, shape=shape, dtype=np.float64, chunks=(chunk,) + shape[1:],
                           dimension_names=["step", *dims], fill_value=np.nan, **kw)
        g.attrs.update({"family": family, "params": params,
                        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                        "coords": coords, "run_id": run_id})
        if local is None:
            return g
        # Appear whole or not at all: another analysis of the same family may race us here.
        src = local / fmt.ANALYSIS / name
        dst = local / fmt.ANALYSIS / key
        try:
            os.rename(src, dst)
        except OSError:  # it won: use its group (same key, same parameters, same results)
            shutil.rmtree(src, ignore_errors=True)
        fmt.fsync_dir(dst.parent)
        return zarr.open_group(root.store, path=f"{fmt.ANALYSIS}/{key}", mode="r+")

    def _grow(self, n: int, steps: np.ndarray) -> None:
        """Room for new checkpoints. The new rows read as their fill value (NaN, not done)
        without being written, so a concurrent analysis's results are never overwritten."""
        g = self.group
        old = g["done"].shape[0]
        if old == n:
            return
        for name in g.array_keys():
            arr = g[name]
            if arr.shape[0] < n:
                arr.resize((n,) + tuple(arr.shape[1:]))
        g["step"][old:n] = steps[old:n]

    @property
    def coords(self) -> dict:
        return dict(self.group.attrs["coords"])

    def write(self, start: int, values: dict) -> None:
        """Store rows [start, start + m) and mark them done (the mask last)."""
        m = None
        for var, arr in values.items():
            self.group[var][start : start + len(arr)] = arr
            m = len(arr)
        self.group["done"][start : start + m] = np.ones(m, bool)
        self.done[start : start + m] = True

    def read(self) -> dict[str, np.ndarray]:
        """Every variable; a damaged chunk raises a ChecksumError naming it."""
        done = read_rows(self.group["done"], slice(None), path=self.path)
        out = {}
        for v in self.var_dims:
            arr = read_rows(self.group[v], slice(None), path=self.path)
            arr[~done] = np.nan
            out[v] = arr
        return out
