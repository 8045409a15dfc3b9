"""Analysis results stored inside the run archive, one group per metric family and parameters.

``analysis/<family>-<hash>/`` holds one array per result variable (dims ``step`` plus the
family's own), a ``done`` mask over checkpoints, and attrs with the family name, its exact
parameters and the coordinate labels. A later analysis computes only the rows whose ``done`` is
false: new checkpoints of a run still training, or blocks an interrupted analysis did not
finish. Different parameters hash to a different group, so they never reuse old results.
"""

from __future__ import annotations

import numpy as np
import zarr

from ..store import format as fmt
from .compute import FAMILY_VARS

__all__ = ["FamilyCache", "list_families"]


def list_families(root: zarr.Group) -> dict[str, dict]:
    """Existing cached families: key -> attrs."""
    if fmt.ANALYSIS not in root:
        return {}
    g = root[fmt.ANALYSIS]
    return {k: dict(g[k].attrs) for k in g.group_keys()}


class FamilyCache:
    """The stored results of one family (opened or created for ``steps``)."""

    def __init__(self, root: zarr.Group, key: str, family: str, params: dict,
                 coords: dict, steps: np.ndarray, chunk: int, run_id: str):
        self.family, self.key = family, key
        analysis = root.require_group(fmt.ANALYSIS)
        n = len(steps)
        self.group = None
        if key in analysis:
            g = analysis[key]
            ok = (
                g.attrs.get("run_id") == run_id
                and "done" in g
                and g["done"].shape[0] <= n
                and g.attrs.get("coords") == {d: list(v) for d, v in coords.items()}
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
            self.group = self._create(analysis, key, family, params, coords, steps, chunk, run_id)
        self.done = np.asarray(self.group["done"][...])

    @staticmethod
    def _create(analysis, key, family, params, coords, steps, chunk, run_id):
        g = analysis.create_group(key)
        n = len(steps)
        kw = dict(config={"write_empty_chunks": True}, **fmt.plain_codecs(8))
        g.create_array("step", shape=(n,), dtype=np.int64, chunks=(chunk,),
                       dimension_names=["step"], fill_value=0, **kw)
        g["step"][...] = steps
        g.create_array("done", shape=(n,), dtype=bool, chunks=(chunk,),
                       dimension_names=["step"], fill_value=False, **kw)
        g["done"][...] = np.zeros(n, bool)
        for var, dims in FAMILY_VARS[family].items():
            shape = (n,) + tuple(len(coords[d]) for d in dims)
            g.create_array(var, shape=shape, dtype=np.float64, chunks=(chunk,) + shape[1:],
                           dimension_names=["step", *dims], fill_value=np.nan, **kw)
            g[var][...] = np.full(shape, np.nan)
        import datetime as _dt

        g.attrs.update({"family": family, "params": params,
                        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                        "coords": {d: list(v) for d, v in coords.items()}, "run_id": run_id})
        return g

    def _grow(self, n: int, steps: np.ndarray) -> None:
        g = self.group
        old = g["done"].shape[0]
        if old == n:
            return
        for name in g.array_keys():
            arr = g[name]
            arr.resize((n,) + tuple(arr.shape[1:]))
            fill = False if name == "done" else (0 if name == "step" else np.nan)
            arr[old:n] = np.full((n - old,) + tuple(arr.shape[1:]), fill, dtype=arr.dtype)
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
        return {v: np.asarray(self.group[v][...]) for v in FAMILY_VARS[self.family]}
