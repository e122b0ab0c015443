"""Tests for edgetrain.zoo models: shapes, gradients, options, user builders."""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from edgetrain.errors import EdgeTrainError
from edgetrain.zoo import MODELS, build_model, load_dataset


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _two_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(min(before, 2))
    yield
    torch.set_num_threads(before)


IMAGE_MODELS = sorted(set(MODELS) - {"gpt"})  # gpt takes token ids (tests/zoo/test_zoo_gpt.py)


def test_registry_names() -> None:
    assert set(MODELS) == {"mlp", "cnn", "vgg11", "resnet18", "mobilenetv2", "gpt"}


@pytest.mark.parametrize("name", IMAGE_MODELS)
@pytest.mark.parametrize(("channels", "size"), [(1, 8), (3, 32)])
def test_forward_backward(name: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, in_channels=channels, input_size=size)
    x = torch.randn(2, channels, size, size)
    out = model(x)
    assert out.shape == (2, 7)
    nn.functional.cross_entropy(out, torch.tensor([0, 6])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads if g is not None)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_odd_and_non_square_sizes(name: str) -> None:
    model = build_model(name, num_classes=3, in_channels=1, input_size=(9, 13)).eval()
    assert model(torch.randn(1, 1, 9, 13)).shape == (1, 3)
    model = build_model(name, num_classes=3, in_channels=3, input_size=[40, 40]).eval()
    assert model(torch.randn(1, 3, 40, 40)).shape == (1, 3)


def test_parameter_counts_match_reference_architectures() -> None:
    common = {"num_classes": 10, "in_channels": 3, "input_size": 32}
    assert _params(build_model("resnet18", **common)) == 11_173_962
    assert _params(build_model("mobilenetv2", **common)) == 2_236_682
    assert _params(build_model("vgg11", **common)) == 9_225_610
    assert _params(build_model("cnn", **common)) < 20_000
    digits = {"num_classes": 10, "in_channels": 1, "input_size": 8}
    assert _params(build_model("mlp", **digits)) == (64 * 256 + 256) + (256 * 128 + 128) + (
        128 * 10 + 10
    )


def test_names_are_case_insensitive() -> None:
    model = build_model("ResNet18", num_classes=2, in_channels=1, input_size=8, width_mult=0.25)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 2)


def test_vgg11_batch_norm_and_pooling() -> None:
    plain = build_model("vgg11", num_classes=10, in_channels=3, input_size=32)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert sum(isinstance(m, nn.MaxPool2d) for m in plain.modules()) == 5
    assert any(isinstance(m, nn.ReLU) for m in plain.modules())
    with_bn = build_model("vgg11", num_classes=10, in_channels=3, input_size=32, batch_norm=True)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules()) == 8
    # on 8x8 inputs only 3 of the 5 pools fit
    small = build_model("vgg11", num_classes=10, in_channels=1, input_size=8)
    assert sum(isinstance(m, nn.MaxPool2d) for m in small.modules()) == 3


def test_width_mult_shrinks_models() -> None:
    common = {"num_classes": 10, "in_channels": 3, "input_size": 32}
    for name in ("vgg11", "resnet18", "mobilenetv2"):
        full = _params(build_model(name, **common))
        half = _params(build_model(name, width_mult=0.5, **common))
        assert half < 0.5 * full, name


def test_mlp_and_cnn_options() -> None:
    mlp = build_model("mlp", num_classes=4, in_channels=1, input_size=8, hidden=[32], dropout=0.3)
    linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [32, 4]
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in mlp.modules())
    cnn = build_model("cnn", num_classes=4, in_channels=1, input_size=8, channels=(8, 8, 8))
    assert sum(isinstance(m, nn.Conv2d) for m in cnn.modules()) == 3
    assert cnn(torch.randn(2, 1, 8, 8)).shape == (2, 4)


def test_resnet18_imagenet_stem() -> None:
    model = build_model(
        "resnet18", num_classes=5, in_channels=3, input_size=64, stem="imagenet", width_mult=0.25
    )
    assert model.stem[0].kernel_size == (7, 7)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_unknown_option_names_model_option_and_accepted() -> None:
    with pytest.raises(EdgeTrainError) as err:
        build_model("vgg11", num_classes=10, in_channels=3, input_size=32, batchnorm=True)
    message = str(err.value)
    assert "vgg11" in message and "'batchnorm'" in message
    assert "batch_norm, width_mult, dropout" in message
    assert "did you mean 'batch_norm'" in message


