"""Memory layout helpers shared by the codecs: flat views, bit masks, compaction.

A saved tensor is compressed as the 1-D sequence of its elements in *memory order*
(no copy for dense tensors) and restored with the same shape, strides and address
alignment, so that kernels reading it in backward take the same code path and
produce bitwise-identical results.

Compaction (keeping the non-zero elements) has two backends with the same output:
``numpy`` for CPU tensors (``np.compress`` is about 6x faster than ``x[mask]`` on
CPU: 3 ms vs 22 ms per 4.2 M fp32 elements) and ``torch`` for every device.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

__all__ = [
    "Backend",
    "Layout",
    "alloc_like",
    "bit_view",
    "compact",
    "constant_value",
    "expand",
    "fill_mask",
    "finish",
    "flatten",
    "is_dense",
    "is_non_overlapping",
    "nonzero_mask",
    "pack_bits",
    "unpack_bits",
]

logger = logging.getLogger(__name__)

Backend = Literal["auto", "numpy", "torch"]

# CPU allocations from torch are 64-byte aligned; a restored tensor keeps its
# original address modulo this, so vectorised kernels split work the same way.
_ALIGN_BYTES = 64
# Chunk for numpy expansion: a chunk's mask, indices and output stay in cache.
_EXPAND_CHUNK = 1 << 18

_INT_OF_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@dataclass(frozen=True, slots=True)
class Layout:
    """Where a tensor's elements live, enough to rebuild it exactly.

    Attributes:
        shape: the tensor's shape.
        stride: its strides, in elements.
        dtype: its dtype.
        device: its device.
        memory_order: True if the flat data is in memory order (dense tensors);
            False if it is in logical (row-major) order (tensors with gaps).
        align_elems: elements of padding before the data, so that the rebuilt
            tensor has the same address modulo 64 bytes as the original.
    """

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    memory_order: bool
    align_elems: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def _sorted_dims(t: torch.Tensor) -> list[tuple[int, int]]:
    return sorted((st, sz) for st, sz in zip(t.stride(), t.shape, strict=True) if sz != 1)


def is_dense(t: torch.Tensor) -> bool:
    """True if the elements fill one gap-free, non-overlapping block of memory."""
    if t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last):
        return True
    expected = 1
    for st, sz in _sorted_dims(t):
        if st != expected:
            return False
        expected *= sz
    return True


def is_non_overlapping(t: torch.Tensor) -> bool:
    """True if no two elements share an address (gaps allowed; expanded tensors are not)."""
    if t.numel() <= 1:
        return True
    span = 1
    for st, sz in _sorted_dims(t):
        if st < span:
            return False
        span = st * sz
    return True


def flatten(t: torch.Tensor) -> tuple[torch.Tensor, Layout]:
    """Return the elements of ``t`` as a detached 1-D tensor, and how to rebuild ``t``.

    Dense tensors give a view in memory order (free); others a row-major copy.
    """
    t = t.detach()
    shape, stride = tuple(t.shape), tuple(t.stride())
    dense = is_dense(t)
    if dense and t.numel() > 0:
        flat = t.as_strided((t.numel(),), (1,), t.storage_offset())
        align = (t.data_ptr() % _ALIGN_BYTES) // t.element_size() if t.device.type == "cpu" else 0
    else:
        flat = t.reshape(-1)
        align = 0
    if not is_non_overlapping(t):
        # an expanded tensor cannot be rebuilt with its strides: it comes back contiguous
        stride = tuple(torch.empty(shape, device="meta").stride())
    return flat, Layout(shape, stride, t.dtype, t.device, dense, align)


def alloc_like(layout: Layout, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Allocate an uninitialised flat buffer for ``layout``; fill it, then call :func:`finish`.

    The buffer starts ``align_elems`` into its storage, reproducing the original
    address alignment.
    """
    base = torch.empty(
        layout.align_elems + layout.numel, dtype=dtype or layout.dtype, device=layout.device
    )
    return base[layout.align_elems :]


