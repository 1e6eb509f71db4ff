"""glibc's malloc, tuned for a server whose requests carry megabytes.

By default glibc maps blocks of 128 KB or more straight from the kernel and unmaps them when
freed (the threshold rises as big blocks are freed, but then the heap's top is given back
whenever twice that is free): with a few 1.4 MB replies in flight, each request faulted 100
to 300 fresh pages in (the read buffer, the decoded string, the escaped copy), each zeroed.
Kept in the heap instead, freed blocks are reused by the next request: no faults, 10-20% less
CPU per large request on the 2-core VM. Memory a burst left free is given back by `trim`
every TRIM_EVERY_S, so a quiet server does not sit on its peak. Elsewhere (musl, macOS) this
does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # mallopt's parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum on 64-bit: blocks up to it stay in the heap
TRIM_THRESHOLD = 64 * 1024 * 1024  # free memory at the heap's top kept between trims
TRIM_EVERY_S = 30.0

_libc: ctypes.CDLL | None = None


def tune() -> bool:
    """Keep big blocks in the heap; True if this is glibc and it took the settings."""
    global _libc
    libc = _glibc()
    if libc is None:
        return False
    took: bool = (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                  and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    _libc = libc if took else None
    return took


def trim() -> None:
    """Give free heap memory back to the kernel (blocking for a few ms on a big heap: call it
    off the event loop). Nothing unless `tune` took."""
    if _libc is not None:
        _libc.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc
