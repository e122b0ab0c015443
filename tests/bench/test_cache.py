"""Page-cache eviction: every data file is advised away; drop_caches only when asked for."""

from __future__ import annotations

import os

import pytest

from edgetrain.bench import cache
from edgetrain.bench.cache import evict, residency


@pytest.fixture
def files(tmp_path):
    paths = []
    for i in range(5):
        path = tmp_path / "data" / f"c{i % 2}" / f"{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(3 * 4096 + 100))
        paths.append(path)
    return paths


@pytest.fixture
def advised(monkeypatch):
    """Record posix_fadvise calls (by inode) instead of making them."""
    calls = []

    def fake(fd, offset, length, advice):
        calls.append((os.fstat(fd).st_ino, offset, length, advice))

    monkeypatch.setattr(os, "posix_fadvise", fake, raising=False)
    return calls


def test_fadvise_is_called_on_every_file(files, advised, no_drop_caches):
    result = evict(files, drop_caches_path=no_drop_caches)
    assert result.method == "fadvise"
    assert result.note == ""  # the default never tries the machine-wide drop_caches
    assert sorted(c[0] for c in advised) == sorted(p.stat().st_ino for p in files)
    assert all(c[1:] == (0, 0, os.POSIX_FADV_DONTNEED) for c in advised)
    assert result.files == len(files) and result.failed == 0


def test_drop_caches_is_written_when_permitted(tmp_path, files, advised, monkeypatch):
    monkeypatch.setattr(os, "sync", lambda: None)
    fake_proc = tmp_path / "drop_caches"
    fake_proc.write_text("0")
    result = evict(files, method="drop_caches", drop_caches_path=fake_proc)
    assert result.method == "drop_caches"
    assert fake_proc.read_text().strip() == "1"
    assert advised == []


def test_auto_never_writes_drop_caches(tmp_path, files, advised, monkeypatch):
    monkeypatch.setattr(os, "sync", lambda: None)
    fake_proc = tmp_path / "drop_caches"  # writable: the old default would have used it
    fake_proc.write_text("0")
    for method in ("auto", "fadvise"):
        result = evict(files, method=method, drop_caches_path=fake_proc)
        assert result.method == "fadvise"
    assert fake_proc.read_text() == "0"
    assert len(advised) == 2 * len(files)


def test_drop_caches_that_fails_is_a_note(files, advised, no_drop_caches):
    result = evict(files, method="drop_caches", drop_caches_path=no_drop_caches)
    assert result.method == "none"
    assert "not writable" in result.note
    assert advised == []


def test_missing_file_is_counted_not_raised(files, advised, no_drop_caches):
    files[0].unlink()
    result = evict(files, method="fadvise", drop_caches_path=no_drop_caches)
    assert result.failed == 1
    assert len(advised) == len(files) - 1


def test_no_fadvise_on_the_platform_is_reported(files, monkeypatch, no_drop_caches):
    monkeypatch.delattr(os, "posix_fadvise", raising=False)
    result = evict(files, drop_caches_path=no_drop_caches)
    assert result.method == "none"
    assert "posix_fadvise is not available" in result.note


def test_real_eviction_empties_the_cache(files, no_drop_caches):
    """Without root: fsync + fadvise(DONTNEED) really evicts (Linux)."""
    if not hasattr(os, "posix_fadvise") or residency(files) is None:
        pytest.skip("needs posix_fadvise and mincore")
    for path in files:
        path.read_bytes()
    before = residency(files)
    assert before.total_bytes == sum(p.stat().st_size for p in files)
    if before.resident_bytes == 0:
        pytest.skip("this file system does not keep files in the page cache")
    result = evict(files, method="fadvise", drop_caches_path=no_drop_caches)
    assert result.before.fraction == pytest.approx(1.0)
    assert result.after.resident_bytes < before.resident_bytes


def test_residency_is_unknown_without_mincore(files, monkeypatch):
    monkeypatch.setattr(cache, "_libc", lambda: None)
    assert residency(files) is None


def test_unknown_method_is_rejected(files):
    with pytest.raises(ValueError, match="method"):
        evict(files, method="magic")
