"""Large buffers handed back to the OS when freed (glibc's dynamic mmap threshold, turned off).

glibc serves an allocation of at least ``M_MMAP_THRESHOLD`` bytes (128 KiB)
with a mapping of its own, unmapped when freed. But it raises that
threshold to the size of any such block freed (up to 32 MiB): after the
first 1 MiB body is freed, every later one comes from the heap arenas
(one per thread: the proxy's loop, each sink's worker), where freed
memory stays resident, scattered between small live objects, and is
reused only for what fits. Measured with 1 MiB bodies through every sink
(``benchmarks/memory.py``): RSS grew by ~196 MiB from 200 to 1,200 flows
with the dynamic threshold, by ~3 MiB with it fixed at 128 KiB.

Setting the threshold explicitly (``mallopt``) turns the adjustment off.
The cost is a fresh mapping per large buffer (the kernel zeroes its
pages): small next to the work each large body gets anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading

#: mallopt's parameter number for the mmap threshold (glibc's malloc.h).
M_MMAP_THRESHOLD = -3
#: Buffers at least this large get a mapping of their own (glibc's default, made fixed).
THRESHOLD = 128 * 1024

_done = False
_lock = threading.Lock()


def unmap_large_buffers() -> bool:
    """Fix glibc's mmap threshold at :data:`THRESHOLD` (once per process).

    Called by whatever is about to handle large bodies (the proxy source, the
    bundled sinks). Does nothing but on glibc (musl and macOS do not raise a
    threshold); respects ``MALLOC_MMAP_THRESHOLD_`` if the user set it.

    :returns: whether the threshold is now fixed.
    """
    global _done
    with _lock:
        if _done:
            return True
        _done = True
        if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
            return "MALLOC_MMAP_THRESHOLD_" in os.environ
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            return False
        if not hasattr(libc, "gnu_get_libc_version"):  # mallopt of another libc: leave it alone
            return False
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        return bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD))
