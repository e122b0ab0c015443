"""The CPU allocator setting side by side: glibc's default (``keep``) against ``release``.

    python benchmarks/allocator.py --quick
    python benchmarks/allocator.py --models resnet18 cnn --workloads plain int8 --rounds 2

``edgetrain.memory.allocator.configure_cpu_allocator("release")`` sets glibc's mmap and
trim thresholds to 128 KiB (``mallopt``), so that freed tensors go back to the OS and the
process's resident memory follows the live tensors; ``keep`` leaves glibc's defaults
(a dynamic mmap threshold that grows to 32 MiB, so freed blocks stay in the heap).
``cpu_allocator: auto`` in a training config picks ``release`` on CPU when a memory lever
is on (budget, activation codecs, recomputation, optimizer in backward).

Workloads: zoo ``resnet18`` or ``cnn`` (or ``mobilenetv2``) on random 32x32x3 inputs (10 classes, batch 128,
seeded), SGD with momentum; ``plain`` is the plain step (forward, loss, backward, step),
``int8`` the same with the int8 activation codec (``compress_activations(model,
"int8")``), whose pack and unpack free many temporaries. Each (workload, allocator) runs
in a fresh subprocess without the ``MALLOC_*`` variables; the child sets the allocator
first, makes its batches, resets the RSS high-water mark (``procmem.reset_peak_rss``),
builds the model and optimizer and runs a warm-up step and ``--steps`` timed steps.
With ``--rounds`` > 1 the two allocators alternate (keep, release, release, keep, ...)
and the medians are pooled, so that drift of the machine hits both alike.

Columns: peak RSS growth (MiB) with each allocator and ``release / keep``; median step
wall time with each and ``release / keep``, and the same ratio of process CPU time (a
ratio above 1 is the cost of returning memory: every fresh mapping is faulted in and
zeroed again, which shows as system time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

from procmem import parse_or_run_child, peak_rss_bytes, reset_peak_rss, status_bytes

MODELS = ("resnet18", "cnn", "mobilenetv2")
DEFAULT_MODELS = ("resnet18", "cnn")
WORKLOADS = ("plain", "int8")
MODES = ("keep", "release")
BATCH = 128


def child(spec: dict[str, Any]) -> None:
    """One (model, workload, allocator): print peak RSS growth and step times as JSON."""
    from edgetrain.memory.allocator import configure_cpu_allocator

    record = configure_cpu_allocator(spec["mode"])  # first: before training allocates
    import torch
    from torch.nn import functional as F

    from edgetrain.memory import compress_activations
    from edgetrain.zoo import build_model

    torch.set_num_threads(spec["threads"])
    steps = spec["steps"] + 1  # the first is the warm-up
    gen = torch.Generator().manual_seed(0)
    xs = torch.randn(steps, BATCH, 3, 32, 32, generator=gen)
    ys = torch.randint(0, 10, (steps, BATCH), generator=gen)
    reset = reset_peak_rss()
    rss0 = status_bytes("VmRSS") or 0

    torch.manual_seed(0)
    model = build_model(spec["model"], num_classes=10, in_channels=3, input_size=(32, 32))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ctx = compress_activations(model, "int8", seed=0) if spec["workload"] == "int8" else None
    times: list[float] = []
    cpu_times: list[float] = []
    for i in range(steps):
        started, cpu_started = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        if ctx is not None:
            with ctx:
                loss = F.cross_entropy(model(xs[i]), ys[i])
        else:
            loss = F.cross_entropy(model(xs[i]), ys[i])
        loss.backward()
        opt.step()
        if i > 0:
            times.append(time.perf_counter() - started)
            cpu_times.append(time.process_time() - cpu_started)
    peak = peak_rss_bytes()
    print(
        json.dumps(
            {
                "peak_rss_growth_bytes": peak - rss0 if reset else None,
                "times": times,
                "cpu_times": cpu_times,
                "loss": float(loss.detach()),
                "allocator": record,
            }
        )
    )


def run_child(spec: dict[str, Any]) -> dict[str, Any] | None:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    # glibc's defaults for "keep": none of the user's malloc settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("GLIBC_TUNABLES", None)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        print(f"  child failed for {spec}: {done.stderr[-500:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(model: str, workload: str, args: argparse.Namespace) -> dict[str, Any]:
    spec = {"model": model, "workload": workload, "steps": args.steps, "threads": args.threads}
    got: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    for r in range(args.rounds):
        for mode in MODES if r % 2 == 0 else MODES[::-1]:
            out = run_child({**spec, "mode": mode})
            if out is not None:
                got[mode].append(out)
    row: dict[str, Any] = {"model": model, "workload": workload}
    for mode in MODES:
        outs = got[mode]
        rss = [o["peak_rss_growth_bytes"] for o in outs if o["peak_rss_growth_bytes"] is not None]
        step = [t for o in outs for t in o["times"]]
        row[f"rss_{mode}"] = statistics.median(rss) if rss else None
        row[f"step_{mode}"] = statistics.median(step) if step else None
        cpu = [t for o in outs for t in o["cpu_times"]]
        row[f"cpu_{mode}"] = statistics.median(cpu) if cpu else None
        row[f"applied_{mode}"] = outs[0]["allocator"].get("applied") if outs else None
    return row


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}x"


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def _s(n: float | None) -> str:
    return "-" if n is None else f"{n:.3f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    head = ("model", "workload", "RSS keep MiB", "RSS release MiB", "mem_ratio",
            "step keep s", "step release s", "time_ratio", "cpu_ratio")  # fmt: skip
    lines = [head]
    for r in rows:
        lines.append(
            (
                r["model"], r["workload"], _mib(r["rss_keep"]), _mib(r["rss_release"]),
                _ratio(r["rss_release"], r["rss_keep"]), _s(r["step_keep"]),
                _s(r["step_release"]), _ratio(r["step_release"], r["step_keep"]),
                _ratio(r["cpu_release"], r["cpu_keep"]),
            )
        )  # fmt: skip
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines[1:]:
        cells = [
            str(c).ljust(w) if i < 2 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        print("| " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=MODELS)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=2, help="subprocesses per allocator")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--quick", action="store_true", help="cnn only, 2 timed steps, 1 round")
    args = parse_or_run_child(parser, argv, child)
    if args is None:
        return 0
    if args.quick:
        args.models, args.steps, args.rounds = ["cnn"], min(args.steps, 2), 1
    libc = " ".join(platform.libc_ver()) or "unknown libc"
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cpus, {platform.platform()} ({libc}); "
        f"python {platform.python_version()}, threads {args.threads}, batch {BATCH} at 32x32, "
        f"{args.steps} timed steps after 1 warm-up, {args.rounds} round(s)"
    )
    rows = []
    for model in args.models:
        for workload in args.workloads:
            started = time.perf_counter()
            rows.append(measure(model, workload, args))
            print(f"  {model}/{workload}: {time.perf_counter() - started:.0f} s")
    print_table(rows)
    if any(r["applied_release"] is False for r in rows):
        print("release was not applied here (not glibc?): both columns are glibc's default")
    print(
        "release / keep: mem_ratio of peak RSS growth, time_ratio of the median step's wall "
        "time, cpu_ratio of its process CPU time (user + system, all threads: page faults "
        "count; steadier than wall time on a shared machine, with --threads 1 above all)"
    )
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump({"platform": platform.platform(), "args": vars(args), "rows": rows}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
