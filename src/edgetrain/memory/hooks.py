"""Compress or count the tensors autograd saves for backward (saved-tensor hooks).

``with compress_activations(model, mode="lossless") as ctx:`` around a forward
pass packs every tensor saved for backward; backward unpacks them (also after
the ``with`` block: the hooks travel with the graph). Rules the pack hook follows:

- Parameters, buffers and other leaves that require grad, and views of them
  (Linear saves ``weight.t()``), are recognised by storage and kept as they are.
- Each saved memory block is packed once: a tensor saved by two operations (a
  ReLU output is saved by the ReLU and by the next layer) and views of the same
  block share one payload. A cache hit is validated by a weak reference to
  the storage and the tensor's version counter, so an address reused after a
  free, or a tensor changed in place since it was packed, is packed anew.
- Dense tensors (one gap-free block, any strides: contiguous, channels_last,
  transposed, reshaped views) are compressed and rebuilt with the same shape,
  strides and address alignment. A float view with gaps or overlaps of an
  activation (attention's q, k and v: thirds of one projection's output) packs
  its whole storage once, if it covers at least a quarter of it, and is rebuilt
  from it with its own geometry. Other views with gaps, non-float tensors (except
  boolean masks and max-pool indices), and tensors under ``min_bytes`` pass through:
  integer ids saved by an embedding or a loss are kept as they are.
- What may be lossy: only tensors autograd differentiates through (``requires_grad``),
  or that a running module was called with (a layer's input). Others saved with them
  (normalisation statistics, attention's log-sum-exp, dropout masks, noise) get exact
  codecs in every mode: they are small, or masks, and an error in a statistic skews a
  whole row's gradient. A parameter's copy in another dtype (autocast) and views of it
  are the parameter's values: never compressed (counted, as the graph holds them).
- Codecs per mode, for float tensors: a tensor whose non-zeros all share one bit
  pattern (a dropout mask: 0 or 1/(1-p)) or a boolean tensor is a bitmap in every mode
  but "none" (1 bit per element, exact); "lossless" a bitmap of non-zeros plus the
  values when that is smaller (above 3.1% zeros in fp32), else the tensor as is;
  "bf16"/"fp16" the bitmap with 16-bit values, or every value at 16 bits (fp16
  falls back to exact where it would overflow); "int8"/"int4"/"int2" per-group
  stochastic quantisation, with a bitmap of exact zeros for tensors with 5% zeros
  or more (ReLU outputs: the ReLU's backward mask stays exact), except inputs of
  threshold activations (ReLU6/Hardtanh, LeakyReLU, Hardswish, Hardsigmoid), whose
  gradient depends on which side of a threshold each value is: those use bf16.
  Max-pool indices (int64) are stored as the offset from their window's origin
  (needs ``model``), in one byte for inputs up to 126 pixels wide with 3x3 windows
  (253 with 2x2), else two, in every mode but "none".
- In-place changes after saving: a tensor passed through is an alias, so its
  version is checked at unpack and a change raises the same RuntimeError
  PyTorch raises without hooks. A compressed tensor is a copy of the values at
  save time, which are the values backward needs: its gradients stay correct.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from edgetrain.errors import EdgeTrainError, suggest
from edgetrain.memory import codecs
from edgetrain.memory.layout import bit_view, is_dense
from edgetrain.memory.ledger import CompressionStats, Ledger, StorageEntry
from edgetrain.memory.modules import ActiveModule, ModuleTracker, param_storages

__all__ = [
    "DEFAULT_MIN_BYTES",
    "MODES",
    "CompressionContext",
    "SavedTensorCounter",
    "compress_activations",
    "measure_saved_bytes",
]

logger = logging.getLogger(__name__)

MODES = ("none", "lossless", "bf16", "fp16", "int8", "int4", "int2")
"""Compression modes: "none" counts only; "lossless" is exact; the others are lossy."""

DEFAULT_MIN_BYTES = 64 * 1024
"""Tensors smaller than this pass through: per-tensor overhead would outweigh the gain."""

_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
_QUANT = {"int8": 8, "int4": 4, "int2": 2}
_MAXPOOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
# Activations whose gradient depends on which side of a threshold the saved input is.
_THRESHOLD_GRAD = (nn.Hardtanh, nn.LeakyReLU, nn.Hardswish, nn.Hardsigmoid)
# Int modes keep a zero bitmap for tensors with at least this fraction of exact zeros.
_ZERO_MASK_MIN = 0.05
# Strided sample used to skip clearly dense tensors before a full pass (about 60x cheaper).
_SAMPLE_STEP = 61
_SAMPLE_MIN_NUMEL = 1 << 14


# A non-dense view packs its whole storage when it covers at least this fraction of it.
_BLOCK_MIN_COVER = 4
# Elements per finiteness check on the CPU (a 256 KiB boolean temporary, not a full-size one).
_FINITE_CHUNK = 1 << 18


def _sample(t: torch.Tensor) -> tuple[float, bool]:
    """For dense ``t``: the fraction of all-zero bit patterns in a strided sample (1.0 for
    tensors too small to sample), and whether the sample's non-zeros share one pattern."""
    flat = t.detach().as_strided((t.numel(),), (1,), t.storage_offset())
    sampled = t.numel() >= _SAMPLE_MIN_NUMEL
    sample = bit_view(flat[:: _SAMPLE_STEP if sampled else 1])
    nonzero = sample[sample != 0]
    constant = nonzero.numel() == 0 or bool((nonzero == nonzero[0]).all())
    zeros = 1.0 - nonzero.numel() / sample.numel() if sampled else 1.0
    return zeros, constant


