"""Activation compression on a tiny transformer, measured side by side: the bytes saved for
backward (accounted) and the process-visible peak of one training step, per mode.

    python benchmarks/transformer_activations.py
    python benchmarks/transformer_activations.py --cases gpt gpt-drop0.1 --modes none lossless int8
    python benchmarks/transformer_activations.py --batch 32 --seq-len 256 --d-model 256

Cases: the zoo's ``gpt`` (token and position embeddings, pre-LayerNorm causal attention
through ``F.scaled_dot_product_attention``, a 4x GELU MLP, a linear head) on the first
windows of ``pycorpus`` (the standard library's source as bytes), without dropout and with
dropout 0.1 (``gpt-drop0.1``). Weights are the initial ones (no training).

Per mode, against the same step without hooks ("off"):

- accounted: the peak of the bytes held for backward (raw: what PyTorch keeps; stored:
  what the mode keeps), from :class:`edgetrain.memory.CompressionStats`;
- process-visible: the growth of the process's peak over its memory before the step, in a
  fresh subprocess per mode (two warm-up steps, then the median of ``--reps`` steps): the
  RSS high-water mark (``VmHWM``, reset before each step) on CPU, with glibc returning
  freed blocks of 128 KiB or more to the OS; ``torch.cuda.max_memory_allocated`` on CUDA.
  Both include backward's temporaries and the gradients, so they shrink less than the
  saved bytes;
- the largest relative gradient error of any parameter tensor and whether every gradient is
  bitwise equal; the step's CPU time (one torch thread) or wall time on CUDA.

Transformers have few exact zeros (GELU, softmax, LayerNorm outputs): ``lossless`` keeps most
tensors as they are and reaches what the table says, mostly from dropout masks (one bit per
element). Its codec breakdown is printed below the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

from edgetrain.memory import CompressionContext, compress_activations
from edgetrain.zoo import build_model, load_dataset
from procmem import parse_or_run_child, reset_peak_rss, run_json_child, status_bytes

CASES = ("gpt", "gpt-drop0.1")
MODES = ("none", "lossless", "bf16", "int8")
BASELINE = "off"  # no hooks at all: the reference for memory, time and gradients


@dataclass
class Row:
    """One (case, mode) measurement."""

    case: str
    mode: str
    saved_raw_bytes: int
    saved_stored_bytes: int
    bytes_ratio: float
    peak_growth_bytes: int | None  # process-visible: RSS (CPU) or CUDA allocator peak growth
    peak_ratio: float | None
    step_s: float
    time_ratio: float
    max_rel_grad_err: float
    bitwise_equal: bool
    codec_raw_bytes: dict[str, int]  # per codec, tensors given to it (a block saved twice: twice)
    codec_stored_bytes: dict[str, int]


# -- the case -------------------------------------------------------------------------


def build_case(
    case: str, args: argparse.Namespace, device: torch.device
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Model, token ids and next-token targets; seeded, so every process builds the same."""
    data, info = load_dataset(
        "pycorpus", max_bytes=args.batch * args.seq_len + 1, seq_len=args.seq_len
    )
    x = torch.stack([data[i][0] for i in range(args.batch)])
    y = torch.stack([data[i][1] for i in range(args.batch)])
    dropout = float(case.split("drop")[1]) if "drop" in case else 0.0
    torch.manual_seed(0)
    model = build_model(
        "gpt",
        num_classes=info.num_classes,
        in_channels=info.in_channels,
        input_size=info.input_size,
        d_model=args.d_model,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        dropout=dropout,
    )
    return model.to(device).train(), x.to(device), y.to(device)


def make_ctx(model: nn.Module, mode: str) -> CompressionContext | None:
    return None if mode == BASELINE else compress_activations(model, mode, seed=0)


def train_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: CompressionContext | None
) -> torch.Tensor:
    """Forward and backward (no optimizer: its cost does not depend on the mode); the RNG
    is seeded, so dropout draws the same masks in every mode."""
    torch.manual_seed(1)
    model.zero_grad(set_to_none=True)
    if ctx is None:
        logits = model(x)
    else:
        with ctx:
            logits = model(x)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    del logits
    loss.backward()
    return loss.detach()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- child process: process-visible peak of one mode ----------------------------------


