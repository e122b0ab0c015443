"""Velocity: phi is the mean cosine over probe samples, v_t = dphi_t - mu * v_{t-1}."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from edgetrain.sparse import VelocityTracker, neuron_similarity, probe_batch, velocity_step


def _cos(a, b):
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


class HandMade(nn.Module):
    """A 1x1 conv with two neurons: neuron c's output at a position is w_c . x."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1, bias=False)
        self.set(w0=(1.0, 0.0), w1=(0.0, 1.0))

    def set(self, w0, w1) -> None:
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([w0, w1]).reshape(2, 2, 1, 1))

    def forward(self, x):
        return self.conv(x)


def _probe() -> torch.Tensor:
    # sample 0: positions (1, 0) and (0, 1), so its output is the weight row itself
    # sample 1: positions (1, 0) and (1, 1), so its output is (w_c0, w_c0 + w_c1)
    s0 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # [channel, position]
    s1 = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    return torch.stack([s0, s1]).unsqueeze(2)  # (2 samples, 2 channels, 1, 2)


def test_velocity_of_a_hand_made_model():
    model, mu = HandMade(), 0.5
    tracker = VelocityTracker(model, ["conv"], _probe(), mu=mu)
    assert tracker.observe() is False  # the reference before training
    assert not tracker.has_velocity

    model.set(w0=(1.0, 0.0), w1=(1.0, 1.0))  # neuron 0 unchanged, neuron 1 turned
    assert tracker.observe() is True
    phi1 = (_cos((0, 1), (1, 1)) + _cos((0, 1), (1, 2))) / 2
    assert tracker.phi["conv"].tolist() == pytest.approx([1.0, phi1], abs=1e-6)
    v1 = phi1 - 1.0  # phi_0 = 1, v_0 = 0
    assert tracker.velocity["conv"].tolist() == pytest.approx([0.0, v1], abs=1e-6)

    tracker.observe()  # nothing changed: phi_2 = 1
    delta2 = 1.0 - phi1
    v2 = delta2 - mu * v1
    assert tracker.delta_phi["conv"].tolist() == pytest.approx([0.0, delta2], abs=1e-6)
    assert tracker.velocity["conv"].tolist() == pytest.approx([0.0, v2], abs=1e-6)
    assert tracker.steps == 2


def test_tracker_uses_eval_mode_and_restores_training_mode():
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Dropout(0.5))
    model.train()
    probe = torch.randn(4, 1, 5, 5)
    tracker = VelocityTracker(model, ["0", "1"], probe)
    before = model[1].running_mean.clone()
    a = tracker.record()
    b = tracker.record()
    assert model.training
    assert torch.equal(model[1].running_mean, before)  # eval mode: statistics untouched
    assert torch.equal(a["1"], b["1"])  # deterministic: no dropout, same outputs
    assert a["0"].shape == (4, 3, 3, 3)


def test_similarity_over_spatial_positions_averaged_over_samples():
    prev = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]]])  # (2 samples, 1 neuron, 2 positions)
    cur = torch.tensor([[[0.0, 1.0]], [[1.0, 1.0]]])
    assert neuron_similarity(prev, cur).tolist() == pytest.approx([0.5])  # (0 + 1) / 2


def test_linear_units_use_the_cosine_across_samples():
    prev = torch.tensor([[1.0, 2.0], [0.0, 2.0]])  # (2 samples, 2 neurons)
    cur = torch.tensor([[0.0, 4.0], [1.0, 4.0]])
    assert neuron_similarity(prev, cur).tolist() == pytest.approx([0.0, 1.0])


def test_zero_outputs():
    zero = torch.zeros(3, 1, 4)
    other = torch.ones(3, 1, 4)
    assert neuron_similarity(zero, zero).tolist() == [1.0]  # unchanged (a dead neuron)
    assert neuron_similarity(zero, other).tolist() == [0.0]


def test_velocity_step_formula():
    delta, v = velocity_step(torch.tensor([0.9]), torch.tensor([0.7]), torch.tensor([0.3]), 0.5)
    assert delta.item() == pytest.approx(0.2)
    assert v.item() == pytest.approx(0.2 - 0.5 * 0.3, abs=1e-6)


def test_probe_is_the_first_samples_in_order(blobs):
    data = blobs(n=20)
    x, y = probe_batch(data, 5)  # collated as training collates: inputs and targets
    assert torch.equal(x, data.x[:5]) and torch.equal(y, data.y[:5])
    assert len(probe_batch(data, 100)[0]) == 20
    assert torch.equal(probe_batch(data, 25, repeat=True)[0][20:], data.x[:5])


def test_probe_uses_the_collate_fn_or_the_data_loaders(blobs):
    data = blobs(n=6)

    def as_dict(items):
        return {"x": torch.stack([i[0] for i in items]), "n": len(items)}

    assert probe_batch(data, 4, as_dict)["n"] == 4
    loader = DataLoader(data, batch_size=2, collate_fn=as_dict)
    probe = probe_batch(loader, 3, collate_fn=lambda items: 1 / 0)  # the loader's own is used
    assert probe["n"] == 3 and torch.equal(probe["x"], data.x[:3])
    with pytest.raises(ValueError, match="at least one sample"):
        probe_batch([], 2)
    with pytest.raises(ValueError, match="without automatic batching"):
        probe_batch(DataLoader(data, batch_size=None), 2)


def test_linear_on_sequences_has_one_velocity_per_output_feature():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3, bias=False))
    probe = torch.randn(5, 7, 4)  # (samples, tokens, features)
    tracker = VelocityTracker(model, ["0"], probe)
    assert tracker.record()["0"].shape == (5, 3, 7)  # features are the neurons
    tracker.observe()
    with torch.no_grad():
        model[0].weight[1] *= -1  # neuron 1 reversed, the others unchanged
    tracker.observe()
    assert tracker.phi["0"].tolist() == pytest.approx([1.0, -1.0, 1.0], abs=1e-6)


def test_embedding_rows_are_neurons_measured_on_their_vectors():
    torch.manual_seed(0)
    emb = nn.Embedding(6, 4)
    model = nn.Sequential(emb, nn.Linear(4, 2))
    ids = torch.tensor([[0, 1, 2], [2, 1, 0]])  # rows 3..5 never appear in the probe
    tracker = VelocityTracker(model, ["0", "1"], ids)
    assert tracker.record()["0"].shape == (1, 6, 4)
    tracker.observe()
    with torch.no_grad():
        emb.weight[1] = -emb.weight[1]  # a probe token turned around
        emb.weight[4] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # an unseen token changed too
    tracker.observe()
    phi = tracker.phi["0"]
    assert phi.shape == (6,)
    assert phi[1].item() == pytest.approx(-1.0) and phi[4].item() < 0.99
    assert phi[[0, 2, 3, 5]].tolist() == pytest.approx([1.0] * 4)


def test_state_dict_round_trip():
    model = HandMade()
    tracker = VelocityTracker(model, ["conv"], _probe())
    tracker.observe()
    model.set(w0=(1.0, 1.0), w1=(0.0, 1.0))
    tracker.observe()
    other = VelocityTracker(model, ["conv"], _probe())
    other.load_state_dict(tracker.state_dict())
    assert other.steps == 1
    assert torch.equal(other.velocity["conv"], tracker.velocity["conv"])