def finish(flat: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Turn a filled flat buffer from :func:`alloc_like` into the tensor of ``layout``."""
    if layout.memory_order:
        return flat.as_strided(layout.shape, layout.stride, flat.storage_offset())
    out = torch.empty_strided(layout.shape, layout.stride, dtype=flat.dtype, device=flat.device)
    out.copy_(flat.view(layout.shape))
    return out


def bit_view(flat: torch.Tensor) -> torch.Tensor:
    """View a tensor as the signed integer type of the same width (for bit-exact tests)."""
    return flat.view(_INT_OF_WIDTH[flat.element_size()])


def _use_numpy(t: torch.Tensor, backend: Backend) -> bool:
    if backend == "numpy":
        if t.device.type != "cpu":
            raise ValueError(f"the numpy backend needs a CPU tensor, got {t.device}")
        return True
    return backend == "auto" and t.device.type == "cpu"


def nonzero_mask(bits: torch.Tensor, backend: Backend = "auto") -> tuple[torch.Tensor, int]:
    """Mask of non-zero bit patterns of a 1-D integer tensor, and its count.

    Testing the bit pattern (not the float value) keeps -0.0 and NaN as values.
    """
    if _use_numpy(bits, backend):
        mask_np = bits.numpy() != 0
        return torch.from_numpy(mask_np), int(np.count_nonzero(mask_np))
    mask = bits != 0
    # count_nonzero, not sum: a bool sum goes through int64 and is 10x slower on CPU
    return mask, int(torch.count_nonzero(mask))


def pack_bits(mask: torch.Tensor, backend: Backend = "auto") -> torch.Tensor:
    """Pack a 1-D bool tensor into uint8, 8 per byte, element 8k+i in bit i of byte k."""
    n = mask.numel()
    if _use_numpy(mask, backend):
        return torch.from_numpy(np.packbits(mask.numpy(), bitorder="little"))
    u8 = mask.view(torch.uint8)
    if n % 8:
        u8 = torch.cat([u8, u8.new_zeros(8 - n % 8)])
    cols = u8.view(-1, 8)
    out = cols[:, 0].clone()
    for i in range(1, 8):  # shift-or of 8 strided columns: ~4 ms per 4.2 M elements
        out |= cols[:, i] << i
    return out


def unpack_bits(packed: torch.Tensor, n: int, backend: Backend = "auto") -> torch.Tensor:
    """Inverse of :func:`pack_bits`: a 1-D bool tensor of ``n`` elements."""
    if _use_numpy(packed, backend):
        bits = np.unpackbits(packed.numpy(), count=n, bitorder="little")
        return torch.from_numpy(bits.view(np.bool_))
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(1) >> shifts) & 1
    return bits.view(-1)[:n].view(torch.bool)


def compact(
    bits: torch.Tensor, mask: torch.Tensor, nnz: int, backend: Backend = "auto"
) -> torch.Tensor:
    """The elements of 1-D ``bits`` where ``mask`` is set, in order (``nnz`` of them)."""
    if _use_numpy(bits, backend):
        return torch.from_numpy(np.compress(mask.numpy(), bits.numpy()))
    return bits[mask]


def expand(
    packed_mask: torch.Tensor,
    values: torch.Tensor,
    out: torch.Tensor,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Fill 1-D ``out`` with zeros and put ``values`` where the packed mask is set."""
    n = out.numel()
    if _use_numpy(out, backend):
        out_np, vals_np, mask_np = out.numpy(), values.numpy(), packed_mask.numpy()
        taken = 0
        # chunked: ~2.5x faster than one pass (cache), and the index array stays small
        for start in range(0, n, _EXPAND_CHUNK):
            stop = min(n, start + _EXPAND_CHUNK)
            m = np.unpackbits(
                mask_np[start // 8 : (stop + 7) // 8], count=stop - start, bitorder="little"
            )
            where = np.flatnonzero(m.view(np.bool_))  # as bool: 10x faster than on uint8
            chunk = out_np[start:stop]
            chunk.fill(0)
            chunk[where] = vals_np[taken : taken + where.size]
            taken += where.size
        return out
    mask = unpack_bits(packed_mask, n, backend="torch")
    out.zero_()
    out.masked_scatter_(mask, values)
    return out


def constant_value(
    bits: torch.Tensor, mask: torch.Tensor, nnz: int, backend: Backend = "auto"
) -> torch.Tensor | None:
    """The one non-zero bit pattern of 1-D ``bits`` (a 1-element tensor), or None if the
    non-zero elements differ. All zero: the pattern 0."""
    if nnz == 0:
        return bits.new_zeros(1)
    if _use_numpy(bits, backend):
        bits_np = bits.numpy()
        first = bits_np[int(np.argmax(mask.numpy()))]  # argmax of a bool array: the first True
        same = int(np.count_nonzero(bits_np == first))
        return torch.from_numpy(np.array([first], dtype=bits_np.dtype)) if same == nnz else None
    first = bits[int(torch.argmax(mask.to(torch.uint8)))]
    same = int(torch.count_nonzero(bits == first))
    return first.reshape(1).clone() if same == nnz else None


def fill_mask(
    packed_mask: torch.Tensor, value: torch.Tensor, out: torch.Tensor, backend: Backend = "auto"
) -> torch.Tensor:
    """Fill 1-D integer ``out`` with ``value`` where the packed mask is set, zero elsewhere."""
    n = out.numel()
    if _use_numpy(out, backend):
        out_np = out.numpy()
        v = value.numpy()[0]
        for start in range(0, n, _EXPAND_CHUNK):
            stop = min(n, start + _EXPAND_CHUNK)
            m = np.unpackbits(
                packed_mask.numpy()[start // 8 : (stop + 7) // 8],
                count=stop - start,
                bitorder="little",
            )
            np.multiply(m, v, out=out_np[start:stop], casting="unsafe")  # 0 or the pattern
        return out
    mask = unpack_bits(packed_mask, n, backend="torch")
    torch.mul(mask.to(out.dtype), value.to(out.device), out=out)
    return out
