from __future__ import annotations

import pytest

from edgetrain.config import TrainConfig, load_config, parse_override
from edgetrain.errors import EdgeTrainError


def test_defaults_live_in_the_schema():
    cfg = load_config()
    assert cfg == TrainConfig()
    assert cfg.model == "cnn" and cfg.data == "digits"
    assert cfg.split == [0.8, 0.1, 0.1]
    assert cfg.monitor.enabled and cfg.monitor.interval_s == 0.2


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: mlp\nepochs: 3\nmonitor:\n  interval_s: 0.5\n")
    cfg = load_config(f, overrides=["epochs=7", "monitor.cpu_tdp_w=12.5", "split=[0.6, 0.2, 0.2]"])
    assert cfg.model == "mlp"
    assert cfg.epochs == 7
    assert cfg.monitor.interval_s == 0.5 and cfg.monitor.cpu_tdp_w == 12.5
    assert cfg.split == [0.6, 0.2, 0.2]


def test_later_sources_win_and_merge_sections():
    cfg = load_config({"monitor": {"interval_s": 1.0}}, {"monitor": {"enabled": False}})
    assert cfg.monitor.interval_s == 1.0 and cfg.monitor.enabled is False


def test_parse_override_reads_yaml_values():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("lr=1e-3") == (["lr"], 1e-3)
    assert parse_override("model=mypkg.models:build") == (["model"], "mypkg.models:build")
    with pytest.raises(EdgeTrainError, match="key=value"):
        parse_override("novalue")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["epochs=0"], "epochs must be >= 1, got 0"),
        (["batch_size=-4"], "batch_size must be >= 1, got -4"),
        (["lr=0"], "lr must be > 0"),
        (["batch_size=abc"], "batch_size must be an integer, got 'abc'"),
        (
            ["optimizer=adm"],
            "optimizer must be one of 'sgd', 'adam', 'adamw' or 'rmsprop', got 'adm' (did you mean 'adam'?)",
        ),
        (["bogus=1"], "unknown key 'bogus'"),
        (["epoks=3"], "unknown key 'epoks' (did you mean 'epochs'?)"),
        (["monitor.intervl_s=1"], "unknown key 'monitor.intervl_s' (did you mean 'interval_s'?)"),
        (["split=[0.5, 0.2, 0.2]"], "split fractions must sum to 1, got [0.5, 0.2, 0.2]"),
        (["split=[0.9, 0.1]"], "split must be three fractions"),
        (["compile=maybe"], "compile must be true or false, got 'maybe'"),
        (["micro_batch_size=100"], "micro_batch_size must be <= batch_size (64), got 100"),
        (["prefetch_factor=2"], "prefetch_factor needs num_workers >= 1"),
        (["monitor.interval_s=0"], "monitor.interval_s must be > 0"),
        (["precision=fp8"], "precision must be one of"),
        (
            ["adapt.min_micro_batch_size=0"],
            "adapt.min_micro_batch_size must be 'auto' or an integer >= 1, got 0",
        ),
        (["adapt.min_micro_batch_size=few"], "integer >= 1, got 'few'"),
        (["budget.lossy=maybe"], "budget.lossy must be one of 'forbid' or 'allow', got 'maybe'"),
    ],
)
def test_bad_values_name_key_rule_and_value(overrides, message):
    with pytest.raises(EdgeTrainError) as info:
        load_config(overrides=overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_all_problems_reported_together():
    with pytest.raises(EdgeTrainError) as info:
        load_config(overrides=["epochs=0", "lr=-1", "bogus=2"])
    text = str(info.value)
    assert text.startswith("invalid configuration:")
    assert "epochs" in text and "lr" in text and "bogus" in text


def test_malformed_yaml_names_file_and_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model: cnn\nepochs: [3\n")
    with pytest.raises(EdgeTrainError, match=r"malformed YAML in .*bad.yaml at line 3"):
        load_config(f)


def test_yaml_must_be_a_mapping(tmp_path):
    f = tmp_path / "list.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(EdgeTrainError, match="must contain a mapping"):
        load_config(f)


def test_missing_config_file(tmp_path):
    with pytest.raises(EdgeTrainError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
