"""``edgetrain.mark``: phase marks for ``edgetrain monitor -- CMD`` (stdlib only)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings

import pytest

import edgetrain
from edgetrain.mark import MARKS_ENV, MARKS_FILE, Mark, mark, mark_time, read_marks


def test_without_the_variable_mark_does_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv(MARKS_ENV, raising=False)
    assert mark("epoch 1") is None
    monkeypatch.setenv(MARKS_ENV, "")
    assert mark("epoch 1") is None
    assert list(tmp_path.iterdir()) == []


def test_marks_are_appended_as_time_tab_label_lines(tmp_path, monkeypatch):
    path = tmp_path / MARKS_FILE
    monkeypatch.setenv(MARKS_ENV, str(path))
    before = time.time()
    t1 = mark("load data")
    t2 = mark("epoch 1")
    after = time.time()
    assert t1 is not None and t2 is not None
    assert before - 0.01 <= t1 <= t2 <= after + 0.01  # wall-clock seconds
    lines = path.read_text().splitlines()
    assert lines == [f"{t1:.6f}\tload data", f"{t2:.6f}\tepoch 1"]
    assert read_marks(path) == [
        Mark(pytest.approx(t1, abs=1e-6), "load data"),
        Mark(pytest.approx(t2, abs=1e-6), "epoch 1"),
    ]


def test_a_label_is_one_line_without_tabs(tmp_path, monkeypatch):
    path = tmp_path / MARKS_FILE
    monkeypatch.setenv(MARKS_ENV, str(path))
    mark("a\tb\nc\r\n")
    mark(3)  # type: ignore[arg-type]
    assert [m.label for m in read_marks(path)] == ["a b c", "3"]
    assert all(line.count("\t") == 1 for line in path.read_text().splitlines())


def test_mark_time_is_monotonic_and_near_the_wall_clock():
    times = [mark_time() for _ in range(1000)]
    assert times == sorted(times)
    assert abs(mark_time() - time.time()) < 1.0


def test_an_unwritable_file_warns_once_and_never_raises(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules["edgetrain.mark"], "_warned", False)
    monkeypatch.setenv(MARKS_ENV, str(tmp_path / "missing-dir" / MARKS_FILE))
    with pytest.warns(RuntimeWarning, match="cannot write EDGETRAIN_MARKS"):
        assert mark("epoch 1") is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert mark("epoch 2") is None
    assert caught == []  # once is enough


def test_read_marks_skips_what_is_not_a_mark(tmp_path):
    path = tmp_path / MARKS_FILE
    path.write_text(
        "time_s\tlabel\n"  # a header
        "12.5\tsecond\n"
        "\n"
        "no tab here\n"
        "nan\tnot a time\n"
        "10.0\tfirst\n"
        "13.0\thalf-writ"  # no newline: the writer was killed mid-line
    )
    assert read_marks(path) == [Mark(10.0, "first"), Mark(12.5, "second")]
    assert read_marks(tmp_path / "absent.tsv") == []


def test_marks_from_a_child_process_without_torch(tmp_path):
    """The measured program imports only the helper: no torch, lines appended in order."""
    path = tmp_path / MARKS_FILE
    code = (
        "import sys\n"
        "from edgetrain.mark import mark\n"
        "for i in range(3):\n"
        "    mark(f'phase {i}')\n"
        "assert 'torch' not in sys.modules, 'edgetrain.mark imported torch'\n"
    )
    env = {**os.environ, MARKS_ENV: str(path)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    marks = read_marks(path)
    assert [m.label for m in marks] == ["phase 0", "phase 1", "phase 2"]
    assert abs(marks[0].time_s - time.time()) < 60


def test_the_package_exposes_mark():
    if not callable(getattr(edgetrain, "mark", None)):
        pytest.skip("edgetrain/__init__.py does not re-export mark yet")
    assert edgetrain.mark is mark