def _all_finite(t: torch.Tensor) -> bool:
    """Whether every element of 1-D ``t`` is finite; on the CPU a chunk at a time, so that
    no full-size boolean tensor sits beside the payload just packed."""
    if t.device.type != "cpu":
        return bool(torch.isfinite(t).all())
    step = _FINITE_CHUNK
    return all(bool(torch.isfinite(t[i : i + step]).all()) for i in range(0, t.numel(), step))


def _is_param_cast(t: torch.Tensor) -> bool:
    """A parameter's copy in another dtype (autocast's weight casts), or a view of one."""
    base = t._base if t._base is not None else t
    fn = base.grad_fn
    if fn is None or type(fn).__name__ != "ToCopyBackward0":
        return False
    nxt = fn.next_functions
    return bool(nxt) and nxt[0][0] is not None and hasattr(nxt[0][0], "variable")


class _Span:
    """One packed block of memory, shared by every save of it."""

    __slots__ = (
        "__weakref__",
        "cache",
        "entry",
        "ledger",
        "nbytes",
        "payload",
        "saves",
        "unpack_fn",
        "unpacks",
    )

    def __init__(
        self,
        payload: Any,
        unpack_fn: Callable[[Any], torch.Tensor],
        ledger: Ledger,
        entry: StorageEntry,
    ) -> None:
        self.payload = payload
        self.unpack_fn = unpack_fn
        self.ledger = ledger
        self.entry = entry
        self.nbytes = payload.nbytes
        self.saves = 0
        self.unpacks = 0
        self.cache: torch.Tensor | None = None
        ledger.acquire(entry, alias=False)
        ledger.add_stored(self.nbytes)

    def decode(self) -> torch.Tensor:
        """The unpacked tensor; kept until every save of this span has been unpacked once."""
        out = self.cache if self.cache is not None else self.unpack_fn(self.payload)
        self.unpacks += 1
        # a second save (ReLU after the next layer) usually unpacks soon after the
        # first: keeping the result skips a second decode and never holds more than
        # PyTorch would have held without hooks
        self.cache = out if self.unpacks % self.saves else None
        return out

    def __del__(self) -> None:
        try:
            self.ledger.drop_stored(self.nbytes)
            self.ledger.release(self.entry, alias=False)
        except Exception:  # interpreter shutdown
            pass


