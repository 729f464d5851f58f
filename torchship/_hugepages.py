"""A new ONNX Runtime session's weights on transparent huge pages (Linux).

A CPU run at batch 1 and a short sequence reads every weight once: MiniLM's 90 MB per 3 ms, far more than the
caches hold, through the TLB in 4 KiB pages. Where the kernel hands out huge pages only on request
(``/sys/kernel/mm/transparent_hugepage/enabled`` = madvise, the common default), nothing ORT allocates gets them,
and where a session's weights happened to land moved the same model's 1 x 16 latency by up to 4% between five
sessions of one process. :func:`new_memory`
notes the process's anonymous memory before a session is made and, after, asks the kernel to back the memory
that is new with 2 MiB pages (``MADV_COLLAPSE``, Linux 6.1+, synchronous): the weights and ORT's packed copies
of them. Memory the session reused from the process's free space stays as it is.

Best effort: any failure (another OS, an older kernel, huge pages off, no free huge page) leaves the memory as it
was and nothing is raised. ``TORCHSHIP_HUGE_PAGES=0`` turns it off (1, the default, on).
"""

from __future__ import annotations

import ctypes
import os
import sys
from contextlib import contextmanager

from torchship.errors import InputError

HUGE = 2 << 20
MADV_HUGEPAGE, MADV_COLLAPSE = 14, 25


def enabled() -> bool:
    """Whether to try (Linux, and ``TORCHSHIP_HUGE_PAGES`` unset or 1); any other value than 0 or 1 is one line."""
    value = os.environ.get("TORCHSHIP_HUGE_PAGES", "1")
    if value not in ("0", "1"):
        raise InputError(f"TORCHSHIP_HUGE_PAGES must be 1 (weights on huge pages) or 0 (off); it is {value!r} "
                         "(unset it for the default, 1)")
    return value == "1" and sys.platform.startswith("linux")


def anonymous_regions() -> list[tuple[int, int]]:
    """(start, end) of the process's writable anonymous mappings, the heap included; empty where unreadable."""
    try:
        with open("/proc/self/maps") as maps:
            lines = maps.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 5 and parts[1].startswith("rw") and (len(parts) == 5 or parts[5] == "[heap]"):
            start, end = (int(x, 16) for x in parts[0].split("-"))
            out.append((start, end))
    return out


def added(before: list[tuple[int, int]], after: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``after``'s intervals that no interval of ``before`` covers (mappings merge and grow)."""
    out = []
    for start, end in after:
        pieces = [(start, end)]
        for b_start, b_end in (b for b in before if b[0] < end and b[1] > start):
            pieces = [p for s, e in pieces
                      for p in ((s, min(e, b_start)), (max(s, b_end), e)) if p[0] < p[1]]
        out += pieces
    return out


def collapse(regions: list[tuple[int, int]]) -> int:
    """Back each region's whole 2 MiB pages with huge pages; returns the bytes the kernel collapsed."""
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    done = 0
    for start, end in regions:
        lo, hi = -(-start // HUGE) * HUGE, end // HUGE * HUGE
        if hi - lo >= HUGE and madvise(lo, hi - lo, MADV_HUGEPAGE) == 0 and madvise(lo, hi - lo, MADV_COLLAPSE) == 0:
            done += hi - lo
    return done


@contextmanager
def new_memory():
    """Around the making of a session: the anonymous memory that appeared meanwhile goes on huge pages."""
    before = anonymous_regions() if enabled() else None
    yield
    if before is not None:
        collapse(added(before, anonymous_regions()))
