"""Tensors on 2 MB pages (llamagen.fast.huge_pages): what the decoding step streams lives there, unchanged."""

from __future__ import annotations

import mmap

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from llamagen import generate
from llamagen.fast import huge_pages
from llamagen.gpt import GPT, GPTConfig

needs_huge_pages = pytest.mark.skipif(not huge_pages.available(), reason="this system gives no 2 MB pages")


def asks_for_huge_pages(tensor: torch.Tensor) -> bool:
    """Whether the kernel counts the mapping holding the tensor as eligible for 2 MB pages (/proc/self/smaps)."""
    address, current = tensor.data_ptr(), None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            first = line.split()[0]
            if "-" in first and ":" not in first:  # a mapping's header: start-end perms ...
                start, end = (int(part, 16) for part in first.split("-"))
                current = start <= address < end
            elif current and first == "THPeligible:":
                return line.split()[1] == "1"
    raise AssertionError("the tensor's address is in no mapping")


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=64, n_layer=2, n_head=2, dim=32, num_classes=4, block_size=16)
    gpt = GPT(config).eval()
    with torch.no_grad():
        gpt.output.weight.normal_(std=0.5)
    return gpt


@needs_huge_pages
def test_zeros_are_separate_zero_tensors_on_huge_pages(tmp_path):
    a, b, c = huge_pages.zeros([((3, 5), torch.float32), ((7,), torch.bfloat16), ((2, 2, 2), torch.int64)])
    assert [t.shape for t in (a, b, c)] == [(3, 5), (7,), (2, 2, 2)]
    assert [t.dtype for t in (a, b, c)] == [torch.float32, torch.bfloat16, torch.int64]
    for tensor in (a, b, c):
        assert not tensor.any()
        assert tensor.data_ptr() % 64 == 0
        assert tensor.untyped_storage().nbytes() == tensor.nbytes  # a storage of its own
        assert asks_for_huge_pages(tensor)
    a.fill_(1.5)
    assert not b.any() and not c.any()
    # Separate storages: safetensors, which refuses tensors sharing memory, saves them.
    save_file({"a": a, "b": b, "c": c}, tmp_path / "t.safetensors")
    assert torch.equal(load_file(tmp_path / "t.safetensors")["a"], torch.full((3, 5), 1.5))


def test_without_huge_pages_zeros_are_ordinary_and_weights_stay(monkeypatch):
    monkeypatch.setattr(huge_pages, "available", lambda: False)
    (a,) = huge_pages.zeros([((4, 4), torch.float32)])
    assert torch.equal(a, torch.zeros(4, 4))
    gpt = tiny_gpt()
    before = [p.data_ptr() for p in gpt.parameters()]
    huge_pages.move_to_huge_pages(gpt)
    assert [p.data_ptr() for p in gpt.parameters()] == before


@needs_huge_pages
def test_moving_parameters_keeps_objects_values_and_generations():
    gpt = tiny_gpt()
    parameters = list(gpt.parameters())
    values = [p.detach().clone() for p in parameters]
    options = {"cfg_scale": 2.0, "top_k": 8, "decoding": "plain"}  # plain: moves nothing itself
    before = generate(gpt, torch.tensor([1, 2]), **options, generator=torch.Generator().manual_seed(3))
    # The measure's control: a fresh mapping that asks for nothing reads as not eligible. A new model's own
    # parameters are no control: where the allocator puts them, and what that mapping allows, depends on all the
    # process allocated before (after other tests, some were already in eligible memory).
    plain = mmap.mmap(-1, 4 * huge_pages._PAGE_BYTES, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    assert not asks_for_huge_pages(torch.frombuffer(plain, dtype=torch.uint8))
    addresses = [p.data_ptr() for p in parameters]
    huge_pages.move_to_huge_pages(gpt)
    assert list(gpt.parameters()) == parameters
    assert all(torch.equal(p, v) for p, v in zip(parameters, values, strict=True))
    assert all(asks_for_huge_pages(p) for p in parameters)
    assert all(p.data_ptr() != address for p, address in zip(parameters, addresses, strict=True))
    after = generate(gpt, torch.tensor([1, 2]), **options, generator=torch.Generator().manual_seed(3))
    assert torch.equal(before, after)

    moved = [p.data_ptr() for p in parameters]
    huge_pages.move_to_huge_pages(gpt)  # already there: nothing moves
    assert [p.data_ptr() for p in parameters] == moved
    gpt.output.weight.data = gpt.output.weight.data.clone()  # replaced: moved again
    huge_pages.move_to_huge_pages(gpt)
    assert asks_for_huge_pages(gpt.output.weight)
    replaced = next(i for i, p in enumerate(parameters) if p is gpt.output.weight)
    assert [p.data_ptr() for i, p in enumerate(parameters) if i != replaced] == moved[:replaced] + moved[replaced + 1 :]


@needs_huge_pages
def test_parameters_sharing_storage_stay_shared():
    tied = nn.Module()
    tied.a = nn.Parameter(torch.randn(8, 8))
    tied.b = nn.Parameter(tied.a.data)  # two parameters, one storage
    tied.c = nn.Parameter(torch.randn(16)[4:12])  # a view into a larger storage
    before = [p.data_ptr() for p in (tied.a, tied.b, tied.c)]
    huge_pages.move_to_huge_pages(tied)
    assert [p.data_ptr() for p in (tied.a, tied.b, tied.c)] == before


@needs_huge_pages
def test_generation_on_the_cpu_moves_the_weights_and_the_kv_cache_to_huge_pages():
    gpt = tiny_gpt()
    generate(gpt, torch.tensor([1, 2]), cfg_scale=2.0, top_k=1)
    cache = gpt.layers[1].attention.kv_cache
    assert asks_for_huge_pages(cache.k_cache) and asks_for_huge_pages(cache.v_cache)
    assert all(asks_for_huge_pages(p) for p in gpt.parameters())
    assert cache.k_cache.shape == (4, gpt.config.n_kv_head, gpt.max_sequence_length, gpt.config.head_dim)
