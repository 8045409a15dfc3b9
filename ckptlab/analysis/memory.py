"""How much memory a block of checkpoints may take: the budget, shrunk to what is free.

The analysis bounds its memory by one block of checkpoints per worker. A block is sized to
:data:`BLOCK_BYTES`, or to a share of the memory that is actually free when that is less: on a
busy or small machine, in a container with a memory limit, on a GPU that holds other work.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path

__all__ = ["BLOCK_BYTES", "FREE_SHARE", "HEAP_KEEP", "block_budget", "free_bytes",
           "release_free_heap"]

#: Memory a block's checkpoints may take (parameters, hidden representations) by default.
BLOCK_BYTES = 128 << 20

#: At most this share of the free memory goes to the blocks of all workers together: the
#: per-checkpoint estimate is approximate, and the user's process holds other data too.
FREE_SHARE = 0.25


def _meminfo_available(text: str) -> int | None:
    """``MemAvailable`` of a ``/proc/meminfo`` text, in bytes (None if it is not there)."""
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
    return None


def _cgroup_free(limit_file: Path, usage_file: Path) -> int | None:
    """Bytes left under a cgroup memory limit (limit less usage); None when the group has no
    limit (v2 ``max``, v1 a number near 2^63) or the files are not there."""
    try:
        limit = limit_file.read_text().strip()
        usage = usage_file.read_text().strip()
    except OSError:
        return None
    if not limit.isdigit() or not usage.isdigit() or int(limit) >= 1 << 60:
        return None
    return max(0, int(limit) - int(usage))


def _cgroup_files(cgroup_text: str, root: Path = Path("/sys/fs/cgroup")):
    """(limit, usage) file pairs of this process's memory cgroup, v2 and v1, each at the path
    ``/proc/self/cgroup`` names and at the mount's root (where a container sees its own)."""
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        rel = parts[2].strip().lstrip("/")
        if parts[0] == "0" and parts[1] == "":  # v2
            for d in dict.fromkeys((root / rel, root)):
                yield d / "memory.max", d / "memory.current"
        elif "memory" in parts[1].split(","):  # v1
            for d in dict.fromkeys((root / "memory" / rel, root / "memory")):
                yield d / "memory.limit_in_bytes", d / "memory.usage_in_bytes"


def free_bytes(device: str = "cpu") -> int | None:
    """Memory free for new allocations on ``device``, in bytes; None where it cannot be told.

    CPU: Linux's ``MemAvailable`` (free memory plus what the kernel can reclaim from its
    caches), and the room left under the process's cgroup memory limit (v2 or v1) if it has
    one, whichever is least. Other systems: None. CUDA: the free memory of the current device
    as the driver reports it.
    """
    if device == "cuda":
        import torch

        try:
            return int(torch.cuda.mem_get_info()[0])
        except (RuntimeError, AssertionError):
            return None
    found = []
    try:
        found.append(_meminfo_available(Path("/proc/meminfo").read_text()))
    except OSError:
        pass
    try:
        cgroup = Path("/proc/self/cgroup").read_text()
    except OSError:
        cgroup = ""
    found += [_cgroup_free(lim, use) for lim, use in _cgroup_files(cgroup)]
    found = [v for v in found if v is not None]
    return min(found) if found else None


def block_budget(device: str = "cpu", workers: int = 1) -> int:
    """Bytes one worker's block may take: :data:`BLOCK_BYTES`, or less where memory is short.

    Parameters
    ----------
    device : {"cpu", "cuda"}
        Where the forward passes run; a CUDA block must also fit the host's memory (the
        checkpoints are read there first).
    workers : int
        Workers holding a block each at the same time.

    Returns
    -------
    int
        ``min(BLOCK_BYTES, FREE_SHARE * free / workers)`` over the devices involved; the
        caller still gives a block at least one checkpoint.
    """
    budget = BLOCK_BYTES
    for dev in {"cpu", device}:
        free = free_bytes(dev)
        if free is not None:
            budget = min(budget, int(FREE_SHARE * free) // max(1, workers))
    return max(1, budget)


# ------------------------------------------------------------------------ the C heap after a block
class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


#: Free C heap kept for the next block (half its budget) before it is given back to the OS.
HEAP_KEEP = BLOCK_BYTES // 2


def _heap_release(libc=None, keep: int = HEAP_KEEP) -> Callable[[], bool]:
    """The function :func:`release_free_heap` calls, for glibc's ``libc`` (else a no-op)."""
    try:
        libc = libc if libc is not None else ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return lambda: False
    info = getattr(libc, "mallinfo2", None)  # glibc >= 2.33
    if info is None:  # cannot tell what is free: release every time

        def always() -> bool:
            trim(0)
            return True

        return always
    info.restype = _MallInfo2

    def release() -> bool:
        if info().fordblks <= keep:
            return False
        trim(0)
        return True

    return release


_release = None


def release_free_heap() -> bool:
    """Give the C heap's free memory back to the OS once it exceeds :data:`HEAP_KEEP`.

    Called after every block. glibc keeps freed buffers in its heap, where they fragment:
    without a release, the peak memory of an analysis grew with its number of checkpoints
    (digits MLP, 3000 checkpoints: 691 MiB against 487 with a release after every block). But
    a release after every block costs the next block a page fault per 4 KiB it touches (1700
    per checkpoint there, about 10% of the time). So the heap is released only when its free
    chunks (glibc's ``mallinfo2().fordblks``, resident or not) exceed half a block's budget.
    A block does not reuse all of them (they are fragmented), so what is kept adds to the
    peak: keeping up to a whole budget, the digits MLP's MI analysis peaked at 426 MiB for
    100 checkpoints and 479 for 1000 (medians of 3); keeping half, 424 and 431. That costs
    page faults: 8-9% more time in the digits MLP's whole analysis, 2% in the 784 MLP's.

    Returns
    -------
    bool
        Whether memory was released (always False where the C library is not glibc).
    """
    global _release
    if _release is None:
        _release = _heap_release()
    return _release()
