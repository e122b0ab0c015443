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
    root: Path, packages: dict[int, int], *, max_uj: int = 262_143_328_850, psys: bool = False
) -> Path:
    """A powercap tree: packages {index: energy_uj}, each with a nested core sub-domain."""
    for index, energy in packages.items():
        pkg = root / f"intel-rapl:{index}"
        write(pkg / "name", f"package-{index}")
        write(pkg / "energy_uj", energy)
        write(pkg / "max_energy_range_uj", max_uj)
        sub = root / f"intel-rapl:{index}:0"
        write(sub / "name", "core")
        write(sub / "energy_uj", 999_999_999)  # must never be added
        write(sub / "max_energy_range_uj", max_uj)
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


@pytest.fixture
def jetson_hwmon_root(tmp_path: Path) -> Path:
    # Orin Nano-like: VDD_IN 7.5 W; nested rails 3 W and 2 W
    return make_jetson_hwmon(
        tmp_path / "sys",
        {"VDD_IN": (1500, 5000), "VDD_CPU_GPU_CV": (600, 5000), "VDD_SOC": (400, 5000)},
    )


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


class StubNvml:
    """The pynvml functions NvmlSensor calls, for fake GPUs.

    GPU 0 has an energy counter; GPU 1 does not (raises NotSupported), like older GPUs.
    Power is in mW, energy in mJ, as in NVML.
    """

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported

    def __init__(self, n: int = 2, *, driver: bool = True) -> None:
        self.driver = driver
        self.power_mw = [100_000.0 + 50_000 * i for i in range(n)]
        self.energy_mj = [5_000_000.0] + [None] * (n - 1)
        self.util = [40 + 10 * i for i in range(n)]
        self.mem_used = [(1 + i) * 1024**3 for i in range(n)]
        self.inits = 0
        self.shutdowns = 0

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

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return f"GPU-{h:08d}-aaaa"

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return b"Fake GPU"  # older pynvml returned bytes

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        return SimpleNamespace(gpu=self.util[h], memory=0)

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return SimpleNamespace(used=self.mem_used[h], total=16 * 1024**3, free=0)

    def nvmlDeviceGetPowerUsage(self, h: int) -> float:
        return self.power_mw[h]

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> float:
        energy = self.energy_mj[h]
        if energy is None:
            raise NVMLError_NotSupported("Not Supported")
        return energy


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
        write=write,
    )
