"""Fakes at the sensor boundary: sysfs trees, a stub NVML module, a scripted sensor, a clock."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edgetrain.measure.sensor import EnergyChannel, SensorStatus

# -- a controllable clock and a scripted sensor -------------------------------------------


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ScriptedSensor:
    """A sensor whose values come from a function (usually of a fake clock)."""

    def __init__(
        self,
        values: Callable[[], dict[str, float]],
        *,
        name: str = "scripted",
        channels: tuple[EnergyChannel, ...] = (),
        columns: tuple[str, ...] | None = None,
    ) -> None:
        self.name = name
        self._values = values
        self._channels = channels
        self._columns = columns if columns is not None else tuple(values())
        self.reads = 0
        self.closed = False

    @property
    def status(self) -> SensorStatus:
        return SensorStatus(self.name, True, "scripted for tests", None)

    @property
    def columns(self) -> tuple[str, ...]:
        return self._columns

    @property
    def energy_channels(self) -> tuple[EnergyChannel, ...]:
        return self._channels

    def read(self) -> dict[str, float]:
        self.reads += 1
        return self._values()

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# -- sysfs trees ----------------------------------------------------------------------------


def write(path: Path, text: str | int | float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{text}\n")
    return path


def make_rapl(
    root: Path,
    packages: dict[int, int],
    *,
    max_uj: int = 262_143_328_850,
    psys: bool = False,
    dram: dict[int, int] | None = None,
    power_limit_w: float | None = None,
) -> Path:
    """A powercap tree: packages {index: energy_uj}, each with a nested core sub-domain.

    ``dram`` {package index: energy_uj} adds a ``dram`` sub-domain (as on servers);
    ``power_limit_w`` writes a ``constraint_0_power_limit_uw`` to every domain.
    """
    for index, energy in packages.items():
        pkg = root / f"intel-rapl:{index}"
        write(pkg / "name", f"package-{index}")
        write(pkg / "energy_uj", energy)
        write(pkg / "max_energy_range_uj", max_uj)
        sub = root / f"intel-rapl:{index}:0"
        write(sub / "name", "core")
        write(sub / "energy_uj", 999_999_999)  # must never be added
        write(sub / "max_energy_range_uj", max_uj)
        if dram is not None and index in dram:
            mem = root / f"intel-rapl:{index}:1"
            write(mem / "name", "dram")
            write(mem / "energy_uj", dram[index])
            write(mem / "max_energy_range_uj", max_uj)
        if power_limit_w is not None:
            for domain in root.glob(f"intel-rapl:{index}*"):
                write(domain / "constraint_0_power_limit_uw", int(power_limit_w * 1e6))
    if psys:
        n = max(packages) + 1
        write(root / f"intel-rapl:{n}" / "name", "psys")
        write(root / f"intel-rapl:{n}" / "energy_uj", 5_000_000_000)
        write(root / f"intel-rapl:{n}" / "max_energy_range_uj", max_uj)
    return root


@pytest.fixture
def rapl_root(tmp_path: Path) -> Path:
    return make_rapl(tmp_path / "powercap", {0: 1_000_000, 1: 2_000_000})


def make_jetson_hwmon(
    root: Path, rails: dict[str, tuple[float, float]], *, gpu_load: int | None = 500
) -> Path:
    """Newer layout: rails {label: (mA, mV)} under class/hwmon/hwmon1 (hwmon0 is a decoy)."""
    write(root / "class/hwmon/hwmon0/name", "cpu_thermal")
    dev = root / "class/hwmon/hwmon1"
    write(dev / "name", "ina3221")
    for n, (label, (ma, mv)) in enumerate(rails.items(), start=1):
        write(dev / f"in{n}_label", label)
        write(dev / f"curr{n}_input", ma)
        write(dev / f"in{n}_input", mv)
    n = len(rails) + 1
    write(dev / f"in{n}_label", "sum of shunt voltages")  # Orin: a label without current
    if gpu_load is not None:
        write(root / "devices/gpu.0/load", gpu_load)
    return root


def make_jetson_iio(root: Path, rails: dict[str, float], *, gpu_load: int | None = 250) -> Path:
    """Older layout: rails {name: mW} under bus/i2c/drivers/ina3221x/*/iio:device0."""
    dev = root / "bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    for n, (label, mw) in enumerate(rails.items()):
        write(dev / f"rail_name_{n}", label)
        write(dev / f"in_power{n}_input", mw)
    if gpu_load is not None:
        write(root / "devices/platform/gpu.0/load", gpu_load)
    return root


def make_nvmap(root: Path, clients: dict[int, int], *, total: bool = True) -> Path:
    """NvMap's debugfs clients file under a sysfs root: {pid: KiB}."""
    lines = ["CLIENT                        PROCESS      PID        SIZE"]
    for pid, kib in clients.items():
        lines.append(f"user                          python3   {pid:>6}    {kib}K")
    if total:
        lines.append(f"total                                            {sum(clients.values())}K")
    path = root / "kernel/debug/nvmap/iovmm/clients"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def make_smaps_rollup(root: Path, pid: int, *, rss_kb: int, pss_kb: int, uss_kb: int) -> Path:
    """A fake /proc/<pid>/smaps_rollup (the layout of Linux 6.x) under ``root``."""
    path = root / str(pid) / "smaps_rollup"
    path.parent.mkdir(parents=True, exist_ok=True)
    dirty = uss_kb // 2
    path.write_text(
        "55c4fa9e7000-7ffda47a4000 ---p 00000000 00:00 0                          [rollup]\n"
        f"Rss:             {rss_kb} kB\n"
        f"Pss:             {pss_kb} kB\n"
        f"Pss_Dirty:       {dirty} kB\n"
        f"Pss_Anon:        {dirty} kB\n"
        f"Shared_Clean:    {rss_kb - uss_kb} kB\n"
        "Shared_Dirty:    0 kB\n"
        f"Private_Clean:   {uss_kb - dirty} kB\n"
        f"Private_Dirty:   {dirty} kB\n"
        f"Referenced:      {rss_kb} kB\n"
        "Private_Hugetlb: 0 kB\n"
        "Swap:            0 kB\n"
    )
    return path


#: AGX Orin's rails: no VDD_IN (W: GPU+SOC 6, CPU+CV 3, SYS 5V 2.5).
AGX_ORIN_RAILS = {
    "VDD_GPU_SOC": (1200, 5000),
    "VDD_CPU_CV": (600, 5000),
    "VIN_SYS_5V0": (500, 5000),
}

#: Orin Nano's rails: VDD_IN 7.5 W measures the input; the others are parts of it.
ORIN_NANO_RAILS = {
    "VDD_IN": (1500, 5000),
    "VDD_CPU_GPU_CV": (600, 5000),
    "VDD_SOC": (400, 5000),
}


@pytest.fixture
def jetson_hwmon_root(tmp_path: Path) -> Path:
    # Orin Nano-like: VDD_IN 7.5 W; nested rails 3 W and 2 W
    return make_jetson_hwmon(tmp_path / "sys", ORIN_NANO_RAILS)


@pytest.fixture
def jetson_iio_root(tmp_path: Path) -> Path:
    # Nano-like: POM_5V_IN 4 W; GPU 1 W, CPU 1.5 W
    return make_jetson_iio(
        tmp_path / "sys", {"POM_5V_IN": 4000, "POM_5V_GPU": 1000, "POM_5V_CPU": 1500}
    )


# -- a stub NVML module ---------------------------------------------------------------------


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


class NVMLError_DriverNotLoaded(NVMLError):
    pass


class NVMLError_NotFound(NVMLError):
    pass


class NVMLError_GpuIsLost(NVMLError):
    pass


MigHandle = tuple[str, int, int]


class StubNvml:
    """The pynvml functions NvmlSensor calls, for fake GPUs.

    GPU 0 has an energy counter; the others do not (raise NotSupported), like older GPUs.
    Power is in mW, energy in mJ, as in NVML. Knobs for tests:

    - ``names[i]``: the device name (``"NVIDIA GH200 480GB"`` for a Grace Hopper module);
    - ``fail[i] = n``: the next ``n`` read attempts of GPU ``i`` raise (``-1``: always);
      the sensor retries once, so ``n = 2`` loses one sample and ``n = 1`` none;
    - ``mig[i] = [uuid, ...]``: MIG instances on GPU ``i`` (handles ``("mig", i, j)``);
    - ``procs[handle] = [pid, ...]``: what ``nvmlDeviceGetComputeRunningProcesses`` lists.
    """

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_NotFound = NVMLError_NotFound

    def __init__(self, n: int = 2, *, driver: bool = True) -> None:
        self.driver = driver
        self.power_mw = [100_000.0 + 50_000 * i for i in range(n)]
        self.energy_mj: list[float | None] = [5_000_000.0] + [None] * (n - 1)
        self.util = [40 + 10 * i for i in range(n)]
        self.mem_used = [(1 + i) * 1024**3 for i in range(n)]
        self.names = ["Fake GPU"] * n
        self.fail: dict[int, int] = {}
        self.mig: dict[int, list[str]] = {}
        self.procs: dict[Any, list[int]] = {}
        self.inits = 0
        self.shutdowns = 0
        self.reads = 0

    def _check(self, h: Any) -> None:
        if isinstance(h, tuple):
            return
        left = self.fail.get(h, 0)
        if left:
            self.fail[h] = left - 1 if left > 0 else left
            raise NVMLError_GpuIsLost("GPU is lost")

    def nvmlInit(self) -> None:
        if not self.driver:
            raise NVMLError_DriverNotLoaded("Driver Not Loaded")
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.power_mw)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUUID(self, h: int | MigHandle) -> str:
        if isinstance(h, tuple):
            return self.mig[h[1]][h[2]]
        return f"GPU-{h:08d}-aaaa"

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return self.names[h].encode()  # older pynvml returned bytes

    def nvmlDeviceGetMaxMigDeviceCount(self, h: int) -> int:
        if h not in self.mig:
            raise NVMLError_NotSupported("Not Supported")
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: int, i: int) -> MigHandle:
        if i >= len(self.mig.get(h, [])):
            raise NVMLError_NotFound("Not Found")
        return ("mig", h, i)

    def nvmlDeviceGetUtilizationRates(self, h: int | MigHandle) -> Any:
        if isinstance(h, tuple) or h in self.mig:
            raise NVMLError_NotSupported("Not Supported")  # as in MIG mode
        self._check(h)
        return SimpleNamespace(gpu=self.util[h], memory=0)

    def nvmlDeviceGetMemoryInfo(self, h: int | MigHandle) -> Any:
        if isinstance(h, tuple):
            return SimpleNamespace(used=(1 + h[2]) * 512 * 1024**2, total=10 * 1024**3, free=0)
        self._check(h)
        return SimpleNamespace(used=self.mem_used[h], total=16 * 1024**3, free=0)

    def nvmlDeviceGetPowerUsage(self, h: int | MigHandle) -> float:
        if isinstance(h, tuple):
            raise NVMLError_NotSupported("Not Supported")
        self._check(h)
        self.reads += 1
        return self.power_mw[h]

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int | MigHandle) -> float:
        if isinstance(h, tuple):
            raise NVMLError_NotSupported("Not Supported")
        energy = self.energy_mj[h]
        if energy is None:
            raise NVMLError_NotSupported("Not Supported")
        self._check(h)
        return energy

    def nvmlDeviceGetComputeRunningProcesses(self, h: int | MigHandle) -> list[Any]:
        return [SimpleNamespace(pid=p, usedGpuMemory=None) for p in self.procs.get(h, [])]

    def nvmlDeviceGetGraphicsRunningProcesses(self, h: int | MigHandle) -> list[Any]:
        return []


@pytest.fixture
def stub_nvml(monkeypatch: pytest.MonkeyPatch) -> StubNvml:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return StubNvml()


@pytest.fixture
def fakes() -> SimpleNamespace:
    """The fakes above, for tests (conftest modules should not be imported by name)."""
    return SimpleNamespace(
        FakeClock=FakeClock,
        ScriptedSensor=ScriptedSensor,
        StubNvml=StubNvml,
        NVMLError_NotSupported=NVMLError_NotSupported,
        make_rapl=make_rapl,
        make_jetson_hwmon=make_jetson_hwmon,
        make_jetson_iio=make_jetson_iio,
        make_nvmap=make_nvmap,
        make_smaps_rollup=make_smaps_rollup,
        AGX_ORIN_RAILS=AGX_ORIN_RAILS,
        ORIN_NANO_RAILS=ORIN_NANO_RAILS,
        write=write,
    )
