"""The writer lock: one writer per archive; readers never take it.

Local archives are locked with ``fcntl.flock`` on a lock file *next to* the archive
(``.run.zarr.lock`` beside ``run.zarr``), not inside it: the lock then covers the final path
while a new archive is built in a temporary sibling and renamed into place, and while
``mode="w"`` replaces an old archive. The kernel drops a flock when its holder dies, however it
dies (SIGKILL included), so a lock left by a dead process is simply taken by the next writer;
no pid polling, no heartbeat, no stale-lock timeout. The file holds a JSON record of the
holder (pid, host, since, command) so a refused writer can say who is writing; the holder
deletes it on release, so a record found by a new holder names a writer that died.

fsspec URLs: ``memory://`` filesystems live inside one process, so an in-process registry
locks them completely. Other URLs (object stores) get the same in-process guard only: there
is no lock between processes or machines (see the README).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from ..errors import ArchiveError, ArchiveLockedError
from . import format as fmt

try:  # POSIX; elsewhere local archives get the in-process guard only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["WriterLock", "lock_path", "read_holder"]

#: Holders that keep the lock for a moment only (a metadata refresh, a repair): a writer that
#: finds one waits up to this many seconds instead of failing at once.
SHORT_WAIT = 10.0
_SHORT = ("publish", "repair")

_registry: dict[str, dict] = {}  # key -> holder record, locks held by this process
_registry_lock = threading.Lock()


def lock_path(path) -> Path | None:
    """The lock file of a local archive (``.run.zarr.lock`` beside it), None for a URL."""
    local = fmt.local_path(path)
    if local is None:
        return None
    real = Path(os.path.realpath(local))
    return real.with_name(f".{real.name}.lock")


def _key(path) -> str:
    lp = lock_path(path)
    return str(lp) if lp is not None else str(path).rstrip("/")


def _record(purpose: str) -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "purpose": purpose,
        "command": " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]])[:200],
    }


def _parse(raw: bytes) -> dict | None:
    try:
        rec = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def read_holder(path) -> dict | None:
    """The record of whoever holds (or, if it died, last held) the writer lock, or None.

    Reading the record takes no lock; a record whose holder died is still returned (see
    :func:`holder_alive`).
    """
    with _registry_lock:
        rec = _registry.get(_key(path))
    if rec is not None:
        return dict(rec)
    lp = lock_path(path)
    if lp is None:
        return None
    try:
        return _parse(lp.read_bytes())
    except OSError:
        return None


def holder_alive(rec: dict | None) -> bool | None:
    """Whether the process of a lock record runs (None: another host, cannot tell)."""
    if not rec or not isinstance(rec.get("pid"), int):
        return None
    if rec.get("host") != socket.gethostname():
        return None
    try:
        os.kill(rec["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(rec: dict | None) -> str:
    """'pid 123 on host h since 2024-...Z (ckptlab train ...)' for messages."""
    if not rec:
        return "another process (its lock record is not written yet)"
    text = f"pid {rec.get('pid')} on host {rec.get('host')} since {rec.get('since')}"
    if rec.get("pid") == os.getpid() and rec.get("host") == socket.gethostname():
        text += ", this very process"
    if rec.get("command"):
        text += f" ({rec['command']})"
    return text


class WriterLock:
    """The exclusive writer lock of one archive.

    Parameters
    ----------
    path : str or path-like
        The archive (directory or fsspec URL); it need not exist yet.
    purpose : str, default "write"
        Recorded for other processes: "write" (a Recorder), "repair", "publish".

    Attributes
    ----------
    previous : dict or None
        After :meth:`acquire`: the record of an earlier holder that died without releasing
        (its lock was taken over), else None.
    """

    def __init__(self, path, *, purpose: str = "write"):
        self.path, self.purpose = path, purpose
        self.previous: dict | None = None
        self._fd: int | None = None
        self._held = False
        self._key = _key(path)
        self._lp = lock_path(path)  # resolved now: a later chdir must not move it

    @property
    def held(self) -> bool:
        return self._held

    def acquire(self, *, wait: float = 0.0) -> WriterLock:
        """Take the lock or raise :class:`ArchiveLockedError` naming the holder.

        Waits up to ``wait`` seconds (longer, up to ``SHORT_WAIT``, while the holder is a
        short repair or metadata refresh).
        """
        deadline = time.monotonic() + wait
        short_deadline = time.monotonic() + SHORT_WAIT
        while True:
            holder = self._try()
            if holder is True:
                return self
            now = time.monotonic()
            short = isinstance(holder, dict) and holder.get("purpose") in _SHORT
            if now < deadline or (short and now < short_deadline):
                time.sleep(0.05)
                continue
            raise ArchiveLockedError(
                f"{self.path!s} is being written by {describe(holder)}: one writer per archive. "
                "Wait for it to finish or stop it; reading (ckptlab info, analyze, open_run) "
                "needs no lock",
                holder=holder if isinstance(holder, dict) else None,
            )

    def _try(self):
        """True when acquired, else the holder's record (or None when unreadable)."""
        rec = _record(self.purpose)
        with _registry_lock:
            if self._key in _registry:
                return dict(_registry[self._key])
            _registry[self._key] = rec
        try:
            ok = self._try_file(rec)
        except BaseException:
            with _registry_lock:
                _registry.pop(self._key, None)
            raise
        if ok is not True:
            with _registry_lock:
                _registry.pop(self._key, None)
            return ok
        self._held = True
        return True

    def _try_file(self, rec: dict):
        lp = self._lp
        if lp is None or fcntl is None:
            return True  # URLs: the in-process registry is all there is
        while True:
            try:
                fd = os.open(lp, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise ArchiveError(
                    f"cannot create the writer lock {lp!s} of {self.path!s}: {exc.strerror}"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raw = _pread_all(fd)
                os.close(fd)
                return _parse(raw)
            except OSError as exc:
                os.close(fd)
                raise ArchiveError(
                    f"cannot lock {lp!s} for writing {self.path!s}: {exc.strerror} (the "
                    "filesystem does not support flock)"
                ) from None
            # The holder deletes the file on release: if we locked a file that was unlinked
            # (or replaced) meanwhile, our lock guards nothing; start again on the new file.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(lp))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            old = _parse(_pread_all(fd))
            self.previous = old if old else None
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(rec).encode(), 0)
            self._fd = fd
            return True

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if not self._held:
            return
        self._held = False
        try:
            if self._fd is not None:
                try:
                    os.unlink(self._lp)  # while still locked: see _try_file
                except OSError:
                    pass
                os.close(self._fd)  # closing drops the flock
                self._fd = None
        finally:
            with _registry_lock:
                _registry.pop(self._key, None)

    def __enter__(self) -> WriterLock:
        if not self._held:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"WriterLock({self.path!s}, held={self._held})"


def _pread_all(fd: int) -> bytes:
    chunks, off = [], 0
    while True:
        b = os.pread(fd, 65536, off)
        if not b:
            return b"".join(chunks)
        chunks.append(b)
        off += len(b)
