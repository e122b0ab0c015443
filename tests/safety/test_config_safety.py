"""Config values are strict: no booleans for numbers, finite floats, sane ranges.

Each case used to be accepted (``epochs=true`` as 1) or to fail deep in training.
"""

from __future__ import annotations

import pytest

from edgetrain.cli import main
from edgetrain.config import TrainConfig, load_config
from edgetrain.errors import EdgeTrainError


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("epochs=true", "epochs must be an integer, not true/false, got True"),
        ("batch_size=false", "batch_size must be an integer, not true/false, got False"),
        ("lr=true", "lr must be a number, not true/false, got True"),
        ("monitor.interval_s=true", "monitor.interval_s must be a number, not true/false"),
        ("adapt.patience=true", "adapt.patience must be an integer, not true/false"),
        ("split=[true, 0, 0]", "split items must each be a number, not true/false"),
        ("split=[.nan, 0.5, 0.5]", "split[0] must be a finite number, got nan"),
        ("split=[0.5, .inf, 0.5]", "split[1] must be a finite number, got inf"),
        ("lr=.nan", "lr must be a finite number, got nan"),
        ("lr=.inf", "lr must be a finite number, got inf"),
        ("weight_decay=.inf", "weight_decay must be a finite number, got inf"),
        ("seed=1099511627776", "seed must be <= 4294967295, got 1099511627776"),
        ("seed=-1", "seed must be >= 0, got -1"),
        ("sparse_update.seed=4294967296", "sparse_update.seed must be <= 4294967295"),
        ("image_size=100000", "image_size must be <= 4096, got 100000"),
        ("image_size=0", "image_size must be >= 1, got 0"),
        ("channels=4", "channels must be 1 or 3, got 4"),
        ("budget.memory=.inf", "budget.memory must be a size"),  # was an OverflowError
        ("num_workers=-1", "num_workers must be >= 0, got -1"),
    ],
)
def test_bad_value_is_one_line_naming_key_rule_and_value(override: str, message: str) -> None:
    with pytest.raises(EdgeTrainError) as info:
        load_config(overrides=[override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_yaml_booleans_are_not_numbers(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: true\nseed: 2000000000000\nsplit: [.nan, 0.5, 0.5]\n")
    with pytest.raises(EdgeTrainError) as info:
        load_config(path)
    text = str(info.value)
    assert text.startswith("invalid configuration:")
    assert "epochs must be an integer" in text and "seed must be <=" in text
    assert "split[0] must be a finite number" in text


def test_direct_construction_is_strict_too() -> None:
    with pytest.raises(ValueError, match="not true/false"):
        TrainConfig(epochs=True)
    with pytest.raises(ValueError, match="finite"):
        TrainConfig(lr=float("nan"))


def test_limits_themselves_and_ordinary_values_are_accepted() -> None:
    cfg = load_config(
        overrides=[
            "seed=4294967295",
            "image_size=4096",
            "channels=3",
            "split=[1.0, 0, 0]",
            "epochs=3",
            "lr=1e-3",
            "compile=true",
        ]
    )
    assert (cfg.seed, cfg.image_size, cfg.channels, cfg.epochs) == (4294967295, 4096, 3, 3)
    assert cfg.split == [1.0, 0.0, 0.0] and cfg.compile is True


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("epochs=true", "epochs must be an integer, not true/false, got True"),
        ("split=[.nan, 0.5, 0.5]", "split[0] must be a finite number, got nan"),
        ("seed=1099511627776", "seed must be <= 4294967295"),
        ("image_size=100000", "image_size must be <= 4096"),
    ],
)
def test_cli_exits_2_with_one_line(capsys, tmp_path, override: str, fragment: str) -> None:
    args = ["train", "--set", override, "--set", "monitor.enabled=false"]
    args += ["--set", "max_batches_per_epoch=1", "--out", str(tmp_path / "r"), "--quiet"]
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert fragment in lines[0]
