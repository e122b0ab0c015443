"""Byte accounting for saved tensors: each storage counted once, current and peak.

A storage is identified by its address, validated with a weak reference to the
storage object: once a storage is freed its address can be reused by a new one,
which then gets its own entry (address-only identity miscounts and, used for
de-duplication, gave wrong gradients).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch

__all__ = ["CompressionStats", "Ledger", "StorageEntry", "storage_key"]

logger = logging.getLogger(__name__)


def storage_key(t: torch.Tensor) -> tuple[str, int]:
    """(device, address) of the storage under ``t``."""
    return (str(t.device), t.untyped_storage().data_ptr())


class StorageEntry:
    """One storage that has been saved for backward, and who holds it now."""

    __slots__ = ("__weakref__", "aliased_once", "aliases", "live", "nbytes", "ref")

    def __init__(self, ref: weakref.ref, nbytes: int) -> None:
        self.ref = ref
        self.nbytes = nbytes
        self.live = 0  # packed objects (aliases and compressed spans) that refer to it
        self.aliases = 0  # of those, aliases: they keep the storage itself alive
        self.aliased_once = False


@dataclass(frozen=True)
class CompressionStats:
    """What was saved for backward, before and after compression.

    Byte counts are of unique storages (a tensor saved by two operations counts
    once). ``saved_bytes_*`` are totals since the last ``reset()``; ``current_*``
    are held right now by live autograd graphs; ``peak_*`` are the maxima of
    ``current_*`` since the last ``reset_peak()``. Parameters are not counted.

    Attributes:
        mode: the compression mode.
        saved_bytes_raw: bytes PyTorch would have kept for backward.
        saved_bytes_stored: bytes actually kept (compressed payloads, plus the
            storages of tensors passed through).
        current_raw_bytes: raw bytes of the storages saved by live graphs.
        current_stored_bytes: stored bytes held by live graphs.
        peak_raw_bytes: peak of ``current_raw_bytes``.
        peak_stored_bytes: peak of ``current_stored_bytes``.
        codec_counts: tensors packed per codec ("raw" = passed through,
            "param" = a parameter or other leaf, "other" = sparse or subclass
            tensors; neither is counted in bytes).
        codec_raw_bytes: tensor bytes given to each codec.
        codec_stored_bytes: bytes each codec produced.
    """

    mode: str
    saved_bytes_raw: int
    saved_bytes_stored: int
    current_raw_bytes: int
    current_stored_bytes: int
    peak_raw_bytes: int
    peak_stored_bytes: int
    codec_counts: Mapping[str, int] = field(default_factory=dict)
    codec_raw_bytes: Mapping[str, int] = field(default_factory=dict)
    codec_stored_bytes: Mapping[str, int] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Stored over raw bytes (1.0 when nothing was saved)."""
        return self.saved_bytes_stored / self.saved_bytes_raw if self.saved_bytes_raw else 1.0


def _can_weakref_storage() -> bool:
    try:
        weakref.ref(torch.empty(1).untyped_storage())
    except TypeError:  # older torch: fall back to the tensor's lifetime
        return False
    return True


_STORAGE_WEAKREF = _can_weakref_storage()


class Ledger:
    """Counts bytes of saved storages; thread-safe (backward may run on other threads)."""

    def __init__(self) -> None:
        # re-entrant: a __del__ that releases bytes can run inside a locked section
        self.lock = threading.RLock()
        self._entries: dict[tuple[str, int], StorageEntry] = {}
        self.per_module: Counter[str] = Counter()
        self.reset()

    def reset(self) -> None:
        """Zero the totals and per-codec counts; peaks restart from the current bytes."""
        with self.lock:
            self.raw_total = 0
            self.stored_total = 0
            self.raw_now = getattr(self, "raw_now", 0)
            self.stored_now = getattr(self, "stored_now", 0)
            self.codec_counts: Counter[str] = Counter()
            self.codec_raw: Counter[str] = Counter()
            self.codec_stored: Counter[str] = Counter()
            self.per_module.clear()
            # forget which storages were seen, so that "saved since reset" counts them again
            self._entries.clear()
            self.reset_peak()

    def reset_peak(self) -> None:
        """Restart the peaks from the bytes held now."""
        with self.lock:
            self.raw_peak = self.raw_now
            self.stored_peak = self.stored_now

    def entry(self, t: torch.Tensor, module: str) -> StorageEntry:
        """The entry for ``t``'s storage, created (and counted) on first sight."""
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr())
        with self.lock:
            found = self._entries.get(key)
            if found is not None:
                held = found.ref()
                if held is not None and (held is storage or not _STORAGE_WEAKREF):
                    return found
            target = storage if _STORAGE_WEAKREF else t
            ref = weakref.ref(target, lambda r, key=key: self._forget(key, r))
            entry = StorageEntry(ref, storage.nbytes())
            self._entries[key] = entry
            self.raw_total += entry.nbytes
            self.per_module[module] += entry.nbytes
            return entry

    def _forget(self, key: tuple[str, int], ref: weakref.ref) -> None:
        with self.lock:
            found = self._entries.get(key)
            if found is not None and found.ref is ref:
                del self._entries[key]

    def count(self, codec: str, raw: int, stored: int) -> None:
        """Note one tensor packed by ``codec``."""
        with self.lock:
            self.codec_counts[codec] += 1
            self.codec_raw[codec] += raw
            self.codec_stored[codec] += stored

    def acquire(self, entry: StorageEntry, alias: bool) -> None:
        """A packed object now refers to ``entry`` (an alias keeps its storage alive)."""
        with self.lock:
            if entry.live == 0:
                self.raw_now += entry.nbytes
                self.raw_peak = max(self.raw_peak, self.raw_now)
            entry.live += 1
            if alias:
                if entry.aliases == 0:
                    self.stored_now += entry.nbytes
                    self.stored_peak = max(self.stored_peak, self.stored_now)
                    if not entry.aliased_once:
                        self.stored_total += entry.nbytes
                        entry.aliased_once = True
                entry.aliases += 1

    def release(self, entry: StorageEntry, alias: bool) -> None:
        """Undo :meth:`acquire` (the packed object was freed)."""
        with self.lock:
            entry.live -= 1
            if entry.live == 0:
                self.raw_now -= entry.nbytes
            if alias:
                entry.aliases -= 1
                if entry.aliases == 0:
                    self.stored_now -= entry.nbytes

    def add_stored(self, nbytes: int) -> None:
        """A compressed payload of ``nbytes`` was created."""
        with self.lock:
            self.stored_total += nbytes
            self.stored_now += nbytes
            self.stored_peak = max(self.stored_peak, self.stored_now)

    def drop_stored(self, nbytes: int) -> None:
        """A compressed payload of ``nbytes`` was freed."""
        with self.lock:
            self.stored_now -= nbytes

    def stats(self, mode: str) -> CompressionStats:
        """A snapshot of the counts."""
        with self.lock:
            return CompressionStats(
                mode=mode,
                saved_bytes_raw=self.raw_total,
                saved_bytes_stored=self.stored_total,
                current_raw_bytes=self.raw_now,
                current_stored_bytes=self.stored_now,
                peak_raw_bytes=self.raw_peak,
                peak_stored_bytes=self.stored_peak,
                codec_counts=MappingProxyType(dict(self.codec_counts)),
                codec_raw_bytes=MappingProxyType(dict(self.codec_raw)),
                codec_stored_bytes=MappingProxyType(dict(self.codec_stored)),
            )
