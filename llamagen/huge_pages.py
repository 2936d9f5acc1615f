"""CPU memory on 2 MB pages for what a decoding step streams: the model's weights and its KV cache.

A decoding step reads every weight once: 200 MB for GPT-B in bf16, over 61 matrices. On 4 KB pages that is
about 50,000 pages a step, each a miss in the address-translation cache (TLB) and a page-table walk; on 2 MB
pages, a hundred. Linux gives 2 MB pages (transparent huge pages) to memory that asks for them with
madvise where /sys/kernel/mm/transparent_hugepage/enabled says "madvise", as on this project's machine, and
torch's allocator asks only when THP_MEM_ALLOC_ENABLE=1 is set before it first runs. So the tensors here come
from a mapping of their own that asks. Measured here, alternating between two copies of the same weights, one
on each kind of page: `llamagen.kernels`' products of 2 rows by GPT-B's 61 matrices in bf16 read 31-34 GB/s
against 28-30, and compiled generations (16x16, batch 1, weights and cache on them) took 6.3-6.6 ms a token in
bf16 against 6.8-7.2, 14.7-15.4 in fp32 against 15.3-16.1.

Where the system gives no huge pages (another OS, or "never"), `zeros` returns ordinary tensors and
`move_parameters` leaves the weights where they are.
"""

from __future__ import annotations

import functools
import mmap
import threading
from collections import Counter
from pathlib import Path

import torch
from torch import nn

_PAGE_BYTES = 2 * 2**20
_ALIGNMENT = 64  # a cache line: each tensor starts on one, as the vector kernels' loads prefer
_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
# Set on a parameter moved here: the address its data had then. A parameter whose data has been replaced
# since (another address) is moved again.
_MOVED_TO = "_llamagen_huge_page_address"
_moving = threading.Lock()


@functools.cache  # a system setting: read once, not at every generation
def available() -> bool:
    """Whether this system gives 2 MB pages to memory that asks for them (Linux, "always" or "madvise")."""
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        setting = _SETTING.read_text()
    except OSError:
        return False
    return "[always]" in setting or "[madvise]" in setting


def zeros(specs: list[tuple[tuple[int, ...], torch.dtype]]) -> list[torch.Tensor]:
    """Zero-filled CPU tensors of the given (shape, dtype)s, together in one mapping on 2 MB pages (ordinary
    tensors where `available()` is False). Each has a storage of its own, as from torch.zeros: saving or
    resizing one never touches the others. The mapping is freed with the last of them."""
    nbytes = [int(torch.Size(shape).numel()) * dtype.itemsize for shape, dtype in specs]
    if not specs or not available() or not all(nbytes):
        return [torch.zeros(shape, dtype=dtype) for shape, dtype in specs]
    sizes = [_rounded(size, _ALIGNMENT) for size in nbytes]
    # An anonymous private mapping starts zero-filled and untouched, so the advice comes before any page
    # exists. The tensors start on a 2 MB boundary and get whole 2 MB pages (the system uses one only where
    # the mapping covers all of it), hence the extra page.
    length = _rounded(sum(sizes), _PAGE_BYTES) + _PAGE_BYTES
    mapping = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mapping.madvise(mmap.MADV_HUGEPAGE)
    start = -torch.frombuffer(mapping, dtype=torch.uint8, count=1).data_ptr() % _PAGE_BYTES
    tensors = []
    for (shape, dtype), size, rounded in zip(specs, nbytes, sizes, strict=True):
        # Each frombuffer holds a reference to the mapping: it lives while any of the tensors does.
        tensors.append(torch.frombuffer(mapping, dtype=dtype, count=size // dtype.itemsize, offset=start).view(shape))
        start += rounded
    return tensors


def move_parameters(module: nn.Module) -> None:
    """Copy the module's CPU parameters into memory from `zeros` and point them there: the same Parameter
    objects and values, new addresses. Parameters moved before and not replaced since stay; so do those
    that share a storage with another parameter or view part of one (tied or flattened weights), whose
    sharing a copy would break."""
    if not available():
        return
    with _moving, torch.no_grad():  # two first generations at once (an app's threads) move the weights once
        parameters = [p for p in module.parameters() if p.device.type == "cpu"]
        candidates = [p for p in parameters if _needs_moving(p)]
        if not candidates:
            return  # every generation after the first
        storage_users = Counter(p.untyped_storage().data_ptr() for p in parameters)
        movable = [p for p in candidates if storage_users[p.untyped_storage().data_ptr()] == 1]
        for parameter, moved in zip(movable, zeros([(tuple(p.shape), p.dtype) for p in movable]), strict=True):
            moved.copy_(parameter)
            parameter.data = moved
            setattr(parameter, _MOVED_TO, moved.data_ptr())


def _needs_moving(parameter: nn.Parameter) -> bool:
    if getattr(parameter, _MOVED_TO, None) == parameter.data_ptr():
        return False
    owns_its_storage = (
        parameter.is_contiguous()
        and parameter.storage_offset() == 0
        and parameter.untyped_storage().nbytes() == parameter.nbytes
    )
    return owns_its_storage and parameter.numel() > 0


def _rounded(nbytes: int, multiple: int) -> int:
    return -(-nbytes // multiple) * multiple
