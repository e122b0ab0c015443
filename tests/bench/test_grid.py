"""Grid specs: parsing, errors that name the spec, the product and invalid combinations."""

from __future__ import annotations

import pytest

from edgetrain.bench.grid import expand_grid, parse_grid, parse_grid_spec
from edgetrain.config import load_config
from edgetrain.errors import EdgeTrainError


def test_values_are_yaml_scalars():
    axis = parse_grid_spec("lr=0.1,1e-3,2")
    assert axis.key == "lr"
    assert axis.values == (0.1, 0.001, 2)
    assert parse_grid_spec("compile=true,false").values == (True, False)
    assert parse_grid_spec("prefetch_factor=null,2").values == (None, 2)
    assert parse_grid_spec("monitor.interval_s=0.1,0.5").values == (0.1, 0.5)


def test_brackets_keep_commas_inside_one_value():
    axis = parse_grid_spec("split=[0.9,0.1,0.0],[0.8,0.1,0.1]")
    assert axis.values == ([0.9, 0.1, 0.0], [0.8, 0.1, 0.1])


def test_several_specs_in_one_argument_and_yaml_grid():
    axes = parse_grid(["num_workers=0,2 batch_size=16,64"], {"lr": [0.01, 0.1]})
    assert [(a.key, a.values) for a in axes] == [
        ("lr", (0.01, 0.1)),
        ("num_workers", (0, 2)),
        ("batch_size", (16, 64)),
    ]


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        ("num_workers", ["expects key=v1,v2", "'num_workers'"]),
        ("=1,2", ["'=1,2'", "key before '=' is empty"]),
        ("num_workers=", ["'num_workers='", "no values"]),
        ("num_workers=0,,2", ["'num_workers=0,,2'", "empty value"]),
        (
            "num_worker=0,2",
            ["'num_worker=0,2'", "unknown config key", "did you mean 'num_workers'"],
        ),
        ("monitor.interval=1", ["unknown config key 'monitor.interval'"]),
        ("out=a,b", ["'out' cannot be varied", "--out"]),
        ("epochs=1,2", ["'epochs' cannot be varied", "--epochs"]),
        ("batch_size=16,16", ["listed twice"]),
        ("lr=[0.1", ["cannot read value"]),
    ],
)
def test_malformed_specs_name_the_spec(spec, fragments):
    with pytest.raises(EdgeTrainError) as info:
        parse_grid([spec])
    for fragment in fragments:
        assert fragment in str(info.value)


def test_same_key_twice_is_an_error():
    with pytest.raises(EdgeTrainError, match="given twice"):
        parse_grid(["num_workers=0", "num_workers=2"])


def test_product_order_last_key_fastest():
    base = load_config({"epochs": 1})
    points, skipped = expand_grid(base, parse_grid(["batch_size=16,32", "lr=0.1,0.2"]))
    assert skipped == []
    assert [p.settings for p, _ in points] == [
        {"batch_size": 16, "lr": 0.1},
        {"batch_size": 16, "lr": 0.2},
        {"batch_size": 32, "lr": 0.1},
        {"batch_size": 32, "lr": 0.2},
    ]
    assert points[3][1].batch_size == 32 and points[3][1].lr == 0.2


def test_prefetch_is_dropped_without_workers_and_duplicates_merge():
    base = load_config({"num_workers": 4, "prefetch_factor": 2})
    points, skipped = expand_grid(base, parse_grid(["num_workers=0,2 prefetch_factor=2,4"]))
    assert skipped == []
    assert [p.settings for p, _ in points] == [
        {"num_workers": 0, "prefetch_factor": None},
        {"num_workers": 2, "prefetch_factor": 2},
        {"num_workers": 2, "prefetch_factor": 4},
    ]
    first, cfg = points[0]
    assert cfg.prefetch_factor is None and cfg.num_workers == 0
    assert any("ignored with num_workers=0" in n for n in first.notes)
    assert any("also stands for" in n and "prefetch_factor=4" in n for n in first.notes)


def test_base_prefetch_does_not_break_a_zero_worker_point():
    base = load_config({"num_workers": 4, "prefetch_factor": 2})
    points, _ = expand_grid(base, parse_grid(["num_workers=0,2"]))
    assert [cfg.prefetch_factor for _, cfg in points] == [None, 2]


def test_value_invalid_on_its_own_names_the_spec():
    with pytest.raises(EdgeTrainError) as info:
        expand_grid(load_config({}), parse_grid(["batch_size=0,16"]))
    assert "--grid 'batch_size=0,16'" in str(info.value)
    assert "batch_size must be >= 1, got 0" in str(info.value)


def test_combination_invalid_together_is_skipped_with_the_reason():
    base = load_config({"batch_size": 32})
    points, skipped = expand_grid(base, parse_grid(["batch_size=16,32 micro_batch_size=32"]))
    assert [p.settings["batch_size"] for p, _ in points] == [32]
    assert len(skipped) == 1
    assert "micro_batch_size must be <= batch_size" in skipped[0][1]


def test_empty_grid_is_the_base_alone():
    points, skipped = expand_grid(load_config({}), [])
    assert len(points) == 1 and skipped == []
    assert points[0][0].label() == "base"
