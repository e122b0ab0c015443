"""Activation compression, measured side by side: bytes saved for backward, step time,
gradient error and process peak memory, for every mode on zoo models.

    python benchmarks/activation_memory.py --quick
    python benchmarks/activation_memory.py --models vgg11 vgg11@s50 --modes none lossless --reps 5

Cases: zoo models (``cnn``, ``vgg11``, ``resnet18``, ``mobilenetv2``) on 32x32x3
inputs with 10 classes, plus ``vgg11@s50`` / ``vgg11@s70`` (conv biases shifted so
that a fraction 0.5 / 0.7 of each ReLU's outputs is zero on the batch; the
measured value is printed) and ``vgg11-pruned`` (80% of weights zeroed by
magnitude). Weights are random (no training): sparsity after training differs.

Step time is the median over ``--reps`` steps after a warm-up, modes interleaved
so that load from other processes hits all alike; on CPU it is the thread's CPU
time with one torch thread (``--threads``), which is robust on a shared machine,
and the wall time is printed too. Peak RSS is ``ru_maxrss`` of a fresh
subprocess per mode that runs two steps (it includes the interpreter and torch).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from edgetrain.memory import MODES, CompressionContext, bitmap_break_even, compress_activations
from edgetrain.zoo import build_model
from procmem import parse_or_run_child, peak_rss_bytes, reset_peak_rss, run_json_child

MODELS = ("cnn", "vgg11", "resnet18", "mobilenetv2")
EXTRA_CASES = ("vgg11@s50", "vgg11@s70", "vgg11-pruned")
BASELINE = "off"  # no hooks at all: the reference for bytes, time and gradients


@dataclass
class Row:
    """One (case, mode) measurement."""

    case: str
    mode: str
    relu_zero_fraction: float
    saved_raw_bytes: int
    saved_stored_bytes: int
    bytes_ratio: float
    time_ratio_cpu: float | None
    time_ratio_wall: float | None
    step_s: float | None
    max_abs_grad_diff: float
    rel_grad_diff: float
    bitwise_equal: bool
    peak_rss_bytes: int | None
    cuda_max_allocated_bytes: int | None


# -- cases ------------------------------------------------------------------------------


def _shift_biases(model: nn.Module, x: torch.Tensor, zero_fraction: float) -> None:
    """Shift each conv bias before a ReLU so that ``zero_fraction`` of its outputs are <= 0."""
    layers = list(model.features)  # type: ignore[attr-defined]
    h = x
    with torch.no_grad():
        for i, layer in enumerate(layers):
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(layer, nn.Conv2d) and isinstance(nxt, nn.ReLU) and layer.bias is not None:
                pre = layer(h)
                per_channel = pre.transpose(0, 1).reshape(pre.shape[1], -1)
                layer.bias -= torch.quantile(per_channel, zero_fraction, dim=1)
            h = layer(h)


def _prune(model: nn.Module, amount: float) -> None:
    """Zero the ``amount`` smallest-magnitude weights of every conv and linear layer."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                w = m.weight
                k = int(w.numel() * amount)
                if k:
                    threshold = w.abs().flatten().kthvalue(k).values
                    w.mul_((w.abs() > threshold).to(w.dtype))


