"""edgetrain's energy figures beside CodeCarbon's: one CPU workload, both tools at once.

One process runs a single-threaded CPU workload (a pure-Python loop: one busy core) for
``--seconds``, ``--rounds`` times. Around each round both tools measure at the same time:

- edgetrain: one :class:`~edgetrain.measure.Monitor` window gives the machine figure
  (``energy_j`` with its source label, e.g. ``estimated:cpu-tdp`` or ``measured:rapl``) and
  the process-attributed figure (``energy_process_j``, ``attributed:...``);
- CodeCarbon (an optional benchmark dependency: ``pip install -c constraints.txt
  codecarbon``): offline trackers in ``machine`` and ``process`` tracking modes, with the
  CPU power CodeCarbon finds for this CPU, and again with ``force_cpu_power`` set to
  edgetrain's ``cpu_tdp_w`` so that the CPU models can be compared at the same TDP.

The table gives joules per tool and mode with each tool's source label (CodeCarbon's
labels are built here from the mode it chose: ``measured:`` for RAPL and the like,
``estimated:`` for its load and RAM models), CodeCarbon's CPU and RAM parts (edgetrain
reports no RAM figure where nothing measures it), and the ratio edgetrain / CodeCarbon for
the CPU part. Without CodeCarbon the script says so and exits 2.

Usage:
    python benchmarks/energy_vs_codecarbon.py [--seconds 20] [--rounds 3]
                                              [--cpu-tdp-w 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from edgetrain.measure import DEFAULT_CPU_TDP_W, Monitor, environment_info, proctree

KWH_J = 3.6e6
_MEASURED_MODES = {"intel_rapl", "windows_emi", "intel_power_gadget", "apple_silicon_chip"}


def workload(seconds: float) -> int:
    """Keep one core busy for ``seconds`` (pure Python: no threads, no BLAS)."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += sum(i * i for i in range(1000))
    return n


def codecarbon_trackers(cpu_tdp_w: float, interval_s: float) -> dict[str, Any]:
    """Offline CodeCarbon trackers: (own TDP, edgetrain's TDP) x (machine, process)."""
    from codecarbon import OfflineEmissionsTracker

    trackers = {}
    for tdp_name, power in (("own TDP", None), (f"TDP {cpu_tdp_w:g} W", cpu_tdp_w)):
        for mode in ("machine", "process"):
            kwargs: dict[str, Any] = {
                "country_iso_code": "USA",
                "tracking_mode": mode,
                "measure_power_secs": interval_s,
                "save_to_file": False,
                "log_level": "error",
                "allow_multiple_runs": True,
            }
            if power is not None:
                kwargs["force_cpu_power"] = power
            trackers[f"{mode}, {tdp_name}"] = OfflineEmissionsTracker(**kwargs)
    return trackers


def codecarbon_label(tracker: Any) -> tuple[str, str]:
    """Source labels for CodeCarbon's CPU and RAM parts, from the mode it chose."""
    cpu = ram = "unknown"
    for hw in getattr(tracker, "_hardware", []):
        kind = type(hw).__name__
        if kind == "CPU":
            mode = str(getattr(hw, "_mode", "unknown"))
            tdp = getattr(hw, "_tdp", None)
            prefix = "measured" if mode in _MEASURED_MODES else "estimated"
            cpu = f"{prefix}:codecarbon-{mode.replace('_', '-')}"
            if tdp is not None and prefix == "estimated":
                cpu += f" ({tdp:g} W)"
        elif kind == "RAM":
            ram = "estimated:codecarbon-ram-model"
    return cpu, ram


def one_round(seconds: float, cpu_tdp_w: float, interval_s: float) -> list[dict[str, Any]]:
    """Run the workload once under every meter; one row per tool and mode."""
    trackers = codecarbon_trackers(cpu_tdp_w, 1.0)
    monitor = Monitor(interval_s=interval_s, cpu_tdp_w=cpu_tdp_w)
    with monitor:
        for tracker in trackers.values():
            tracker.start()
        window = monitor.window("workload").open()
        proc0, busy0 = proctree.proc_cpu_s(os.getpid()), proctree.cpu_busy_s()
        t0 = time.perf_counter()
        workload(seconds)
        wall = time.perf_counter() - t0
        proc1, busy1 = proctree.proc_cpu_s(os.getpid()), proctree.cpu_busy_s()
        result = window.close()
        for tracker in trackers.values():
            tracker.stop()
    context = {
        "workload_s": wall,
        "process_cpu_s": None if proc0 is None or proc1 is None else proc1 - proc0,
        "machine_busy_cpu_s": None if busy0 is None or busy1 is None else busy1 - busy0,
        "cores": os.cpu_count(),
    }
    rows = [
        {
            "tool": "edgetrain",
            "mode": "machine",
            "cpu_source": result.energy_source,
            "cpu_j": result.energy_j,
            "ram_source": None,
            "ram_j": None,
            "total_j": result.energy_j,
            "time_s": result.time_s,
            "coverage": result.energy_coverage,
            **context,
        },
        {
            "tool": "edgetrain",
            "mode": "process",
            "cpu_source": result.energy_process_source,
            "cpu_j": result.energy_process_j,
            "ram_source": None,
            "ram_j": None,
            "total_j": result.energy_process_j,
            "time_s": result.time_s,
            "coverage": result.energy_process_coverage,
            **context,
        },
    ]
    for name, tracker in trackers.items():
        data = tracker.final_emissions_data
        cpu_label, ram_label = codecarbon_label(tracker)
        rows.append(
            {
                "tool": "codecarbon",
                "mode": name,
                "cpu_source": cpu_label,
                "cpu_j": data.cpu_energy * KWH_J,
                "ram_source": ram_label,
                "ram_j": data.ram_energy * KWH_J,
                "total_j": data.energy_consumed * KWH_J,
                "time_s": data.duration,
                "coverage": None,
                **context,
            }
        )
    return rows


