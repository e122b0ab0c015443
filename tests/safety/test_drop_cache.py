"""``bench --drop-cache`` evicts only the bench's own files unless the machine-wide drop is asked for.

No test touches the real /proc/sys/vm/drop_caches: the module's path is pointed at a
writable fake file, whose content shows whether it was written.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from edgetrain.bench import cache
from edgetrain.bench.cache import evict
from edgetrain.cli import main


@pytest.fixture(autouse=True)
def fake_drop_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A writable stand-in for /proc/sys/vm/drop_caches (the old default would write it)."""
    fake = tmp_path / "proc" / "drop_caches"
    fake.parent.mkdir()
    fake.write_text("0")
    monkeypatch.setattr(cache, "DROP_CACHES", fake)
    monkeypatch.setattr(os, "sync", lambda: None)  # nor flush the machine's dirty pages
    return fake


@pytest.fixture
def advised(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record posix_fadvise calls (by inode) instead of making them."""
    calls: list[int] = []
    monkeypatch.setattr(
        os, "posix_fadvise", lambda fd, *_: calls.append(os.fstat(fd).st_ino), raising=False
    )
    return calls


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    paths = [tmp_path / "data" / f"{i}.bin" for i in range(3)]
    paths[0].parent.mkdir()
    for path in paths:
        path.write_bytes(b"x" * 5000)
    return paths


def test_default_evicts_only_the_files(files, advised, fake_drop_caches) -> None:
    result = evict(files)
    assert result.method == "fadvise"
    assert sorted(advised) == sorted(p.stat().st_ino for p in files)
    assert fake_drop_caches.read_text() == "0"


def test_machine_wide_drop_only_when_asked_for(files, advised, fake_drop_caches) -> None:
    result = evict(files, method="drop_caches")
    assert result.method == "drop_caches"
    assert fake_drop_caches.read_text().strip() == "1"
    assert advised == []


def _run(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    """Trains an MLP on 24 synthetic 8x8 images, read from exported files, in a second."""
    data = {
        "model": "mlp",
        "model_args": {"hidden": [8]},
        "data": "synthetic",
        "data_args": {"num_samples": 24, "num_classes": 2},
        "image_size": 8,
        "channels": 1,
        "batch_size": 12,
        "split": [1.0, 0.0, 0.0],
        "preprocessing": "none",
        "monitor": {"enabled": False},
        "bench": {"epochs": 2, "warmup_epochs": 1},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("extra", "written", "method"),
    [([], "0", "fadvise"), (["--cache-method", "drop_caches"], "1", "drop_caches")],
)
def test_cli_drop_cache(
    capsys, tmp_path, tiny_config, advised, fake_drop_caches, extra, written, method
) -> None:
    out = tmp_path / "bench"
    code = _run(["bench", str(tiny_config), "--drop-cache", *extra, "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert fake_drop_caches.read_text().strip() == written
    summary = (out / "summary.csv").read_text()
    assert method in summary
    assert bool(advised) == (method == "fadvise")