class _Saved:
    """What the pack hook returns for a compressed tensor: its span and its own geometry
    (shape, strides, and the offset of its storage position from the span's first element)."""

    __slots__ = ("offset", "shape", "span", "stride")

    def __init__(
        self,
        span: _Span,
        shape: tuple[int, ...] | None,
        stride: tuple[int, ...],
        offset: int = 0,
    ):
        self.span = span
        self.shape = shape  # None: same geometry as the tensor that made the span
        self.stride = stride
        self.offset = offset
        span.saves += 1

    def unpack(self) -> torch.Tensor:
        out = self.span.decode()
        if self.shape is None:
            return out
        return out.as_strided(self.shape, self.stride, out.storage_offset() + self.offset)


class _Alias:
    """A tensor kept as it is, with its version at save time to detect in-place changes."""

    __slots__ = ("entry", "ledger", "tensor", "version")

    def __init__(self, tensor: torch.Tensor, ledger: Ledger | None, entry: StorageEntry | None):
        self.tensor = tensor
        self.version = tensor._version
        self.ledger = ledger
        self.entry = entry
        if ledger is not None and entry is not None:
            ledger.acquire(entry, alias=True)

    def unpack(self) -> torch.Tensor:
        if self.tensor._version != self.version:
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by "
                f"an inplace operation: [{self.tensor.type()} {list(self.tensor.shape)}] is at "
                f"version {self.tensor._version}; expected version {self.version} instead "
                "(detected by edgetrain.memory's saved-tensor hooks)"
            )
        return self.tensor

    def __del__(self) -> None:
        try:
            if self.ledger is not None and self.entry is not None:
                self.ledger.release(self.entry, alias=True)
        except Exception:  # interpreter shutdown
            pass


def _unpack(obj: _Saved | _Alias) -> torch.Tensor:
    return obj.unpack()


def _as_tuple(value: int | tuple[int, ...], k: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, tuple | list) else (value,) * k


