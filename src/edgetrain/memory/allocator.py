"""The CPU allocator's behaviour in edgetrain's training processes (standard library only).

glibc's ``malloc`` keeps freed memory for reuse: blocks below its mmap threshold (which
grows with use, up to 32 MiB on 64-bit) come from the heap, and the heap shrinks only
from its top. A training step frees megabytes of activations, codec temporaries and
gradients, so the process's resident memory (RSS) stays at the high-water mark of a
fragmented heap, and a saving made in live tensors may never reach the process.

``configure_cpu_allocator("release")`` sets, through ``mallopt``, a fixed mmap threshold
and trim threshold of 128 KiB (``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD``, as the
environment variables ``MALLOC_MMAP_THRESHOLD_=131072 MALLOC_TRIM_THRESHOLD_=131072``
would): every tensor of 128 KiB or more gets its own mapping, returned to the OS when it
is freed, so RSS follows the live tensors. ``"keep"`` leaves the allocator as it is.
Elsewhere (macOS, musl, Windows, or glibc's ``malloc`` replaced through ``LD_PRELOAD``,
e.g. jemalloc or tcmalloc) nothing is changed and the record says why; nothing raises.

``mallopt`` acts on the whole process and cannot be undone (setting a threshold turns
off glibc's dynamic threshold), so a release stays in effect for the process's life;
:func:`current_allocator` returns the record of the last call, which ``env.json`` holds.
``benchmarks/allocator.py`` measures both modes side by side (peak RSS growth, step time).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import threading
from typing import Any, Literal

__all__ = [
    "ALLOCATOR_MODES",
    "RELEASE_THRESHOLD",
    "configure_cpu_allocator",
    "configure_for_run",
    "current_allocator",
    "resolve_cpu_allocator",
]

ALLOCATOR_MODES = ("keep", "release")
#: Bytes: allocations at least this large are mapped on their own and unmapped when freed;
#: free memory above this at the heap's top is trimmed (glibc's initial mmap threshold).
RELEASE_THRESHOLD = 128 * 1024

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# the environment variables and tunables that set the same thresholds at process start
_ENV_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
_OTHER_MALLOCS = ("jemalloc", "tcmalloc", "mimalloc", "hoard", "snmalloc")

_lock = threading.Lock()
_released: dict[str, Any] | None = None  # the record of the release applied in this process
_current: dict[str, Any] = {"mode": "keep", "applied": False, "reason": "not configured"}


def _environment() -> dict[str, str]:
    """The allocator settings the user's environment already holds (only those set)."""
    return {name: os.environ[name] for name in _ENV_VARS if os.environ.get(name)}


def _preloaded_malloc() -> str | None:
    """The name of a malloc replacing glibc's through ``LD_PRELOAD``, if any."""
    preload = os.environ.get("LD_PRELOAD", "").lower()
    return next((name for name in _OTHER_MALLOCS if name in preload), None)


def _glibc() -> tuple[Any | None, str]:
    """glibc's handle and ``"glibc 2.x"``, or None and why glibc's mallopt is not usable."""
    system = platform.system()
    if system != "Linux":
        return None, f"{system or 'this platform'} has no glibc mallopt; its malloc is kept"
    try:
        libc = ctypes.CDLL(None)  # the C library this process runs on
        version_fn = libc.gnu_get_libc_version
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        name = ctypes.util.find_library("c") or "unknown"
        return None, f"the C library ({name}) is not glibc (e.g. musl): no mallopt"
    version_fn.restype = ctypes.c_char_p
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return libc, f"glibc {version_fn().decode()}"