def build_case(
    case: str, batch: int, device: torch.device
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Model, inputs and targets for ``case``; seeded, so every process builds the same."""
    torch.manual_seed(0)
    name = case.split("@")[0].removesuffix("-pruned")
    model = build_model(name, num_classes=10, in_channels=3, input_size=32)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    if "@s" in case:
        _shift_biases(model, x, int(case.split("@s")[1]) / 100)
    if case.endswith("-pruned"):
        _prune(model, 0.8)
    return model.to(device).train(), x.to(device), y.to(device)


def relu_zero_fraction(model: nn.Module, x: torch.Tensor) -> float:
    """Fraction of exact zeros over all ReLU/ReLU6 outputs (one forward)."""
    counts = [0, 0]

    def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
        counts[0] += int((out == 0).sum())
        counts[1] += out.numel()

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU | nn.ReLU6)
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return counts[0] / max(counts[1], 1)


# -- one step ---------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: CompressionContext | None
) -> torch.Tensor:
    """Forward and backward (no optimizer: its cost does not depend on the mode)."""
    model.zero_grad(set_to_none=True)
    if ctx is None:
        loss = nn.functional.cross_entropy(model(x), y)
    else:
        with ctx:
            loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach()


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(CPU seconds of this thread, wall seconds) of ``fn()``."""
    _sync(device)
    cpu, wall = time.thread_time(), time.perf_counter()
    fn()
    _sync(device)
    return time.thread_time() - cpu, time.perf_counter() - wall


def make_ctx(model: nn.Module, mode: str) -> CompressionContext | None:
    return None if mode == BASELINE else compress_activations(model, mode, seed=0)


# -- child process: peak RSS of one mode ------------------------------------------------


def child(spec: dict[str, Any]) -> None:
    """Build the case, warm up, then measure the peak RSS of one more step."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    model, x, y = build_case(spec["case"], spec["batch"], device)
    ctx = make_ctx(model, spec["mode"])
    train_step(model, x, y, ctx)
    # without the reset the peak would include start-up (importing torch)
    reset = reset_peak_rss()
    train_step(model, x, y, ctx)
    print(json.dumps({"peak_rss_bytes": peak_rss_bytes(), "step_only": reset}))


def peak_rss(spec: dict[str, Any]) -> int | None:
    out = run_json_child(__file__, spec, f"{spec['case']}/{spec['mode']}")
    return None if out is None else int(out["peak_rss_bytes"])


# -- the benchmark ----------------------------------------------------------------------


def run_case(
    case: str, modes: list[str], args: argparse.Namespace, device: torch.device
) -> list[Row]:
    model, x, y = build_case(case, args.batch, device)
    zeros = relu_zero_fraction(model, x)
    ref_loss = train_step(model, x, y, None)
    ref = [p.grad.clone() for p in model.parameters()]
    ctxs = {mode: make_ctx(model, mode) for mode in [BASELINE, *modes]}
    results: dict[str, dict[str, Any]] = {}
    for mode in modes:
        ctx = ctxs[mode]
        assert ctx is not None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        loss = train_step(model, x, y, ctx)
        cuda_peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        grads = [p.grad for p in model.parameters()]
        diffs = [float((g - r).abs().max()) for g, r in zip(grads, ref, strict=True)]
        num = sum(float((g - r).double().pow(2).sum()) for g, r in zip(grads, ref, strict=True))
        den = sum(float(r.double().pow(2).sum()) for r in ref)
        stats = ctx.stats
        results[mode] = {
            "raw": stats.saved_bytes_raw,
            "stored": stats.saved_bytes_stored,
            "max_diff": max(diffs),
            "rel": (num / den) ** 0.5 if den else 0.0,
            "bitwise": torch.equal(loss, ref_loss)
            and all(torch.equal(g, r) for g, r in zip(grads, ref, strict=True)),
            "cuda": cuda_peak,
        }
        ctx.reset()
    # timing: warm-up, then modes interleaved round by round
    times: dict[str, list[tuple[float, float]]] = {m: [] for m in ctxs}
    for rep in range(args.warmup + args.reps):
        for mode, ctx in ctxs.items():
            t = timed(lambda ctx=ctx: train_step(model, x, y, ctx), device)
            if rep >= args.warmup:
                times[mode].append(t)
    base_cpu = statistics.median(t[0] for t in times[BASELINE])
    base_wall = statistics.median(t[1] for t in times[BASELINE])
    spec = {"case": case, "batch": args.batch, "device": str(device), "threads": args.threads}
    rss_base = None if args.no_rss else peak_rss({**spec, "mode": BASELINE})
    rows = []
    for mode in [BASELINE, *modes]:
        cpu = statistics.median(t[0] for t in times[mode])
        wall = statistics.median(t[1] for t in times[mode])
        r = results.get(mode)
        rss = rss_base if mode == BASELINE else None
        if mode != BASELINE and not args.no_rss:
            rss = peak_rss({**spec, "mode": mode})
        raw = r["raw"] if r else results[modes[0]]["raw"] if modes else 0
        rows.append(
            Row(
                case=case,
                mode=mode,
                relu_zero_fraction=zeros,
                saved_raw_bytes=raw,
                saved_stored_bytes=r["stored"] if r else raw,
                bytes_ratio=(r["stored"] / r["raw"]) if r and r["raw"] else 1.0,
                time_ratio_cpu=cpu / base_cpu if device.type == "cpu" else None,
                time_ratio_wall=wall / base_wall,
                step_s=wall if device.type != "cpu" else cpu,
                max_abs_grad_diff=r["max_diff"] if r else 0.0,
                rel_grad_diff=r["rel"] if r else 0.0,
                bitwise_equal=r["bitwise"] if r else True,
                peak_rss_bytes=rss,
                cuda_max_allocated_bytes=r["cuda"] if r else None,
            )
        )
    return rows


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def print_table(console: Console, rows: list[Row]) -> None:
    table = Table(title="Saved activations per mode (ratios against no hooks)")
    for col in (
        "case", "mode", "ReLU zeros", "saved MiB", "bytes", "time cpu", "time wall",
        "max |dgrad|", "rel dgrad", "bitwise", "peak RSS MiB", "cuda max MiB",
    ):  # fmt: skip
        table.add_column(col, justify="left" if col in ("case", "mode") else "right")
    last = None
    for r in rows:
        if last is not None and r.case != last:
            table.add_section()
        last = r.case
        table.add_row(
            r.case,
            r.mode,
            f"{r.relu_zero_fraction:.1%}",
            _mib(r.saved_stored_bytes),
            f"{r.bytes_ratio:.3f}x",
            "-" if r.time_ratio_cpu is None else f"{r.time_ratio_cpu:.2f}x",
            "-" if r.time_ratio_wall is None else f"{r.time_ratio_wall:.2f}x",
            f"{r.max_abs_grad_diff:.2e}",
            f"{r.rel_grad_diff:.2e}",
            "yes" if r.bitwise_equal else "no",
            _mib(r.peak_rss_bytes),
            _mib(r.cuda_max_allocated_bytes),
        )
    console.print(table)


def goals(rows: list[Row]) -> list[tuple[str, bool | None, str]]:
    """(goal, met or None if not measured, measured value)."""

    def find(case: str, mode: str) -> Row | None:
        return next((r for r in rows if r.case == case and r.mode == mode), None)

    out: list[tuple[str, bool | None, str]] = []
    for case, limit in (("vgg11@s50", 0.50), ("vgg11@s70", 0.35)):
        r = find(case, "lossless")
        label = f"lossless <= {limit:.2f}x saved bytes on {case}"
        if r is None:
            out.append((label, None, "not run"))
        else:
            out.append(
                (
                    label,
                    r.bytes_ratio <= limit,
                    f"{r.bytes_ratio:.3f}x at {r.relu_zero_fraction:.1%} zeros",
                )
            )
    lossless = [r for r in rows if r.mode == "lossless"]
    out.append(
        (
            "lossless gradients bitwise equal (every case)",
            all(r.bitwise_equal for r in lossless) if lossless else None,
            ", ".join(f"{r.case}: {'yes' if r.bitwise_equal else 'NO'}" for r in lossless),
        )
    )
    r = find("vgg11", "lossless")
    if r is None or r.time_ratio_cpu is None:
        out.append(("lossless step time <= 1.3x on CPU (vgg11)", None, "not run on CPU"))
    else:
        out.append(
            (
                "lossless step time <= 1.3x on CPU (vgg11)",
                r.time_ratio_cpu <= 1.3,
                f"{r.time_ratio_cpu:.2f}x cpu time, {r.time_ratio_wall:.2f}x wall",
            )
        )
    r = find("resnet18", "int2")
    out.append(
        ("int2 <= 1/8 saved bytes on resnet18", None if r is None else r.bytes_ratio <= 0.125,
         "not run" if r is None else f"{r.bytes_ratio:.3f}x")
    )  # fmt: skip
    return out


def break_even_lines() -> list[str]:
    return [
        f"bitmap, fp32 values: {bitmap_break_even(4):.2%} zeros",
        f"bitmap, fp16/bf16 values (and 16-bit tensors): {bitmap_break_even(2):.2%} zeros",
        "int8 / int4 / int2 zero bitmap: smaller than quantising the zeros above 12.5% / 25% /"
        " 50% zeros; kept from 5% zeros on anyway, so that ReLU masks stay exact",
        "max-pool indices: always (8 bytes -> 1 byte when the window offset fits)",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=[*MODELS, *EXTRA_CASES])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    parser.add_argument("--quick", action="store_true", help="3 timed steps")
    args = parse_or_run_child(parser, argv, child)
    if args is None:
        return 0
    if args.quick:
        args.reps = min(args.reps, 3)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    modes = [m for m in args.modes if m != BASELINE]
    console = Console(width=160)
    machine = f"{platform.machine()} {platform.processor() or ''}".strip()
    console.print(
        f"machine: {platform.node()} {machine}, {os.cpu_count()} cpus, {platform.platform()}; "
        f"device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    )
    console.print(
        f"python {platform.python_version()}, torch {torch.__version__}, threads {args.threads}, "
        f"batch {args.batch}, warm-up {args.warmup}, reps {args.reps} (median), input 32x32x3"
    )
    rows: list[Row] = []
    for case in args.models:
        started = time.perf_counter()
        rows.extend(run_case(case, modes, args, device))
        console.print(f"  {case}: {time.perf_counter() - started:.0f} s")
    print_table(console, rows)
    console.print("Break-even sparsity (fraction of zeros above which the format is smaller):")
    for line in break_even_lines():
        console.print(f"  {line}")
    console.print("Goals:")
    checked = goals(rows)
    for label, met, value in checked:
        verdict = "not measured" if met is None else ("met" if met else "NOT MET")
        console.print(f"  {label}: {verdict} ({value})")
    if args.json_path:
        payload = {
            "machine": machine,
            "node": platform.node(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "device": str(device),
            "threads": args.threads,
            "batch": args.batch,
            "reps": args.reps,
            "warmup": args.warmup,
            "rows": [asdict(r) for r in rows],
            "goals": [{"goal": g, "met": m, "value": v} for g, m, v in checked],
        }
        with open(args.json_path, "w") as f:
            json.dump(payload, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