def _kib(field: str) -> int | None:
    value = status_bytes(field)
    return None if value is None else value // 1024


def child(spec: dict[str, Any]) -> None:
    """Warm up, then the median growth of the peak over the memory before each step."""
    torch.set_num_threads(spec["threads"])
    args = argparse.Namespace(**spec["args"])
    device = torch.device(spec["device"])
    model, x, y = build_case(spec["case"], args, device)
    ctx = make_ctx(model, spec["mode"])
    for _ in range(2):
        train_step(model, x, y, ctx)
    growth = []
    for _ in range(spec["reps"]):
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            train_step(model, x, y, ctx)
            _sync(device)
            growth.append(torch.cuda.max_memory_allocated(device) - before)
            continue
        before_kib = _kib("VmRSS")
        if before_kib is None or not reset_peak_rss():
            print(json.dumps({"growth": None}))
            return
        train_step(model, x, y, ctx)
        peak_kib = _kib("VmHWM")
        growth.append(((peak_kib or 0) - before_kib) * 1024)
    print(json.dumps({"growth": int(statistics.median(growth))}))


def peak_growth(spec: dict[str, Any]) -> int | None:
    out = run_json_child(__file__, spec, f"{spec['case']}/{spec['mode']}")
    return None if out is None else int(out["growth"])


# -- the benchmark ------------------------------------------------------------------------


def run_case(
    case: str, modes: list[str], args: argparse.Namespace, device: torch.device
) -> list[Row]:
    model, x, y = build_case(case, args, device)
    ref_loss = train_step(model, x, y, None)
    ref = [p.grad.clone() for p in model.parameters()]
    ctxs = {mode: make_ctx(model, mode) for mode in [BASELINE, *modes]}
    accounted: dict[str, dict[str, Any]] = {}
    for mode in modes:
        ctx = ctxs[mode]
        assert ctx is not None
        ctx.reset()
        loss = train_step(model, x, y, ctx)
        grads = [p.grad for p in model.parameters()]
        errors = [
            float((g - r).double().norm() / r.double().norm().clamp_min(1e-30))
            for g, r in zip(grads, ref, strict=True)
        ]
        stats = ctx.stats
        accounted[mode] = {
            "raw": stats.peak_raw_bytes,
            "stored": stats.peak_stored_bytes,
            "err": max(errors),
            "bitwise": torch.equal(loss, ref_loss)
            and all(torch.equal(g, r) for g, r in zip(grads, ref, strict=True)),
            "codec_raw": {k: v for k, v in stats.codec_raw_bytes.items() if k != "param"},
            "codec_stored": {k: v for k, v in stats.codec_stored_bytes.items() if k != "param"},
        }
    # step time: modes interleaved round by round, so load from elsewhere hits all alike
    times: dict[str, list[float]] = {m: [] for m in ctxs}
    clock = time.thread_time if device.type == "cpu" else time.perf_counter
    for rep in range(args.warmup + args.reps):
        for mode, ctx in ctxs.items():
            _sync(device)
            start = clock()
            train_step(model, x, y, ctx)
            _sync(device)
            if rep >= args.warmup:
                times[mode].append(clock() - start)
    spec = {
        "case": case,
        "device": str(device),
        "threads": args.threads,
        "reps": args.reps,
        "args": {
            k: getattr(args, k) for k in ("batch", "seq_len", "d_model", "n_layers", "n_heads")
        },
    }
    peaks = {m: None if args.no_peak else peak_growth({**spec, "mode": m}) for m in ctxs}
    base_time = statistics.median(times[BASELINE])
    base_peak = peaks[BASELINE]
    raw = accounted[modes[0]]["raw"] if modes else 0
    rows = []
    for mode in [BASELINE, *modes]:
        empty: dict[str, Any] = {"err": 0.0, "bitwise": True, "codec_raw": {}, "codec_stored": {}}
        a = accounted.get(mode, {"raw": raw, "stored": raw, **empty})
        step = statistics.median(times[mode])
        peak = peaks[mode]
        rows.append(
            Row(
                case=case,
                mode=mode,
                saved_raw_bytes=a["raw"],
                saved_stored_bytes=a["stored"],
                bytes_ratio=a["stored"] / a["raw"] if a["raw"] else 1.0,
                peak_growth_bytes=peak,
                peak_ratio=peak / base_peak if peak is not None and base_peak else None,
                step_s=step,
                time_ratio=step / base_time,
                max_rel_grad_err=a["err"],
                bitwise_equal=a["bitwise"],
                codec_raw_bytes=a["codec_raw"],
                codec_stored_bytes=a["codec_stored"],
            )
        )
    return rows


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f}"


