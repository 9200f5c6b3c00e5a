"""Have glibc give sequence-sized buffers back to the OS when they are freed.

glibc serves a request above its mmap threshold (128 KiB) with a mapping of its own, unmapped on
free; but once such a block is freed it raises the threshold to that block's size (up to 32 MiB), so
from the second training step on the sequence-sized tensors come from the heap, where freed ones stay
resident and fragment it: a 16,000-step HSSM gradient step rose ~170 MiB above its start instead of
~80. Setting the threshold keeps it fixed (glibc then stops adjusting it), at 1 MiB: above the glue's
chunk-sized scratch (glue.CHUNK_ELEMENTS), which stay on the heap and are reused; a mapping
costs page faults (~+5 % CPU time on that step). The trim threshold is raised so that those
temporaries are not given back and faulted in again at every chunk.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 2 ** 20
TRIM_THRESHOLD = 32 * 2 ** 20


def return_large_buffers() -> bool:
    """Set glibc's mmap and trim thresholds; False where the C library is not glibc or the user set
    them (MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ in the environment win)."""
    if not hasattr(os, "confstr") or "MALLOC_MMAP_THRESHOLD_" in os.environ or \
            "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return False
    except (ValueError, OSError):
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
