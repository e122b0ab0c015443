"""Safety of runs: what --overwrite may remove, one writer per directory, checkpoints that
cannot run code, divergence, OS errors, verbatim messages, signals (docs/design.md, "Files
and safety"). Every test touches only its own temporary directory."""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import edgetrain
from edgetrain.cli import main
from edgetrain.errors import EdgeTrainError
from edgetrain.safefs import LOCK_NAME, MARKER_NAME, DirLock, claim_dir, mark_dir, read_marker
from edgetrain.train.callbacks import Callback

TINY = ["--set", "epochs=1", "--set", "max_batches_per_epoch=2", "--set", "monitor.enabled=false"]


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``edgetrain ARGS`` run in this process."""
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def user_folder(path: Path) -> Path:
    """A folder of someone's own files (not edgetrain's)."""
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("years of work")
    (path / "data").mkdir()
    (path / "data" / "x.csv").write_text("1,2\n")
    return path


# -- 1. ownership: --overwrite clears only a marked directory of its kind ----------------------
def test_overwrite_refuses_a_foreign_directory(capsys, tmp_path):
    mine = user_folder(tmp_path / "mine")
    code, _, err = run_cli(capsys, "train", *TINY, "--out", str(mine), "--overwrite", "--quiet")
    assert code == 2
    assert "edgetrain did not create it" in one_line_error(err)
    assert (mine / "thesis.tex").read_text() == "years of work"
    assert (mine / "data" / "x.csv").exists()
    assert not (mine / MARKER_NAME).exists() and not (mine / LOCK_NAME).exists()


def test_overwrite_replaces_a_marked_run(capsys, tmp_path):
    out = tmp_path / "run"
    assert run_cli(capsys, "train", *TINY, "--out", str(out), "--quiet")[0] == 0
    (out / "stale.txt").write_text("from the earlier run")
    assert read_marker(out)["kind"] == "run"
    code, _, err = run_cli(capsys, "train", *TINY, "--out", str(out), "--overwrite", "--quiet")
    assert code == 0, err
    assert not (out / "stale.txt").exists()
    assert (out / "summary.json").exists() and read_marker(out)["kind"] == "run"


def test_overwrite_refuses_a_marked_directory_of_another_kind(tmp_path):
    bench = tmp_path / "bench"
    claim_dir(bench, "bench")
    (bench / "summary.csv").write_text("config\n")
    with pytest.raises(EdgeTrainError, match="not a run directory"):
        claim_dir(bench, "run", overwrite=True)
    assert (bench / "summary.csv").exists()


@pytest.mark.parametrize("where", ["cwd", "parent", "home"])
def test_never_clears_cwd_its_parents_or_home_even_when_marked(tmp_path, monkeypatch, where):
    top = tmp_path / "top"
    work = top / "work"
    work.mkdir(parents=True)
    (work / "keep.txt").write_text("keep")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    target = {"cwd": work, "parent": top, "home": tmp_path / "home"}[where]
    target.mkdir(exist_ok=True)
    (target / "keep-too.txt").write_text("keep")
    mark_dir(target, "run")  # even a (planted) marker does not make these removable
    with pytest.raises(EdgeTrainError, match="refusing to clear"):
        claim_dir(target, "run", overwrite=True)
    assert (work / "keep.txt").exists() and (target / "keep-too.txt").exists()


def test_root_is_never_cleared():
    with pytest.raises(EdgeTrainError, match="refusing to clear"):
        claim_dir(Path("/"), "run", overwrite=True)


def test_overwrite_does_not_follow_symlinks(tmp_path):
    outside = user_folder(tmp_path / "outside")
    run = tmp_path / "run"
    claim_dir(run, "run")
    (run / "link").symlink_to(outside, target_is_directory=True)
    (run / "metrics.csv").write_text("epoch\n")
    claim_dir(run, "run", overwrite=True)
    assert not (run / "link").exists()
    assert (outside / "thesis.tex").exists() and (outside / "data" / "x.csv").exists()
    # a marked run reached through a link is not cleared at all
    alias = tmp_path / "alias"
    alias.symlink_to(run, target_is_directory=True)
    (run / "metrics.csv").write_text("epoch\n")
    with pytest.raises(EdgeTrainError, match="symbolic link"):
        claim_dir(alias, "run", overwrite=True)
    assert (run / "metrics.csv").exists()


def test_data_export_overwrite_refuses_a_foreign_directory(capsys, tmp_path):
    mine = user_folder(tmp_path / "mine")
    code, _, err = run_cli(capsys, "data", "export", "digits", "--to", str(mine), "--overwrite")
    assert code == 2
    assert "edgetrain did not create it" in one_line_error(err)
    assert (mine / "thesis.tex").exists()


def test_bench_overwrite_refuses_a_foreign_directory(capsys, tmp_path):
    mine = user_folder(tmp_path / "mine")
    (mine / "summary.csv").write_text("my own numbers\n")
    config = tmp_path / "bench.yaml"
    config.write_text("epochs: 1\nmax_batches_per_epoch: 2\n")
    code, _, err = run_cli(
        capsys, "bench", str(config), "--epochs", "2", "--out", str(mine), "--overwrite"
    )
    assert code == 2, err
    assert "edgetrain did not create it" in one_line_error(err)
    assert (mine / "summary.csv").read_text() == "my own numbers\n"


def test_report_refuses_to_write_into_a_foreign_directory(capsys, tmp_path):
    run = tmp_path / "run"
    assert run_cli(capsys, "train", *TINY, "--out", str(run), "--quiet")[0] == 0
    other = tmp_path / "other"
    assert run_cli(capsys, "train", *TINY, "--out", str(other), "--quiet")[0] == 0
    mine = user_folder(tmp_path / "mine")
    (mine / "report.pdf").write_text("my report")
    code, _, err = run_cli(capsys, "report", str(run), str(other), "--out", str(mine))
    assert code == 2, err
    assert (mine / "report.pdf").read_text() == "my report"


# -- 2. one writer per directory -----------------------------------------------------------------
HOLD = textwrap.dedent(
    """
    import sys, time
    from edgetrain.safefs import DirLock
    lock = DirLock(sys.argv[1], "run directory").acquire()
    print("locked", flush=True)
    time.sleep(60)
    """
)


def _holder(directory: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_is_refused_and_a_dead_holder_is_taken_over(capsys, tmp_path):
    out = tmp_path / "run"
    assert run_cli(capsys, "train", *TINY, "--out", str(out), "--quiet")[0] == 0
    (out / "metrics.csv").write_text("epoch\n1\n")
    holder = _holder(out)
    try:
        code, _, err = run_cli(capsys, "train", *TINY, "--out", str(out), "--overwrite", "-q")
        line = one_line_error(err)
        assert code == 2
        assert f"is in use by process {holder.pid} on " in line
        assert (out / "metrics.csv").read_text() == "epoch\n1\n"  # nothing was cleared
        code, _, err = run_cli(capsys, "train", "--resume", str(out), "--quiet")
        assert code == 2 and "in use by process" in one_line_error(err)
    finally:
        holder.kill()
        holder.wait()
    started = time.perf_counter()
    code, _, err = run_cli(capsys, "train", *TINY, "--out", str(out), "--overwrite", "--quiet")
    assert code == 0, err
    assert time.perf_counter() - started < 30  # no waiting for a stale lock to expire


def test_lock_is_released_when_the_run_ends(tmp_path):
    result = edgetrain.fit(
        torch.nn.Linear(4, 2),
        torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,))),
        epochs=1,
        batch_size=8,
        out=str(tmp_path / "r"),
        progress=False,
        monitor={"enabled": False},
    )
    assert DirLock.is_free(result.run_dir)


# -- 3. checkpoints cannot run code -----------------------------------------------------------
class _Plant:
    """Pickles into a call that creates a file: what a planted checkpoint would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.path,))