def print_table(console: Console, rows: list[Row], peak_label: str) -> None:
    table = Table(
        title="Tiny transformer: saved activations and step peak per mode (ratios vs off)"
    )
    columns = (
        "case", "mode", "saved MiB", "stored MiB", "bytes", f"{peak_label} MiB", "peak",
        "time", "max rel dgrad", "bitwise",
    )  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col in ("case", "mode") else "right")
    last = None
    for r in rows:
        if last is not None and r.case != last:
            table.add_section()
        last = r.case
        table.add_row(
            r.case,
            r.mode,
            _mib(r.saved_raw_bytes),
            _mib(r.saved_stored_bytes),
            f"{r.bytes_ratio:.3f}x",
            _mib(r.peak_growth_bytes),
            "-" if r.peak_ratio is None else f"{r.peak_ratio:.3f}x",
            f"{r.time_ratio:.2f}x",
            f"{r.max_rel_grad_err:.1e}",
            "yes" if r.bitwise_equal else "no",
        )
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    parser.add_argument("--modes", nargs="+", default=list(MODES))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-peak", action="store_true", help="skip the peak subprocesses")
    args = parse_or_run_child(parser, argv, child)
    if args is None:
        return 0
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    modes = [m for m in args.modes if m != BASELINE]
    console = Console(width=160)
    machine = f"{platform.machine()} {platform.processor() or ''}".strip()
    console.print(
        f"machine: {platform.node()} {machine}, {os.cpu_count()} cpus; device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    )
    console.print(
        f"python {platform.python_version()}, torch {torch.__version__}, threads {args.threads}; "
        f"gpt d_model {args.d_model}, {args.n_layers} layers, {args.n_heads} heads; batch "
        f"{args.batch} x {args.seq_len} tokens; warm-up {args.warmup}, reps {args.reps} (median)"
    )
    rows: list[Row] = []
    for case in args.cases:
        started = time.perf_counter()
        rows.extend(run_case(case, modes, args, device))
        console.print(f"  {case}: {time.perf_counter() - started:.0f} s")
    peak_label = "CUDA peak +" if device.type == "cuda" else "RSS peak +"
    print_table(console, rows, peak_label)
    console.print("lossless, by codec (MiB given -> MiB stored; the rest is kept as it is):")
    for r in rows:
        if r.mode == "lossless":
            packed = sorted(k for k in r.codec_stored_bytes if k != "raw")
            parts = [
                f"{k} {_mib(r.codec_raw_bytes[k])} -> {_mib(r.codec_stored_bytes[k])}"
                for k in packed
            ]
            kept = r.saved_stored_bytes - sum(r.codec_stored_bytes[k] for k in packed)
            parts.append(f"kept as is {_mib(kept)}")
            console.print(
                f"  {r.case}: {r.bytes_ratio:.3f}x of the saved bytes ({', '.join(parts)})"
            )
    if args.json_path:
        payload = {
            "machine": machine,
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "device": str(device),
            "threads": args.threads,
            "args": {k: v for k, v in vars(args).items() if k not in ("child", "json_path")},
            "rows": [asdict(r) for r in rows],
        }
        with open(args.json_path, "w") as f:
            json.dump(payload, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
