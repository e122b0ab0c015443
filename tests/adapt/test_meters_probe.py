"""Memory meters (fake /proc at the sensor boundary) and probe steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import BatchMeter, OomAbove, tiny_net
from edgetrain.adapt import ProcessMemoryMeter, fit_memory_model, make_meter, probe_step
from edgetrain.tasks import ClassificationTask

MiB = 2**20


class FakeProc:
    """A /proc/self/status with settable VmRSS/VmHWM and a clear_refs that resets VmHWM."""

    def __init__(self, root: Path, writable: bool = True) -> None:
        self.status = root / "status"
        self.clear_refs = root / "clear_refs"
        self.rss_kb = 100_000
        self.hwm_kb = 100_000
        if writable:
            self.clear_refs.write_text("")
        else:
            self.clear_refs = root / "missing" / "clear_refs"
        self.write()

    def write(self) -> None:
        self.status.write_text(
            f"Name:\tpython\nVmHWM:\t{self.hwm_kb} kB\nVmRSS:\t{self.rss_kb} kB\n"
        )

    def set(self, rss_kb: int, hwm_kb: int | None = None) -> None:
        self.rss_kb, self.hwm_kb = rss_kb, max(self.hwm_kb, hwm_kb or rss_kb)
        self.write()

    def sync_reset(self) -> None:
        if self.clear_refs.exists() and self.clear_refs.read_text() == "5":
            self.hwm_kb = self.rss_kb
            self.clear_refs.write_text("")
            self.write()


def test_process_meter_counts_rss_above_the_baseline_plus_resident_tensors(tmp_path):
    proc = FakeProc(tmp_path)
    meter = ProcessMemoryMeter(proc.status, proc.clear_refs)
    assert meter.exact_peaks
    meter.start(resident_tensor_bytes=4 * MiB)  # parameters already resident
    proc.sync_reset()
    assert meter.baseline_rss_bytes == 100_000 * 1024
    proc.set(rss_kb=110_000, hwm_kb=130_000)  # a peak inside a step, then freed
    assert meter.peak_bytes() == 30_000 * 1024 + 4 * MiB
    assert meter.current_bytes() == 10_000 * 1024 + 4 * MiB
    meter.reset_peak()
    proc.sync_reset()
    assert meter.peak_bytes() == 10_000 * 1024 + 4 * MiB


def test_process_meter_falls_back_to_sampling(tmp_path):
    proc = FakeProc(tmp_path, writable=False)
    meter = ProcessMemoryMeter(proc.status, proc.clear_refs)
    assert not meter.exact_peaks
    meter.start(0)
    proc.set(rss_kb=120_000, hwm_kb=150_000)
    assert meter.peak_bytes() == 20_000 * 1024  # the high-water mark is not trusted
    proc.set(rss_kb=105_000)
    assert meter.peak_bytes() == 20_000 * 1024  # the largest reading so far


def test_real_process_meter_sees_an_allocation():
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux /proc")
    meter = make_meter(torch.device("cpu"))
    meter.start(0)
    block = torch.ones(16 * MiB // 4)  # 16 MiB, touched
    peak = meter.peak_bytes()
    del block
    assert peak is not None and peak >= 12 * MiB


def test_probe_step_changes_nothing():
    model = tiny_net(batch_norm=True)
    x, y = torch.randn(8, 2, 4, 4), torch.randint(0, 3, (8,))
    params = [p.detach().clone() for p in model.parameters()]
    buffers = [b.detach().clone() for b in model.buffers()]
    rng = torch.get_rng_state()
    model.eval()
    probe = probe_step(
        model, ClassificationTask(), (x, y), meter=None, micro_batch_size=3, evaluate=True
    )
    assert probe.micro_batch_size == 3 and probe.saved_bytes > 0
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))
    assert torch.equal(rng, torch.get_rng_state()) and not model.training


def test_fit_memory_model_stops_before_the_limit_and_verifies_its_choice():
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    meter = BatchMeter(model, static_bytes=10 * MiB, per_sample_bytes=MiB)
    x, y = torch.randn(64, 2, 4, 4), torch.randint(0, 3, (64,))
    fit = fit_memory_model(
        model, opt, ClassificationTask(), (x, y), meter=meter, limit_bytes=40 * MiB
    )
    sizes = [p.micro_batch_size for p in fit.probes]
    # never 1 (a batch of one is not representative); 4x per rung while the next fits
    # (32 would pass 40 MiB); then the largest the model allows, 30, evened out for 64
    # samples: 3 micro-batches of 22 (the same steps as 30 with less memory), measured
    assert sizes == [2, 8, 22]
    assert fit.verified == 22
    predicted = fit.memory.predict_bytes(fit.verified)
    assert predicted <= 40 * MiB
    # the whole logical batch is calibrated at the last rung within the limit
    assert fit.calibration is not None and fit.calibration.micro_batch_size == 8


def test_fit_memory_model_stops_at_an_out_of_memory_probe():
    model = OomAbove(tiny_net(), limit=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 2, 4, 4), torch.randint(0, 3, (64,))
    fit = fit_memory_model(
        model, opt, ClassificationTask(), (x, y), meter=None, limit_bytes=None, start=2
    )
    assert fit.ceiling == 32  # 2, 8, then 32 ran out of memory
    assert [p.micro_batch_size for p in fit.probes] == [2, 8]


class OneSampleMeter(BatchMeter):
    """A batch of one 'measures' ``discount`` bytes less than the line through larger
    batches (on CPU, oneDNN's batch-1 kernels touch less library code)."""

    def __init__(self, *args, discount: int) -> None:
        super().__init__(*args)
        self.discount = discount

    def peak_bytes(self) -> int:
        return super().peak_bytes() - (self.discount if self.largest == 1 else 0)


@pytest.mark.parametrize("isolate", [True, False])
def test_micro_batch_one_is_measured_when_two_does_not_fit(isolate):
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 2, 4, 4), torch.randint(0, 3, (64,))
    meter = OneSampleMeter(model, 10 * MiB, MiB, discount=3 * MiB)
    fit = fit_memory_model(
        model, opt, ClassificationTask(), (x, y), meter=meter, limit_bytes=11.5 * MiB,
        isolate=isolate,
    )  # fmt: skip
    # 2 measures 12 MiB (over 11.5); the line through it says 1 needs about 12 MiB too,
    # but a whole logical batch at 1 measures 8 MiB: it fits, and was measured
    assert [p.micro_batch_size for p in fit.probes] == [2]
    assert fit.single is not None and fit.single.micro_batch_size == 1
    assert fit.memory.predict_bytes(1) == pytest.approx(8 * MiB, rel=0.01)
    assert fit.memory.predict_bytes(2) >= 12 * MiB
    assert fit.verified == 1
    # where 2 fits, 1 is not probed (the line decides)
    roomy = fit_memory_model(
        model, opt, ClassificationTask(), (x, y), meter=meter, limit_bytes=40 * MiB
    )
    assert roomy.single is None and roomy.memory.single_bytes is None
    # and where 1 measures more than the line, the line is raised to it
    heavy = OneSampleMeter(model, 10 * MiB, MiB, discount=-2 * MiB)
    fit = fit_memory_model(
        model, opt, ClassificationTask(), (x, y), meter=heavy, limit_bytes=11.5 * MiB
    )
    assert fit.single is not None and fit.memory.single_bytes is None
    assert fit.memory.predict_bytes(1) == pytest.approx(13 * MiB, rel=0.01)
    assert fit.verified == 0


