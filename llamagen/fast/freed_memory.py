"""Keep the memory that tensors free inside the process, for the next tensors, instead of handing it back.

glibc's malloc serves every request above its mmap threshold (at most 32 MB) with fresh pages from the kernel
and returns them when it is freed, and trims the top of its heap back to the kernel as it empties. A new tensor
of that size then pays a page fault for every 4 kB it first touches. A tokenizer's maps at full resolution are
that size (a 640x427 photo: 35 MB a map of 64 channels in bf16) and each layer makes a new one, so on a CPU the
faults cost as much as the work of the GroupNorms, SiLUs and residual additions that write them: with freed
memory kept, photo-vq decodes that photo in bf16 in 0.21 s instead of 0.35 s (benchmarks/results/
tokenizer_cpu_2026-12-06.md). The price is that the process keeps its peak memory until it exits, which a
command or a demo server can afford; `llamagen`'s commands call `keep_freed_memory()` at their start.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt's parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# Bytes free at the top of the heap before malloc trims them: the most mallopt takes (an int), 2 GB.
_TRIM_ABOVE = 2**31 - 1


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to serve large blocks from its heap and never trim it: freed tensors' pages are reused,
    already mapped. Process-wide and lasting; True where it took effect (a glibc system), False elsewhere (where
    the allocator is another, and this does nothing)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    # Large blocks from the heap, and the heap kept: without the second, the heap would give back at once what a
    # large block freed at its top.
    return libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_ABOVE) == 1