def summarise(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Mean, min and max per tool and mode over the rounds, and the CPU ratio.

    The ratio compares like with like: edgetrain's machine figure with CodeCarbon's
    machine mode, edgetrain's process figure with CodeCarbon's process mode.
    """
    keys = [(r["tool"], r["mode"]) for r in rounds[0]]
    out = []
    for key in keys:
        rows = [r for rnd in rounds for r in rnd if (r["tool"], r["mode"]) == key]
        entry = dict(rows[0])
        for field in ("cpu_j", "ram_j", "total_j", "time_s"):
            values = [r[field] for r in rows if r[field] is not None]
            entry[field] = statistics.fmean(values) if values else None
            entry[f"{field}_min"] = min(values) if values else None
            entry[f"{field}_max"] = max(values) if values else None
        out.append(entry)
    ours = {e["mode"]: e["cpu_j"] for e in out if e["tool"] == "edgetrain"}
    for entry in out:
        if entry["tool"] != "codecarbon" or not entry["cpu_j"]:
            continue
        mode = entry["mode"].split(",")[0]
        mine = ours.get(mode)
        entry["edgetrain_over_codecarbon_cpu"] = None if mine is None else mine / entry["cpu_j"]
    return out


def _j(value: float | None, low: float | None = None, high: float | None = None) -> str:
    if value is None:
        return "-"
    text = f"{value:.1f}"
    if low is not None and high is not None and high - low > 0.05:
        text += f" ({low:.0f}-{high:.0f})"
    return text


def render(summary: list[dict[str, Any]], rounds: int, seconds: float) -> Table:
    """The side-by-side table."""
    table = Table(title=f"One busy core for {seconds:g} s, {rounds} round(s): joules (mean, range)")
    columns = ("tool", "mode", "CPU source", "s", "CPU J", "CPU W", "RAM J", "total J", "ratio")
    for column in columns:
        right = column in ("s", "CPU J", "CPU W", "RAM J", "total J", "ratio")
        table.add_column(column, justify="right" if right else "left")
    for e in summary:
        ratio = e.get("edgetrain_over_codecarbon_cpu")
        watts = e["cpu_j"] / e["time_s"] if e["cpu_j"] is not None and e["time_s"] else None
        table.add_row(
            e["tool"],
            e["mode"],
            e["cpu_source"],
            f"{e['time_s']:.1f}",
            _j(e["cpu_j"], e["cpu_j_min"], e["cpu_j_max"]),
            "-" if watts is None else f"{watts:.2f}",
            _j(e["ram_j"], e["ram_j_min"], e["ram_j_max"]),
            _j(e["total_j"], e["total_j_min"], e["total_j_max"]),
            "-" if ratio is None else f"{ratio:.2f}",
        )
    return table


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the rounds, print (and save) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="workload per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpu-tdp-w", type=float, default=DEFAULT_CPU_TDP_W)
    parser.add_argument("--interval", type=float, default=0.2, help="edgetrain's sampling")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args(argv)
    try:
        import codecarbon
    except ImportError:
        print(
            "CodeCarbon is not installed; it is an optional benchmark dependency:\n"
            "    pip install -c constraints.txt codecarbon",
            file=sys.stderr,
        )
        return 2
    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    console = Console(stderr=True)
    rounds = []
    for i in range(args.rounds):
        console.print(f"round {i + 1}/{args.rounds} ...")
        rounds.append(one_round(args.seconds, args.cpu_tdp_w, args.interval))
    summary = summarise(rounds)
    out = Console(width=170)
    out.print(render(summary, args.rounds, args.seconds))
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    for i, rnd in enumerate(rounds, start=1):
        ctx = rnd[0]
        out.print(
            f"round {i}: the workload got {ctx['process_cpu_s']:.1f} s of CPU in "
            f"{ctx['workload_s']:.1f} s; the machine was busy {ctx['machine_busy_cpu_s']:.1f} "
            f"of {ctx['cores'] * ctx['workload_s']:.1f} core-seconds"
        )
    out.print(f"load average at the end: {load}")
    if args.json is not None:
        probe = Monitor(interval_s=1.0)
        info = environment_info(probe.sensor_statuses)
        probe.close()
        payload = {
            "codecarbon": codecarbon.__version__,
            "args": {k: str(v) for k, v in vars(args).items()},
            "rounds": rounds,
            "summary": summary,
            "machine": {"cpu": info["cpu"], "sensors": info["sensors"]},
            "load_average": load,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
