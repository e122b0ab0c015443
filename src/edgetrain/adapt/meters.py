"""The training's own memory, measured: process RSS on CPU, PyTorch's allocator on CUDA.

"The training's own memory" is what a memory budget bounds:

- CPU (:class:`ProcessMemoryMeter`): the resident memory of the training process above
  a baseline taken at fit start, plus the model and optimizer tensors that were already
  resident then (parameters, buffers, and on resume gradients and optimizer state). The
  Python interpreter, the torch libraries and the loaded data set are in the baseline and
  are not counted; everything training allocates afterwards is: gradients, optimizer
  state, saved activations, backward temporaries, batches, evaluation and memory the
  allocator keeps after a free. Peaks come from the kernel's RSS high-water mark
  (``VmHWM``, reset through ``/proc/self/clear_refs``), so a peak inside backward is
  seen, not sampled. DataLoader worker processes are not counted.
- CUDA (:class:`CudaMemoryMeter`): ``torch.cuda.max_memory_allocated``, the bytes of
  every tensor PyTorch allocates on the device (the data set stays on the host). The
  CUDA context and cached-but-free blocks are not counted; ``reserved_peak_bytes``
  reports the allocator's reservation alongside.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from pathlib import Path
from typing import Protocol

import torch

__all__ = [
    "CudaMemoryMeter",
    "MemoryMeter",
    "ProcessMemoryMeter",
    "make_meter",
    "release_free_memory",
]

log = logging.getLogger(__name__)

_LIBC: ctypes.CDLL | None = None
_LIBC_TRIED = False


def release_free_memory() -> bool:
    """Return free heap memory to the OS (glibc ``malloc_trim``); False where unavailable.

    Without it the resident size keeps memory freed long ago, and a window's peak would
    include what an earlier phase left behind.
    """
    global _LIBC, _LIBC_TRIED
    if not _LIBC_TRIED:
        _LIBC_TRIED = True
        name = ctypes.util.find_library("c")
        try:
            lib = ctypes.CDLL(name) if name else None
            _LIBC = lib if lib is not None and hasattr(lib, "malloc_trim") else None
        except OSError:
            _LIBC = None
    if _LIBC is None:
        return False
    _LIBC.malloc_trim(0)
    return True


class MemoryMeter(Protocol):
    """Peak memory of the training over windows (between ``reset_peak`` calls)."""

    source: str

    def start(self, resident_tensor_bytes: int) -> None:
        """Take the baseline (fit start); ``resident_tensor_bytes`` already exist then."""

    def reset_peak(self) -> None:
        """Open a new window."""

    def peak_bytes(self) -> int | None:
        """The training's own peak memory since the window opened."""

    def current_bytes(self) -> int | None:
        """The training's own memory now."""

    def capacity_bytes(self) -> int | None:
        """The device's total memory."""


def _status_bytes(path: Path, key: bytes) -> int | None:
    try:
        with open(path, "rb") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        return None
    return None


class ProcessMemoryMeter:
    """The CPU meter: RSS high-water mark above the fit-start baseline (see the module doc).

    Args:
        status: the process status file (``VmRSS``, ``VmHWM``).
        clear_refs: writing "5" there resets the high-water mark (Linux >= 4.0).

    Where the mark cannot be read or reset, the peak is the largest RSS seen at the
    meter's own readings (``exact_peaks`` is False) and misses peaks between them.
    """

    source = "cpu:rss-above-baseline"
    #: what probe steps leave resident would count against the budget: probes run in a
    #: forked copy of the process (:mod:`edgetrain.adapt.isolate`)
    isolate_probes = True

    def __init__(
        self,
        status: str | Path = "/proc/self/status",
        clear_refs: str | Path = "/proc/self/clear_refs",
    ) -> None:
        self.status = Path(status)
        self.clear_refs = Path(clear_refs)
        self.baseline_rss_bytes: int | None = None
        self.resident_tensor_bytes = 0
        self.exact_peaks = self._can_reset()
        self._sampled_peak: int | None = None

    def _can_reset(self) -> bool:
        if _status_bytes(self.status, b"VmHWM:") is None:
            return False
        try:
            self.clear_refs.write_text("5")
        except OSError:
            log.info("cannot reset the RSS high-water mark; peaks are sampled at step ends")
            return False
        return True

    def _rss(self) -> int | None:
        return _status_bytes(self.status, b"VmRSS:")

    def _own(self, rss: int | None) -> int | None:
        if rss is None or self.baseline_rss_bytes is None:
            return None
        return rss - self.baseline_rss_bytes + self.resident_tensor_bytes

    def start(self, resident_tensor_bytes: int) -> None:
        release_free_memory()
        self.baseline_rss_bytes = self._rss()
        self.resident_tensor_bytes = int(resident_tensor_bytes)
        self.reset_peak()

    def reset_peak(self) -> None:
        release_free_memory()
        if self.exact_peaks:
            try:
                self.clear_refs.write_text("5")
            except OSError:
                self.exact_peaks = False
        self._sampled_peak = self.current_bytes()

    def peak_bytes(self) -> int | None:
        now = self.current_bytes()
        if now is not None:
            self._sampled_peak = now if self._sampled_peak is None else max(self._sampled_peak, now)
        if self.exact_peaks:
            hwm = self._own(_status_bytes(self.status, b"VmHWM:"))
            if hwm is not None:
                return hwm if self._sampled_peak is None else max(hwm, self._sampled_peak)
        return self._sampled_peak

    def current_bytes(self) -> int | None:
        return self._own(self._rss())

    def capacity_bytes(self) -> int | None:
        try:
            import psutil

            return int(psutil.virtual_memory().total)
        except Exception:  # a missing sensor never stops training
            return None


class CudaMemoryMeter:
    """The CUDA meter: bytes PyTorch allocates on ``device`` (see the module doc)."""

    source = "cuda:max-allocated"

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.baseline_rss_bytes: int | None = None

    def start(self, resident_tensor_bytes: int) -> None:
        del resident_tensor_bytes  # already in memory_allocated
        self.reset_peak()

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak_bytes(self) -> int | None:
        return int(torch.cuda.max_memory_allocated(self.device))

    def reserved_peak_bytes(self) -> int:
        return int(torch.cuda.max_memory_reserved(self.device))

    def current_bytes(self) -> int | None:
        return int(torch.cuda.memory_allocated(self.device))

    def capacity_bytes(self) -> int | None:
        return int(torch.cuda.get_device_properties(self.device).total_memory)


def make_meter(device: torch.device) -> MemoryMeter:
    """The meter for ``device``: CUDA allocator statistics or process RSS."""
    if device.type == "cuda":
        return CudaMemoryMeter(device)
    return ProcessMemoryMeter()
