"""Probe steps in a forked copy of the process (edgetrain.adapt.isolate): what they leave
behind stays in the copy, what they measure is what the parent would measure."""

from __future__ import annotations

import os
import sys
from array import array
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import tiny_net
from edgetrain.adapt import isolate
from edgetrain.adapt.isolate import can_fork, resident_file_pages, run_forked
from edgetrain.adapt.meters import ProcessMemoryMeter, release_free_memory
from edgetrain.adapt.probe import fit_memory_model
from edgetrain.tasks import ClassificationTask

linux_only = pytest.mark.skipif(not can_fork(), reason="needs fork() on Linux without CUDA")
MiB = 2**20


@linux_only
def test_the_result_comes_back_and_side_effects_stay_in_the_copy():
    seen: list[int] = []

    def probe() -> tuple[int, int]:
        seen.append(1)
        return os.getpid(), torch.get_num_threads()

    pid, threads = run_forked(probe)
    assert pid != os.getpid()  # a child
    # with the threads of this process where OpenMP could be paused, else one
    assert threads == (torch.get_num_threads() if isolate._libgomps() else 1)
    assert seen == []  # its change to the list was its own


CHILD_THREADS = """
import torch
from edgetrain.adapt.isolate import run_forked
torch.set_num_threads(2)
conv = torch.nn.Conv2d(3, 32, 3)
x = torch.randn(16, 3, 32, 32)
conv(x).sum().backward()  # this process's OpenMP pool now has its threads
for _ in range(2):
    print(run_forked(lambda: (conv(x).sum().backward(), torch.get_num_threads())[1]))
conv(x).sum().backward()  # and here again, after the pause
print("done")
"""


@linux_only
def test_the_copy_runs_parallel_regions_after_this_process_used_its_threads():
    """GNU OpenMP's pool does not survive fork(): unpaused, the child's first parallel
    region waits forever for threads it does not have (run in a subprocess, with a
    timeout, so that a regression fails instead of hanging the suite)."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-c", CHILD_THREADS], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split()
    assert lines[-1] == "done" and len(lines) == 3


@linux_only
def test_an_error_in_the_copy_is_raised_here_by_running_again():
    calls: list[int] = []

    def fails() -> None:
        calls.append(os.getpid())
        raise ValueError("bad probe")

    with pytest.raises(ValueError, match="bad probe"):
        run_forked(fails)
    assert calls == [os.getpid()]  # the child's attempt is not seen; this one raised


@linux_only
def test_a_copy_that_fails_alone_falls_back_to_this_process():
    parent = os.getpid()

    def only_here() -> str:
        if os.getpid() != parent:
            os._exit(7)  # a child that dies without a result
        return "here"

    assert run_forked(only_here) == "here"


def test_no_fork_with_cuda_initialised_or_off_linux(monkeypatch):
    monkeypatch.setattr(isolate, "_cuda_initialized", lambda: True)
    assert not can_fork()
    seen: list[int] = []
    assert run_forked(lambda: seen.append(1) or os.getpid()) == os.getpid()
    assert seen == [1]
    monkeypatch.setattr(isolate, "_cuda_initialized", lambda: False)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not can_fork()


def test_resident_file_pages_reads_maps_and_pagemap(tmp_path: Path):
    page = os.sysconf("SC_PAGE_SIZE")
    lib, dev = 16 * page, 64 * page
    maps = tmp_path / "maps"
    maps.write_text(
        f"{lib:x}-{lib + 3 * page:x} r-xp 00000000 08:01 1 /usr/lib/libfoo.so\n"
        f"{dev:x}-{dev + page:x} rw-s 00000000 00:05 2 /dev/nvidia0\n"
        f"{dev + page:x}-{dev + 2 * page:x} ---p 00000000 08:01 1 /usr/lib/libfoo.so\n"
        f"{dev + 2 * page:x}-{dev + 3 * page:x} rw-p 00000000 00:00 0 \n"
        f"{dev + 3 * page:x}-{dev + 4 * page:x} r--p 00000000 00:00 0 [vdso]\n"
    )
    entries = array("Q", [0] * (dev // page + 8))
    present = 1 << 63
    entries[lib // page] = present | 123
    entries[lib // page + 2] = present
    entries[dev // page] = present  # a device: never touched
    entries[dev // page + 1] = present  # not readable
    entries[dev // page + 2] = present  # anonymous: the child has it already
    pagemap = tmp_path / "pagemap"
    pagemap.write_bytes(entries.tobytes())
    assert resident_file_pages(str(maps), str(pagemap)) == [lib, lib + 2 * page]
    assert resident_file_pages(str(tmp_path / "missing"), str(pagemap)) == []


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


@linux_only
def test_the_copy_maps_the_parents_file_pages_so_its_rss_matches():
    release_free_memory()
    parent_kib = _status_kib("VmRSS")
    child_kib, child_file_kib = run_forked(lambda: (_status_kib("VmRSS"), _status_kib("RssFile")))
    assert child_file_kib > 0.9 * _status_kib("RssFile")
    assert abs(child_kib - parent_kib) < 0.05 * parent_kib


class KernelCache(nn.Module):
    """Keeps 4 MiB for every batch size it runs, for good, as a kernel cache would."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.kept: dict[int, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] not in self.kept:
            self.kept[x.shape[0]] = torch.ones(MiB)  # touched: resident
        return self.inner(x)


@linux_only
def test_probes_with_the_process_meter_leave_nothing_resident_here():
    """The probes' sizes (2, 8, 32, the choice) each leave 4 MiB in the copy that ran
    them and are measured there; here nothing is kept. In this process they stay."""
    x, y = torch.randn(64, 2, 4, 4), torch.randint(0, 3, (64,))
    meter = ProcessMemoryMeter()
    assert meter.isolate_probes

    def fit(model: KernelCache, isolate: bool):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        meter.start(0)
        return fit_memory_model(
            model, opt, ClassificationTask(), (x, y), meter=meter, limit_bytes=None, isolate=isolate
        )

    model = KernelCache(tiny_net())
    result = fit(model, isolate=True)
    assert model.kept == {}
    sizes = [p.micro_batch_size for p in result.probes]
    assert sizes == [2, 8, 32, 64]
    # measured in the copy: by the last probe, the earlier sizes' 4 MiB each were resident
    assert result.probes[-1].measured_bytes >= 3 * 4 * MiB

    here = KernelCache(tiny_net())
    fit(here, isolate=False)
    assert len(here.kept) >= 4
