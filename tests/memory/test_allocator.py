"""The CPU allocator setting: records, idempotence, the auto rules, RSS that follows frees."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from edgetrain.config import load_config
from edgetrain.memory import allocator
from edgetrain.memory.allocator import (
    RELEASE_THRESHOLD,
    configure_cpu_allocator,
    configure_for_run,
    current_allocator,
    resolve_cpu_allocator,
)


class FakeLibc:
    """glibc as the module calls it: mallopt, recording each call."""

    def __init__(self, result: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.result = result

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.result


@pytest.fixture
def unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """The module as if nothing had been applied in this process (restored afterwards)."""
    monkeypatch.setattr(allocator, "_released", None)
    monkeypatch.setattr(allocator, "_current", {"mode": "keep", "applied": False})


@pytest.fixture
def fresh(unset: None, monkeypatch: pytest.MonkeyPatch) -> FakeLibc:
    """Nothing applied yet, on a fake glibc (the real allocator is untouched)."""
    libc = FakeLibc()
    monkeypatch.setattr(allocator, "_glibc", lambda: (libc, "glibc 9.99"))
    for name in (
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TRIM_THRESHOLD_",
        "GLIBC_TUNABLES",
        "LD_PRELOAD",
    ):
        monkeypatch.delenv(name, raising=False)
    return libc


def test_release_sets_both_thresholds_and_records_them(fresh: FakeLibc) -> None:
    record = configure_cpu_allocator("release")
    assert sorted(fresh.calls) == [(-3, RELEASE_THRESHOLD), (-1, RELEASE_THRESHOLD)]
    assert record == {
        "mode": "release",
        "applied": True,
        "library": "glibc 9.99",
        "mmap_threshold": 131072,
        "trim_threshold": 131072,
    }
    assert current_allocator() == record
    json.dumps(record)


def test_release_is_idempotent(fresh: FakeLibc) -> None:
    first = configure_cpu_allocator("release")
    second = configure_cpu_allocator("release")
    assert first == second
    assert len(fresh.calls) == 2  # mallopt applied once
    second["mode"] = "changed"  # the caller's copy: the module's record stays
    assert current_allocator()["mode"] == "release"


def test_keep_does_nothing(fresh: FakeLibc) -> None:
    record = configure_cpu_allocator("keep")
    assert fresh.calls == []
    assert record["mode"] == "keep" and record["applied"] is False and record["reason"]
    assert configure_cpu_allocator("keep") == record


def test_keep_after_release_says_release_stays(fresh: FakeLibc) -> None:
    configure_cpu_allocator("release")
    record = configure_cpu_allocator("keep")
    assert len(fresh.calls) == 2
    assert record["applied"] is False and record["release_in_effect"] is True
    assert current_allocator() == record


def test_unknown_mode_is_refused(fresh: FakeLibc) -> None:
    with pytest.raises(ValueError, match="keep, release"):
        configure_cpu_allocator("auto")


def test_user_environment_is_recorded_and_release_still_applies(
    fresh: FakeLibc, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    record = configure_cpu_allocator("release")
    assert record["applied"] is True and len(fresh.calls) == 2
    assert record["environment"] == {
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "MALLOC_TRIM_THRESHOLD_": "0",
    }


def test_refused_mallopt_is_not_applied(fresh: FakeLibc) -> None:
    fresh.result = 0
    record = configure_cpu_allocator("release")
    assert record["applied"] is False and "refused" in record["reason"]


def test_preloaded_malloc_is_left_alone(fresh: FakeLibc, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    record = configure_cpu_allocator("release")
    assert fresh.calls == []
    assert record["applied"] is False and "jemalloc" in record["reason"]


@pytest.mark.parametrize("system", ["Darwin", "Windows"])
def test_other_platforms_do_not_raise(
    unset: None, monkeypatch: pytest.MonkeyPatch, system: str
) -> None:
    monkeypatch.setattr(allocator.platform, "system", lambda: system)
    record = configure_cpu_allocator("release")
    assert record["applied"] is False and system in record["reason"]
    assert record["mode"] == "release"


def test_musl_does_not_raise(unset: None, monkeypatch: pytest.MonkeyPatch) -> None:
    class Musl:  # a C library without gnu_get_libc_version
        mallopt = staticmethod(lambda param, value: 1)

    monkeypatch.setattr(allocator.platform, "system", lambda: "Linux")
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: Musl())
    record = configure_cpu_allocator("release")
    assert record["applied"] is False and "not glibc" in record["reason"]


def _config(**kw: Any) -> Any:
    return load_config(kw)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, "keep"),
        ({"activations": "none"}, "keep"),
        ({"activations": "int8"}, "release"),
        ({"activations": "lossless"}, "release"),
        ({"recompute": "all"}, "release"),
        ({"optimizer_in_backward": True}, "release"),
        ({"budget": {"memory": "300MiB"}}, "release"),
        ({"cpu_allocator": "release"}, "release"),
        ({"cpu_allocator": "keep", "activations": "int8"}, "keep"),
    ],
)
def test_resolve_rules_on_cpu(settings: dict[str, Any], expected: str) -> None:
    assert resolve_cpu_allocator(_config(**settings), torch.device("cpu")) == expected
    assert resolve_cpu_allocator(_config(**settings), "cpu") == expected


@pytest.mark.parametrize("settings", [{"activations": "int8"}, {"cpu_allocator": "release"}])
def test_resolve_is_keep_off_the_cpu(settings: dict[str, Any]) -> None:
    assert resolve_cpu_allocator(_config(**settings), torch.device("cuda", 0)) == "keep"
    assert resolve_cpu_allocator(SimpleNamespace(**settings), "cuda:1") == "keep"


def test_config_field_default_and_values() -> None:
    assert _config().cpu_allocator == "auto"
    assert _config(cpu_allocator="release").cpu_allocator == "release"
    with pytest.raises(Exception, match="cpu_allocator"):
        _config(cpu_allocator="jemalloc")


def test_configure_for_run_says_why_it_keeps(fresh: FakeLibc) -> None:
    record = configure_for_run(_config(activations="int8"), "cuda")
    assert record["mode"] == "keep" and "cuda" in record["reason"] and fresh.calls == []
    record = configure_for_run(_config(), "cpu")
    assert record["mode"] == "keep" and "auto" in record["reason"]
    assert current_allocator() == record
    record = configure_for_run(_config(recompute="all"), "cpu")
    assert record["mode"] == "release" and record["applied"] is True


# -- the real allocator --------------------------------------------------------------------

_FREE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from edgetrain.memory.allocator import configure_cpu_allocator

    def rss():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))

    record = configure_cpu_allocator(sys.argv[1])
    big = torch.ones(4 << 20)  # 16 MiB, mapped and freed: glibc raises its mmap threshold
    del big
    tensors = [torch.ones(1 << 18) for _ in range(128)]  # 1 MiB each
    kept = tensors[1::2]  # every other one stays: the freed ones are holes, not the heap's top
    before = rss()
    del tensors[::2]
    print(json.dumps({"freed": before - rss(), "record": record, "kept": len(kept)}))
    """
)


