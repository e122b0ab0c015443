"""CPU package and DRAM energy from the Linux RAPL powercap counters (Intel, and AMD on recent kernels)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgetrain.measure.sensor import EnergyChannel, SensorStatus

__all__ = ["DEFAULT_MAX_POWER_W", "DEFAULT_POWERCAP_ROOT", "RaplSensor", "rapl_remedy"]

logger = logging.getLogger(__name__)

DEFAULT_POWERCAP_ROOT = "/sys/class/powercap"
_TOP_LEVEL = re.compile(r"intel-rapl:(\d+)")
_SUB = re.compile(r"intel-rapl:(\d+):(\d+)")

#: Upper bound on one domain's power (W) where sysfs gives no power limit; with a limit,
#: twice the largest limit is used. It bounds how long the counter can go unread before
#: a second wrap could hide in a difference (262 kJ / 1000 W = 4.4 minutes).
DEFAULT_MAX_POWER_W = 1000.0


def rapl_remedy(root: str | Path = DEFAULT_POWERCAP_ROOT) -> str:
    """The message for unreadable counters: cause and way out."""
    return (
        f"RAPL energy counters need read access to {root} "
        "(run as root or grant read access); CPU energy will be estimated"
    )


@dataclass
class _Domain:
    """One counter: a package or its DRAM domain, with its state since the last good read."""

    name: str
    key: str  # "pkg0", "dram0"
    energy_path: Path
    max_uj: int | None
    max_power_w: float
    last_uj: int
    last_s: float
    energy_j: float = 0.0
    restarts: int = 0

    @property
    def safe_s(self) -> float | None:
        """Longest gap between reads in which the counter cannot wrap twice."""
        if not self.max_uj:
            return None
        return self.max_uj / 1e6 / self.max_power_w


def _read_int(path: Path) -> int:
    with open(path, "rb") as f:
        return int(f.read().strip())


def _max_power_w(domain_dir: Path) -> float:
    """Twice the largest power limit in sysfs, else :data:`DEFAULT_MAX_POWER_W`."""
    limits = []
    for path in domain_dir.glob("constraint_*_*power*_uw"):
        try:
            limits.append(_read_int(path) / 1e6)
        except (OSError, ValueError):
            continue
    limits = [w for w in limits if w > 0]
    return 2.0 * max(limits) if limits else DEFAULT_MAX_POWER_W


class RaplSensor:
    """Energy of every CPU package, and of the DRAM where RAPL has a DRAM domain.

    Packages are the top-level domains (``intel-rapl:0``, ``intel-rapl:1``, ...); their
    ``core`` and ``uncore`` sub-domains are parts of the package and are not added, and a
    top-level ``psys`` domain covers the packages (and more), so it is not added either.
    A ``dram`` sub-domain (servers) meters the memory DIMMs, which the package does not
    include: it is reported separately, as source ``rapl-dram`` (counted in the total,
    listed on its own in ``energy_by_source_j``).

    Counters wrap at ``max_energy_range_uj`` (about 262 kJ on Intel). A decrease is read
    as one wrap, which is only certain while the counter is read more often than it can
    wrap: when the time since the last read is longer than ``range / max power`` (after
    :meth:`Monitor.stop <edgetrain.measure.Monitor.stop>`, a suspended machine), the
    interval is not counted; the domain's restart count changes and the monitor reports
    the gap as uncovered time instead of a wrong number. Since CVE-2020-8694 the counters
    are readable by root only; then the sensor is unavailable and says so.

    Values: ``cpu_power_w`` (packages) and ``dram_power_w`` (DRAM), means since the previous
    read; per domain ``pkg<N>_power_w`` / ``dram<N>_power_w``; internal counters
    ``pkg<N>_energy_j`` / ``dram<N>_energy_j`` (joules since creation) and restart counts.
    A domain whose read fails twice in a row is left out of that read only.

    Args:
        root: The powercap directory (a fake tree in tests).
        clock: Monotonic clock in seconds.
    """

    name = "rapl"

    def __init__(
        self,
        root: str | Path = DEFAULT_POWERCAP_ROOT,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = Path(root)
        self._clock = clock
        self._domains: list[_Domain] = []
        self._status = self._probe()

    def _domain(self, path: Path, name: str, key: str) -> _Domain:
        energy_path = path / "energy_uj"
        max_path = path / "max_energy_range_uj"
        max_uj = _read_int(max_path) if max_path.exists() else None
        return _Domain(
            name=name,
            key=key,
            energy_path=energy_path,
            max_uj=max_uj,
            max_power_w=_max_power_w(path),
            last_uj=_read_int(energy_path),
            last_s=self._clock(),
        )

    def _probe(self) -> SensorStatus:
        label = "measured:rapl"
        if not self.root.is_dir():
            return SensorStatus(
                self.name,
                False,
                f"no RAPL powercap interface at {self.root} (not an Intel/AMD CPU with the "
                "intel_rapl driver loaded, or a virtual machine)",
                label,
            )
        tops = sorted(
            (p for p in self.root.iterdir() if _TOP_LEVEL.fullmatch(p.name)),
            key=lambda p: int(p.name.split(":")[1]),
        )
        try:
            for path in tops:
                name_file = path / "name"
                name = name_file.read_text().strip() if name_file.exists() else path.name
                if name_file.exists() and not name.startswith("package"):
                    continue  # psys (platform) covers the packages: not added
                index = int(path.name.split(":")[1])
                self._domains.append(self._domain(path, name, f"pkg{index}"))
                for sub in sorted(self.root.glob(f"intel-rapl:{index}:*")):
                    if not _SUB.fullmatch(sub.name) or not (sub / "name").exists():
                        continue
                    if (sub / "name").read_text().strip() == "dram":
                        self._domains.append(self._domain(sub, f"dram-{index}", f"dram{index}"))
        except (OSError, ValueError):
            self._domains = []
            return SensorStatus(self.name, False, rapl_remedy(self.root), label)
        if not any(d.key.startswith("pkg") for d in self._domains):
            self._domains = []
            return SensorStatus(
                self.name, False, f"no RAPL package domain under {self.root}", label
            )
        packages = ", ".join(d.name for d in self._domains if d.key.startswith("pkg"))
        reason = f"CPU package energy counters: {packages}"
        dram = [d.name for d in self._domains if d.key.startswith("dram")]
        if dram:
            reason += f"; DRAM energy counters: {', '.join(dram)} (reported as rapl-dram)"
        return SensorStatus(self.name, True, reason, label)

    @property
    def status(self) -> SensorStatus:
        """Available when every package counter could be read."""
        return self._status

    @property
    def columns(self) -> tuple[str, ...]:
        """``cpu_power_w``, ``dram_power_w`` (with DRAM), then one power column per domain."""
        if not self._domains:
            return ()
        cols = ["cpu_power_w"]
        if any(d.key.startswith("dram") for d in self._domains):
            cols.append("dram_power_w")
        return (*cols, *(f"{d.key}_power_w" for d in self._domains))

    @property
    def energy_channels(self) -> tuple[EnergyChannel, ...]:
        """One measured channel per domain, with a counter: CPU packages, then DRAM."""
        return tuple(
            EnergyChannel(
                "rapl" if d.key.startswith("pkg") else "rapl-dram",
                "cpu" if d.key.startswith("pkg") else "memory",
                measured=True,
                power_key=f"{d.key}_power_w",
                energy_key=f"{d.key}_energy_j",
                power_is_interval_mean=True,
                device=d.name,
                restarts_key=f"{d.key}_restarts_count",
            )
            for d in self._domains
        )

    def _read_domain(self, domain: _Domain, now_s: float) -> tuple[float, float] | None:
        """Joules since the domain's last good read and that read's age; None on failure."""
        current = None
        for _ in range(2):
            try:
                current = _read_int(domain.energy_path)
                break
            except (OSError, ValueError) as exc:
                logger.debug("reading %s failed: %r", domain.energy_path, exc)
        if current is None:
            return None
        dt = now_s - domain.last_s
        step = current - domain.last_uj
        safe_s = domain.safe_s
        if (safe_s is not None and dt > safe_s) or (step < 0 and not domain.max_uj):
            domain.restarts += 1  # wraps cannot be counted: the interval is not covered
            step_j = 0.0
        else:
            if step < 0:  # wrapped once
                step += domain.max_uj or 0
            step_j = step / 1e6
            domain.energy_j += step_j
        domain.last_uj = current
        domain.last_s = now_s
        return step_j, dt

    def read(self) -> dict[str, float]:
        """Energy since creation and mean power since the previous read, per domain."""
        now_s = self._clock()
        out: dict[str, float] = {}
        totals: dict[str, float | None] = {}
        for domain in self._domains:
            total = "cpu_power_w" if domain.key.startswith("pkg") else "dram_power_w"
            restarts = domain.restarts
            got = self._read_domain(domain, now_s)
            if got is None:
                totals[total] = None  # a sum without one domain would mislead
                continue
            step_j, dt = got
            out[f"{domain.key}_energy_j"] = domain.energy_j
            out[f"{domain.key}_restarts_count"] = float(domain.restarts)
            if dt > 0 and domain.restarts == restarts:
                power = step_j / dt
                out[f"{domain.key}_power_w"] = power
                so_far = totals.get(total, 0.0)
                totals[total] = None if so_far is None else so_far + power
            else:
                totals[total] = None
        out.update({k: v for k, v in totals.items() if v is not None})
        return out

    def close(self) -> None:
        """Nothing to release."""