def test_planted_checkpoint_does_not_run(capsys, tmp_path):
    run = tmp_path / "run"
    assert run_cli(capsys, "train", *TINY, "--out", str(run), "--quiet")[0] == 0
    proof = tmp_path / "pwned"
    torch.save({"epoch": 1, "payload": _Plant(proof)}, run / "checkpoints" / "last.pt")
    code, _, err = run_cli(capsys, "train", "--resume", str(run), "--quiet")
    assert code == 2
    assert "cannot read checkpoint" in one_line_error(err)
    assert not proof.exists()


def test_planted_init_from_does_not_run(capsys, tmp_path):
    proof = tmp_path / "pwned"
    weights = tmp_path / "model.pt"
    weights.write_bytes(pickle.dumps(_Plant(proof)))
    code, _, err = run_cli(
        capsys, "train", *TINY, "--set", f"init_from={weights}", "--out", str(tmp_path / "r")
    )
    assert code == 2
    assert "cannot read init_from weights" in one_line_error(err)
    assert not proof.exists()


def test_garbage_checkpoint_is_a_message(capsys, tmp_path):
    run = tmp_path / "run"
    assert run_cli(capsys, "train", *TINY, "--out", str(run), "--quiet")[0] == 0
    (run / "checkpoints" / "last.pt").write_bytes(b"\x00garbage" * 10)
    code, _, err = run_cli(capsys, "train", "--resume", str(run), "--quiet")
    assert code == 2 and "cannot read checkpoint" in one_line_error(err)


