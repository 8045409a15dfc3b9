"""Block sizes from the free memory: /proc/meminfo and cgroup parsing, budgets, block sizes."""

from __future__ import annotations

import torch

from ckptlab.analysis import api
from ckptlab.analysis import memory as mem

MEMINFO = "MemTotal:       24576000 kB\nMemFree:         1000000 kB\nMemAvailable:    2048000 kB\n"


def test_meminfo_available_parsed_in_bytes():
    assert mem._meminfo_available(MEMINFO) == 2048000 * 1024
    assert mem._meminfo_available("MemTotal: 1 kB\n") is None  # old kernels lack the field


def test_cgroup_free_v1_v2_and_no_limit(tmp_path):
    lim, use = tmp_path / "limit", tmp_path / "usage"
    lim.write_text("1073741824\n")
    use.write_text("268435456\n")
    assert mem._cgroup_free(lim, use) == (1 << 30) - (1 << 28)
    use.write_text("2147483648\n")  # over the limit (page cache counted): nothing is free
    assert mem._cgroup_free(lim, use) == 0
    lim.write_text("max\n")  # v2 without a limit
    assert mem._cgroup_free(lim, use) is None
    lim.write_text("9223372036854771712\n")  # v1 without a limit
    assert mem._cgroup_free(lim, use) is None
    assert mem._cgroup_free(tmp_path / "absent", use) is None


def test_cgroup_files_for_v1_and_v2(tmp_path):
    text = "4:memory:/jobs/7\n3:cpu,cpuacct:/jobs/7\n0::/user.slice/a.scope\n"
    got = list(mem._cgroup_files(text, root=tmp_path))
    assert (tmp_path / "memory/jobs/7/memory.limit_in_bytes",
            tmp_path / "memory/jobs/7/memory.usage_in_bytes") in got
    assert (tmp_path / "memory/memory.limit_in_bytes",
            tmp_path / "memory/memory.usage_in_bytes") in got
    assert (tmp_path / "user.slice/a.scope/memory.max",
            tmp_path / "user.slice/a.scope/memory.current") in got
    assert (tmp_path / "memory.max", tmp_path / "memory.current") in got
    assert not any("cpu" in str(p) for pair in got for p in pair)


def test_free_bytes_on_this_machine_is_positive_or_unknown():
    free = mem.free_bytes("cpu")
    assert free is None or free > 0


def test_block_budget_is_the_default_or_a_share_of_what_is_free(monkeypatch):
    free = {"cpu": 1 << 40, "cuda": None}
    monkeypatch.setattr(mem, "free_bytes", lambda device="cpu": free[device])
    assert mem.block_budget("cpu", 2) == mem.BLOCK_BYTES
    free["cpu"] = 256 << 20  # 256 MiB free, 2 workers: a quarter of it, halved
    assert mem.block_budget("cpu", 2) == (64 << 20) // 2
    free["cpu"] = None  # cannot tell: the default
    assert mem.block_budget("cpu", 4) == mem.BLOCK_BYTES
    free.update(cpu=1 << 40, cuda=80 << 20)  # a full GPU bounds a CUDA block
    assert mem.block_budget("cuda", 1) == 20 << 20
    assert mem.block_budget("cpu", 1) == mem.BLOCK_BYTES  # a CPU block ignores the GPU
    free.update(cpu=0, cuda=None)
    assert mem.block_budget("cpu", 1) == 1


def _params(nbytes_per_ckpt: int) -> dict:
    return {"w": torch.zeros(nbytes_per_ckpt // 4)}


def test_block_size_shrinks_with_the_free_memory(monkeypatch):
    sd0 = _params(1 << 20)  # 1 MiB of parameters per checkpoint
    free = {"cpu": 1 << 40}
    monkeypatch.setattr(mem, "free_bytes", lambda device="cpu": free.get(device))
    assert api._auto_block_size(10_000, sd0, None, None, "threads", 2) == 128
    free["cpu"] = 64 << 20  # 16 MiB for both workers: 8 checkpoints each
    assert api._auto_block_size(10_000, sd0, None, None, "threads", 2) == 8
    assert api._auto_block_size(10_000, sd0, None, None, "synchronous", 2) == 16
    free["cpu"] = 1 << 20  # less than one checkpoint: still one per block
    assert api._auto_block_size(10_000, sd0, None, None, "threads", 2) == 1
    free["cpu"] = 1 << 40  # few checkpoints: 4 blocks per worker decide
    assert api._auto_block_size(40, sd0, None, None, "threads", 2) == 5


class _FakeClient:
    def __init__(self, workers):
        self._w = workers

    def scheduler_info(self):
        return {"workers": self._w}


def test_block_size_on_a_cluster_from_its_workers_memory_limits():
    sd0 = _params(1 << 20)
    workers = {"tcp://a": {"nthreads": 2, "memory_limit": 64 << 20},
               "tcp://b": {"nthreads": 2, "memory_limit": 8 << 30}}
    # the smallest worker: a quarter of 64 MiB over its 2 threads = 8 MiB, 8 checkpoints
    got = api._auto_block_size(10_000, sd0, None, None, "distributed", None,
                               client=_FakeClient(workers))
    assert got == 8
    # 4 threads in the cluster: 4 blocks each of 40 checkpoints -> blocks of at least 4
    big = {k: {**v, "memory_limit": 8 << 30} for k, v in workers.items()}
    assert api._auto_block_size(40, sd0, None, None, "distributed", None,
                                client=_FakeClient(big)) == 4
    assert api._cluster_budget(_FakeClient({})) == mem.BLOCK_BYTES


class _FakeLibc:
    """glibc's malloc_trim and mallinfo2 as the release sees them (fordblks: free heap)."""

    def __init__(self, free: int, info: bool = True):
        self.free, self.trims = free, 0
        if info:
            def mallinfo2():
                return mem._MallInfo2(fordblks=self.free)

            self.mallinfo2 = mallinfo2

    def malloc_trim(self, pad):
        assert pad == 0
        self.trims += 1
        self.free = 0
        return 1


def test_heap_released_only_beyond_one_block():
    libc = _FakeLibc(free=(64 << 20))
    release = mem._heap_release(libc, keep=128 << 20)
    assert release() is False and libc.trims == 0  # kept for the next block
    libc.free = (128 << 20) + 1
    assert release() is True and libc.trims == 1
    assert release() is False and libc.trims == 1  # nothing free after the release


def test_heap_kept_by_default_is_half_a_block():
    libc = _FakeLibc(free=mem.BLOCK_BYTES // 2)
    release = mem._heap_release(libc)
    assert release() is False and libc.trims == 0
    libc.free = mem.BLOCK_BYTES // 2 + 1
    assert release() is True and libc.trims == 1


def test_heap_released_every_time_without_mallinfo2_and_never_without_glibc():
    libc = _FakeLibc(free=0, info=False)  # glibc < 2.33: what is free cannot be told
    release = mem._heap_release(libc)
    assert release() is True and release() is True and libc.trims == 2

    class NotGlibc:
        pass

    assert mem._heap_release(NotGlibc())() is False


def test_release_free_heap_runs_here():
    assert isinstance(mem.release_free_heap(), bool)
