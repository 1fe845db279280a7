"""Large host arrays reused by the partitions of a process (the GPU path's host side).

A partition of a few thousand objects fills a feature table of hundreds of megabytes, copies it
column by column for Parquet and casts its features for the AnnData file: three fresh arrays of
that size per partition. The first write to fresh memory costs the kernel a page fault per 4 KiB
page (measured here: a 168 MB table took 45-90 ms to fill the first time, 15 ms the second),
and the threads of one process take those faults one at a time. On a GPU the host's share of a
partition is most of its time, so the arrays freed by one partition are handed to the next.

``POOL.empty(shape, dtype)`` returns a freed array of that exact shape, type and layout, or a
new one; ``POOL.give(a)`` keeps ``a`` for reuse when nothing else refers to it (an array still
referenced, by a view or an Arrow buffer, is left to the garbage collector: never reused while
in use) and the pool holds at most ``KEEP_BYTES``. The contents of a reused array are whatever
the last user left: callers write every element they read.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

#: bytes of freed arrays one process keeps (about the partitions in flight of one GPU worker)
KEEP_BYTES = 2 * 2**30


def _unshared_refs() -> int:
    """``sys.getrefcount`` of an array inside ``give`` when only the caller's one name refers to
    it (measured: the interpreter's own count differs between Python versions)."""
    def probe(x):
        return sys.getrefcount(x)

    a = np.empty(1)
    return probe(a)


_UNSHARED = _unshared_refs()


def _key(shape, dtype, fortran: bool) -> tuple:
    return tuple(int(s) for s in shape), np.dtype(dtype).str, fortran


class ScratchPool:
    """Freed host arrays by (shape, type, layout), for reuse (see the module docstring)."""

    def __init__(self, keep_bytes: int = KEEP_BYTES):
        self.keep_bytes = int(keep_bytes)
        self._free: dict[tuple, list[np.ndarray]] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.reused = 0  # arrays handed out again (for the tests and the curious)

    def empty(self, shape, dtype=np.float64, *, order: str = "C") -> np.ndarray:
        """An array of ``shape`` and ``dtype`` (``order``: "C" or "F"), uninitialised: a freed one
        when there is one."""
        key = _key(shape, dtype, order == "F")
        with self._lock:
            free = self._free.get(key)
            if free:
                a = free.pop()
                self._bytes -= a.nbytes
                self.reused += 1
                return a
        return np.empty(shape, dtype=dtype, order=order)

    def give(self, a: np.ndarray) -> bool:
        """Keep ``a`` (made by ``empty``) for reuse; True when kept. Only an array that owns its
        memory and that nothing but the caller's one name refers to is kept (called through a
        wrapper, the wrapper's argument is one more reference: nothing is kept)."""
        if (not isinstance(a, np.ndarray) or a.base is not None or a.nbytes == 0
                or sys.getrefcount(a) > _UNSHARED):
            return False
        fortran = a.flags.f_contiguous and not a.flags.c_contiguous
        if not (a.flags.c_contiguous or fortran):
            return False
        with self._lock:
            if self._bytes + a.nbytes > self.keep_bytes:
                return False
            self._free.setdefault(_key(a.shape, a.dtype, fortran), []).append(a)
            self._bytes += a.nbytes
        return True

    def clear(self) -> None:
        """Drop every kept array."""
        with self._lock:
            self._free.clear()
            self._bytes = 0

    @property
    def kept_bytes(self) -> int:
        return self._bytes


#: the process's pool
POOL = ScratchPool()

#: a pool that keeps nothing: ``empty`` is ``np.empty`` (the CPU path, where reuse does not pay)
NO_POOL = ScratchPool(keep_bytes=0)