def configure_cpu_allocator(mode: str) -> dict[str, Any]:
    """Set the CPU allocator's behaviour for this process and return a JSON-able record.

    Args:
        mode: ``"keep"`` changes nothing; ``"release"`` makes glibc return freed blocks of
            128 KiB or more to the OS (``mallopt``), so RSS follows the live tensors.

    Returns:
        ``{"mode", "applied", "library", "mmap_threshold", "trim_threshold", "environment"}``
        when applied; ``applied: False`` and a ``reason`` when not (``keep``, not glibc,
        another malloc preloaded). ``environment`` lists ``MALLOC_MMAP_THRESHOLD_``,
        ``MALLOC_TRIM_THRESHOLD_`` and ``GLIBC_TUNABLES`` where set (a release still
        applies ``mallopt`` over them). Calling it again with the same mode gives the
        same record.

    Raises:
        ValueError: ``mode`` is not one of :data:`ALLOCATOR_MODES`.
    """
    global _released, _current
    if mode not in ALLOCATOR_MODES:
        raise ValueError(
            f"allocator mode must be one of {', '.join(ALLOCATOR_MODES)}, got {mode!r}"
        )
    with _lock:
        record: dict[str, Any]
        if mode == "keep":
            record = {"mode": "keep", "applied": False, "reason": "the allocator is left as it is"}
            if _released is not None:
                record["reason"] = "release was applied earlier in this process and stays"
                record["release_in_effect"] = True
        elif _released is not None:
            record = dict(_released)
        else:
            record = _release()
            if record["applied"]:
                _released = dict(record)
        env = _environment()
        if env:
            record.setdefault("environment", env)
        _current = record
        return dict(record)


def _release() -> dict[str, Any]:
    libc, library = _glibc()
    record: dict[str, Any] = {"mode": "release", "applied": False, "library": library}
    if libc is None:
        record["library"] = platform.system() or "unknown"
        record["reason"] = library
        return record
    preloaded = _preloaded_malloc()
    if preloaded is not None:
        record["reason"] = (
            f"LD_PRELOAD replaces malloc ({preloaded}): glibc's mallopt would not reach it"
        )
        return record
    ok_mmap = libc.mallopt(_M_MMAP_THRESHOLD, RELEASE_THRESHOLD) == 1
    ok_trim = libc.mallopt(_M_TRIM_THRESHOLD, RELEASE_THRESHOLD) == 1
    if not (ok_mmap and ok_trim):
        record["reason"] = "mallopt refused the thresholds"
        return record
    record.update(applied=True, mmap_threshold=RELEASE_THRESHOLD, trim_threshold=RELEASE_THRESHOLD)
    return record


def current_allocator() -> dict[str, Any]:
    """The record of the last :func:`configure_cpu_allocator` call in this process."""
    with _lock:
        return dict(_current)


def resolve_cpu_allocator(config: Any, device: Any) -> Literal["keep", "release"]:
    """The allocator mode for a run of ``config`` (a ``TrainConfig`` or alike) on ``device``.

    ``cpu_allocator: auto`` releases when the run is on the CPU and memory matters: a
    ``budget.memory``, activation compression (``activations`` other than off/none),
    ``recompute``, ``optimizer_in_backward`` or a low-precision ``optimizer_state``. Off
    the CPU it is always ``keep``.
    """
    if str(getattr(device, "type", device)).split(":")[0] != "cpu":
        return "keep"
    mode = getattr(config, "cpu_allocator", "auto")
    if mode == "keep" or mode == "release":
        return "keep" if mode == "keep" else "release"
    budget = getattr(config, "budget", None)
    matters = (
        getattr(budget, "memory", None) is not None
        or getattr(config, "activations", "off") not in ("off", "none")
        or getattr(config, "recompute", "none") != "none"
        or bool(getattr(config, "optimizer_in_backward", False))
        or getattr(config, "optimizer_state", "fp32") != "fp32"
    )
    return "release" if matters else "keep"


def configure_for_run(config: Any, device: Any) -> dict[str, Any]:
    """Resolve and apply the allocator mode of a run (see :func:`resolve_cpu_allocator`);
    the record says why when it is ``keep``."""
    mode = resolve_cpu_allocator(config, device)
    record = configure_cpu_allocator(mode)
    kind = str(getattr(device, "type", device)).split(":")[0]
    if mode == "keep" and not record.get("release_in_effect"):
        if kind != "cpu":
            record["reason"] = f"device is {kind}: the CPU allocator is left as it is"
        elif getattr(config, "cpu_allocator", "auto") == "auto":
            record["reason"] = (
                "cpu_allocator auto: no memory lever (budget.memory, activations, recompute, "
                "optimizer_in_backward, optimizer_state) is set"
            )
    with _lock:
        _current.update(record)
    return record
