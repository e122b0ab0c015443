"""``edgetrain memory`` on every task: the config's task reads the batch and gives the loss."""

from __future__ import annotations

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