@pytest.mark.parametrize(
    ("name", "options", "fragment"),
    [
        ("mlp", {"dropout": 1.5}, "dropout must be in [0, 1)"),
        ("resnet18", {"width_mult": 0}, "width_mult must be > 0"),
        ("resnet18", {"stem": "cifra"}, "did you mean 'cifar'"),
        ("vgg11", {"batch_norm": "yes"}, "batch_norm must be true or false"),
        ("mlp", {"hidden": [0]}, "hidden must be a list of integers >= 1"),
        ("cnn", {"channels": []}, "channels must be a list"),
    ],
)
def test_bad_option_values(name: str, options: dict[str, object], fragment: str) -> None:
    with pytest.raises(EdgeTrainError) as err:
        build_model(name, num_classes=10, in_channels=1, input_size=8, **options)
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (
            {"num_classes": 0, "in_channels": 1, "input_size": 8},
            "num_classes must be an integer >= 1",
        ),
        ({"num_classes": 2, "in_channels": 0, "input_size": 8}, "in_channels must be"),
        ({"num_classes": 2, "in_channels": 1, "input_size": (8,)}, "input_size must be"),
    ],
)
def test_bad_common_arguments(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(EdgeTrainError) as err:
        build_model("cnn", **kwargs)  # type: ignore[arg-type]
    assert fragment in str(err.value)


def test_unknown_model_suggests() -> None:
    with pytest.raises(EdgeTrainError) as err:
        build_model("cnm", num_classes=10, in_channels=1, input_size=8)
    message = str(err.value)
    assert message.startswith("unknown model 'cnm'; choose one of: cnn, gpt, mlp")
    assert message.endswith("(did you mean 'cnn'?)")


USER_MODULE = """
import torch
from torch import nn

def build(num_classes, width=4):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

def build_all(**kwargs):
    model = nn.Linear(1, 1)
    model.received = kwargs
    return model

class Net(nn.Module):
    def __init__(self, num_classes: int, input_size: int, in_channels: int = 1) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels * input_size * input_size, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))

def not_a_module(num_classes):
    return 42

def broken(num_classes):
    raise RuntimeError("boom\\nsecond line")

VALUE = 3
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"zoo_user_models_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_user_model_gets_only_accepted_arguments(user_module: str) -> None:
    model = build_model(f"{user_module}:Net", num_classes=3, in_channels=2, input_size=8)
    assert model(torch.randn(4, 2, 8, 8)).shape == (4, 3)
    model = build_model(f"{user_module}:build", num_classes=3, in_channels=2, input_size=8, width=8)
    assert model(torch.randn(4, 2, 8, 8)).shape == (4, 3)


def test_user_model_with_var_kwargs_gets_everything(user_module: str) -> None:
    model = build_model(
        f"{user_module}:build_all", num_classes=3, in_channels=2, input_size=8, depth=5
    )
    assert model.received == {"num_classes": 3, "in_channels": 2, "input_size": 8, "depth": 5}


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("no_such_module_xyz:build", "could not be imported: No module named 'no_such_module_xyz'"),
        ("{m}:missing", "could not be imported: '{m}' has no attribute 'missing'"),
        ("{m}:not_a_module", "returned int, expected a torch.nn.Module"),
        ("{m}:broken", "failed: RuntimeError: boom second line"),
        ("{m}:VALUE", "is not callable"),
        ("{m}:", "must have the form 'package.module:callable'"),
    ],
)
def test_user_model_errors(user_module: str, target: str, fragment: str) -> None:
    spec = target.format(m=user_module)
    with pytest.raises(EdgeTrainError) as err:
        build_model(spec, num_classes=3, in_channels=1, input_size=8)
    message = str(err.value)
    assert fragment.format(m=user_module) in message
    assert "\n" not in message
    assert message.startswith(f"model '{spec}'")


def test_user_model_unknown_option(user_module: str) -> None:
    with pytest.raises(EdgeTrainError) as err:
        build_model(f"{user_module}:build", num_classes=3, in_channels=1, input_size=8, depth=2)
    assert "does not accept option 'depth'; accepted options: width" in str(err.value)


def test_cnn_learns_digits() -> None:
    """5 epochs of SGD (lr 0.05, momentum 0.9, batch 64) reach >= 0.85 validation accuracy."""
    data, info = load_dataset("digits")
    torch.manual_seed(0)
    order = torch.randperm(info.num_samples)
    train, val = order[:1400], order[1400:]
    model = build_model(
        "cnn",
        num_classes=info.num_classes,
        in_channels=info.in_channels,
        input_size=info.input_size,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(5):
        model.train()
        for batch in train[torch.randperm(len(train))].split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(data.x[batch]), data.y[batch]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(data.x[val]).argmax(1) == data.y[val]).float().mean().item()
    assert accuracy >= 0.85
