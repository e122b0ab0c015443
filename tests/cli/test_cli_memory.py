"""``edgetrain memory`` on every task: the config's task reads the batch and gives the loss."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from edgetrain.cli.main import main

LM = [
    "data=pycorpus",
    "data_args={max_bytes: 100000, seq_len: 32}",
    "model=gpt",
    "model_args={d_model: 32, n_layers: 1, n_heads: 2}",
]


def run_memory(capsys, *settings: str) -> tuple[int, str, str]:
    args = ["memory"]
    for setting in [*settings, "device=cpu", "monitor.enabled=false"]:
        args += ["--set", setting]
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("settings", "layers"),
    [
        (["data=diabetes", "model=mlp", "batch_size=8"], ["Linear"]),
        ([*LM, "batch_size=4"], ["tok_emb", "Embedding", "head"]),
    ],
    ids=["regression", "language_modeling"],
)
def test_memory_reports_a_step_of_the_configs_task(capsys, settings, layers):
    code, out, err = run_memory(capsys, *settings)
    assert code == 0, err
    assert "Memory of one training step" in out
    assert "(loss)" in out and "optimizer state" in out
    assert f"batch {settings[-1].split('=')[1]}" in out
    for name in layers:
        assert name in out


def test_memory_with_compressed_activations_on_a_language_model(capsys):
    code, out, err = run_memory(capsys, *LM, "batch_size=4", "activations=int8")
    assert code == 0, err
    assert "activations=int8:" in out and "stored of" in out


def _memory_process(*settings: str) -> tuple[int, str, str]:
    """``edgetrain memory`` in its own process: the CPU meter reads the process's resident
    memory, which a test process shares with everything run before."""
    args = [sys.executable, "-m", "edgetrain", "memory"]
    for setting in [*settings, "device=cpu", "monitor.enabled=false"]:
        args += ["--set", setting]
    done = subprocess.run(
        args, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "120"}
    )
    return done.returncode, done.stdout, done.stderr


def test_memory_budget_prints_the_plan_and_refuses_the_impossible():
    """``--budget``: every lever set probed on this machine, the plan printed before any
    training; a budget no plan reaches is exit 2 naming the smallest one, which works."""
    settings = ["data=digits", "model=cnn", "batch_size=32"]
    code, out, err = _memory_process(*settings, "budget.memory=1MiB")
    assert code == 2, err
    assert "below what any plan of" in err and "smallest any reaches is" in err
    assert "Traceback" not in err
    smallest = err.split("smallest any reaches is ")[1].split("(")[1].split(" bytes")[0]
    code, out, err = _memory_process(*settings, f"budget.memory={smallest}")
    assert code == 0, err
    assert f"memory plan for budget.memory {int(smallest) / 2**20:.1f} MiB" in out
    assert out.count("-> │") == 1  # one plan chosen; its micro-batch is within the budget
