"""The memory model: fitting, prediction, and accuracy on the built-in models."""

from __future__ import annotations

import pytest
import torch

from edgetrain.adapt import MemoryModel, accounted_model, merge_points, probe_step, static_bytes
from edgetrain.memory import report
from edgetrain.tasks import ClassificationTask
from edgetrain.zoo import build_model


def test_fit_recovers_a_line():
    model = MemoryModel.fit([(1, 110.0), (2, 120.0), (4, 140.0), (8, 180.0)])
    assert model.static_bytes == pytest.approx(100.0)
    assert model.per_sample_bytes == pytest.approx(10.0)
    assert model.predict_bytes(16) == 260


def test_fit_is_an_upper_envelope():
    points = [(1, 110.0), (2, 125.0), (4, 140.0), (8, 180.0)]
    model = MemoryModel.fit(points)
    assert all(model.predict_bytes(m) >= p for m, p in points)


def test_floors_and_a_single_point():
    model = MemoryModel.fit([(4, 140.0)], static_floor=100.0, per_sample_floor=5.0)
    assert model.per_sample_bytes == 5.0
    assert model.static_bytes == pytest.approx(120.0)  # the point lies on the line
    assert MemoryModel.fit([(4, 140.0)], static_floor=130.0).static_bytes == 140.0
    with pytest.raises(ValueError, match="at least one"):
        MemoryModel.fit([])


def test_envelope_keeps_the_slope():
    model = MemoryModel.envelope([(2, 50.0), (8, 200.0)], 10.0, static_floor=0.0)
    assert model.per_sample_bytes == 10.0 and model.static_bytes == 120.0


def test_merge_points_keeps_the_largest_per_size():
    assert merge_points([(4, 10.0), (4, 12.0), (2, 5.0), (0, 1.0)]) == [(2, 5.0), (4, 12.0)]


def test_largest_micro_batch():
    model = MemoryModel(static_bytes=100, per_sample_bytes=10)
    assert model.largest_micro_batch(200, upper=64) == 10
    assert model.largest_micro_batch(10_000, upper=64) == 64
    assert model.largest_micro_batch(105, upper=64) == 0  # not even one sample
    assert MemoryModel(100, 0).largest_micro_batch(200, upper=8) == 8


def test_round_trip():
    model = MemoryModel(1.5, 2.5)
    assert MemoryModel.from_dict(model.to_dict()) == model
    assert "single_bytes" not in model.to_dict()  # as before micro-batch 1 was measured
    single = MemoryModel(1.5, 2.5, single_bytes=3.0)
    assert MemoryModel.from_dict(single.to_dict()) == single


def test_micro_batch_one_measured_below_the_line_is_kept_apart():
    line = MemoryModel(static_bytes=100, per_sample_bytes=10)  # 110 at 1, 120 at 2
    model = line.with_single(95.0)
    assert model.predict_bytes(1) == 95 and model.predict_bytes(2) == 120
    assert model.largest_micro_batch(100, upper=64) == 1  # the line alone: 0 (110 > 100)
    assert line.largest_micro_batch(100, upper=64) == 0
    assert model.largest_micro_batch(130, upper=64) == 3
    # measured above the line: the line is raised to it, as by any point above it
    above = line.with_single(115.0)
    assert above.single_bytes is None and above.predict_bytes(1) == 115
    assert above.predict_bytes(2) == 125
    # a correction raises every prediction alike
    raised = model.raised(7.0)
    assert raised.predict_bytes(1) == 102 and raised.predict_bytes(2) == 127


BUILT_IN = [
    ("cnn", {}, 8, 1),
    ("mlp", {}, 8, 1),
    ("vgg11", {"width_mult": 0.25}, 8, 1),
    ("resnet18", {"width_mult": 0.25}, 16, 3),
    ("mobilenetv2", {"width_mult": 0.25}, 16, 3),
]


@pytest.mark.parametrize(("name", "options", "size", "channels"), BUILT_IN)
def test_prediction_within_ten_percent_of_a_real_step(name, options, size, channels):
    """Fit on probes at micro-batch 2 and 4; predict 16; measured = exact accounting of a
    real step at 16 (static bytes + bytes saved for backward)."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=channels, input_size=size, **options)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(16, channels, size, size)
    y = torch.randint(0, 10, (16,))
    task = ClassificationTask()
    static = static_bytes(model, opt, task, (x, y))
    probes = [probe_step(model, task, (x[:m], y[:m]), meter=None) for m in (2, 4)]
    predicted = accounted_model(static, probes).predict_bytes(16)
    measured = report(model, opt, (x, y)).total_bytes
    assert predicted == pytest.approx(measured, rel=0.10)
