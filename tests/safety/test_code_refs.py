"""Code references ('package.module:callable') name the user's code, never the stdlib.

The refused cases would create a directory in tmp_path if they ran; each test checks
that nothing ran. A user's callable must return what its kind needs.
"""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest
import torch
from torch import nn

from edgetrain.cli import main
from edgetrain.errors import EdgeTrainError
from edgetrain.zoo import build_model, load_dataset
from edgetrain.zoo._callables import check_result

USER_MODULE = """
import os
from os import mkdir as make_dir

import torch
from torch import nn
from torch.utils.data import TensorDataset


def good(num_classes, in_channels):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))


def not_a_model(num_classes):
    return {"weights": [1, 2, 3]}


def a_dataset_as_model():
    return TensorDataset(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))


def not_a_dataset():
    return nn.Linear(2, 2)


def data(seed):
    return TensorDataset(torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]))
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"safety_user_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "usercode"
    folder.mkdir()
    (folder / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(folder))
    return name


def _model(spec: str, **options: object) -> nn.Module:
    return build_model(spec, num_classes=2, in_channels=1, input_size=8, **options)


@pytest.mark.parametrize(
    ("spec", "options", "refers_to"),
    [
        ("os:mkdir", {"path": "{marker}"}, "'os'"),
        ("io:open", {"file": "{marker}", "mode": "w"}, "'io'"),
        ("builtins:exec", {}, "'builtins'"),
        ("os.path:join", {}, "'os.path'"),
        ("{m}:make_dir", {"path": "{marker}"}, "'posix'"),  # a stdlib function re-exported
        ("{m}:os.mkdir", {"path": "{marker}"}, "'os'"),  # reached through a user module
    ],
)
def test_stdlib_model_is_refused_and_not_run(
    tmp_path: Path, user_module: str, spec: str, options: dict[str, str], refers_to: str
) -> None:
    spec = spec.format(m=user_module)
    marker = tmp_path / "created-by-config"
    options = {k: v.format(marker=marker) for k, v in options.items()}
    with pytest.raises(EdgeTrainError) as info:
        _model(spec, **options)
    message = str(info.value)
    assert message.startswith(f"model '{spec}' refers to ")
    assert refers_to in message and "standard library" in message and "\n" not in message
    assert not marker.exists()


def test_stdlib_data_set_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "created-by-config"
    with pytest.raises(EdgeTrainError, match=r"^data set 'os:mkdir' refers to 'os'"):
        load_dataset("os:mkdir", path=str(marker))
    assert not marker.exists()


def test_special_attributes_are_refused(user_module: str) -> None:
    with pytest.raises(EdgeTrainError, match="'__loader__' is a special attribute"):
        _model(f"{user_module}:__loader__.load_module")


def test_cli_refuses_stdlib_model_with_exit_2(capsys, tmp_path: Path) -> None:
    marker = tmp_path / "created-by-cli"
    args = ["train", "--set", "model=os:mkdir", "--set", f"model_args={{path: '{marker}'}}"]
    args += ["--set", "monitor.enabled=false", "--set", "epochs=1"]
    args += ["--set", "max_batches_per_epoch=1", "--out", str(tmp_path / "r"), "--quiet"]
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "model 'os:mkdir' refers to 'os'" in lines[0], err
    assert not marker.exists()


@pytest.mark.parametrize(
    ("name", "returned"),
    [("not_a_model", "returned dict"), ("a_dataset_as_model", "returned TensorDataset")],
)
def test_user_model_of_the_wrong_type_is_refused(
    user_module: str, name: str, returned: str
) -> None:
    spec = f"{user_module}:{name}"
    with pytest.raises(EdgeTrainError) as info:
        _model(spec)
    assert str(info.value) == f"model '{spec}' {returned}, expected a torch.nn.Module"


def test_user_data_set_of_the_wrong_type_is_refused(user_module: str) -> None:
    spec = f"{user_module}:not_a_dataset"
    with pytest.raises(EdgeTrainError, match=rf"^data set '{spec}' returned Linear, expected"):
        load_dataset(spec)


def test_user_model_and_data_set_of_the_right_type_work(user_module: str) -> None:
    model = _model(f"{user_module}:good")
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 2)
    data, info = load_dataset(f"{user_module}:data")
    assert len(data) == 4 and info.num_classes == 2


def test_installed_packages_and_edgetrain_stay_usable() -> None:
    assert isinstance(_model("torch.nn:Identity"), nn.Identity)
    model = build_model(
        "edgetrain.zoo.architectures:SmallCNN", num_classes=2, in_channels=1, input_size=(8, 8)
    )
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 2)


def test_the_type_check_lives_in_one_place() -> None:
    assert isinstance(check_result(nn.Linear(1, 1), spec="m:f", kind="model"), nn.Linear)
    with pytest.raises(EdgeTrainError, match="expected a torch Dataset"):
        check_result([1], spec="m:f", kind="data set")
