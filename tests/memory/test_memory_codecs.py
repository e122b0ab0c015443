"""Every codec passes one contract suite; lossy codecs are bounded and unbiased."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from edgetrain.memory import codecs, layout

# -- the codecs under the contract ------------------------------------------------------


@dataclass(frozen=True)
class Codec:
    name: str
    pack: Callable[[torch.Tensor], Any]
    unpack: Callable[[Any], torch.Tensor]
    exact: bool
    floats_only: bool = True
    ints_only: bool = False
    rel_tol: float = 0.0  # lossy halves: relative error bound


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


CODECS = [
    Codec("raw", codecs.pack_raw, codecs.unpack_raw, exact=True, floats_only=False),
    Codec(
        "bitmap-numpy",
        lambda x: codecs.pack_bitmap(x, backend="numpy"),
        lambda p: codecs.unpack_bitmap(p, backend="numpy"),
        exact=True,
        floats_only=False,
    ),
    Codec(
        "bitmap-torch",
        lambda x: codecs.pack_bitmap(x, backend="torch"),
        lambda p: codecs.unpack_bitmap(p, backend="torch"),
        exact=True,
        floats_only=False,
    ),
    Codec(
        "bitmap-bf16",
        lambda x: codecs.pack_bitmap(x, value_dtype=torch.bfloat16),
        codecs.unpack_bitmap,
        exact=False,
        rel_tol=2.0**-8,
    ),
    Codec(
        "bitmap-fp16",
        lambda x: codecs.pack_bitmap(x, value_dtype=torch.float16),
        codecs.unpack_bitmap,
        exact=False,
        rel_tol=2.0**-11,
    ),
    Codec(
        "cast-bf16",
        lambda x: codecs.pack_cast(x, torch.bfloat16),
        codecs.unpack_cast,
        exact=False,
        rel_tol=2.0**-8,
    ),
    Codec(
        "cast-fp16",
        lambda x: codecs.pack_cast(x, torch.float16),
        codecs.unpack_cast,
        exact=False,
        rel_tol=2.0**-11,
    ),
    *[
        Codec(
            f"quant{bits}-{mask}-{backend}",
            lambda x, bits=bits, mask=mask, backend=backend: codecs.pack_quant(
                x, bits=bits, group_size=16, generator=_gen(), zero_mask=mask, backend=backend
            ),
            lambda p, backend=backend: codecs.unpack_quant(p, backend=backend),
            exact=False,
        )
        for bits in codecs.QUANT_BITS
        for mask in (None, True, False)
        for backend in ("numpy", "torch")
        if backend == "numpy" or mask is True
    ],
    Codec("int", codecs.pack_int, codecs.unpack_int, exact=True, floats_only=False, ints_only=True),
]


def _inputs(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    base = torch.randn(4, 6, 5, 7)
    if not dtype.is_floating_point:
        base = (base * 50).round()
    relu = torch.relu(base)
    return {
        "dense": base.to(dtype),
        "relu": relu.to(dtype),
        "transposed": relu.to(dtype).transpose(1, 3),
        "gaps": relu.to(dtype)[:, ::2, :, 1:],
        "channels_last": base.to(dtype).contiguous(memory_format=torch.channels_last),
        "offset_view": relu.to(dtype)[1:],
        "scalar": torch.tensor(3.5 if dtype.is_floating_point else 7).to(dtype),
        "zero_scalar": torch.tensor(0).to(dtype),
        "empty": torch.zeros(0, 3).to(dtype),
        "odd": torch.relu(torch.randn(1001)).to(dtype),
        "all_zero": torch.zeros(40).to(dtype),
    }


def _dtypes(codec: Codec) -> list[torch.dtype]:
    if codec.ints_only:
        return [torch.int64, torch.int32]
    found = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
    return found if codec.floats_only else [*found, torch.int64]


CONTRACT = [
    pytest.param(codec, dtype, id=f"{codec.name}-{str(dtype).removeprefix('torch.')}")
    for codec in CODECS
    for dtype in _dtypes(codec)
]


def _check_close(codec: Codec, x: torch.Tensor, y: torch.Tensor, as_bits: Callable) -> None:
    if codec.exact:
        assert torch.equal(as_bits(x), as_bits(y))
        return
    x64, y64 = x.double(), y.double()
    if codec.rel_tol:
        bound = x64.abs() * codec.rel_tol + 1e-30
        if x.dtype.itemsize <= 2:  # already narrow: casting to the other 16-bit type rounds
            bound = x64.abs() * 2.0**-7
        assert bool(((x64 - y64).abs() <= bound).all())
    else:
        # one quantisation step of the widest group; the exact per-group bound is tested below
        width = float(x64.max() - x64.min()) if x.numel() else 0.0
        step = width / 3 + 1e-6 * (1 + float(x64.abs().max()) if x.numel() else 1)
        assert bool(((x64 - y64).abs() <= step).all())


@pytest.mark.parametrize(("codec", "dtype"), CONTRACT)
def test_contract_round_trip(codec: Codec, dtype: torch.dtype, as_bits: Callable) -> None:
    for label, x in _inputs(dtype).items():
        payload = codec.pack(x)
        assert payload is not None, label
        assert isinstance(payload.nbytes, int) and payload.nbytes >= 0
        y = codec.unpack(payload)
        assert y.shape == x.shape, label
        assert y.dtype == x.dtype, label
        assert y.device == x.device, label
        if x.numel() > 1:
            assert y.stride() == x.stride(), label
        _check_close(codec, x, y, as_bits)
        if codec.name != "raw":
            assert y.data_ptr() != x.data_ptr() or x.numel() == 0, "must not alias the input"


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_contract_pack_does_not_modify_input(codec: Codec) -> None:
    dtype = torch.int64 if codec.ints_only else torch.float32
    x = _inputs(dtype)["relu"]
    before, version = x.clone(), x._version
    codec.pack(x)
    assert torch.equal(x, before)
    assert x._version == version


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_contract_unpack_twice(codec: Codec, as_bits: Callable) -> None:
    dtype = torch.int64 if codec.ints_only else torch.float32
    payload = codec.pack(_inputs(dtype)["relu"])
    assert torch.equal(as_bits(codec.unpack(payload)), as_bits(codec.unpack(payload)))


@pytest.mark.parametrize("codec", [c for c in CODECS if not c.ints_only], ids=lambda c: c.name)
def test_contract_requires_grad_input(codec: Codec) -> None:
    x = torch.randn(3, 8, requires_grad=True)
    y = codec.unpack(codec.pack(torch.relu(x)))
    assert not y.requires_grad


@pytest.mark.parametrize(
    "codec", [c for c in CODECS if c.exact and not c.ints_only], ids=lambda c: c.name
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_exact_codecs_keep_special_values(
    codec: Codec, dtype: torch.dtype, as_bits: Callable
) -> None:
    special = [0.0, -0.0, math.nan, -math.nan, math.inf, -math.inf, 1e-40, -1.0, 0.0, 0.0]
    x = torch.tensor(special * 7, dtype=dtype)
    x[3] = torch.tensor(-math.nan, dtype=dtype)
    y = codec.unpack(codec.pack(x))
    assert torch.equal(as_bits(x), as_bits(y))
    assert int((as_bits(y) != 0).sum()) == int((as_bits(x) != 0).sum())


def test_bitmap_backends_make_identical_payloads() -> None:
    x = torch.relu(torch.randn(5, 7, 13))
    a = codecs.pack_bitmap(x, backend="numpy")
    b = codecs.pack_bitmap(x, backend="torch")
    assert torch.equal(a.bitmap, b.bitmap)
    assert torch.equal(a.values, b.values)
    assert torch.equal(codecs.unpack_bitmap(a, backend="torch"), x)
    assert torch.equal(codecs.unpack_bitmap(b, backend="numpy"), x)


def test_bitmap_size_and_break_even() -> None:
    n = 8000
    x = torch.ones(n)
    x[: n // 2] = 0
    payload = codecs.pack_bitmap(x)
    assert payload.nbytes == n // 8 + 4 * (n // 2)
    assert codecs.bitmap_break_even(4) == pytest.approx(0.03125)
    assert codecs.bitmap_break_even(2) == pytest.approx(0.0625)
    # below break-even (2% zeros in fp32) the payload would be larger: refused
    y = torch.ones(n)
    y[: n // 50] = 0
    assert codecs.pack_bitmap(y, max_bytes=4 * n) is None
    z = torch.ones(n)
    z[: n // 25] = 0  # 4% zeros: smaller than dense
    assert codecs.pack_bitmap(z, max_bytes=4 * n).nbytes < 4 * n


def test_bit_packing_layout() -> None:
    mask = torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 1, 1], dtype=torch.bool)
    for backend in ("numpy", "torch"):
        packed = layout.pack_bits(mask, backend=backend)
        assert packed.tolist() == [0b10000001, 0b11]
        assert torch.equal(layout.unpack_bits(packed, 10, backend=backend), mask)


# -- lossy: bounded per group and unbiased ----------------------------------------------


def _group_steps(payload: codecs.QuantPayload, x: torch.Tensor) -> torch.Tensor:
    """The quantisation step that applies to each element of flat ``x`` (0 for exact zeros)."""
    flat = x.reshape(-1)
    steps = payload.scale.repeat_interleave(payload.group_size)
    if payload.bitmap is None:
        return steps[: flat.numel()]
    mask = layout.bit_view(flat) != 0
    out = torch.zeros_like(flat)
    out[mask] = steps[: int(mask.sum())]
    return out


@pytest.mark.parametrize("bits", codecs.QUANT_BITS)
@pytest.mark.parametrize("mask", [None, True, False])
def test_quant_error_below_one_step_per_group(bits: int, mask: bool | None) -> None:
    torch.manual_seed(1)
    x = torch.relu(torch.randn(3000) * torch.linspace(0.1, 10, 3000))
    payload = codecs.pack_quant(x, bits=bits, group_size=64, generator=_gen(3), zero_mask=mask)
    assert payload is not None
    y = codecs.unpack_quant(payload)
    steps = _group_steps(payload, x)
    err = (y - x).abs()
    assert bool((err <= steps * (1 + 1e-5) + 1e-6).all())
    if payload.bitmap is not None:
        assert bool((y[x == 0] == 0).all()), "masked zeros stay exactly zero"
    levels = (1 << bits) - 1
    ranges = payload.scale * levels
    assert bool((ranges >= 0).all())


def test_quant_mask_chosen_by_size() -> None:
    x = torch.randn(4096)
    sparse = torch.relu(x)  # ~50% zeros
    assert codecs.pack_quant(sparse, bits=8).bitmap is not None  # 50% > 1/8
    assert codecs.pack_quant(sparse, bits=2).bitmap is None  # 50% is not > 1/2
    very = torch.relu(x - 1.0)  # ~84% zeros
    assert codecs.pack_quant(very, bits=2).bitmap is not None


@pytest.mark.parametrize("bits", codecs.QUANT_BITS)
def test_quant_packed_size(bits: int) -> None:
    n = 4096
    payload = codecs.pack_quant(torch.randn(n), bits=bits, group_size=256, zero_mask=False)
    groups = n // 256
    assert payload.nbytes == n * bits // 8 + 8 * groups


@pytest.mark.parametrize("bits", [2, 4])
def test_quant_is_unbiased(bits: int) -> None:
    torch.manual_seed(2)
    x = torch.randn(512) * 3
    trials = 400
    total = torch.zeros_like(x, dtype=torch.float64)
    for seed in range(trials):
        payload = codecs.pack_quant(x, bits=bits, group_size=64, generator=_gen(seed))
        total += codecs.unpack_quant(payload).double()
    mean_err = total / trials - x.double()
    # each rounding is a Bernoulli step: variance <= step^2 / 4 per trial
    payload = codecs.pack_quant(x, bits=bits, group_size=64, generator=_gen(0))
    step = _group_steps(payload, x).double()
    sigma = step / 2 / math.sqrt(trials)
    assert bool((mean_err.abs() <= 5.5 * sigma + 1e-6).all())
    # the average over all elements: sigma shrinks by sqrt(n)
    assert abs(float(mean_err.mean())) <= 4 * float(sigma.pow(2).mean().sqrt()) / math.sqrt(
        x.numel()
    )


def test_quant_same_generator_seed_same_result() -> None:
    x = torch.randn(1000)
    a = codecs.unpack_quant(codecs.pack_quant(x, bits=2, generator=_gen(7)))
    b = codecs.unpack_quant(codecs.pack_quant(x, bits=2, generator=_gen(7)))
    c = codecs.unpack_quant(codecs.pack_quant(x, bits=2, generator=_gen(8)))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_quant_refuses_non_finite_and_non_float() -> None:
    x = torch.randn(100)
    x[5] = math.inf
    assert codecs.pack_quant(x, bits=8) is None
    with pytest.raises(ValueError):
        codecs.pack_quant(torch.arange(10), bits=8)
    with pytest.raises(ValueError):
        codecs.pack_quant(torch.randn(10), bits=3)


def test_uniform_noise_in_unit_interval() -> None:
    u = codecs._uniform(100_001, _gen(0), torch.device("cpu"))
    assert u.shape == (100_001,)
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.005
    assert abs(float(u.var()) - 1 / 12) < 0.002


# -- integers and max-pool indices ------------------------------------------------------


@pytest.mark.parametrize(
    ("dims", "kernel", "stride", "padding", "dilation", "ceil", "size"),
    [
        (2, 2, 2, 0, 1, False, 32),
        (2, 3, 2, 1, 1, False, 17),
        (2, 3, 1, 1, 2, True, 12),
        (2, 2, 2, 0, 1, True, 15),
        (1, 3, 2, 1, 1, False, 50),
        (3, 2, 2, 0, 1, False, 8),
    ],
)
def test_pool_indices_round_trip_in_one_byte(
    dims: int, kernel: int, stride: int, padding: int, dilation: int, ceil: bool, size: int
) -> None:
    pool = {1: torch.nn.functional.max_pool1d, 2: torch.nn.functional.max_pool2d}.get(
        dims, torch.nn.functional.max_pool3d
    )
    x = torch.randn((2, 3) + (size,) * dims)
    _, idx = pool(x, kernel, stride, padding, dilation, ceil_mode=ceil, return_indices=True)
    origin = codecs.pool_origin(
        tuple(idx.shape), tuple(x.shape), (stride,) * dims, (padding,) * dims
    )
    payload = codecs.pack_int(idx, origin)
    assert payload.data.dtype == torch.uint8
    assert torch.equal(codecs.unpack_int(payload), idx)


def test_pack_int_is_lossless_with_any_offset() -> None:
    idx = torch.randint(0, 1 << 40, (64,))
    wrong = torch.arange(64)
    payload = codecs.pack_int(idx, wrong)
    assert payload.data.dtype == torch.int64
    assert torch.equal(codecs.unpack_int(payload), idx)
    small = codecs.pack_int(torch.tensor([-3, 100, 30000]))
    assert small.data.dtype == torch.int16
    assert torch.equal(codecs.unpack_int(small), torch.tensor([-3, 100, 30000]))


# -- mask: one bit per element when the non-zeros share one bit pattern ------------------


def _masks(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    keep = torch.rand(4, 6, 5, 7) > 0.3
    one = torch.tensor(True) if dtype == torch.bool else torch.tensor(1 / 0.9).to(dtype)
    mask = torch.where(keep, one, torch.zeros((), dtype=dtype))
    return {
        "dense": mask,
        "transposed": mask.transpose(1, 3),
        "gaps": mask[:, ::2, :, 1:],
        "channels_last": mask.contiguous(memory_format=torch.channels_last),
        "offset_view": mask[1:],
        "scalar": one.clone(),
        "zero_scalar": torch.zeros((), dtype=dtype),
        "empty": torch.zeros(0, 3, dtype=dtype),
        "odd": mask.reshape(-1)[:1001],
        "all_zero": torch.zeros(40, dtype=dtype),
        "all_set": one.expand(37).clone(),
    }


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize(
    "dtype", [torch.bool, torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64]
)
def test_mask_round_trip_and_size(dtype: torch.dtype, backend: str, as_bits: Callable) -> None:
    for label, x in _masks(dtype).items():
        payload = codecs.pack_mask(x, backend=backend)
        assert payload is not None, label
        assert payload.nbytes == (x.numel() + 7) // 8 + x.element_size(), label
        y = codecs.unpack_mask(payload, backend=backend)
        assert y.shape == x.shape and y.dtype == x.dtype, label
        if x.numel() > 1:
            assert y.stride() == x.stride(), label
        assert torch.equal(as_bits(x), as_bits(y)), label
        assert y.data_ptr() != x.data_ptr() or x.numel() == 0, "must not alias the input"


def test_mask_backends_make_identical_payloads() -> None:
    x = _masks(torch.float32)["dense"]
    a = codecs.pack_mask(x, backend="numpy")
    b = codecs.pack_mask(x, backend="torch")
    assert torch.equal(a.bitmap, b.bitmap) and torch.equal(a.value, b.value)
    assert torch.equal(codecs.unpack_mask(a, backend="torch"), x)


def test_mask_refuses_two_non_zero_patterns(as_bits: Callable) -> None:
    assert codecs.pack_mask(torch.relu(torch.randn(100))) is None
    x = torch.zeros(16)
    x[3], x[5] = 1.0, -0.0  # -0.0 is a non-zero bit pattern, not 1.0's
    assert codecs.pack_mask(x) is None
    x[5] = 1.0
    assert torch.equal(codecs.unpack_mask(codecs.pack_mask(x)), x)
    nan = torch.full((9,), math.nan)
    assert torch.equal(as_bits(codecs.unpack_mask(codecs.pack_mask(nan))), as_bits(nan))