# -- 6. divergence -------------------------------------------------------------------------------
def _strict_json(path: Path) -> dict:
    def refuse(name: str) -> None:
        raise AssertionError(f"{path} holds {name}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_nonfinite_loss_stops_the_run_with_exit_3(capsys, tmp_path):
    out = tmp_path / "run"
    args = ["--set", "lr=1e30", "--set", "epochs=2", "--set", "max_batches_per_epoch=5"]
    code, _, err = run_cli(capsys, "train", *TINY[:2], *args, "--out", str(out), "--quiet")
    assert code == 3
    line = one_line_error(err)
    assert "training diverged" in line and "epoch 1" in line
    summary = _strict_json(out / "summary.json")
    assert summary["status"] == "diverged"
    assert summary["diverged"]["epoch"] == 1 and summary["diverged"]["step"] >= 1
    assert summary["diverged"]["loss"] is None  # nan/inf written as null ...
    assert any("diverged.loss" in note for note in summary["nonfinite"])  # ... and explained
    # the report renders a diverged run and says so
    code, _, err = run_cli(capsys, "report", str(out))
    assert code == 0, err
    assert (out / "report" / "report.pdf").exists()


def test_nonfinite_loss_skip_drops_the_step(tmp_path):
    x = torch.randn(32, 4)
    y = torch.randint(0, 2, (32,))
    x[5] = float("nan")  # one sample poisons one batch's loss
    result = edgetrain.fit(
        torch.nn.Linear(4, 2),
        torch.utils.data.TensorDataset(x, y),
        epochs=1,
        batch_size=8,
        on_nonfinite="skip",
        out=str(tmp_path / "r"),
        progress=False,
        monitor={"enabled": False},
    )
    assert result.summary["status"] == "completed"
    assert result.summary["nonfinite_steps_skipped"] == 1
    model = result.model
    assert all(torch.isfinite(p).all() for p in model.parameters())
    _strict_json(result.run_dir / "summary.json")


# -- 7. OS errors are messages -------------------------------------------------------------------
@pytest.mark.parametrize("code_", [errno.ENOSPC, errno.EROFS])
def test_disk_full_or_read_only_mid_run(capsys, tmp_path, monkeypatch, code_):
    from edgetrain.train import rundir

    calls = {"n": 0}
    real = rundir.CsvLog._write_line

    def failing(self, cells):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if self.path.name == "metrics.csv" and calls["n"] > 1:
            raise OSError(code_, os.strerror(code_), str(self.path))
        return real(self, cells)

    monkeypatch.setattr(rundir.CsvLog, "_write_line", failing)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", *TINY, "--out", str(out), "--quiet")
    assert code == 2
    line = one_line_error(err)
    assert str(out / "metrics.csv") in line
    assert errno.errorcode[code_] in line
    summary = _strict_json(out / "summary.json")
    assert summary["status"] == "failed" and errno.errorcode[code_] in summary["error"]
    assert not list(out.rglob("*.tmp"))


def test_failed_atomic_write_leaves_no_tmp(tmp_path, monkeypatch):
    from edgetrain import safefs

    def full(fd, *a):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safefs.os, "fsync", full)
    with pytest.raises(OSError):
        safefs.atomic_write_text(tmp_path / "x.json", "{}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["under_a_file", "name_too_long"])
def test_bad_out_paths_are_messages(capsys, tmp_path, case):
    if case == "under_a_file":
        (tmp_path / "file").write_text("x")
        out, reason = tmp_path / "file" / "run", "not a directory"
    else:
        out, reason = tmp_path / ("n" * 300), "too long"
    code, _, err = run_cli(capsys, "train", *TINY, "--out", str(out), "--quiet")
    assert code == 2
    assert reason in one_line_error(err)


# -- 8. messages are printed verbatim ----------------------------------------------------------
def test_brackets_in_messages_survive(capsys, tmp_path):
    missing = tmp_path / "runs" / "[a].yaml"
    code, _, err = run_cli(capsys, "train", str(missing))
    assert code == 2
    assert "[a].yaml" in one_line_error(err)


def test_missing_extra_message_keeps_the_brackets(capsys, monkeypatch):
    import edgetrain.measure
    from edgetrain.errors import MissingExtraError

    def missing() -> None:
        raise MissingExtraError("optuna", "sweep", "sweeps")

    monkeypatch.setattr(edgetrain.measure, "environment_info", missing)
    code, _, err = run_cli(capsys, "env")
    assert code == 2
    assert 'pip install "edgetrain[sweep]"' in one_line_error(err)


# -- 9. signals and status -------------------------------------------------------------------------
def test_summary_says_running_from_the_start(tmp_path):
    seen: dict[str, str] = {}

    class Peek(Callback):
        def on_fit_start(self, state) -> None:  # type: ignore[no-untyped-def]
            seen["status"] = json.loads((state.run_path / "summary.json").read_text())["status"]

    edgetrain.fit(
        torch.nn.Linear(4, 2),
        torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,))),
        epochs=1,
        batch_size=8,
        out=str(tmp_path / "r"),
        progress=False,
        callbacks=[Peek()],
        monitor={"enabled": False},
    )
    assert seen["status"] == "running"


