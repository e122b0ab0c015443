"""NVIDIA GPU utilisation, memory, power and energy via NVML (``pip install nvidia-ml-py``)."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from edgetrain.measure import proctree
from edgetrain.measure.sensor import EnergyChannel, SensorStatus

__all__ = [
    "DeviceChoice",
    "NvmlSensor",
    "choose_devices",
    "torch_device_uuids",
    "visible_gpu_indices",
]

logger = logging.getLogger(__name__)

_INSTALL = 'pip install "edgetrain[gpu]"'

#: GPUs whose energy counter covers the whole module, Grace CPU and its memory included
#: (GH200, GB200, GB300).
_MODULE_WITH_CPU = re.compile(r"\bG[HB]\d{3}\b|grace", re.IGNORECASE)

#: Seconds between checks of which GPUs the followed process tree holds.
HELD_REFRESH_S = 2.0


def _bare(uuid: str) -> str:
    """A UUID without its ``GPU-`` / ``MIG-`` prefix, lower case."""
    text = uuid.strip().lower()
    for prefix in ("gpu-", "mig-"):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


@dataclass(frozen=True)
class DeviceChoice:
    """Which NVML GPUs to read, and how that was decided.

    Attributes:
        gpus: NVML indices of the GPUs, in order.
        mig: Per GPU index, the UUIDs of the chosen MIG instances on it (energy and power
            are per GPU: every instance of that GPU together).
        scope: ``device`` when devices were chosen, ``machine`` when every GPU is read
            because nothing said which.
        how: Where the choice came from, for the status.
        problem: An entry that matched no device (reading stopped there, as CUDA does).
    """

    gpus: list[int]
    mig: dict[int, list[str]] = field(default_factory=dict)
    scope: str = "device"
    how: str = ""
    problem: str | None = None


def choose_devices(
    spec: str,
    uuids: Sequence[str],
    mig_uuids: Sequence[Sequence[str]] = (),
    *,
    how: str = "",
) -> DeviceChoice:
    """Parse a ``CUDA_VISIBLE_DEVICES``-style list into NVML GPUs.

    Entries are NVML indices, (unique prefixes of) ``GPU-`` UUIDs, ``MIG-`` UUIDs of MIG
    instances (``MIG-<uuid>``, or the older ``MIG-GPU-<uuid>/<gi>/<ci>``), or ``all``. As
    CUDA does, everything from the first entry that matches nothing on is ignored. A MIG
    instance selects its parent GPU (energy and power exist per GPU only).

    Args:
        spec: The list, comma-separated.
        uuids: The UUID of each NVML GPU, by index.
        mig_uuids: Per GPU index, the UUIDs of its MIG instances.
        how: Where the list came from, for :attr:`DeviceChoice.how`.
    """
    if spec.strip().lower() == "all":
        return DeviceChoice(list(range(len(uuids))), scope="machine", how=how)
    gpus: list[int] = []
    mig: dict[int, list[str]] = {}
    problem = None
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        index: int | None = None
        if entry.lstrip("-").isdigit():
            number = int(entry)
            index = number if 0 <= number < len(uuids) else None
        elif entry.upper().startswith("MIG-GPU-"):  # MIG-GPU-<gpu uuid>/<gi>/<ci>
            parent = entry[4:].split("/")[0]
            match = [i for i, u in enumerate(uuids) if _bare(u) == _bare(parent)]
            index = match[0] if len(match) == 1 else None
            if index is not None:
                mig.setdefault(index, []).append(entry)
        elif entry.upper().startswith("MIG-"):
            want = _bare(entry)
            match = [
                (i, u)
                for i, instances in enumerate(mig_uuids)
                for u in instances
                if _bare(u).startswith(want)
            ]
            if len(match) == 1:
                index = match[0][0]
                mig.setdefault(index, []).append(match[0][1])
        elif entry.upper().startswith("GPU-"):
            match = [i for i, u in enumerate(uuids) if _bare(u).startswith(_bare(entry))]
            index = match[0] if len(match) == 1 else None
        if index is None:
            problem = f"{entry!r} matches no NVIDIA device; it and the entries after it are ignored"
            break
        if index not in gpus:
            gpus.append(index)
    return DeviceChoice(gpus, mig, "device", how, problem)


def visible_gpu_indices(
    cuda_visible_devices: str | None,
    uuids: Sequence[str],
    mig_uuids: Sequence[Sequence[str]] = (),
) -> list[int]:
    """NVML indices of the GPUs that CUDA may use (every GPU when the variable is unset)."""
    if cuda_visible_devices is None:
        return list(range(len(uuids)))
    return choose_devices(cuda_visible_devices, uuids, mig_uuids).gpus


def torch_device_uuids() -> list[str] | None:
    """UUIDs of the CUDA devices this process uses, when torch has initialised CUDA here.

    Devices holding memory of PyTorch's caching allocator, else the current device. None
    when torch is not imported or CUDA is not initialised (never imports torch).
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return None
        count = int(torch.cuda.device_count())
        used = [i for i in range(count) if torch.cuda.memory_reserved(i) > 0]
        if not used:
            used = [int(torch.cuda.current_device())]
        return [str(torch.cuda.get_device_properties(i).uuid) for i in used]
    except Exception:
        logger.debug("asking torch for its CUDA devices failed", exc_info=True)
        return None


