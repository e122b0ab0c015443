"""Fine-tune a tiny Hugging Face GPT-2 with ``edgetrain.fit``, inside a memory budget.

The model is built from a config (``GPT2Config`` + ``GPT2LMHeadModel``): nothing is
downloaded. It learns bytes of the Python standard library's source (edgetrain's
``pycorpus`` windows, vocabulary 256). The batches are dicts ``{"input_ids", "labels"}``
built by a ``collate_fn``; the model computes its own loss from them (Hugging Face shifts
the labels inside), so ``fit`` picks the ``model_loss`` task by itself. Under
``budget.memory`` the controller measures a few probe steps and splits each logical batch
into micro-batches that fit, accumulating gradients: what is learned does not change.

Needs the optional extra ``hf``::

    pip install -e ".[hf]"                  # or: pip install "transformers>=4.40"
    python examples/hf_tiny.py              # 120 steps: well under a minute on 2 idle cores
    python examples/hf_tiny.py --budget none --epochs 1
    python examples/hf_tiny.py --smoke      # 2 steps, for tests

On a machine busy with other work, ``OMP_NUM_THREADS=1`` can be several times faster:
torch's threads otherwise wait for each other at every operation.

Exit status: 0 on success, 2 when transformers is not installed (or on a usage error).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

SEQ_LEN = 64  # bytes per window; the model's n_positions


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/hf-tiny"), help="run directory")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=40, help="max batches per epoch")
    parser.add_argument("--max-bytes", type=int, default=300_000, help="bytes of corpus")
    parser.add_argument(
        "--budget", default="96MiB", help="budget.memory, e.g. 96MiB; 'none' trains without one"
    )
    parser.add_argument("--smoke", action="store_true", help="2 steps on a little data (tests)")
    return parser.parse_args(argv)


def _mib(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        print(
            "examples/hf_tiny.py needs Hugging Face transformers, which is not installed: "
            "pip install 'edgetrain[hf]'",
            file=sys.stderr,
        )
        return 2
    import torch
    from torch.utils.data import Dataset

    import edgetrain
    from edgetrain.errors import EdgeTrainError
    from edgetrain.zoo import load_dataset

    class ByteWindows(Dataset):
        """Item i: the i-th window of ``SEQ_LEN`` bytes, as token ids."""

        def __init__(self, ids: torch.Tensor) -> None:
            self.ids = ids

        def __len__(self) -> int:
            return len(self.ids)

        def __getitem__(self, i: int) -> torch.Tensor:
            return self.ids[i]

    def collate(windows: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        ids = torch.stack(windows)
        return {"input_ids": ids, "labels": ids}  # the model shifts the labels itself

    max_bytes = 20_000 if args.smoke else args.max_bytes
    corpus, _ = load_dataset("pycorpus", max_bytes=max_bytes, seq_len=SEQ_LEN)
    windows = corpus.x  # type: ignore[attr-defined]  # int64 [N, SEQ_LEN]
    torch.manual_seed(0)
    order = torch.randperm(len(windows))  # validation: 5% of the windows, drawn at random
    n_val = max(16, len(windows) // 20)
    train = ByteWindows(windows[order[n_val:]])
    val = ByteWindows(windows[order[:n_val]])

    config = GPT2Config(
        vocab_size=256,
        n_positions=SEQ_LEN,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"  # named, so transformers does not warn that it guessed
    params = sum(p.numel() for p in model.parameters())
    print(f"GPT-2 from a config: {params:,} parameters; {len(train)} training windows")

    settings: dict[str, Any] = {
        "epochs": 1 if args.smoke else args.epochs,
        "batch_size": args.batch_size,
        "max_batches_per_epoch": 2 if args.smoke else args.batches,
        "optimizer": "adamw",
        "lr": 2e-3,
        "weight_decay": 0.01,
        "lr_schedule": "cosine",
        "grad_clip_norm": 1.0,
        "seed": 0,
    }
    if args.budget.lower() != "none":
        settings["budget"] = {"memory": args.budget}
        settings["adapt"] = {"policy": "budget"}
    if args.smoke:
        settings["monitor"] = {"enabled": False}
    try:
        result = edgetrain.fit(
            model,
            train,
            val,
            collate_fn=collate,
            out=str(args.out),
            overwrite=True,
            progress=not args.smoke,
            **settings,
        )
    except EdgeTrainError as exc:  # a bad setting, e.g. --budget 12 parsecs
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = result.summary
    final = summary.get("final") or {}
    val_loss = final.get("val_loss")  # the model's loss: mean cross entropy per next byte
    shown: dict[str, Any] = {
        "status": summary["status"],
        "task": summary["task"]["name"],
        "steps": summary["steps"],
        "total_time_s": round(summary["total_time_s"], 1),
        "total_energy_j": _round(summary.get("total_energy_j")),
        "peak_rss_mib": _mib(summary.get("peak_rss_bytes")),
        "train_loss": _round(final.get("train_loss"), 4),
        "val_loss": _round(val_loss, 4),
        "val_perplexity": None if val_loss is None else _round(math.exp(val_loss), 3),
    }
    adapt = summary.get("adapt")
    if adapt:
        shown["budget"] = {
            "budget_mib": _mib(adapt.get("budget_bytes")),
            "micro_batch_size": adapt.get("micro_batch_size"),
            "batch_size": adapt.get("batch_size"),
            "accum_steps": adapt.get("accum_steps"),
            "measured_peak_mib": _mib(adapt.get("measured_peak_bytes")),
            "within_budget": adapt.get("within_budget"),
            "budget_violations": adapt.get("budget_violations"),
        }
    print(json.dumps(shown, indent=2))
    print(
        f"run directory: {result.run_dir} (all of it: summary.json; each decision: decisions.csv)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
