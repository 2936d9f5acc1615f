"""CPU memory on 2 MB pages for what a decoding step streams: the model's weights and its KV cache.

A decoding step reads every weight once: 200 MB for GPT-B in bf16, over 61 matrices. On 4 KB pages that is
about 50,000 pages a step, each a miss in the address-translation cache (TLB) and a page-table walk; on 2 MB
pages, a hundred. Linux gives 2 MB pages (transparent huge pages) to memory that asks for them with
madvise where /sys/kernel/mm/transparent_hugepage/enabled says "always" or "madvise" (the common default), and
torch's allocator asks only when THP_MEM_ALLOC_ENABLE=1 is set before it first runs. So the tensors here come
from a mapping of their own that asks. Alternating between two copies of the same weights, one on each kind of
page, the product kernel of 2 rows read GPT-B's 61 matrices in bf16 about 10% faster from 2 MB pages
(benchmarks/small_batch_linear.py times the kernel on them).

Where the system gives no huge pages (another OS, or "never"), `zeros` returns ordinary tensors and
`move_to_huge_pages` leaves the tensors where they are.
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
# Set on a tensor moved here: the address its data had then. A tensor whose data has been replaced since
# (another address) is moved again.
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


def move_to_huge_pages(module: nn.Module) -> None:
    """Copy the module's CPU parameters and buffers (a model's weights, its KV cache) into memory from `zeros` and
    point them there: the same tensor objects and values, new addresses. Tensors moved before and not replaced
    since stay; so do those that share a storage with another or view part of one (tied or flattened weights),
    whose sharing a copy would break."""
    if not available():
        return
    with _moving, torch.no_grad():  # two first generations at once (an app's threads) move the tensors once
        tensors = [t for t in (*module.parameters(), *module.buffers()) if t.device.type == "cpu"]
        candidates = [t for t in tensors if _needs_moving(t)]
        if not candidates:
            return  # every generation after the first
        storage_users = Counter(t.untyped_storage().data_ptr() for t in tensors)
        movable = [t for t in candidates if storage_users[t.untyped_storage().data_ptr()] == 1]
        for tensor, moved in zip(movable, zeros([(tuple(t.shape), t.dtype) for t in movable]), strict=True):
            moved.copy_(tensor)
            tensor.data = moved
            setattr(tensor, _MOVED_TO, moved.data_ptr())


def _needs_moving(tensor: torch.Tensor) -> bool:
    if getattr(tensor, _MOVED_TO, None) == tensor.data_ptr():
        return False
    owns_its_storage = (
        tensor.is_contiguous() and tensor.storage_offset() == 0 and tensor.untyped_storage().nbytes() == tensor.nbytes
    )
    return owns_its_storage and tensor.numel() > 0


def _rounded(nbytes: int, multiple: int) -> int:
    return -(-nbytes // multiple) * multiple