def _freed_bytes(mode: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    env.pop("LD_PRELOAD", None)
    done = subprocess.run(
        [sys.executable, "-c", _FREE_SCRIPT, mode],
        capture_output=True, text=True, check=True, env=env, timeout=60,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="mallopt and /proc/self/status: glibc on Linux only",
)
@pytest.mark.parametrize("mode", ["keep", "release"])
def test_release_returns_freed_tensors_to_the_os(mode: str) -> None:
    """64 MiB of 1 MiB tensors freed between live ones (a heap with holes, as after a
    training step): with release RSS drops by them, with glibc's default it does not.
    (One 64 MiB tensor would be mapped on its own either way: above glibc's 32 MiB cap.)"""
    out = _freed_bytes(mode)
    mib = out["freed"] / 2**20
    if mode == "release":
        assert out["record"]["applied"] is True
        assert mib >= 56, f"with release, freeing 64 MiB of tensors lowered RSS by {mib:.1f} MiB"
    else:  # the control: glibc's default keeps them, which is what release changes
        assert out["record"]["applied"] is False
        assert mib < 16, f"glibc's default returned {mib:.1f} MiB: the check above proves nothing"


def test_fit_records_the_allocator_in_env_json(tmp_path: Path) -> None:
    from edgetrain.train.api import fit

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))
    quiet: dict[str, Any] = {"progress": False, "monitor": {"enabled": False}}
    result = fit(
        nn.Linear(4, 2), data, epochs=1, batch_size=8, out=str(tmp_path / "r"),
        activations="lossless", **quiet,
    )  # fmt: skip
    env = json.loads((Path(result.run_dir) / "env.json").read_text())
    assert "torch" in env  # the rest of env.json is still there
    assert env["allocator"]["mode"] == "release"  # auto: on the CPU with activation codecs
    assert env["allocator"] == current_allocator()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert env["allocator"]["applied"] is True
        assert env["allocator"]["mmap_threshold"] == RELEASE_THRESHOLD
