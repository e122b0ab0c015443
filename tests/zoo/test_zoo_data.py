"""Tests for edgetrain.zoo data sets: shapes, determinism, conversions, files, errors."""

from __future__ import annotations

import pickle
import re
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from edgetrain.errors import EdgeTrainError
from edgetrain.zoo import DATASETS, DataInfo, InMemoryDataset, load_dataset

# ---------------------------------------------------------------- registry, common arguments


def test_registry_names() -> None:
    assert set(DATASETS) == {"digits", "synthetic", "cifar10", "folder", "diabetes", "pycorpus"}


def test_unknown_name_suggests() -> None:
    with pytest.raises(EdgeTrainError) as err:
        load_dataset("digts")
    message = str(err.value)
    assert message.startswith("unknown data set 'digts'; choose one of: cifar10, diabetes, digits")
    assert message.endswith("(did you mean 'digits'?)")


def test_unknown_option_names_data_set_option_and_accepted() -> None:
    with pytest.raises(EdgeTrainError) as err:
        load_dataset("synthetic", num_sample=10)
    message = str(err.value)
    assert "data set 'synthetic' does not accept option 'num_sample'" in message
    assert "num_samples, num_classes, noise, classes" in message
    assert "did you mean 'num_samples'" in message


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"image_size": 0}, "image_size must be an integer >= 1"),
        ({"channels": 2}, "channels must be 1 or 3"),
        ({"seed": "x"}, "seed must be an integer"),
        ({"classes": [1, 1]}, "digits option classes must be a list of distinct integers in 0..9"),
        ({"classes": [10]}, "in 0..9"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(EdgeTrainError) as err:
        load_dataset("digits", **kwargs)  # type: ignore[arg-type]
    assert fragment in str(err.value)


# ---------------------------------------------------------------- digits


def test_digits_shapes_and_scale() -> None:
    data, info = load_dataset("Digits")
    assert isinstance(data, InMemoryDataset)
    assert info == DataInfo("digits", 10, 1, (8, 8), 1797)
    assert data.x.shape == (1797, 1, 8, 8) and data.x.dtype == torch.float32
    assert data.y.shape == (1797,) and data.y.dtype == torch.int64
    assert float(data.x.min()) >= 0.0 and float(data.x.max()) == 1.0
    x, y = data[5]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32
    assert y.dim() == 0 and y.dtype == torch.int64
    assert data.targets[:3] == [0, 1, 2]


def test_digits_class_subset_remaps_in_given_order() -> None:
    full, _ = load_dataset("digits")
    data, info = load_dataset("digits", classes=[7, 2])
    assert info.num_classes == 2
    assert len(data) == int((full.y == 7).sum() + (full.y == 2).sum()) == info.num_samples
    assert torch.equal(data.x[data.y == 0], full.x[full.y == 7])
    assert torch.equal(data.x[data.y == 1], full.x[full.y == 2])
    assert data.classes == ["7", "2"]


def test_digits_resize_and_channels() -> None:
    data, info = load_dataset("digits", image_size=16, channels=3)
    assert data.x.shape == (1797, 3, 16, 16) and data.x.is_contiguous()
    assert (info.in_channels, info.input_size) == (3, (16, 16))
    assert torch.equal(data.x[:, 0], data.x[:, 2])  # 1 -> 3 repeats the channel


# ---------------------------------------------------------------- synthetic


def test_synthetic_defaults_and_determinism() -> None:
    data, info = load_dataset("synthetic", seed=3)
    assert info == DataInfo("synthetic", 10, 3, (32, 32), 2048)
    assert data.x.shape == (2048, 3, 32, 32) and data.x.dtype == torch.float32
    again, _ = load_dataset("synthetic", seed=3)
    other, _ = load_dataset("synthetic", seed=4)
    assert torch.equal(data.x, again.x) and torch.equal(data.y, again.y)
    assert not torch.equal(data.x, other.x)
    assert set(data.targets) == set(range(10))


def _nearest_mean_accuracy(data: InMemoryDataset, num_classes: int) -> float:
    half = len(data) // 2
    flat = data.x.flatten(1)
    means = torch.stack([flat[:half][data.y[:half] == c].mean(0) for c in range(num_classes)])
    predicted = torch.cdist(flat[half:], means).argmin(1)
    return (predicted == data.y[half:]).float().mean().item()


def test_synthetic_is_learnable_but_noisy() -> None:
    data, info = load_dataset(
        "synthetic", num_samples=1000, num_classes=4, image_size=16, channels=1
    )
    assert data.x.shape == (1000, 1, 16, 16)
    accuracy = _nearest_mean_accuracy(data, info.num_classes)
    assert 0.4 < accuracy < 1.0
    clean, _ = load_dataset("synthetic", num_samples=400, num_classes=4, noise=0.0)
    assert _nearest_mean_accuracy(clean, 4) == 1.0


def test_synthetic_class_subsets_share_patterns() -> None:
    low, info = load_dataset("synthetic", num_samples=400, noise=0.0, classes=[0, 1, 2, 3, 4])
    high, _ = load_dataset("synthetic", num_samples=400, noise=0.0, classes=[5, 6, 7, 8, 9])
    full, _ = load_dataset("synthetic", num_samples=400, noise=0.0)
    assert info.num_classes == 5 and len(low) == 400
    assert set(low.targets) == set(high.targets) == set(range(5))

    def direction(data: InMemoryDataset, label: int) -> torch.Tensor:
        sample = data.x[data.y == label][0].flatten()
        return sample / sample.norm()

    # noise-free samples of one class differ only by a gain: same direction
    assert torch.allclose(direction(high, 0), direction(full, 5), atol=1e-5)
    assert torch.allclose(direction(low, 4), direction(full, 4), atol=1e-5)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"noise": -1}, "noise must be a number >= 0"),
        ({"num_samples": 0}, "num_samples must be an integer >= 1"),
        ({"num_classes": 3, "classes": [3]}, "in 0..2"),
    ],
)
def test_synthetic_bad_options(options: dict[str, object], fragment: str) -> None:
    with pytest.raises(EdgeTrainError) as err:
        load_dataset("synthetic", **options)  # type: ignore[arg-type]
    assert fragment in str(err.value)