def _supported(call: Any, *args: Any) -> bool:
    try:
        call(*args)
    except Exception:  # NVMLError_NotSupported and friends
        return False
    return True


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class _Gpu:
    index: int
    name: str
    handle: Any
    has_util: bool
    has_mem: bool
    has_power: bool
    has_energy: bool
    includes_cpu: bool = False
    mig: list[tuple[str, Any]] = field(default_factory=list)
    held: float | None = None


class NvmlSensor:
    """The chosen NVIDIA GPUs: utilisation, memory used, power and energy.

    Energy comes from the total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ,
    Volta and newer) where the GPU has one; otherwise the monitor integrates the power,
    which NVML reports as a 1-second average on recent GPUs. On Grace Hopper (GH200) and
    Grace Blackwell modules the counter covers the whole module, the Grace CPU and its
    memory included: the channel says so and no CPU figure is added to it.

    Which GPUs, first match wins:

    1. ``devices`` (``monitor.devices``), written like ``CUDA_VISIBLE_DEVICES``, or ``all``;
    2. ``indices`` (NVML indices, for tests);
    3. ``CUDA_VISIBLE_DEVICES``: indices, ``GPU-`` UUIDs, ``MIG-`` UUIDs. Integers are read
       as NVML (PCI bus) indices, which is CUDA's order with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``
       and on machines of identical GPUs;
    4. the GPUs this process already uses (PyTorch with CUDA initialised here);
    5. every GPU of the machine: the figure's scope is then ``machine``, and the status says
       how to narrow it.

    A MIG instance selects its parent GPU, with a note: energy and power exist per GPU, so
    they cover every instance on it; memory is the instance's own.

    A GPU whose read fails is retried once, then left out of that read; the others are not
    affected (see the monitor for how gaps are reported). Every ``HELD_REFRESH_S`` seconds the
    sensor asks NVML which processes hold each GPU: a GPU that lists a process of the
    followed tree is *held* (its energy goes into the process-attributed figure), one that
    lists only other visible processes, or none while the tree is seen on another GPU, is
    not; where NVML lists nothing it can match (containers hide host pids) it is unknown and
    counted as held.

    Values: ``gpu_util_pct`` (mean over GPUs), ``gpu_mem_bytes`` and ``gpu_power_w`` (sums;
    left out of a read in which a GPU failed), and per GPU ``gpu<i>_util_pct``,
    ``gpu<i>_mem_bytes``, ``gpu<i>_power_w`` with ``i`` the NVML index (as nvidia-smi shows
    it), plus internal ``gpu<i>_energy_j`` counters and ``gpu<i>_held_count`` flags. Memory
    used is device-wide (CUDA context and other processes included), not PyTorch's
    allocations.

    Args:
        nvml_module: A module with the pynvml functions (a stub in tests); default: import
            ``pynvml`` from nvidia-ml-py.
        indices: NVML indices to read.
        devices: A device list (see above); overrides ``indices`` and the environment.
        pid: Root of the process tree whose GPUs count as held; default: this process.
        clock: Monotonic clock for the held-GPU refresh.
        in_use: Returns UUIDs of the devices this process uses (tests); default:
            :func:`torch_device_uuids`.
    """

    name = "nvml"

    def __init__(
        self,
        nvml_module: ModuleType | Any | None = None,
        *,
        indices: list[int] | None = None,
        devices: str | None = None,
        pid: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        in_use: Callable[[], list[str] | None] = torch_device_uuids,
    ) -> None:
        self._nvml: Any = None
        self._gpus: list[_Gpu] = []
        self.pid = os.getpid() if pid is None else pid
        self._clock = clock
        self._in_use = in_use
        self._next_held_s = float("-inf")
        self._mig_handles: dict[str, Any] = {}
        self.scope = "device"
        self._status = self._probe(nvml_module, indices, devices)

    # -- choosing devices -----------------------------------------------------------------

    def _mig_instances(self, handle: Any) -> list[tuple[str, Any]]:
        nvml = self._nvml
        try:
            count = int(nvml.nvmlDeviceGetMaxMigDeviceCount(handle))
        except Exception:  # not a MIG-capable GPU, or an old driver
            return []
        out = []
        for i in range(count):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, i)
                out.append((_text(nvml.nvmlDeviceGetUUID(mig)), mig))
            except Exception:  # no instance in this slot
                continue
        return out

    def _choose(
        self, handles: list[Any], indices: list[int] | None, devices: str | None
    ) -> DeviceChoice:
        nvml = self._nvml
        uuids = [_text(nvml.nvmlDeviceGetUUID(h)) for h in handles]
        env = os.environ.get("CUDA_VISIBLE_DEVICES")
        given = [devices] if devices is not None else [] if indices is not None else [env]
        mig_needed = any(s is not None and "mig-" in s.lower() for s in given)
        migs = [self._mig_instances(h) for h in handles] if mig_needed else [[] for _ in handles]
        mig_uuids = [[u for u, _ in m] for m in migs]
        self._mig_handles = {u: h for m in migs for u, h in m}
        if devices is not None:
            return choose_devices(devices, uuids, mig_uuids, how="chosen by monitor.devices")
        if indices is not None:
            return DeviceChoice([i for i in indices if 0 <= i < len(handles)], how="chosen")
        if env is not None:
            return choose_devices(env, uuids, mig_uuids, how="from CUDA_VISIBLE_DEVICES")
        used = self._in_use() if self.pid == os.getpid() else None
        if used:
            bare = {_bare(u) for u in used}
            gpus = [i for i, u in enumerate(uuids) if _bare(u) in bare]
            if not gpus:  # torch reports MIG instances by their own UUID
                migs = [self._mig_instances(h) for h in handles]
                self._mig_handles = {u: h for m in migs for u, h in m}
                mig = {i: [u for u, _ in m if _bare(u) in bare] for i, m in enumerate(migs)}
                mig = {i: us for i, us in mig.items() if us}
                return DeviceChoice(sorted(mig), mig, how="in use by this process")
            return DeviceChoice(gpus, how="in use by this process")
        return DeviceChoice(
            list(range(len(handles))),
            scope="machine",
            how="every GPU of the machine (CUDA_VISIBLE_DEVICES is unset and this process "
            "uses none yet; set monitor.devices to measure only the job's)",
        )

    def _probe(
        self, nvml_module: Any, indices: list[int] | None, devices: str | None
    ) -> SensorStatus:
        label = "measured:nvml"
        if nvml_module is None:
            try:
                import pynvml as nvml_module  # type: ignore[import-not-found,no-redef]
            except ImportError:
                return SensorStatus(
                    self.name, False, f"nvidia-ml-py is not installed; {_INSTALL}", label
                )
        nvml = nvml_module
        try:
            nvml.nvmlInit()
        except Exception as exc:
            return SensorStatus(
                self.name, False, f"NVIDIA driver not available (NVML: {_text(exc)})", label
            )
        self._nvml = nvml
        try:
            count = int(nvml.nvmlDeviceGetCount())
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            choice = self._choose(handles, indices, devices)
            self.scope = choice.scope
            for i in choice.gpus:
                h = handles[i]
                name = _text(nvml.nvmlDeviceGetName(h))
                has_energy = _supported(nvml.nvmlDeviceGetTotalEnergyConsumption, h)
                mig = [(u, self._mig_handles.get(u)) for u in choice.mig.get(i, [])]
                mem_handles = [m for _, m in mig if m is not None] or [h]
                self._gpus.append(
                    _Gpu(
                        index=i,
                        name=name,
                        handle=h,
                        has_util=_supported(nvml.nvmlDeviceGetUtilizationRates, h),
                        has_mem=all(
                            _supported(nvml.nvmlDeviceGetMemoryInfo, m) for m in mem_handles
                        ),
                        has_power=_supported(nvml.nvmlDeviceGetPowerUsage, h),
                        has_energy=has_energy,
                        includes_cpu=has_energy and bool(_MODULE_WITH_CPU.search(name)),
                        mig=mig,
                    )
                )
        except Exception as exc:
            self.close()
            self._gpus = []
            return SensorStatus(self.name, False, f"NVML query failed: {_text(exc)}", label)
        if not self._gpus:
            self.close()
            why = f"no NVIDIA GPU chosen ({choice.how})"
            if choice.problem:
                why += f": {choice.problem}"
            return SensorStatus(self.name, False, why, label)
        parts = []
        for g in self._gpus:
            how = (
                "energy counter"
                if g.has_energy
                else "power integrated"
                if g.has_power
                else "no power reading"
            )
            text = f"GPU {g.index} {g.name} ({how})"
            if g.includes_cpu:
                text += " [module energy: includes the Grace CPU and its memory]"
            if g.mig:
                names = ", ".join(u for u, _ in g.mig)
                text += f" [MIG {names}: energy and power are per GPU, all its instances]"
            parts.append(text)
        reason = f"{choice.how}: " + "; ".join(parts)
        if choice.problem:
            reason += f"; {choice.problem}"
        return SensorStatus(self.name, True, reason, label)

    # -- the sensor interface -------------------------------------------------------------

    @property
    def status(self) -> SensorStatus:
        """Available when NVML started and at least one GPU was chosen."""
        return self._status

    @property
    def columns(self) -> tuple[str, ...]:
        """Summary columns, then per-GPU columns."""
        if not self._gpus:
            return ()
        cols = []
        if any(g.has_util for g in self._gpus):
            cols.append("gpu_util_pct")
        if any(g.has_mem for g in self._gpus):
            cols.append("gpu_mem_bytes")
        if any(g.has_power for g in self._gpus):
            cols.append("gpu_power_w")
        for g in self._gpus:
            cols += [f"gpu{g.index}_util_pct"] if g.has_util else []
            cols += [f"gpu{g.index}_mem_bytes"] if g.has_mem else []
            cols += [f"gpu{g.index}_power_w"] if g.has_power else []
        return tuple(cols)

    @property
    def energy_channels(self) -> tuple[EnergyChannel, ...]:
        """One measured GPU channel per GPU with a counter or a power reading."""
        return tuple(
            EnergyChannel(
                "nvml",
                "gpu",
                measured=True,
                power_key=f"gpu{g.index}_power_w" if g.has_power else None,
                energy_key=f"gpu{g.index}_energy_j" if g.has_energy else None,
                device=f"gpu{g.index}",
                scope="machine" if self.scope == "machine" else "device",
                includes_cpu=g.includes_cpu,
                held_key=f"gpu{g.index}_held_count",
            )
            for g in self._gpus
            if g.has_power or g.has_energy
        )

    def _read_gpu(self, g: _Gpu) -> dict[str, float]:
        nvml = self._nvml
        i = g.index
        out: dict[str, float] = {}
        if g.has_util:
            out[f"gpu{i}_util_pct"] = float(nvml.nvmlDeviceGetUtilizationRates(g.handle).gpu)
        if g.has_mem:
            handles = [h for _, h in g.mig if h is not None] or [g.handle]
            out[f"gpu{i}_mem_bytes"] = float(
                sum(nvml.nvmlDeviceGetMemoryInfo(h).used for h in handles)
            )
        if g.has_power:
            out[f"gpu{i}_power_w"] = nvml.nvmlDeviceGetPowerUsage(g.handle) / 1e3  # mW
        if g.has_energy:
            out[f"gpu{i}_energy_j"] = nvml.nvmlDeviceGetTotalEnergyConsumption(g.handle) / 1e3
        return out

    def _pids_on(self, g: _Gpu) -> list[int] | None:
        """Pids NVML lists on this GPU (compute and graphics), or None when it cannot say."""
        nvml = self._nvml
        pids: list[int] = []
        handles = [h for _, h in g.mig if h is not None] or [g.handle]
        asked = False
        for call in (
            "nvmlDeviceGetComputeRunningProcesses",
            "nvmlDeviceGetGraphicsRunningProcesses",
        ):
            fn = getattr(nvml, call, None)
            if fn is None:
                continue
            for h in handles:
                try:
                    pids += [int(p.pid) for p in fn(h)]
                    asked = True
                except Exception:
                    continue
        return pids if asked else None

    def _refresh_held(self) -> None:
        """Which GPUs the followed tree holds: 1.0, 0.0, or None (unknown)."""
        tree = set(proctree.tree_pids(self.pid))
        listed = {g.index: self._pids_on(g) for g in self._gpus}
        tree_seen = any(tree & set(p) for p in listed.values() if p)
        for g in self._gpus:
            pids = listed[g.index]
            if pids is None:
                g.held = None
            elif tree & set(pids):
                g.held = 1.0
            elif tree_seen or any(os.path.exists(f"/proc/{p}") for p in pids):
                g.held = 0.0  # the tree holds another GPU, or visible others hold this one
            else:
                g.held = None  # nothing we can match (a container hides host pids)

    def read(self) -> dict[str, float]:
        """Read every chosen GPU (about 4 NVML calls per GPU); a failing GPU is left out."""
        if not self._gpus or self._nvml is None:
            return {}
        now = self._clock()
        if now >= self._next_held_s:
            self._next_held_s = now + HELD_REFRESH_S
            try:
                self._refresh_held()
            except Exception:
                logger.debug("held-GPU check failed", exc_info=True)
        out: dict[str, float] = {}
        failed = False
        utils, mem_total, power_total = [], 0.0, 0.0
        for g in self._gpus:
            values = None
            for _ in range(2):
                try:
                    values = self._read_gpu(g)
                    break
                except Exception as exc:
                    logger.debug("reading GPU %d failed: %r", g.index, exc)
            if values is None:
                failed = True
                continue
            out.update(values)
            utils += [values[k] for k in (f"gpu{g.index}_util_pct",) if k in values]
            mem_total += values.get(f"gpu{g.index}_mem_bytes", 0.0)
            power_total += values.get(f"gpu{g.index}_power_w", 0.0)
            if g.held is not None:
                out[f"gpu{g.index}_held_count"] = g.held
        if failed:
            return out  # sums over some GPUs only would mislead
        if utils:
            out["gpu_util_pct"] = sum(utils) / len(utils)
        if any(g.has_mem for g in self._gpus):
            out["gpu_mem_bytes"] = mem_total
        if any(g.has_power for g in self._gpus):
            out["gpu_power_w"] = power_total
        return out

    def close(self) -> None:
        """Shut NVML down (it counts inits, so other users are not affected)."""
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                logger.debug("nvmlShutdown failed", exc_info=True)
            self._nvml = None
