"""Bad input: one line on stderr naming key, rule and value; exit code 2; no traceback."""

from __future__ import annotations

import pytest

from edgetrain.cli import main
from edgetrain.safefs import mark_dir


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as info:
        main(list(args))
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def assert_one_line_error(code, err, *fragments):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    text = lines[0]
    assert text.startswith("error:")
    for f in fragments:
        assert f in text, text


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--set", "model=cnm"], ["unknown model 'cnm'", "did you mean 'cnn'"]),
        (["--set", "data=digts"], ["unknown", "'digts'", "did you mean 'digits'"]),
        (["--set", "epoks=3"], ["unknown key 'epoks'", "did you mean 'epochs'"]),
        (["--set", "batch_size=abc"], ["batch_size must be an integer, got 'abc'"]),
        (["--set", "batch_size=0"], ["batch_size must be >= 1, got 0"]),
        (["--set", "epochs=-1"], ["epochs must be >= 1, got -1"]),
        (["--set", "lr=0"], ["lr must be > 0"]),
        (["--set", "split=[0.7, 0.2, 0.2]"], ["split fractions must sum to 1"]),
        (
            ["--set", "batch_size=5000"],
            ["batch_size must be <= the number of training samples", "5000"],
        ),
        (["--set", "data=cifar10"], ["cifar10", "data_path"]),
        (["--set", "data=folder", "--set", "data_path=/nonexistent/x"], ["/nonexistent/x"]),
        (["--set", "nonsense"], ["--set expects key=value"]),
    ],
)
def test_bad_input(capsys, tmp_path, args, fragments):
    code, _, err = run_cli(
        capsys,
        "train",
        *args,
        "--set",
        "monitor.enabled=false",
        "--out",
        str(tmp_path / "r"),
        "--quiet",
    )
    assert_one_line_error(code, err, *fragments)


def test_malformed_yaml(capsys, tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: [1\n")
    code, _, err = run_cli(capsys, "train", str(f))
    assert_one_line_error(code, err, "malformed YAML", "c.yaml")


def test_missing_config_file(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", str(tmp_path / "missing.yaml"))
    assert_one_line_error(code, err, "config file not found")


def test_existing_run_dir_needs_resume_or_overwrite(capsys, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    mark_dir(out, "run")  # a run directory edgetrain made
    (out / "metrics.csv").write_text("epoch\n")
    code, _, err = run_cli(capsys, "train", "--set", "epochs=1", "--out", str(out), "--quiet")
    assert_one_line_error(code, err, "already exists", "--resume", "--overwrite")


def test_resume_without_checkpoint(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--resume", str(tmp_path / "nothing"))
    assert_one_line_error(code, err, "cannot resume")


def test_debug_shows_traceback(capsys, tmp_path):
    code, _, err = run_cli(
        capsys, "--debug", "train", "--set", "model=cnm", "--out", str(tmp_path / "r")
    )
    assert code == 2
    assert "Traceback" in err and "unknown model 'cnm'" in err


def test_train_succeeds_and_prints_run_dir(capsys, tmp_path):
    code = 0
    try:
        main(
            [
                "train",
                "--set",
                "epochs=1",
                "--set",
                "monitor.enabled=false",
                "--out",
                str(tmp_path / "ok"),
                "--quiet",
            ]
        )
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr().out
    assert code in (0, None)
    assert str(tmp_path / "ok") in out
    assert (tmp_path / "ok" / "metrics.csv").exists()


def test_the_budget_line_says_how_the_run_kept_to_the_budget():
    from edgetrain.cli.main import _budget_line

    assert _budget_line({}) is None
    kept = {
        "budget_bytes": 64 * 2**20,
        "measured_peak_bytes": 48 * 2**20,
        "memory_source": "cpu:rss-above-baseline",
        "micro_batch_size": 52,
        "accum_steps": 5,
        "budget_violations": 0,
    }
    line = _budget_line(kept)
    assert line is not None
    assert "peak 48.0 MiB of the budget 64.0 MiB (75%" in line and "52 x 5" in line
    assert "passed" not in line
    line = _budget_line({**kept, "measured_peak_bytes": 65 * 2**20, "budget_violations": 3})
    assert line is not None and "passed the budget in 3 training step(s)" in line
    line = _budget_line({**kept, "measured_peak_bytes": 65 * 2**20})
    assert line is not None and "passed the budget during evaluation" in line