class CompressionContext:
    """Saved-tensor hooks that compress (or only count) what autograd saves.

    Made by :func:`compress_activations`; reusable: enter it around the forward
    pass of every step (backward may run inside or after the block), read
    :attr:`stats`, call :meth:`reset` or :meth:`reset_peak` between steps.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        mode: str = "lossless",
        *,
        min_bytes: int = DEFAULT_MIN_BYTES,
        group_size: int = 256,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if mode not in MODES:
            raise EdgeTrainError(
                f"activation compression mode must be one of {', '.join(MODES)}, "
                f"got {mode!r}{suggest(str(mode), MODES)}"
            )
        if isinstance(min_bytes, bool) or not isinstance(min_bytes, int) or min_bytes < 0:
            raise EdgeTrainError(f"min_bytes must be an integer >= 0, got {min_bytes!r}")
        if (
            isinstance(group_size, bool)
            or not isinstance(group_size, int)
            or group_size < 8
            or group_size % 8
        ):
            raise EdgeTrainError(f"group_size must be a multiple of 8, >= 8, got {group_size!r}")
        self.model = model
        self.mode = mode
        self.min_bytes = min_bytes
        self.group_size = group_size
        self.ledger = Ledger()
        self.tracker = ModuleTracker(model)
        self._seed = seed
        self._generators: dict[str, torch.Generator] = {}
        if generator is not None:
            self._generators[str(generator.device)] = generator
        self._params: set[tuple[str, int]] = set()
        self._spans: dict[tuple[Any, ...], tuple[StorageEntry, int, weakref.ref]] = {}
        self._origins: dict[tuple[Any, ...], torch.Tensor] = {}
        self._hooks: torch.autograd.graph.saved_tensors_hooks | None = None

    # ------------------------------------------------------------------ public

    @property
    def stats(self) -> CompressionStats:
        """Bytes saved (raw) and stored since the last reset; see :class:`CompressionStats`."""
        return self.ledger.stats(self.mode)

    def reset(self) -> None:
        """Zero the totals and per-codec counts; restart the peaks."""
        self.ledger.reset()

    def reset_peak(self) -> None:
        """Restart the peaks from the bytes held now."""
        self.ledger.reset_peak()

    def __enter__(self) -> CompressionContext:
        if self._hooks is not None:
            raise RuntimeError("this CompressionContext is already active")
        self._params = param_storages(self.model)
        self.tracker.__enter__()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        hooks, self._hooks = self._hooks, None
        if hooks is not None:
            hooks.__exit__(None, None, None)
        self.tracker.__exit__()

    # ---------------------------------------------------------------- packing

    def _is_param(self, t: torch.Tensor) -> bool:
        if t.requires_grad and t.grad_fn is None:
            return True  # a leaf the caller owns (a parameter, or an input made to require grad)
        base = t._base
        if base is not None and base.requires_grad and base.grad_fn is None:
            return True  # a view of one, such as Linear's weight.t()
        if self._params:
            storage = t.untyped_storage()
            return storage.nbytes() > 0 and (str(t.device), storage.data_ptr()) in self._params
        return False

    def _generator(self, device: torch.device) -> torch.Generator:
        """A private generator per device, so the global RNG (dropout, shuffling) is untouched."""
        key = str(device)
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator(device=device)
            if self._seed is not None:
                gen.manual_seed(self._seed)
            elif self._generators:  # derive from the generator the caller gave
                gen.manual_seed(next(iter(self._generators.values())).initial_seed())
            else:
                gen.seed()
            self._generators[key] = gen
        return gen

    def _pack(self, t: torch.Tensor) -> _Saved | _Alias:
        if t.layout != torch.strided or t.is_meta or type(t) not in (torch.Tensor, nn.Parameter):
            # sparse, meta or subclass tensors (no plain storage): keep them, count nothing
            self.ledger.count("other", 0, 0)
            return _Alias(t, None, None)
        if self._is_param(t):
            self.ledger.count("param", 0, 0)
            return _Alias(t.detach(), None, None)
        active = self.tracker.current()
        entry = self.ledger.entry(t, self.tracker.current_name())
        nbytes = t.numel() * t.element_size()
        if self.mode == "none" or nbytes < self.min_bytes or t.numel() == 0:
            return self._alias(t, entry, nbytes)
        target = self._target(t)
        if target is None or _is_param_cast(t):
            return self._alias(t, entry, nbytes)
        block, offset = target
        key = (str(t.device), block.data_ptr(), block.numel(), block.dtype)
        hit = self._spans.get(key)
        if hit is not None and hit[0] is entry and hit[1] == t._version:
            span = hit[2]()
            if span is not None:
                # the span's first tensor may have another shape (e.g. x and x.view(-1, d))
                return _Saved(span, tuple(t.shape), tuple(t.stride()), offset)
        packed = self._compress(block, active, exact=self._exact(t))
        block_bytes = block.numel() * block.element_size()
        if packed is None or packed[0].nbytes >= block_bytes:  # tiny tensors: headers cost more
            return self._alias(t, entry, nbytes)
        payload, unpack_fn = packed
        self.ledger.count(payload.codec, block_bytes, payload.nbytes)
        span = _Span(payload, unpack_fn, self.ledger, entry)
        self._spans[key] = (
            entry,
            t._version,
            weakref.ref(span, functools.partial(self._forget, key)),
        )
        if block is t:
            return _Saved(span, None, ())
        return _Saved(span, tuple(t.shape), tuple(t.stride()), offset)

    @staticmethod
    def _target(t: torch.Tensor) -> tuple[torch.Tensor, int] | None:
        """What to pack for ``t``: itself if dense, else its whole storage as a flat block
        (a float activation's view covering enough of it), with ``t``'s offset in it."""
        if is_dense(t):
            return t, 0
        if not (t.is_floating_point() and t.requires_grad):
            return None
        size = t.element_size()
        total = t.untyped_storage().nbytes()
        n = total // size
        if total % size or t.numel() * _BLOCK_MIN_COVER < n:
            return None
        return t.detach().as_strided((n,), (1,), 0), t.storage_offset()

    def _exact(self, t: torch.Tensor) -> bool:
        """Whether ``t`` gets exact codecs only: not differentiated through and not a
        running module's input (statistics, masks and noise saved beside activations)."""
        if t.requires_grad:
            return False
        return not self.tracker.is_input((str(t.device), t.untyped_storage().data_ptr()))

    def _forget(self, key: tuple[Any, ...], ref: weakref.ref) -> None:
        hit = self._spans.get(key)
        if hit is not None and hit[2] is ref:
            del self._spans[key]

    def _alias(self, t: torch.Tensor, entry: StorageEntry, nbytes: int) -> _Alias:
        self.ledger.count("raw", nbytes, nbytes)
        return _Alias(t.detach(), self.ledger, entry)

    def _compress(
        self, t: torch.Tensor, active: ActiveModule | None, *, exact: bool = False
    ) -> tuple[Any, Callable[[Any], torch.Tensor]] | None:
        """Choose a codec for dense ``t`` and pack it; None to pass it through."""
        module = active.module if active is not None else None
        if t.dtype == torch.bool:
            mask = codecs.pack_mask(t)
            return None if mask is None else (mask, codecs.unpack_mask)
        if t.dtype == torch.int64 and isinstance(module, _MAXPOOL):
            return self._pack_pool_indices(t, module, active.input_shape)  # type: ignore[union-attr]
        if not t.is_floating_point():
            return None
        zeros, constant = _sample(t)
        if constant:  # a mask (dropout's 0 or 1/(1-p)) or a constant: one bit per element
            mask = codecs.pack_mask(t)
            if mask is not None:
                return mask, codecs.unpack_mask
        mode = "lossless" if exact else self.mode
        if mode in _QUANT and isinstance(module, _THRESHOLD_GRAD):
            # backward needs which side of a threshold each input lies on: quantisation
            # noise flips it (int8 on MobileNetV2: 36% gradient error, 1% with bf16)
            mode = "bf16"
        if mode == "lossless" or (mode in _HALF and t.element_size() <= 2):
            if zeros < codecs.bitmap_break_even(t.element_size()) / 2:
                return None  # clearly dense: skip the full pass
            payload = codecs.pack_bitmap(t, max_bytes=t.numel() * t.element_size())
            return None if payload is None else (payload, codecs.unpack_bitmap)
        if mode in _HALF:
            return self._pack_half(t, _HALF[mode], zeros)
        # exact zeros (ReLU outputs) keep a bitmap, so that no zero becomes non-zero and
        # no positive value rounds to zero: ReLU's backward mask stays exact
        mask_zeros = True if zeros >= _ZERO_MASK_MIN else None
        quant = codecs.pack_quant(
            t,
            bits=_QUANT[mode],
            group_size=self.group_size,
            generator=self._generator(t.device),
            zero_mask=mask_zeros,
        )
        return None if quant is None else (quant, codecs.unpack_quant)

    @staticmethod
    def _pack_half(
        t: torch.Tensor, half: torch.dtype, zeros: float
    ) -> tuple[Any, Callable[[Any], torch.Tensor]] | None:
        if zeros >= codecs.bitmap_break_even(half.itemsize) / 2:
            dense_bytes = t.numel() * half.itemsize
            payload = codecs.pack_bitmap(t, value_dtype=half, max_bytes=dense_bytes)
            if payload is not None:
                if half != torch.float16 or _all_finite(payload.values):
                    return payload, codecs.unpack_bitmap
                return None
        cast = codecs.pack_cast(t, half)
        if half == torch.float16 and not _all_finite(cast.data):
            return None  # beyond fp16's range (or not finite to begin with): keep it exact
        return cast, codecs.unpack_cast

    def _pack_pool_indices(
        self, t: torch.Tensor, module: nn.Module, input_shape: tuple[int, ...] | None
    ) -> tuple[Any, Callable[[Any], torch.Tensor]] | None:
        k = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3}[type(module)]
        if input_shape is None or t.dim() < k or len(input_shape) < k:
            origin = None
        else:
            stride = _as_tuple(module.stride or module.kernel_size, k)
            padding = _as_tuple(module.padding, k)
            key = (tuple(t.shape[-k:]), input_shape[-k:], stride, padding, str(t.device))
            origin = self._origins.get(key)
            if origin is None:
                origin = codecs.pool_origin(tuple(t.shape), input_shape, stride, padding, t.device)
                self._origins[key] = origin
        return codecs.pack_int(t, origin), codecs.unpack_int