def test_sigterm_stops_gracefully_with_143(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "edgetrain", "train", "--out", str(out), "--quiet"]
    cmd += ["--set", "epochs=50", "--set", "monitor.enabled=false"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "last.pt").exists():  # at least one epoch done
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    summary = _strict_json(out / "summary.json")
    assert summary["status"] == "interrupted"
    assert DirLock.is_free(out)
    assert (out / "checkpoints" / "last.pt").exists()


# -- 11. the README's commands work after make demo ----------------------------------------------
def test_demo_environment_has_the_sweep_extra():
    makefile = (Path(__file__).parents[2] / "Makefile").read_text()
    demo_install = [ln for ln in makefile.splitlines() if '-e ".' in ln and "dev" not in ln]
    assert demo_install and all("sweep" in ln for ln in demo_install), demo_install


def test_two_processes_claiming_one_new_directory_do_not_refuse_each_other(tmp_path):
    # the other process has created the directory and is writing its marker right now
    shared = tmp_path / "sweep"
    shared.mkdir()
    (shared / f".{MARKER_NAME}.x1y2.tmp").write_text("{")
    claim_dir(shared, "sweep", reuse=True)
    assert read_marker(shared)["kind"] == "sweep"


def test_the_marker_never_records_a_password(tmp_path, monkeypatch):
    import sys

    monkeypatch.setattr(
        sys, "argv", ["edgetrain", "sweep", "run", "--storage", "postgresql://me:s3cret@db/x"]
    )
    mark_dir(tmp_path, "sweep")
    text = (tmp_path / MARKER_NAME).read_text()
    assert "s3cret" not in text and "postgresql://me:***@db/x" in text


def test_a_setup_error_leaves_the_run_directory_unlocked(tmp_path):
    data = torch.utils.data.TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,)))
    out = str(tmp_path / "r")
    with pytest.raises(EdgeTrainError, match="factory returned"):
        edgetrain.fit(torch.nn.Linear(4, 2), data, epochs=1, batch_size=4, out=out,
                      optimizer=lambda params: "not an optimizer", progress=False,
                      monitor={"enabled": False})  # fmt: skip
    assert DirLock.is_free(out)
    edgetrain.fit(torch.nn.Linear(4, 2), data, epochs=1, batch_size=4, out=out, overwrite=True,
                  progress=False, monitor={"enabled": False})  # fmt: skip


def test_a_stop_signal_during_a_checkpoint_write_waits_for_it(tmp_path, monkeypatch):
    """SIGTERM's handler (interrupt()) arriving inside torch.save: raised there, it broke
    the zip writer and the run ended with an internal error instead of exit 143."""
    import torch

    from edgetrain.safefs import interrupt
    from edgetrain.train.rundir import load_tensors, save_tensors

    real_save = torch.save

    def save(obj, f):
        interrupt()  # the signal arrives while the file is being written
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", save)
    target = tmp_path / "last.pt"
    with pytest.raises(KeyboardInterrupt):
        save_tensors(target, {"w": torch.ones(3), "epoch": 2})
    assert load_tensors(target, "checkpoint")["epoch"] == 2  # written whole first
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    with pytest.raises(KeyboardInterrupt):  # outside a write it stops at once
        interrupt()


def test_a_stop_signal_during_an_atomic_write_keeps_the_new_file(tmp_path, monkeypatch):
    import edgetrain.safefs as safefs

    real_fsync = safefs.os.fsync

    def fsync(fd):
        safefs.interrupt()
        real_fsync(fd)

    monkeypatch.setattr(safefs.os, "fsync", fsync)
    target = tmp_path / "summary.json"
    with pytest.raises(KeyboardInterrupt):
        safefs.atomic_write_text(target, '{"status": "interrupted"}')
    assert target.read_text() == '{"status": "interrupted"}'
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
