"""Check a run archive end to end, and repair what a crash or a bad disk left.

:func:`verify` reads every chunk of every array (params, metrics, data, state, analysis) and
checks its crc32c checksum, then checks the commit record against what is stored: every
params/metrics array holds at least the committed rows, steps increase strictly and agree
between ``params/step`` and ``metrics/step``, the resume state exists, and the snapshot plain
readers use shows exactly the committed checkpoints. Each finding names the array, the chunk and
the checkpoints (positions and training steps) it concerns.

Findings are *errors* (wrong or lost data, or what a plain reader would be shown wrongly) or
*notes* (harmless leftovers, e.g. the uncommitted rows of a writer killed mid-commit, which
ckptlab never shows). :func:`repair` truncates the archive to its longest fully valid prefix of
checkpoints, rewrites the commit record and the snapshot, and removes leftovers; it drops
committed checkpoints only when they are damaged, and says how many.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from dataclasses import dataclass, field

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from ..errors import CkptlabError
from . import format as fmt
from .lock import WriterLock, describe, holder_alive, read_holder

__all__ = ["verify", "repair", "VerifyReport", "Finding"]

_BATCH = 64  # chunks fetched at once (bounds memory on large arrays)


class _AllTrue:
    """Stands in for an unreadable ``done`` mask: every row counts as computed."""

    def __getitem__(self, key):
        return self

    def any(self) -> bool:
        return True


@dataclass(frozen=True)
class Finding:
    """One problem or remark of :func:`verify`.

    Attributes
    ----------
    severity : {"error", "note"}
        Errors make :attr:`VerifyReport.ok` false (and ``ckptlab verify`` exit 1).
    kind : str
        ``checksum``, ``missing-chunk``, ``unreadable``, ``length``, ``steps``, ``commit``,
        ``state``, ``snapshot``, ``uncommitted``, ``leftover``, ``format`` or ``writer``.
    message : str
        What is wrong and what to do, in one sentence or two.
    array, chunk : str or None
        The array (``params/0.weight``) and the chunk's storage key.
    rows, steps : (int, int) or None
        First and last checkpoint position, and training step, concerned (inclusive).
    repairable : bool
        Whether :func:`repair` fixes it.
    """

    severity: str
    kind: str
    message: str
    array: str | None = None
    chunk: str | None = None
    rows: tuple[int, int] | None = None
    steps: tuple[int, int] | None = None
    repairable: bool = False

    def __str__(self) -> str:
        return f"{self.severity}: {self.message}"


@dataclass
class VerifyReport:
    """What :func:`verify` found (and, after a repair, what it did).

    ``committed`` is the commit record's checkpoint count and ``valid`` the length of the
    longest prefix of checkpoints that is fully intact: a repair keeps ``valid`` of them.
    """

    path: str
    format_version: int
    committed: int
    last_step: int | None
    valid: int
    arrays: int = 0
    chunks: int = 0
    nbytes: int = 0
    seconds: float = 0.0
    findings: list[Finding] = field(default_factory=list)
    steps_dropped: tuple[int, int] | None = None  # training steps a repair drops (inclusive)
    repaired: bool = False
    dropped: int = 0
    actions: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def notes(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "note"]

    @property
    def ok(self) -> bool:
        """No errors (notes allowed)."""
        return not self.errors

    @property
    def needs_repair(self) -> bool:
        """Whether :func:`repair` would change anything."""
        return self.valid < self.committed or any(f.repairable for f in self.findings)

    @property
    def to_drop(self) -> int:
        """Committed checkpoints a repair would drop."""
        return self.committed - self.valid

    def repair_question(self) -> str:
        """The confirmation question ``ckptlab verify --repair`` asks."""
        fixes = [f for f in self.findings if f.repairable]
        if self.to_drop:
            lo, hi = self.steps_dropped or (None, None)
            span = f" (steps {lo}..{hi})" if lo is not None else ""
            what = (f"truncate {self.path} to its first {self.valid} checkpoints, dropping "
                    f"{self.to_drop} of {self.committed}{span}")
        else:
            what = f"repair {self.path} (no committed checkpoint is dropped)"
        return f"{what}, and fix {len(fixes)} finding(s)?"

    def summary(self) -> str:
        """Human-readable report: a header line, one line per finding, a result line."""
        span = ""
        if self.committed and self.last_step is not None:
            span = f", last step {self.last_step}"
        lines = [
            f"verify {self.path} (format {self.format_version}): {self.committed} checkpoints "
            f"committed{span}; {self.arrays} arrays, {self.chunks} chunks, "
            f"{_human(self.nbytes)} read in {self.seconds:.1f} s"
        ]
        lines += [f"  {f}" for f in self.findings]
        if self.repaired:
            lines.append(f"repaired: dropped {self.dropped} committed checkpoint(s)" + (
                f" (steps {self.steps_dropped[0]}..{self.steps_dropped[1]})"
                if self.dropped and self.steps_dropped else ""))
            lines += [f"  - {a}" for a in self.actions]
        n_e, n_n = len(self.errors), len(self.notes)
        if self.ok:
            lines.append("ok" + (f" ({n_n} note{'s' * (n_n != 1)})" if n_n else
                                 ": no problems found"))
        else:
            tail = ""
            if self.to_drop:
                kept = (f"checkpoints 0..{self.valid - 1} are intact" if self.valid else
                        "no checkpoint is intact")
                tail = f"; {kept}, a repair keeps {self.valid} of {self.committed}"
            lines.append(f"FAILED: {n_e} error{'s' * (n_e != 1)}, {n_n} note"
                         f"{'s' * (n_n != 1)}{tail}")
        if self.needs_repair and not self.repaired:
            k = sum(f.repairable for f in self.findings)
            lines.append(f"`ckptlab verify {self.path} --repair` would fix {k} of these"
                         + (f", dropping {self.to_drop} committed checkpoint(s)"
                            if self.to_drop else " without dropping a committed checkpoint"))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "path": self.path, "format_version": self.format_version,
            "committed": self.committed, "last_step": self.last_step, "valid": self.valid,
            "arrays": self.arrays, "chunks": self.chunks, "bytes": self.nbytes,
            "ok": self.ok, "needs_repair": self.needs_repair, "repaired": self.repaired,
            "dropped": self.dropped, "actions": list(self.actions),
            "findings": [
                {"severity": f.severity, "kind": f.kind, "message": f.message,
                 "array": f.array, "chunk": f.chunk,
                 "rows": list(f.rows) if f.rows else None,
                 "steps": list(f.steps) if f.steps else None, "repairable": f.repairable}
                for f in self.findings
            ],
        }


async def _get_many(store, keys: list[str]) -> list:
    proto = default_buffer_prototype()
    return await asyncio.gather(*(store.get(k, prototype=proto) for k in keys))


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# ---------------------------------------------------------------------- checking
class _Checker:
    def __init__(self, path):
        self.path = path
        self.root = fmt.open_root(path, mode="r")
        self.store = self.root.store
        self.header = fmt.read_header(self.root)
        commit = self.header.get("commit") or {}
        self.n = int(commit.get("n", 0))
        self.last_step = commit.get("last_step")
        self.slot = commit.get("state_slot")
        self.version = int(self.header.get("format_version", 1))
        self.valid = self.n
        self.findings: list[Finding] = []
        self.arrays = self.chunks = self.nbytes = 0
        self.steps = np.zeros(0, np.int64)
        self.bad_analysis: set[str] = set()
        self.state_bad = False

    def add(self, severity, kind, message, **kw) -> None:
        self.findings.append(Finding(severity, kind, message, **kw))

    def cut(self, k: int) -> None:
        self.valid = max(0, min(self.valid, k))

    def step_span(self, a: int, b: int) -> tuple[int, int] | None:
        """Training steps of positions a..b (inclusive), when known."""
        b = min(b, len(self.steps) - 1)
        if a > b or a < 0:
            return None
        return int(self.steps[a]), int(self.steps[b])

    def where(self, a: int, b: int) -> str:
        s = self.step_span(a, b)
        return f"checkpoints {a}..{b}" + (f", steps {s[0]}..{s[1]}" if s else "")

    # -- chunks
    def scan(self, arr: zarr.Array) -> list[tuple[str, tuple, str]]:
        """Read every chunk of ``arr``; return (key, rows, problem) of the bad ones."""
        self.arrays += 1
        bad = []
        items = list(fmt.chunks(arr))
        crc = fmt.has_checksums(arr)
        for i in range(0, len(items), _BATCH):
            part = items[i : i + _BATCH]
            raws = sync(_get_many(self.store, [k for k, _ in part]))
            for (key, rows), buf in zip(part, raws):
                self.chunks += 1
                if buf is None:
                    bad.append((key, rows, "missing"))
                    continue
                raw = buf.to_bytes()
                self.nbytes += len(raw)
                if crc:
                    if not fmt.chunk_checksum_ok(raw):
                        bad.append((key, rows, "checksum"))
                else:  # format 1: no checksum, so decode it at least
                    try:
                        np.asarray(arr[rows[0] : rows[1]] if arr.ndim else arr[...])
                    except Exception as exc:
                        bad.append((key, rows, f"unreadable ({type(exc).__name__}: {exc})"))
        return bad

    def check_trajectories(self) -> None:
        for g in (fmt.PARAMS, fmt.METRICS):
            if g not in self.root:
                self.add("error", "commit", f"the group {g!r} is missing", array=g)
                self.cut(0)
                continue
            found = set(fmt.array_names(self.root[g]))
            for name in self.root[g].attrs.get("order", []):
                if name not in found and self.n:
                    self.add("error", "length", f"{g}/{name}, a parameter of the model, is "
                             "missing from the archive", array=f"{g}/{name}")
                elif name not in found:
                    self.add("note", "uncommitted", f"{g}/{name} is not created yet: a writer "
                             "stopped inside its first batch (nothing is committed)",
                             array=f"{g}/{name}")
            for name in sorted(fmt.array_names(self.root[g])):
                key = f"{g}/{name}"
                arr = self.root[key]
                length = arr.shape[0] if arr.ndim else 0
                dims = list(arr.metadata.dimension_names or [])
                if not dims or dims[0] != fmt.STEP:
                    self.add("error", "length", f"{key} has dimensions {dims}: its first must be "
                             "'step'", array=key)
                if length < self.n:
                    self.add("error", "length", f"{key} holds {length} rows but {self.n} "
                             f"checkpoints are committed: {self.where(length, self.n - 1)} are "
                             "missing from it", array=key, rows=(length, self.n - 1),
                             repairable=True)
                    self.cut(length)
                elif length > self.n:
                    self.add("note", "uncommitted", f"{key} holds {length - self.n} uncommitted "
                             f"row(s) ({self.n}..{length - 1}) after the {self.n} committed: a "
                             "writer stopped mid-commit. ckptlab and plain xarray show only the "
                             "committed rows; readers of per-array metadata "
                             "(consolidated=False) see these too until a resume or a repair "
                             "removes them", array=key, rows=(self.n, length - 1),
                             repairable=True)
                for ckey, (r0, r1), problem in self.scan(arr):
                    self._chunk_problem(key, ckey, r0, r1, problem)

    def _chunk_problem(self, key, ckey, r0, r1, problem) -> None:
        what = {"checksum": "fails its crc32c checksum (its bytes changed after they were "
                            "written: a disk fault, a truncated or partial copy)",
                "missing": "is missing (it would read back as fill values)"}.get(
                    problem, f"is {problem}")
        kind = problem if problem in ("checksum",) else (
            "missing-chunk" if problem == "missing" else "unreadable")
        if r0 >= self.n:  # past the commit: never shown, removed by a repair
            self.add("note", kind, f"{key} chunk {ckey!r} (rows {r0}..{r1 - 1}, past the "
                     f"commit) {what}", array=key, chunk=ckey, rows=(r0, r1 - 1),
                     repairable=True)
            return
        last = min(r1, self.n) - 1
        self.add("error", kind, f"{key} chunk {ckey!r} ({self.where(r0, last)}) {what}",
                 array=key, chunk=ckey, rows=(r0, last), steps=self.step_span(r0, last),
                 repairable=True)
        self.cut(r0)

    def read_steps(self) -> None:
        """params/step over the committed rows it holds (before naming chunks by step)."""
        key = f"{fmt.PARAMS}/{fmt.STEP}"
        if self.n == 0:
            return
        if fmt.PARAMS not in self.root or fmt.STEP not in self.root[fmt.PARAMS]:
            self.add("error", "steps", f"{key} is missing: the {self.n} committed checkpoints "
                     "have no steps", array=key, repairable=True)
            self.cut(0)
            return
        arr = self.root[key]
        m = min(self.n, arr.shape[0])
        vals = np.zeros(m, np.int64)
        c = arr.chunks[0]
        for a in range(0, m, c):  # chunk by chunk: a bad chunk leaves the others readable
            try:
                vals[a : a + c] = np.asarray(arr[a : min(a + c, m)])
            except Exception:
                vals = vals[:a]
                break
        self.steps = vals

    def check_steps(self) -> None:
        s = self.steps
        if len(s) > 1:
            bad = np.flatnonzero(np.diff(s) <= 0)
            if bad.size:
                j = int(bad[0]) + 1
                self.add("error", "steps", f"params/step does not increase at checkpoint {j}: "
                         f"step {int(s[j])} after step {int(s[j - 1])}", array="params/step",
                         rows=(j, j), steps=(int(s[j]), int(s[j])), repairable=True)
                self.cut(j)
        key = f"{fmt.METRICS}/{fmt.STEP}"
        if self.n and fmt.METRICS in self.root and fmt.STEP in self.root[fmt.METRICS]:
            arr = self.root[key]
            m = min(len(s), arr.shape[0])
            try:
                ms = np.asarray(arr[:m])
            except Exception:
                ms = None  # its chunks are reported already
            if ms is not None:
                diff = np.flatnonzero(ms != s[:m])
                if diff.size:
                    j = int(diff[0])
                    self.add("error", "steps", f"metrics/step differs from params/step at "
                             f"checkpoint {j}: {int(ms[j])} vs {int(s[j])}", array=key,
                             rows=(j, j), repairable=True)
                    self.cut(j)
        if self.n and len(s) == self.n and self.last_step != int(s[-1]):
            self.add("error", "commit", f"the commit record's last_step is {self.last_step} but "
                     f"the last committed checkpoint has step {int(s[-1])}", repairable=True)

    def check_group(self, g: str) -> None:
        """Data, state and analysis arrays: every chunk."""
        if g not in self.root:
            return
        docs = fmt.read_tree(self.store, g)
        for path in sorted(k for k, d in docs.items() if d.get("node_type") == "array"):
            try:
                arr = zarr.open_array(self.store, path=path, mode="r")
            except Exception as exc:
                self._other(g, path, None, f"cannot be opened ({type(exc).__name__}: {exc})")
                continue
            done = self._done_mask(path) if g == fmt.ANALYSIS else None
            for ckey, (r0, r1), problem in self.scan(arr):
                if problem == "missing" and done is not None and not done[r0:r1].any():
                    # rows an analysis has not computed yet (a killed or running one): the
                    # cache grows without writing them, and they read as not done
                    continue
                what = {"checksum": "fails its crc32c checksum",
                        "missing": "is missing"}.get(problem, f"is {problem}")
                self._other(g, path, ckey, what)

    def _done_mask(self, path: str):
        """The ``done`` mask of the analysis cache holding ``path`` (all True if unreadable,
        so that nothing is excused)."""
        import numpy as np

        family = "/".join(path.split("/")[:2])
        try:
            arr = zarr.open_array(self.store, path=f"{family}/done", mode="r")
            return np.asarray(arr[...], dtype=bool)
        except Exception:
            return _AllTrue()

    def _other(self, g, path, ckey, what) -> None:
        chunk = f" chunk {ckey!r}" if ckey else ""
        if g == fmt.ANALYSIS:
            family = "/".join(path.split("/")[:2])
            self.bad_analysis.add(family)
            self.add("error", "checksum" if "checksum" in what else "unreadable",
                     f"{path}{chunk} {what}: the cached analysis {family} is unusable; a repair "
                     "deletes it and the next `ckptlab analyze` recomputes it", array=path,
                     chunk=ckey, repairable=True)
        elif g == fmt.STATE:
            slot = path.split("/")[1]
            if slot == self.slot:
                self.add("error", "state", f"{path}{chunk} {what}: the resume state is lost; a "
                         "repair drops it (the run reads fine but cannot be resumed)",
                         array=path, chunk=ckey, repairable=True)
                self.state_bad = True
            else:
                self.add("note", "leftover", f"{path}{chunk} {what} (a leftover slot, not the "
                         "committed one)", array=path, chunk=ckey, repairable=True)
        else:
            self.add("error", "checksum" if "checksum" in what else "unreadable",
                     f"{path}{chunk} {what}: the run's data cannot be recovered from this "
                     "archive (re-create it from the task, then copy the archive's other groups)",
                     array=path, chunk=ckey)

    def check_state(self) -> None:
        slots = (set(fmt.list_children(self.store, fmt.STATE)) if fmt.STATE in self.root
                 else set())
        if self.slot is not None and self.slot not in slots:
            self.add("error", "state", f"the committed resume state {fmt.STATE}/{self.slot} is "
                     "missing; a repair drops it from the commit (the run reads fine but cannot "
                     "be resumed)", array=f"{fmt.STATE}/{self.slot}", repairable=True)
            self.state_bad = True
        for s in sorted(slots - {self.slot}):
            self.add("note", "leftover", f"{fmt.STATE}/{s} is not the committed resume state (a "
                     "writer stopped between two commits)", array=f"{fmt.STATE}/{s}",
                     repairable=True)

    def check_snapshot(self) -> None:
        if self.version < fmt.SNAPSHOT_SINCE:
            self.add("note", "format", f"format {self.version}: chunks carry no checksums "
                     "(each was decoded instead, which misses most flipped bits) and plain "
                     "xarray readers read per-array metadata (after a crash they may see "
                     "uncommitted rows)")
            return
        doc = fmt.read_root_doc(self.store) or {}
        cm = (doc.get("consolidated_metadata") or {}).get("metadata")
        if not isinstance(cm, dict):
            self.add("note", "snapshot", "the root holds no snapshot (consolidated metadata): "
                     "plain xarray readers fall back to per-array metadata, with a warning; a "
                     "repair rewrites it", repairable=True)
            return
        for g in (fmt.PARAMS, fmt.METRICS):
            if g not in self.root:
                continue
            for name in sorted(fmt.array_names(self.root[g])):
                key = f"{g}/{name}"
                d = cm.get(key)
                if d is None:  # created by a batch that was never committed
                    self.add("note", "snapshot", f"{key} is not in the snapshot plain xarray "
                             "readers use (it was created after the last commit); a resume "
                             "or a repair adds it", array=key, repairable=True)
                elif (d.get("shape") or [None])[0] != self.n:
                    self.add("error", "snapshot", f"the snapshot plain xarray readers use shows "
                             f"{d['shape'][0]} rows of {key}, not the {self.n} committed",
                             array=key, repairable=True)
        if fmt.ANALYSIS in self.root:
            for fam in sorted(fmt.group_names(self.root[fmt.ANALYSIS])):
                key = f"{fmt.ANALYSIS}/{fam}"
                if key not in cm:
                    self.add("note", "snapshot", f"{key} is not in the snapshot yet: plain "
                             f"xarray readers of it need consolidated=False until a repair or "
                             "the next commit rewrites the snapshot", array=key,
                             repairable=True)

    def check_leftovers(self) -> None:
        local = fmt.local_path(self.path)
        if local is None:
            return
        junk = [p for p in local.rglob("*.partial")]
        if junk:
            self.add("note", "leftover", f"{len(junk)} temporary file(s) of an interrupted write "
                     f"(e.g. {junk[0].relative_to(local)})", repairable=True)

    def check_writer(self) -> None:
        rec = read_holder(self.path)
        if rec and holder_alive(rec) is not False:
            self.add("note", "writer", f"a writer holds the lock ({describe(rec)}): rows past "
                     "the commit may be in flight, and a repair waits for it to finish")

    def run(self) -> VerifyReport:
        t0 = time.perf_counter()
        self.check_writer()
        self.read_steps()
        self.check_trajectories()
        self.check_steps()
        for g in (fmt.DATA, fmt.STATE, fmt.ANALYSIS):
            self.check_group(g)
        self.check_state()
        self.check_snapshot()
        self.check_leftovers()
        report = VerifyReport(
            path=str(self.path), format_version=self.version, committed=self.n,
            last_step=self.last_step, valid=self.valid, arrays=self.arrays,
            chunks=self.chunks, nbytes=self.nbytes, findings=self.findings,
            seconds=time.perf_counter() - t0,
        )
        if self.valid < self.n:
            report.steps_dropped = self.step_span(self.valid, self.n - 1)
        return report


def verify(path, *, repair: bool = False) -> VerifyReport:
    """Read every chunk of an archive and check it against its commit record.

    Parameters
    ----------
    path : str or path-like
        Directory or fsspec URL of the archive.
    repair : bool, default False
        Also repair what was found (see :func:`repair`), then verify again. The returned
        report is the second one, with ``repaired``, ``dropped`` and ``actions`` set.

    Returns
    -------
    VerifyReport
        ``report.ok`` is false when any error was found; ``print(report.summary())``.

    Raises
    ------
    ArchiveNotFoundError, NotAnArchiveError, FormatVersionError
        Nothing to verify at ``path``.
    ArchiveLockedError
        With ``repair=True``, while another process writes the archive.
    """
    report = _Checker(path).run()
    if repair and report.needs_repair:
        return _repair_entry(path, report)
    return report


# ---------------------------------------------------------------------- repair
def repair(path, report: VerifyReport) -> VerifyReport:
    """Bring an archive back to its longest fully valid prefix of checkpoints.

    Keeps checkpoints ``0 .. report.valid - 1``: rewrites the commit record (and the snapshot
    plain readers use), cuts every params/metrics array to that length (removing rows a killed
    writer left past the commit), drops a resume state that is damaged or newer than the kept
    checkpoints, deletes damaged analysis caches (recomputed by the next analyze), leftover
    state slots and temporary files. Takes the writer lock.

    Parameters
    ----------
    path : str or path-like
        The archive ``report`` was made of.
    report : VerifyReport
        A report of :func:`verify` (what the user confirmed).

    Returns
    -------
    VerifyReport
        A fresh verification after the repair, with ``repaired``, ``dropped`` and ``actions``.

    Raises
    ------
    ArchiveLockedError
        Another process is writing the archive.
    CkptlabError
        The archive was committed to since ``report`` was made (verify it again).
    """
    with WriterLock(path, purpose="repair").acquire(wait=0.0):
        chk = _Checker(path)
        if chk.n != report.committed or chk.last_step != report.last_step:
            raise CkptlabError(
                f"{path!s} changed since it was verified (commit of {report.committed} "
                f"checkpoints, now {chk.n}): verify it again before repairing"
            )
        actions = _repair(chk, report)
    after = _Checker(path).run()
    after.repaired, after.dropped, after.actions = True, report.to_drop, actions
    after.steps_dropped = report.steps_dropped
    return after


_repair_entry = repair  # verify()'s own `repair` argument hides the function there


def _repair(chk: _Checker, report: VerifyReport) -> list[str]:
    root = zarr.open_group(fmt.open_store(chk.path, read_only=False), mode="r+")
    store = root.store
    k = report.valid
    actions = []
    steps = np.asarray(root[f"{fmt.PARAMS}/{fmt.STEP}"][:k]) if k else np.zeros(0, np.int64)
    last_step = int(steps[-1]) if k else None
    slot = chk.slot
    state_findings = [f for f in report.findings if f.kind == "state" and f.severity == "error"]
    bad_analysis = sorted({"/".join(f.array.split("/")[:2]) for f in report.findings
                           if f.severity == "error" and f.array
                           and f.array.startswith(fmt.ANALYSIS + "/")})
    if slot is not None:
        m = re.fullmatch(r"step(\d+)", slot)
        newer = m is not None and (last_step is None or int(m.group(1)) > last_step)
        if state_findings or newer:
            actions.append(f"dropped the resume state {fmt.STATE}/{slot}"
                           + (" (damaged)" if state_findings else
                              " (no checkpoint is kept)" if last_step is None else
                              f" (it is of step {m.group(1)}, after the kept checkpoints)")
                           + ": the run reads fine but cannot be resumed")
            slot = None
    header = fmt.read_header(root)
    old = dict(header.get("commit") or {})
    header["commit"] = {"n": k, "last_step": last_step, "state_slot": slot}
    attrs = {**dict(root.attrs), fmt.ATTR_KEY: header}
    snapshot = chk.version >= fmt.SNAPSHOT_SINCE

    def write_commit():
        if snapshot:
            nodes = fmt.clamp_to_commit(fmt.read_tree(store), k)
            nodes = {p: d for p, d in nodes.items() if not _under(p, bad_analysis)
                     and not (p.startswith(fmt.STATE + "/") and p != f"{fmt.STATE}/{slot}")}
            fmt.write_root(store, attrs, nodes)
        else:
            root.attrs[fmt.ATTR_KEY] = header

    # the commit first: from here on every reader sees the kept checkpoints only
    write_commit()
    if old.get("n") != k or old.get("last_step") != last_step or old.get("state_slot") != slot:
        actions.append(f"rewrote the commit record: {old.get('n')} -> {k} checkpoints"
                       + (f", last step {last_step}" if k else ""))
    cut = 0
    for g in (fmt.PARAMS, fmt.METRICS):
        if g not in root:
            continue
        for name in list(fmt.array_names(root[g])):
            arr = root[f"{g}/{name}"]
            if arr.shape[0] != k:
                arr.resize((k,) + tuple(arr.shape[1:]))
                cut += 1
    if cut:
        actions.append(f"cut {cut} params/metrics array(s) to {k} rows")
    if fmt.STATE in root:
        for s in fmt.list_children(store, fmt.STATE):
            if s != slot:
                fmt.delete_child(store, fmt.STATE, s)
                actions.append(f"deleted the state slot {fmt.STATE}/{s}")
    for fam in bad_analysis:
        try:
            del root[fam]
            actions.append(f"deleted the damaged analysis cache {fam}")
        except KeyError:
            pass
    local = fmt.local_path(chk.path)
    if local is not None:
        junk = list(local.rglob("*.partial"))
        for p in junk:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        if junk:
            actions.append(f"removed {len(junk)} temporary file(s)")
    write_commit()  # the snapshot of what is left
    if snapshot:
        actions.append("rewrote the snapshot plain xarray readers use")
    return actions


def _under(path: str, prefixes) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)