# ---------------------------------------------------------------- cifar10


def _write_fake_cifar(root: Path) -> tuple[np.ndarray, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    all_data, all_labels = [], []
    for name, count in [*((f"data_batch_{i}", 4) for i in range(1, 6)), ("test_batch", 3)]:
        data = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=count)]
        with (folder / name).open("wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels}, f)
        all_data.append(data)
        all_labels += labels
    return np.concatenate(all_data), np.array(all_labels)


def test_cifar10_from_fake_pickles(tmp_path: Path) -> None:
    raw, labels = _write_fake_cifar(tmp_path)
    for path in (tmp_path, tmp_path / "cifar-10-batches-py", str(tmp_path)):
        data, info = load_dataset("cifar10", data_path=path)
        assert info == DataInfo("cifar10", 10, 3, (32, 32), 23)
        assert isinstance(data, InMemoryDataset)
        assert data.x.dtype == torch.float32 and data.x.shape == (23, 3, 32, 32)
        assert data.y.tolist() == labels.tolist()
        # rows are 1024 red, then 1024 green, then 1024 blue values, row-major
        assert data.x[21, 1, 2, 3].item() == pytest.approx(raw[21, 1024 + 2 * 32 + 3] / 255.0)
        assert float(data.x.min()) >= 0.0 and float(data.x.max()) <= 1.0


def test_cifar10_subset_resize_gray(tmp_path: Path) -> None:
    _, labels = _write_fake_cifar(tmp_path)
    data, info = load_dataset(
        "cifar10", data_path=tmp_path, image_size=16, channels=1, classes=[3, 5]
    )
    expected = int(np.isin(labels, [3, 5]).sum())
    assert info == DataInfo("cifar10", 2, 1, (16, 16), expected)
    assert data.x.shape == (expected, 1, 16, 16)
    assert data.classes == ["cat", "dog"]


def test_cifar10_missing_path_names_what_is_expected(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(EdgeTrainError) as err:
        load_dataset("cifar10", data_path=missing)
    assert str(err.value) == (
        "cifar10 needs data_path pointing to the 'cifar-10-batches-py' directory "
        "(data_batch_1..5, test_batch from the CIFAR-10 python version); "
        f"not found: {missing}"
    )
    with pytest.raises(EdgeTrainError, match="no data_path was given"):
        load_dataset("cifar10")


def test_cifar10_missing_files_are_listed(tmp_path: Path) -> None:
    _write_fake_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(EdgeTrainError, match=r"not found in .*cifar-10-batches-py: data_batch_3$"):
        load_dataset("cifar10", data_path=tmp_path)


def test_cifar10_corrupt_batch(tmp_path: Path) -> None:
    _write_fake_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(EdgeTrainError, match=r"could not read CIFAR-10 batch .*test_batch"):
        load_dataset("cifar10", data_path=tmp_path)


# ---------------------------------------------------------------- folder


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)


def test_folder_png_lazy_with_inferred_shape(tmp_path: Path) -> None:
    rgb = np.zeros((6, 5, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    _png(tmp_path / "cat" / "a.png", rgb)
    _png(tmp_path / "cat" / "b.jpg", np.full((12, 10, 3), 128, dtype=np.uint8))
    _png(tmp_path / "dog" / "c.png", np.full((6, 5), 255, dtype=np.uint8))  # grayscale
    (tmp_path / "dog" / "notes.txt").write_text("ignored")
    (tmp_path / ".hidden").mkdir()
    data, info = load_dataset("folder", data_path=tmp_path)
    files = (tmp_path / "cat" / "a.png", tmp_path / "cat" / "b.jpg", tmp_path / "dog" / "c.png")
    assert info == DataInfo("folder", 2, 3, (6, 5), 3, files)
    assert data.targets == [0, 0, 1] and data.classes == ["cat", "dog"]
    x, y = data[0]
    assert x.shape == (3, 6, 5) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.allclose(x[0], torch.ones(6, 5)) and torch.allclose(x[1], torch.zeros(6, 5))
    assert data[1][0].shape == (3, 6, 5)  # resized to the first file's size
    assert torch.allclose(data[2][0], torch.ones(3, 6, 5))  # gray -> 3 channels
    # lazy: a file changed after loading is read as it is now
    _png(tmp_path / "cat" / "a.png", np.zeros((6, 5, 3), dtype=np.uint8))
    assert float(data[0][0].max()) == 0.0


def test_folder_npy_layouts_resize_and_gray(tmp_path: Path) -> None:
    _npy(tmp_path / "a" / "hw.npy", np.ones((8, 8), dtype=np.float32))
    _npy(tmp_path / "a" / "hwc.npy", np.full((8, 8, 3), 255, dtype=np.uint8))
    _npy(tmp_path / "b" / "chw.npy", np.full((3, 4, 4), 0.5, dtype=np.float64))
    data, info = load_dataset("folder", data_path=tmp_path, image_size=4, channels=1)
    assert (info.in_channels, info.input_size, info.num_samples) == (1, (4, 4), 3)
    for i, value in enumerate([1.0, 1.0, 0.5]):
        x, _ = data[i]
        assert x.shape == (1, 4, 4) and x.dtype == torch.float32
        assert torch.allclose(x, torch.full((1, 4, 4), value))
    batch_x, batch_y = next(iter(DataLoader(data, batch_size=3)))
    assert batch_x.shape == (3, 1, 4, 4) and batch_y.tolist() == [0, 0, 1]


def test_folder_class_subset(tmp_path: Path) -> None:
    for name in ("x", "y", "z"):
        _npy(tmp_path / name / "0.npy", np.zeros((4, 4), dtype=np.float32))
    data, info = load_dataset("folder", data_path=tmp_path, classes=["z", "x"])
    assert data.classes == ["z", "x"] and info.num_classes == 2
    assert [f.parent.name for f in info.files] == ["z", "x"]
    with pytest.raises(EdgeTrainError, match="no subfolder 'w'"):
        load_dataset("folder", data_path=tmp_path, classes=["w"])


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(EdgeTrainError, match="needs data_path"):
        load_dataset("folder")
    with pytest.raises(EdgeTrainError, match=re.escape(f"not found: {tmp_path / 'missing'}")):
        load_dataset("folder", data_path=tmp_path / "missing")
    with pytest.raises(EdgeTrainError, match="found no subfolders"):
        load_dataset("folder", data_path=tmp_path)
    _npy(tmp_path / "loose.npy", np.zeros((4, 4)))
    with pytest.raises(EdgeTrainError, match="found no subfolders"):
        load_dataset("folder", data_path=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgeTrainError, match=r"class folder .*empty has no \.png"):
        load_dataset("folder", data_path=tmp_path)


def test_folder_unreadable_files_name_the_path(tmp_path: Path) -> None:
    _npy(tmp_path / "a" / "0.npy", np.zeros((4, 4), dtype=np.float32))
    (tmp_path / "a" / "1.png").write_bytes(b"garbage")
    _npy(tmp_path / "b" / "2.npy", np.zeros((2, 5, 5), dtype=np.float32))
    data, _ = load_dataset("folder", data_path=tmp_path)
    with pytest.raises(
        EdgeTrainError, match=re.escape(f"could not read {tmp_path / 'a' / '1.png'}")
    ):
        data[1]
    with pytest.raises(EdgeTrainError, match=r"could not read .*2\.npy: a 3-D array must be"):
        data[2]


# ---------------------------------------------------------------- user data sets

USER_MODULE = """
import torch
from torch.utils.data import Dataset
from edgetrain.zoo import DataInfo

class Squares(Dataset):
    def __init__(self, n, size, classes=None):
        self.items = [(torch.full((1, size, size), float(i)), torch.tensor(i % 3)) for i in range(n)]
        if classes is not None:
            self.classes = classes

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

def squares(data_path, seed, n=6):
    squares.received = {"data_path": data_path, "seed": seed}
    return Squares(n, 8, classes=["a", "b", "c", "d"])

def scanned(**kwargs):
    return Squares(5, 8)

def with_info(image_size=8):
    return Squares(4, image_size), DataInfo("mine", 3, 1, (image_size, image_size), 4)

def not_a_dataset():
    return [1, 2, 3]

def bad_items():
    return torch.utils.data.TensorDataset(torch.zeros(2, 5), torch.zeros(2))
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"zoo_user_data_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_user_data_set_gets_accepted_arguments(user_module: str, tmp_path: Path) -> None:
    data, info = load_dataset(f"{user_module}:squares", data_path=tmp_path, seed=7, n=4)
    assert info == DataInfo(f"{user_module}:squares", 4, 1, (8, 8), 4)
    assert len(data) == 4
    import importlib

    assert importlib.import_module(user_module).squares.received == {
        "data_path": tmp_path,
        "seed": 7,
    }


def test_user_data_set_conversions_and_label_scan(user_module: str) -> None:
    data, info = load_dataset(f"{user_module}:scanned", image_size=4, channels=3)
    assert info.num_classes == 3  # labels 0..2 found by scanning
    assert (info.in_channels, info.input_size, info.num_samples) == (3, (4, 4), 5)
    x, y = data[4]
    assert x.shape == (3, 4, 4) and torch.allclose(x, torch.full((3, 4, 4), 4.0))
    assert y.item() == 1


def test_user_data_set_with_info(user_module: str) -> None:
    data, info = load_dataset(f"{user_module}:with_info", image_size=6)
    assert info == DataInfo("mine", 3, 1, (6, 6), 4)
    assert data[0][0].shape == (1, 6, 6)


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("no_such_data_mod:load", "could not be imported: No module named 'no_such_data_mod'"),
        ("{m}:nothing", "has no attribute 'nothing'"),
        ("{m}:not_a_dataset", "returned list, expected a torch Dataset"),
        ("{m}:bad_items", "x of item 0 must be a tensor [C, H, W], got a tensor of shape (5,)"),
        ("{m}:squares", "does not accept option 'depth'; accepted options: n"),
    ],
)
def test_user_data_set_errors(user_module: str, target: str, fragment: str) -> None:
    spec = target.format(m=user_module)
    options = {"depth": 1} if target.endswith(":squares") else {}
    with pytest.raises(EdgeTrainError) as err:
        load_dataset(spec, **options)
    assert fragment in str(err.value)
    assert str(err.value).startswith(f"data set '{spec}'")
