"""``edgetrain sweep run|analyze|final``: end to end, and one-line errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from edgetrain.cli import main


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as info:
        main(list(args))
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def cli_ok(capsys, *args):
    try:
        main(list(args))
    except SystemExit as exc:  # pragma: no cover - shows the error when it fails
        pytest.fail(f"exit {exc.code}: {capsys.readouterr().err}")
    return capsys.readouterr().out


def one_line_error(code, err, *fragments):
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.mark.slow
@pytest.mark.keep
def test_run_resume_analyze_final_end_to_end(tmp_path, capsys, make_space):
    space = tmp_path / "space.yaml"
    space.write_text(
        yaml.safe_dump(
            make_space(
                params={
                    "lr": {"low": 0.001, "high": 0.1, "log": True},
                    "internal": {"choices": ["none", "quantize"]},
                }
            )
        )
    )
    sw = tmp_path / "sw"
    out = cli_ok(capsys, "sweep", "run", str(space), "--trials", "2", "--out", str(sw), "--quiet")
    assert "completed" in out and "next: edgetrain sweep analyze" in out
    # the same command again runs nothing; a larger --trials adds the difference
    out = cli_ok(capsys, "sweep", "run", str(space), "--trials", "2", "--out", str(sw), "--quiet")
    assert "0 in" in out
    cli_ok(capsys, "sweep", "run", str(space), "--trials", "3", "--out", str(sw), "--quiet")
    assert sorted(p.name for p in (sw / "trials").iterdir()) == ["0", "1", "2"]
    assert {"space.yaml", "sweep.json", "study.journal", "trials"} <= {p.name for p in sw.iterdir()}
    info = json.loads((sw / "sweep.json").read_text())
    assert info["study"] == "space" and info["storage_kind"] == "journal"

    out = cli_ok(capsys, "sweep", "analyze", str(sw))
    assert "lowest energy" in out and "Pareto front" in out
    trials = pd.read_csv(sw / "analysis" / "trials.csv")
    assert len(trials) == 3 and set(trials["state"]) == {"complete"}
    assert (sw / "analysis" / "results.xlsx").exists()

    out = cli_ok(
        capsys, "sweep", "final", str(sw), "--epochs", "1", "--pick", "efficiency", "--quiet"
    )
    assert "test accuracy" in out
    report = json.loads((sw / "final" / "final.json").read_text())
    best = trials.sort_values("efficiency_acc_per_kj", ascending=False).iloc[0]
    assert report["trial"] == int(best["number"]) and report["pick"] == "efficiency"
    # a 2-batch epoch can end inside one 10 ms tick of /proc/stat: 0 J of estimate is possible
    assert 0.0 <= report["test_acc"] <= 1.0 and report["energy_j"] >= 0
    assert (report["quantized"] is not None) == (best["param_internal"] == "quantize")
    code, _, err = run_cli(capsys, "sweep", "final", str(sw), "--epochs", "1", "--quiet")
    one_line_error(code, err, "final run", "--overwrite")


def test_bad_space_is_one_line_naming_the_parameter(tmp_path, capsys, make_space):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(make_space(params={"batch_sise": {"choices": [16]}})))
    code, _, err = run_cli(capsys, "sweep", "run", str(space), "--trials", "1")
    one_line_error(code, err, "params.batch_sise", "did you mean 'batch_size'")
    code, _, err = run_cli(capsys, "sweep", "run", str(tmp_path / "nope.yaml"), "--trials", "1")
    one_line_error(code, err, "search space file not found")
    space.write_text(yaml.safe_dump(make_space()))
    code, _, err = run_cli(capsys, "sweep", "run", str(space), "--trials", "0")
    one_line_error(code, err, "--trials must be an integer >= 1, got 0")
    code, _, err = run_cli(capsys, "sweep", "run", str(space), "--trials", "1", "--sampler", "grid")
    one_line_error(code, err, "sampler must be one of")
    code, _, err = run_cli(
        capsys, "sweep", "run", str(space), "--trials", "1", "--launcher", "fork"
    )
    one_line_error(code, err, "launcher must be one of")


def test_analyze_and_final_errors(tmp_path, capsys):
    code, _, err = run_cli(capsys, "sweep", "analyze", str(tmp_path / "missing"))
    one_line_error(code, err, "sweep directory not found")
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "sweep", "analyze", str(tmp_path / "empty"))
    one_line_error(code, err, "is not a sweep directory")
    code, _, err = run_cli(capsys, "sweep", "final")
    one_line_error(code, err, "give a sweep directory, or --storage URL and --study NAME")


def test_final_pick_errors(tmp_path, capsys, make_space):
    from edgetrain.sweep.space import load_space
    from edgetrain.sweep.study import open_study

    open_study(load_space(make_space()), tmp_path / "sw")
    code, _, err = run_cli(capsys, "sweep", "final", str(tmp_path / "sw"), "--pick", "kne")
    one_line_error(code, err, "--pick must be one of", "did you mean 'knee'")
    code, _, err = run_cli(capsys, "sweep", "final", str(tmp_path / "sw"))
    one_line_error(code, err, "no completed trial")