def compress_activations(
    model: nn.Module | None = None,
    mode: str = "lossless",
    *,
    min_bytes: int = DEFAULT_MIN_BYTES,
    group_size: int = 256,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> CompressionContext:
    """Compress the tensors saved for backward while the returned context is active.

    Use it around the forward pass (backward may run inside or after)::

        ctx = compress_activations(model, mode="lossless")
        for x, y in loader:
            with ctx:
                loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            print(ctx.stats.peak_stored_bytes)

    Args:
        model: the model, to recognise its parameters and buffers by storage and to
            know which module saved a tensor (needed to store max-pool indices in one
            byte). Without it, leaves requiring grad are recognised as parameters
            and max-pool indices pass through.
        mode: one of :data:`MODES`. "lossless" keeps gradients bitwise identical.
        min_bytes: tensors smaller than this pass through.
        group_size: values per quantisation group (int modes), a multiple of 8.
        seed: seed for the stochastic-rounding noise (int modes).
        generator: or a generator to draw the noise from (its device).

    Raises:
        EdgeTrainError: unknown mode or bad option.
    """
    return CompressionContext(
        model, mode, min_bytes=min_bytes, group_size=group_size, seed=seed, generator=generator
    )


class SavedTensorCounter(CompressionContext):
    """Count the bytes saved for backward during arbitrary code, changing nothing.

    Tensors pass through untouched (mode "none"). ``total_bytes`` is the sum of the
    unique storages saved (parameters excluded), ``current_bytes`` what live
    graphs hold now, ``peak_bytes`` its maximum; ``per_module`` attributes each
    storage to the module whose forward saved it first (needs ``model``)::

        with SavedTensorCounter(model) as counter:
            loss = model(x).sum()
        counter.total_bytes
    """

    def __init__(self, model: nn.Module | None = None) -> None:
        super().__init__(model, "none", min_bytes=0)

    @property
    def total_bytes(self) -> int:
        return self.ledger.raw_total

    @property
    def current_bytes(self) -> int:
        return self.ledger.raw_now

    @property
    def peak_bytes(self) -> int:
        return self.ledger.raw_peak

    @property
    def per_module(self) -> dict[str, int]:
        """Bytes per module name ("(model)" for the model itself, "(outside)" for others)."""
        with self.ledger.lock:
            return dict(self.ledger.per_module)

    def scope(self, name: str) -> _Scope:
        """Attribute saves made outside the model's modules to ``name`` (``with counter.scope("(loss)"):``)."""
        return _Scope(self.tracker, name)


class _Scope:
    def __init__(self, tracker: ModuleTracker, name: str) -> None:
        self.tracker, self.name = tracker, name

    def __enter__(self) -> None:
        self.tracker.push_scope(self.name)

    def __exit__(self, *exc: object) -> None:
        self.tracker.pop_scope()


def measure_saved_bytes(fn: Callable[[], Any], model: nn.Module | None = None) -> int:
    """Peak bytes saved for backward while ``fn()`` runs (unique storages, no parameters).

    The result of ``fn`` is dropped when the function returns, so call it on the code
    that builds the graph (forward and loss), not on backward.
    """
    with SavedTensorCounter(model) as counter:
        result = fn()
    del result
    return counter.peak_bytes