def test_the_planner_measures_micro_batch_one_of_each_set_that_needs_it():
    from edgetrain.adapt.levers import measure_lever_costs
    from edgetrain.adapt.planner import Levers

    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 2, 4, 4), torch.randint(0, 3, (64,))
    meter = OneSampleMeter(model, 10 * MiB, MiB, discount=3 * MiB)
    measured = measure_lever_costs(
        model, opt, ClassificationTask(), (x, y), [Levers(), Levers(activations="lossless")],
        meter=meter, limit_bytes=11.5 * MiB,
    )  # fmt: skip
    for cost in measured.costs:
        assert cost.predict_bytes(1, 64) == pytest.approx(8 * MiB, rel=0.01), cost.levers
        assert measured.fits[cost.levers].single is not None
    # where 2 fits, 1 is measured only when the smallest budget is asked for
    roomy = dict(meter=meter, limit_bytes=40 * MiB)
    lazy = measure_lever_costs(model, opt, ClassificationTask(), (x, y), [Levers()], **roomy)
    assert lazy.fits[Levers()].single is None
    # every set, also one whose ladder started higher (at a size the first set probed)
    sets = [Levers(), Levers(activations="lossless")]
    keen = measure_lever_costs(
        model, opt, ClassificationTask(), (x, y), sets, **roomy, always_single=True
    )
    assert min(p.micro_batch_size for p in keen.fits[sets[1]].probes) > 2
    for cost in keen.costs:
        assert keen.fits[cost.levers].single is not None, cost.levers
        assert cost.predict_bytes(1, 64) == pytest.approx(8 * MiB, rel=0.01)
