"""Saved-tensor hooks: bitwise gradient parity, de-duplication, in-place safety, stats."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from edgetrain.errors import EdgeTrainError
from edgetrain.memory import MODES, compress_activations, layout
from edgetrain.memory.ledger import Ledger


def _assert_same(ref: tuple, got: tuple) -> None:
    loss_ref, grads_ref = ref
    loss, grads = got
    assert torch.equal(loss_ref, loss)
    assert len(grads_ref) == len(grads)
    for a, b in zip(grads_ref, grads, strict=True):
        assert torch.equal(a, b)


# -- gradient parity (lossless must be bitwise) -----------------------------------------


def test_lossless_gradients_bitwise_equal(parity_case, grads) -> None:
    model, x, y = parity_case
    ref = grads(model, x, y)
    ctx = compress_activations(model, "lossless", min_bytes=0)
    for _ in range(2):  # the context is reused across steps
        _assert_same(ref, grads(model, x, y, ctx))
    assert ctx.stats.codec_counts.get("bitmap", 0) > 0, "something was compressed"


def test_lossless_without_model_bitwise_equal(parity_case, grads) -> None:
    model, x, y = parity_case
    ref = grads(model, x, y)
    _assert_same(ref, grads(model, x, y, compress_activations(None, "lossless", min_bytes=0)))


def test_mode_none_counts_and_changes_nothing(parity_case, grads) -> None:
    model, x, y = parity_case
    ref = grads(model, x, y)
    ctx = compress_activations(model, "none")
    _assert_same(ref, grads(model, x, y, ctx))
    assert ctx.stats.saved_bytes_stored == ctx.stats.saved_bytes_raw > 0


@pytest.mark.parametrize("name", ["vgg_like", "res_like", "views"])
def test_lossless_torch_backend_bitwise_equal(name, case, grads, monkeypatch) -> None:
    # the backend CUDA tensors use, forced on CPU
    monkeypatch.setattr(layout, "_use_numpy", lambda t, backend: False)
    model, x, y = case(name)
    ref = grads(model, x, y)
    _assert_same(ref, grads(model, x, y, compress_activations(model, "lossless", min_bytes=0)))


@pytest.mark.parametrize("name", ["cnn", "vgg11", "resnet18", "mobilenetv2", "mlp"])
def test_zoo_models_lossless_bitwise_equal(name, grads) -> None:
    zoo = pytest.importorskip("edgetrain.zoo")
    torch.manual_seed(0)
    model = zoo.build_model(name, num_classes=10, in_channels=3, input_size=16)
    if name == "resnet18":  # exercise the ImageNet stem's 3x3/2 max-pool as well
        model = zoo.build_model(
            name, num_classes=10, in_channels=3, input_size=16, stem="imagenet", width_mult=0.25
        )
    x, y = torch.randn(2, 3, 16, 16), torch.randint(0, 10, (2,))
    ref = grads(model, x, y)
    _assert_same(ref, grads(model, x, y, compress_activations(model, "lossless", min_bytes=0)))


def test_checkpointed_block_inside_context(grads) -> None:
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block, self.fc = block, nn.Linear(8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = checkpoint(self.block, x, use_reentrant=False)
            return self.fc(torch.relu(h).mean((2, 3)))

    model = Net()
    x, y = torch.randn(2, 3, 8, 8), torch.randint(0, 10, (2,))
    ref = grads(model, x, y)
    _assert_same(ref, grads(model, x, y, compress_activations(model, "lossless", min_bytes=0)))


def test_unpack_twice_with_retain_graph() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.randn(8, 16)
    loss = model(x).square().sum()
    loss.backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with compress_activations(model, "lossless", min_bytes=0):
        loss = model(x).square().sum()
    loss.backward(retain_graph=True)
    loss.backward()
    for p, r in zip(model.parameters(), ref, strict=True):
        assert torch.equal(p.grad, r + r)


def test_double_backward_through_compressed_tensors() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, requires_grad=True)

    def f() -> torch.Tensor:
        return torch.tanh(torch.relu(x * 3.0)).pow(3).sum()

    (g,) = torch.autograd.grad(f(), x, create_graph=True)
    (ref,) = torch.autograd.grad(g.sum(), x)
    with compress_activations(None, "lossless", min_bytes=0):
        (g,) = torch.autograd.grad(f(), x, create_graph=True)
        (got,) = torch.autograd.grad(g.sum(), x)
    assert torch.equal(ref, got)


# -- de-duplication --------------------------------------------------------------------


def test_relu_output_saved_twice_is_stored_once() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3))
    ctx = compress_activations(model, "lossless", min_bytes=0)
    with ctx:
        out = model(torch.randn(2, 3, 8, 8))
    stats = ctx.stats
    assert stats.codec_counts["bitmap"] == 1  # saved by the ReLU and by the second conv
    relu_bytes = 2 * 8 * 8 * 8 * 4
    input_bytes = 2 * 3 * 8 * 8 * 4  # dense: passed through
    assert stats.saved_bytes_raw == relu_bytes + input_bytes
    out.sum().backward()


def test_views_of_one_block_share_one_payload() -> None:
    torch.manual_seed(0)
    lin1, lin2 = nn.Linear(6, 32), nn.Linear(32, 4)
    x = torch.randn(3, 5, 6)
    ref_out = lin2(torch.relu(lin1(x)))
    ref_out.sum().backward()
    ref = [p.grad.clone() for p in (*lin1.parameters(), *lin2.parameters())]
    for p in (*lin1.parameters(), *lin2.parameters()):
        p.grad = None
    ctx = compress_activations(None, "lossless", min_bytes=0)
    with ctx:
        # the ReLU saves [3, 5, 32]; lin2 saves the same block as a [15, 32] view
        out = lin2(torch.relu(lin1(x)))
    assert ctx.stats.codec_counts["bitmap"] == 1
    out.sum().backward()
    got = [p.grad for p in (*lin1.parameters(), *lin2.parameters())]
    for a, b in zip(ref, got, strict=True):
        assert torch.equal(a, b)


def test_address_reuse_after_free_is_not_a_cache_hit() -> None:
    torch.manual_seed(0)
    x = torch.randn(4096)
    ws = [torch.randn(4096, requires_grad=True) for _ in range(8)]

    def run(ptrs: list[int]) -> torch.Tensor:
        total = torch.zeros(())
        for i, w in enumerate(ws):
            # same shape every iteration; h is freed (only its payload survives) before
            # the next one is made, so the allocator hands out the same addresses again
            h = torch.relu(x * (i + 1) - 0.3 * i)
            ptrs.append(h.data_ptr())
            total = total + (h * w).sum()  # h saved again: a legitimate cache hit
            del h
        return total

    run([]).backward()
    ref = [w.grad.clone() for w in ws]
    for w in ws:
        w.grad = None
    ptrs: list[int] = []
    ctx = compress_activations(None, "lossless", min_bytes=0)
    with ctx:
        loss = run(ptrs)
    if len(set(ptrs)) == len(ptrs):
        pytest.skip("the allocator did not reuse an address in this run")
    assert ctx.stats.codec_counts["bitmap"] == len(ws), "one payload per distinct tensor"
    loss.backward()
    for w, r in zip(ws, ref, strict=True):
        assert torch.equal(w.grad, r)


def test_reused_address_deterministic() -> None:
    # two storages over the same memory, one after the other: the second has the
    # first's address (what the allocator does after a free), and other values
    buf = np.zeros(4096, dtype=np.float32)
    rng = np.random.default_rng(0)
    ws = [torch.randn(4096, requires_grad=True) for _ in range(2)]

    def fresh(seed: int) -> torch.Tensor:
        buf[:] = np.maximum(rng.standard_normal(4096, dtype=np.float32), 0) * seed
        return torch.from_numpy(buf)  # a new storage object at the same address

    ctx = compress_activations(None, "lossless", min_bytes=0)
    expected = []
    with ctx:
        h = fresh(1)
        expected.append(h.clone())
        first = (h * ws[0]).sum()  # h saved for ws[0]'s gradient, compressed
        del h
        gc.collect()
        h = fresh(2)  # same address; an address-only cache would return the old values
        expected.append(h.clone())
        second = (h * ws[1]).sum()
        del h
    assert ctx.stats.codec_counts["bitmap"] == 2
    (first + second).backward()
    for w, e in zip(ws, expected, strict=True):
        assert torch.equal(w.grad, e)


def test_ledger_tells_reused_addresses_apart() -> None:
    ledger = Ledger()
    buf = np.zeros(1024, dtype=np.float32)
    first = torch.from_numpy(buf)
    entry = ledger.entry(first, "a")
    assert ledger.entry(first[10:], "a") is entry  # same storage: same entry
    del first
    gc.collect()
    second = torch.from_numpy(buf)  # a new storage at the freed one's address
    assert second.data_ptr() == buf.ctypes.data
    assert ledger.entry(second, "b") is not entry
    assert ledger.raw_total == 2 * 1024 * 4


# -- in-place changes after saving -----------------------------------------------------


def test_inplace_change_of_passed_through_tensor_is_detected() -> None:
    x = torch.randn(1024, requires_grad=True)  # int8's payload is smaller than the tensor
    with pytest.raises(RuntimeError, match="inplace"):  # PyTorch without hooks
        y = torch.exp(x)
        y.add_(1)
        y.sum().backward()
    for mode in ("none", "lossless", "int8"):
        with compress_activations(None, mode, min_bytes=0):
            y = torch.exp(x)  # exp saves its output; dense: passed through in lossless
            y.add_(1)
            loss = y.sum()
        if mode == "int8":
            loss.backward()  # int8 compressed it: a copy, nothing to detect (see next test)
            continue
        with pytest.raises(RuntimeError, match="inplace"):
            loss.backward()


def test_inplace_change_of_compressed_tensor_cannot_corrupt_gradients() -> None:
    torch.manual_seed(0)
    a = torch.randn(256, requires_grad=True)
    # reference: the same values without the in-place change
    h = torch.relu(a * 2)
    (h + 1).mul(3).sum().backward()
    ref = a.grad.clone()
    a.grad = None
    with compress_activations(None, "lossless", min_bytes=0) as ctx:
        h = torch.relu(a * 2)  # saved by relu and compressed: a copy of the save-time values
        h.add_(1)  # without hooks, backward would raise; with them it uses the saved values
        loss = h.mul(3).sum()
    assert ctx.stats.codec_counts["bitmap"] == 1
    loss.backward()
    assert torch.equal(a.grad, ref)


def test_tensor_changed_between_two_saves_is_packed_again() -> None:
    torch.manual_seed(0)
    a = torch.randn(256, requires_grad=True)
    w = torch.randn(256, requires_grad=True)
    h = torch.relu(a)
    (h.mul(2) * w).sum().backward()
    ref_a, ref_w = a.grad.clone(), w.grad.clone()
    a.grad = w.grad = None
    with compress_activations(None, "lossless", min_bytes=0) as ctx:
        h = torch.relu(a)  # saved at version v
        h.mul_(2)  # same address and shape, new version
        loss = (h * w).sum()  # saved again at version v + 1: must not reuse the first payload
    assert ctx.stats.codec_counts["bitmap"] == 2
    loss.backward()
    assert torch.equal(a.grad, ref_a)
    assert torch.equal(w.grad, ref_w)


# -- parameters, max-pool indices, what passes through ----------------------------------


def test_parameters_and_their_views_are_not_activations() -> None:
    lin = nn.Linear(64, 32)
    x = torch.randn(8, 64, requires_grad=True)
    for model in (lin, None):
        ctx = compress_activations(model, "lossless", min_bytes=0)
        with ctx:
            out = torch.relu(lin(x * 1.0))
        stats = ctx.stats
        assert stats.codec_counts["param"] >= 1  # weight.t(), a view of the weight
        # x * 1.0 (saved by addmm) and the ReLU output; not the weight
        assert stats.saved_bytes_raw == 8 * 64 * 4 + 8 * 32 * 4
        out.sum().backward()


def test_maxpool_indices_stored_in_one_byte(case) -> None:
    model, x, _ = case("vgg_like")
    ctx = compress_activations(model, "lossless", min_bytes=0)
    with ctx:
        model(x).sum().backward()
    stats = ctx.stats
    assert stats.codec_counts["int"] == 2  # two max-pools
    raw = stats.codec_raw_bytes["int"]
    assert stats.codec_stored_bytes["int"] < raw / 8 + 2 * 1024  # 1 byte per index + origins


def test_small_tensors_pass_through() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    ctx = compress_activations(model, "lossless")  # default min_bytes: 64 KiB
    with ctx:
        model(torch.randn(4, 8)).sum().backward()
    assert set(ctx.stats.codec_counts) <= {"raw", "param"}
    assert ctx.stats.ratio == 1.0


# -- lossy modes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "max_ratio", "max_rel_err"),
    [
        ("bf16", 0.4, 0.01),
        ("fp16", 0.4, 0.002),
        ("int8", 0.25, 0.02),
        ("int4", 0.16, 0.15),
        ("int2", 0.12, 0.7),
    ],
)
def test_lossy_modes_are_smaller_and_close(mode, max_ratio, max_rel_err, case, grads) -> None:
    model, x, y = case("vgg_like", batch=8)
    _, ref = grads(model, x, y)
    ctx = compress_activations(model, mode, min_bytes=0, seed=0)
    _, got = grads(model, x, y, ctx)
    assert ctx.stats.ratio <= max_ratio
    flat_ref, flat_got = (
        torch.cat([g.flatten() for g in ref]),
        torch.cat([g.flatten() for g in got]),
    )
    rel = float((flat_got - flat_ref).norm() / flat_ref.norm())
    assert 0 < rel <= max_rel_err


def test_lossy_seeded_is_repeatable_and_leaves_global_rng_alone(case, grads) -> None:
    model, x, y = case("vgg_like")
    a = grads(model, x, y, compress_activations(model, "int2", min_bytes=0, seed=5))
    b = grads(model, x, y, compress_activations(model, "int2", min_bytes=0, seed=5))
    _assert_same(a, b)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    with compress_activations(model, "int4", min_bytes=0):
        model(x).sum().backward()
    assert torch.equal(torch.get_rng_state(), state)


# -- options, errors, stats ------------------------------------------------------------


def test_unknown_mode_suggests_the_closest() -> None:
    with pytest.raises(EdgeTrainError, match="did you mean 'lossless'"):
        compress_activations(mode="losless")
    assert MODES == ("none", "lossless", "bf16", "fp16", "int8", "int4", "int2")


@pytest.mark.parametrize("kwargs", [{"min_bytes": -1}, {"group_size": 12}, {"group_size": 0}])
def test_bad_options_raise(kwargs) -> None:
    with pytest.raises(EdgeTrainError):
        compress_activations(**kwargs)


def test_context_cannot_be_entered_twice_at_once() -> None:
    ctx = compress_activations()
    with ctx, pytest.raises(RuntimeError, match="already active"), ctx:
        pass
    with ctx:  # usable again afterwards
        pass


def test_stats_current_peak_and_reset(case) -> None:
    model, x, _ = case("vgg_like")
    ctx = compress_activations(model, "lossless", min_bytes=0)
    with ctx:
        loss = model(x).sum()
    stats = ctx.stats
    assert stats.current_raw_bytes == stats.saved_bytes_raw
    assert stats.current_stored_bytes == stats.saved_bytes_stored < stats.saved_bytes_raw
    assert stats.peak_stored_bytes == stats.current_stored_bytes
    loss.backward()
    del loss
    stats = ctx.stats
    assert stats.current_raw_bytes == 0 and stats.current_stored_bytes == 0
    assert stats.peak_stored_bytes > 0
    ctx.reset_peak()
    assert ctx.stats.peak_stored_bytes == 0
    ctx.reset()
    assert ctx.stats.saved_bytes_raw == 0 and not ctx.stats.codec_counts


def test_sparse_saved_tensor_passes_through() -> None:
    s = torch.eye(64).to_sparse()
    w = torch.randn(64, 64, requires_grad=True)
    ctx = compress_activations(None, "lossless", min_bytes=0)
    with ctx:
        out = torch.sparse.mm(s, w).relu()
    out.sum().backward()
    assert ctx.stats.codec_counts.get("other", 0) >= 1
    assert torch.equal(w.grad, (w > 0).float())


@pytest.mark.parametrize("mode", ["int8", "int4", "int2"])
def test_int_modes_keep_relu_backward_mask_exact(mode) -> None:
    torch.manual_seed(0)
    x = (torch.randn(64, 512) + 0.25).requires_grad_()  # about 40% zeros after the ReLU
    w = torch.randn(64, 512, requires_grad=True)
    h = torch.relu(x)
    (h * w).sum().backward()
    ref = x.grad.clone()
    x.grad = None
    ctx = compress_activations(None, mode, min_bytes=0, seed=0)
    with ctx:
        loss = (torch.relu(x) * w).sum()
    loss.backward()
    assert ctx.stats.codec_counts["quant"] >= 1
    # x.grad = w * (relu output > 0): exact only if no zero turned non-zero and no
    # positive value rounded to zero
    assert torch.equal(x.grad, ref)


def test_int_modes_store_threshold_activation_inputs_in_bf16() -> None:
    torch.manual_seed(0)
    act = nn.ReLU6()
    x = (torch.rand(64, 512) * 9 - 3).requires_grad_()  # in [-3, 6)
    x.data[(x.data - 6).abs() < 0.05] = 5.0  # keep clear of bf16 rounding at the bound
    w = torch.randn(64, 512, requires_grad=True)  # a leaf: kept as it is
    (act(x * 1.0) * w).sum().backward()
    ref = x.grad.clone()
    x.grad = None
    ctx = compress_activations(act, "int2", min_bytes=0, seed=0)
    with ctx:
        loss = (act(x * 1.0) * w).sum()
    loss.backward()
    assert "cast" in ctx.stats.codec_counts or "bitmap" in ctx.stats.codec_counts
    assert torch.equal(x.grad, ref)


def test_fp16_mode_keeps_values_beyond_its_range_exact() -> None:
    x = (torch.randn(4096) * 1e5).requires_grad_()
    (x * 1.0).pow(2).sum().backward()  # pow saves x * 1.0: up to ~4e5, beyond fp16's 65504
    ref = x.grad.clone()
    x.grad = None
    with compress_activations(None, "fp16", min_bytes=0) as ctx:
        loss = (x * 1.0).pow(2).sum()
    loss.backward()
    assert ctx.stats.codec_counts == {"raw": 1}
    assert torch.equal(x.grad, ref)
