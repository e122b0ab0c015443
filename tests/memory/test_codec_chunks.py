"""The codecs' chunked CPU paths give the payloads of the one-pass (torch backend) paths.

``_CHUNK`` is made tiny so that small tensors cross many chunk, block and group
boundaries (a group of compacted values spanning two chunks, a last partial block, a
padded last group).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from edgetrain.memory import codecs

SIZES = (1, 7, 63, 64, 65, 1000, 4099)


@pytest.fixture(autouse=True)
def tiny_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codecs, "_CHUNK", 64)


def _x(n: int, dtype: torch.dtype, zeros: float = 0.5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.linspace(0.1, 10, n)
    x[torch.rand(n, generator=g) < zeros] = 0.0
    return x.to(dtype)


def _same(a: torch.Tensor | None, b: torch.Tensor | None, as_bits: Callable) -> bool:
    if a is None or b is None:
        return a is b
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(as_bits(a), as_bits(b))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("bits", codecs.QUANT_BITS)
@pytest.mark.parametrize("group_size", [8, 24, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_quant_chunked_equals_one_pass(
    n: int, bits: int, group_size: int, dtype: torch.dtype, as_bits: Callable
) -> None:
    x = _x(n, dtype, seed=n)
    a = codecs.pack_quant(
        x, bits=bits, group_size=group_size, generator=torch.Generator().manual_seed(5),
        zero_mask=True, backend="numpy",
    )  # fmt: skip
    b = codecs.pack_quant(
        x, bits=bits, group_size=group_size, generator=torch.Generator().manual_seed(5),
        zero_mask=True, backend="torch",
    )  # fmt: skip
    assert a is not None and b is not None
    assert a.count == b.count
    for field in ("levels", "lo", "scale", "bitmap"):
        assert _same(getattr(a, field), getattr(b, field), as_bits), field
    y = codecs.unpack_quant(a, backend="numpy")
    assert torch.equal(as_bits(y), as_bits(codecs.unpack_quant(b, backend="torch")))
    assert bool((y[x == 0] == 0).all())


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("bits", codecs.QUANT_BITS)
def test_quant_dense_blocks_equal_streamed_blocks(n: int, bits: int, as_bits: Callable) -> None:
    """Without zeros the compaction is the identity: the dense path (blocks of the tensor)
    and the streamed path (blocks of compacted values) draw the same noise, same levels."""
    x = _x(n, torch.float32, zeros=0.0, seed=n)
    x[x == 0] = 1.0
    dense = codecs.pack_quant(
        x, bits=bits, group_size=24, generator=torch.Generator().manual_seed(2), zero_mask=False
    )
    streamed = codecs.pack_quant(
        x, bits=bits, group_size=24, generator=torch.Generator().manual_seed(2), zero_mask=True
    )
    assert dense is not None and streamed is not None
    assert dense.bitmap is None and streamed.bitmap is not None
    for field in ("levels", "lo", "scale"):
        assert _same(getattr(dense, field), getattr(streamed, field), as_bits), field
    assert torch.equal(codecs.unpack_quant(dense), codecs.unpack_quant(streamed))


@pytest.mark.parametrize("zero_mask", [None, True])
@pytest.mark.parametrize("given", [True, False])
def test_quant_not_finite_leaves_the_generator_as_it_was(
    zero_mask: bool | None, given: bool
) -> None:
    x = _x(4099, torch.float32)
    x[4000] = math.inf  # in a late block: earlier blocks are quantised before it is seen
    if given:
        gen = torch.Generator().manual_seed(3)
        assert (
            codecs.pack_quant(x, bits=8, group_size=8, generator=gen, zero_mask=zero_mask) is None
        )
        assert torch.equal(
            torch.rand(4, generator=gen), torch.rand(4, generator=torch.Generator().manual_seed(3))
        )
    else:
        torch.manual_seed(3)
        assert codecs.pack_quant(x, bits=8, group_size=8, zero_mask=zero_mask) is None
        after = torch.rand(4)
        torch.manual_seed(3)
        assert torch.equal(after, torch.rand(4))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("value_dtype", [None, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_bitmap_chunked_equals_one_pass(
    n: int, value_dtype: torch.dtype | None, dtype: torch.dtype, as_bits: Callable
) -> None:
    x = _x(n, dtype, zeros=0.3, seed=n)
    a = codecs.pack_bitmap(x, value_dtype=value_dtype, backend="numpy")
    b = codecs.pack_bitmap(x, value_dtype=value_dtype, backend="torch")
    assert a is not None and b is not None
    assert _same(a.bitmap, b.bitmap, as_bits) and _same(a.values, b.values, as_bits)
    y = codecs.unpack_bitmap(a, backend="numpy")
    assert torch.equal(as_bits(y), as_bits(codecs.unpack_bitmap(b, backend="torch")))
    if value_dtype is None:
        assert torch.equal(as_bits(y), as_bits(x))
    limit = a.nbytes  # refused before anything is compacted when the payload is too big
    assert codecs.pack_bitmap(x, value_dtype=value_dtype, max_bytes=limit) is None
    assert codecs.pack_bitmap(x, value_dtype=value_dtype, max_bytes=limit + 1) is not None


@pytest.mark.parametrize("n", SIZES)
def test_mask_chunked_equals_one_pass(n: int, as_bits: Callable) -> None:
    g = torch.Generator().manual_seed(n)
    x = (torch.rand(n, generator=g) > 0.3).float() * 1.25
    a, b = codecs.pack_mask(x, backend="numpy"), codecs.pack_mask(x, backend="torch")
    assert a is not None and b is not None
    assert _same(a.bitmap, b.bitmap, as_bits) and _same(a.value, b.value, as_bits)
    assert torch.equal(codecs.unpack_mask(a), x)
    if n > 64:
        x[-1] = 2.0  # a second pattern in the last chunk
        assert codecs.pack_mask(x, backend="numpy") is None
        assert codecs.pack_mask(x, backend="torch") is None


def test_mask_all_zero_and_bool(as_bits: Callable) -> None:
    for x in (torch.zeros(300), torch.rand(300) > 0.5):
        a, b = codecs.pack_mask(x, backend="numpy"), codecs.pack_mask(x, backend="torch")
        assert a is not None and b is not None
        assert _same(a.bitmap, b.bitmap, as_bits) and _same(a.value, b.value, as_bits)
        assert torch.equal(codecs.unpack_mask(a), x)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "broadcast_up"])
def test_int_slabs_equal_one_pass(layout: str) -> None:
    torch.manual_seed(0)
    offset = torch.randint(0, 900, (9, 9))
    x = offset + torch.randint(0, 100, (20, 3, 9, 9))
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    if layout == "broadcast_up":  # x broadcasts against the offset: no slabs
        x, offset = x[:, :, :1], torch.randint(0, 900, (3, 9, 9))
    p = codecs.pack_int(x, offset)
    expected = x - offset
    assert p.data.dtype == torch.uint8 if layout != "broadcast_up" else p.data.dtype == torch.int16
    assert torch.equal(p.data.to(torch.int64), expected)
    y = codecs.unpack_int(p)
    assert torch.equal(y, x if layout != "broadcast_up" else expected + offset)
    if layout != "broadcast_up":
        assert y.stride() == x.stride()
