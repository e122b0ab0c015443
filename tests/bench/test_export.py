"""Export to files and read back with the folder data set: npy exact, png within 1/255."""

from __future__ import annotations

import json

import pytest
import torch

from edgetrain.bench.export import export_dataset
from edgetrain.cli import main
from edgetrain.errors import EdgeTrainError
from edgetrain.zoo import load_dataset


def _round_trip(name, root, fmt, **kwargs):
    """(original x, original y, read-back x, read-back y), matched by original index."""
    original, _ = load_dataset(
        name,
        image_size=kwargs.get("image_size"),
        channels=kwargs.get("channels"),
        **kwargs.get("options", {}),
    )
    result = export_dataset(
        name,
        root,
        fmt=fmt,
        image_size=kwargs.get("image_size"),
        channels=kwargs.get("channels"),
        count=kwargs.get("count"),
        **kwargs.get("options", {}),
    )
    folder, info = load_dataset("folder", data_path=root)
    index = torch.tensor([int(p.stem) for p in info.files])
    back_x = torch.stack([folder[i][0] for i in range(len(folder))])
    back_y = torch.stack([folder[i][1] for i in range(len(folder))])
    return original.x[index], original.y[index], back_x, back_y, result


def test_digits_npy_is_exact(tmp_path):
    x, y, back_x, back_y, result = _round_trip("digits", tmp_path / "d", "npy", count=60)
    assert result.files == 60 and len(back_x) == 60
    assert result.classes[:3] == ("0", "1", "2")
    assert torch.equal(back_x, x)
    assert torch.equal(back_y, y)


def test_digits_png_within_quantisation(tmp_path):
    x, y, back_x, back_y, result = _round_trip(
        "digits", tmp_path / "d", "png", count=40, image_size=16, channels=3
    )
    assert result.png_range == (0.0, 1.0)
    assert back_x.shape[1:] == (3, 16, 16)
    assert (back_x - x).abs().max() <= 1 / 255 + 1e-6
    assert torch.equal(back_y, y)


def test_synthetic_npy_exact_at_a_chosen_size(tmp_path):
    options = {"options": {"num_samples": 30}, "image_size": 12, "channels": 3}
    x, y, back_x, back_y, _ = _round_trip("synthetic", tmp_path / "s", "npy", **options)
    assert back_x.shape == (30, 3, 12, 12)
    assert torch.equal(back_x, x) and torch.equal(back_y, y)


def test_synthetic_png_uses_the_recorded_affine_map(tmp_path):
    root = tmp_path / "s"
    result = export_dataset("synthetic", root, fmt="png", count=20, image_size=8, channels=1)
    lo, hi = result.png_range
    assert lo < 0 < hi  # zero-mean data: mapped, not clipped
    manifest = json.loads((root / "export.json").read_text())
    assert manifest["png_range"] == [lo, hi]
    original, _ = load_dataset("synthetic", image_size=8, channels=1, num_samples=20)
    folder, info = load_dataset("folder", data_path=root)
    for i, path in enumerate(info.files):
        restored = lo + (hi - lo) * folder[i][0]
        expected = original.x[int(path.stem)]
        assert (restored - expected).abs().max() <= (hi - lo) / 255
        assert folder[i][0].min() >= 0 and folder[i][0].max() <= 1


def test_labels_keep_their_order_beyond_ten_classes(tmp_path):
    result = export_dataset("synthetic", tmp_path / "s", count=60, num_classes=12, image_size=8)
    assert result.classes[:3] == ("00", "01", "02") and result.classes[-1] == "11"
    original, _ = load_dataset("synthetic", image_size=8, num_samples=60, num_classes=12)
    _, info = load_dataset("folder", data_path=tmp_path / "s")
    folder, _ = load_dataset("folder", data_path=tmp_path / "s")
    for i, path in enumerate(info.files):
        assert int(folder[i][1]) == int(original.y[int(path.stem)])


def test_identical_export_is_reused_and_a_different_one_refused(tmp_path):
    root = tmp_path / "d"
    export_dataset("digits", root, count=10)
    assert export_dataset("digits", root, count=10).reused
    with pytest.raises(EdgeTrainError, match="not empty"):
        export_dataset("digits", root, count=20)
    assert export_dataset("digits", root, count=20, overwrite=True).files == 20


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"fmt": "jpeg"}, "format must be one of npy, png"),
        ({"count": 0}, "count must be an integer >= 1"),
        ({"count": 5000}, "count must be between 1 and 1797"),
    ],
)
def test_bad_export_settings(tmp_path, kwargs, fragment):
    with pytest.raises(EdgeTrainError, match=fragment):
        export_dataset("digits", tmp_path / "d", **kwargs)


def test_cli_export_then_train_on_the_folder(tmp_path, capsys):
    root = tmp_path / "syn"
    main(
        [
            "data", "export", "synthetic", "--to", str(root), "--format", "png",
            "--image-size", "8", "--count", "24", "--channels", "3", "--option", "num_classes=3",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "wrote: 24 png files in 3 class folders" in out
    assert f"data_path={root}" in out
    _, info = load_dataset("folder", data_path=root)
    assert info.num_samples == 24 and info.in_channels == 3 and info.input_size == (8, 8)


def test_cli_export_error_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "export", "digits", "--to", str(tmp_path / "x"), "--format", "gif"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "format must be one of npy, png" in err
