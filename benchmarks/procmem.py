"""Process memory as the kernel sees it, for the benchmarks' peak-RSS child processes.

Linux only: ``/proc/self/status`` (VmRSS, VmHWM) and ``/proc/self/clear_refs`` (writing 5
resets the high-water mark VmHWM to the current RSS). :func:`parse_or_run_child` is the
command line the benchmarks that measure in child processes share.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from typing import Any

__all__ = [
    "parse_or_run_child",
    "peak_rss_bytes",
    "reset_peak_rss",
    "run_json_child",
    "status_bytes",
]


def parse_or_run_child(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    child: Callable[[dict[str, Any]], None],
) -> argparse.Namespace | None:
    """Add ``--json PATH`` and the hidden ``--child SPEC`` to ``parser`` and parse ``argv``;
    with ``--child``, run ``child`` on the JSON spec (a measured subprocess) and return None."""
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return None
    return args


def status_bytes(field: str) -> int | None:
    """``VmRSS``, ``VmHWM``... of this process in bytes, or None where it cannot be read."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (VmHWM) to its RSS; False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return status_bytes("VmHWM") is not None


def peak_rss_bytes() -> int:
    """VmHWM in bytes, else ``ru_maxrss`` (the peak since the process started)."""
    peak = status_bytes("VmHWM")
    if peak is not None:
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def run_json_child(script: str, spec: dict[str, Any], what: str) -> dict[str, Any] | None:
    """Run ``script --child SPEC`` in a fresh process with glibc's mmap threshold at 128 KiB
    (RSS then follows live memory) and return the JSON its last stdout line holds; None
    (and a line naming ``what``) if it failed."""
    cmd = [sys.executable, os.path.abspath(script), "--child", json.dumps(spec)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        print(f"  child failed for {what}: {done.stderr[-500:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])
