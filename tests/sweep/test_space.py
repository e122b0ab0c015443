"""Search-space parsing: parameters, ranges, validation against the training config."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgetrain.errors import EdgeTrainError
from edgetrain.sweep.space import decode_choice, encode_choice, load_space


def test_parses_ranges_choices_and_defaults(make_space, tiny_base):
    space = load_space(
        make_space(
            params={
                "lr": {"low": 0.001, "high": 0.1, "log": True},
                "epochs": {"low": 1, "high": 3},
                "momentum": {"low": 0, "high": 0.9},
                "weight_decay": {"low": 0, "high": 1, "type": "float"},
                "batch_size": {"choices": [16, 32]},
                "monitor.interval_s": {"choices": [0.1, 0.2]},
            }
        )
    )
    p = space.params
    assert (p["lr"].kind, p["lr"].log) == ("float", True)
    assert p["epochs"].kind == "int"
    assert p["momentum"].kind == "float"
    assert p["weight_decay"].kind == "float"
    assert p["batch_size"].choices == (16, 32)
    assert space.objectives == ("accuracy", "energy")
    assert space.sampler == "random" and space.seed == 0
    assert space.base["model"] == "mlp" and "out" not in space.base
    dists = space.distributions()
    assert dists["epochs"].low == 1 and dists["lr"].log


def test_trial_config_sets_dotted_keys_and_internal(make_space, tiny_base):
    space = load_space(
        make_space(
            params={
                "monitor.interval_s": {"choices": [0.5]},
                "internal": {"choices": ["none", "quantize", "compile"]},
            }
        )
    )
    cfg, quantize = space.trial_config({"monitor.interval_s": 0.5, "internal": "quantize"})
    assert cfg["monitor"]["interval_s"] == 0.5 and quantize and cfg["compile"] is False
    cfg, quantize = space.trial_config({"monitor.interval_s": 0.5, "internal": "compile"})
    assert cfg["compile"] is True and not quantize
    assert space.base["monitor"]["interval_s"] == 0.1  # the base is not modified


def test_list_choices_round_trip_through_optuna_encoding(make_space, tiny_base):
    space = load_space(
        make_space(
            params={"split": {"choices": [[0.8, 0.1, 0.1], [0.7, 0.2, 0.1]]}}, vary_data=True
        )
    )
    dist = space.distributions()["split"]
    assert all(isinstance(c, str) for c in dist.choices)
    cfg, _ = space.trial_config({"split": dist.choices[1]})
    assert cfg["split"] == [0.7, 0.2, 0.1]
    assert decode_choice(encode_choice({"a": 1})) == {"a": 1}


def test_unknown_key_is_named_with_a_suggestion(make_space, tiny_base):
    with pytest.raises(
        EdgeTrainError,
        match=r"params\.lrr: unknown training-config key 'lrr' \(did you mean 'lr'\?\)",
    ):
        load_space(make_space(params={"lrr": {"choices": [0.1]}}))
    with pytest.raises(
        EdgeTrainError,
        match=r"params\.monitor\.intervall_s: unknown key in section 'monitor'.*interval_s",
    ):
        load_space(make_space(params={"monitor.intervall_s": {"choices": [0.1]}}))


def test_choice_invalid_for_the_training_config_names_parameter_and_value(make_space, tiny_base):
    with pytest.raises(EdgeTrainError) as err:
        load_space(
            make_space(
                params={
                    "batch_size": {"choices": [16, 0]},
                    "optimizer": {"choices": ["sgd", "adamm"]},
                }
            )
        )
    msg = str(err.value)
    assert "params.batch_size: choice 0 is invalid: batch_size must be >= 1, got 0" in msg
    assert "params.optimizer: choice 'adamm' is invalid" in msg and "did you mean 'adam'" in msg


def test_range_bounds_are_checked_against_the_config(make_space, tiny_base):
    with pytest.raises(
        EdgeTrainError, match=r"params\.momentum: high 1\.5 is invalid: momentum must be < 1"
    ):
        load_space(make_space(params={"momentum": {"low": 0.0, "high": 1.5}}))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"low": 0.1, "high": 0.01}, "params.lr.low must be < high"),
        ({"low": 0, "high": 0.1, "log": True}, "params.lr.low must be > 0 on a log scale"),
        ({"low": 0.001}, "needs 'choices' or both 'low' and 'high'"),
        ({"choices": []}, "params.lr.choices must be a non-empty list"),
        ({"choices": [0.1, 0.1]}, "params.lr.choices has duplicates"),
        ({"choices": [0.1], "low": 0.1}, "give either choices or low/high"),
        ({"low": 0.01, "high": 0.1, "logg": True}, "unknown option 'logg' (did you mean 'log'?)"),
        ({"low": "a", "high": 0.1}, "params.lr.low must be a number"),
        (0.1, "a fixed value belongs in base"),
        ([0.1, 0.2], "write {choices: [0.1, 0.2]}"),
    ],
)
def test_bad_parameter_specs(spec, message, make_space, tiny_base):
    with pytest.raises(EdgeTrainError) as err:
        load_space(make_space(params={"lr": spec}))
    assert message in str(err.value)


def test_all_problems_are_reported_together(make_space, tiny_base):
    with pytest.raises(EdgeTrainError) as err:
        load_space(
            make_space(
                params={"lrr": {"choices": [1]}, "batch_size": {"choices": [0]}}, sampler="grid"
            )
        )
    msg = str(err.value)
    assert "lrr" in msg and "batch_size" in msg and "sampler must be one of" in msg


def test_data_keys_need_vary_data(make_space, tiny_base):
    for key, spec in (
        ("split", {"choices": [[0.8, 0.1, 0.1], [0.7, 0.2, 0.1]]}),
        ("seed", {"choices": [0, 1]}),
    ):
        with pytest.raises(
            EdgeTrainError,
            match=f"params.{key}: sweeping '{key}' changes which samples.*vary_data: true",
        ):
            load_space(make_space(params={key: spec}))
    assert (
        "seed"
        in load_space(make_space(params={"seed": {"choices": [0, 1]}}, vary_data=True)).params
    )


def test_reserved_and_conflicting_keys(make_space, tiny_base):
    with pytest.raises(EdgeTrainError, match="'out' is set by the sweep"):
        load_space(make_space(params={"out": {"choices": ["a", "b"]}}))
    with pytest.raises(EdgeTrainError, match=r"base\.out is set by the sweep"):
        load_space({"base": {**tiny_base, "out": "x"}, "params": {"lr": {"choices": [0.1]}}})
    with pytest.raises(EdgeTrainError, match="internal knob already sets compile"):
        load_space(
            make_space(
                params={"internal": {"choices": ["none"]}, "compile": {"choices": [True, False]}}
            )
        )
    with pytest.raises(EdgeTrainError, match=r"params\.internal\.choices must be among"):
        load_space(make_space(params={"internal": {"choices": ["none", "quantise"]}}))
    with pytest.raises(EdgeTrainError, match="objectives need energy from the monitor"):
        load_space(make_space(base={**tiny_base, "monitor": {"enabled": False}}))
    # accuracy alone does not need the monitor
    load_space(
        make_space(base={**tiny_base, "monitor": {"enabled": False}}, objectives=["accuracy"])
    )


def test_base_errors_and_base_from_a_file(tmp_path: Path, make_space, tiny_base):
    with pytest.raises(EdgeTrainError, match=r"base: batch_size must be >= 1"):
        load_space({"base": {"batch_size": 0}, "params": {"lr": {"choices": [0.1]}}})
    (tmp_path / "train.yaml").write_text("model: mlp\ndata: digits\nepochs: 1\n")
    (tmp_path / "space.yaml").write_text("base: train.yaml\nparams:\n  lr: {choices: [0.1, 0.2]}\n")
    space = load_space(tmp_path / "space.yaml")
    assert space.base["model"] == "mlp" and space.source == str(tmp_path / "space.yaml")


def test_unknown_top_level_key_and_cli_style_overrides(make_space, tiny_base):
    with pytest.raises(
        EdgeTrainError, match="unknown space key 'param' \\(did you mean 'params'\\?\\)"
    ):
        load_space({"base": tiny_base, "param": {}})
    space = load_space(make_space(), objectives=["efficiency"], sampler="tpe", seed=3)
    assert (space.objectives, space.sampler, space.seed) == (("efficiency",), "tpe", 3)


def test_space_round_trips_through_its_dict(make_space, tiny_base):
    space = load_space(
        make_space(
            params={"lr": {"low": 0.001, "high": 0.1, "log": True}, "epochs": {"low": 1, "high": 2}}
        )
    )
    again = load_space(space.to_dict())
    assert again == space
