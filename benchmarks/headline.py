"""The headline table: training memory and step time of each memory lever against plain PyTorch.

    python benchmarks/headline.py --quick
    python benchmarks/headline.py --models resnet18 vgg11 --rounds 3 --csv headline.csv

Workloads: ``resnet18``, ``mobilenetv2`` and ``vgg11`` on digits at 32x32x3 (10
classes, batch 128) and the zoo's tiny ``gpt`` on ``pycorpus`` (200 kB, windows of 64
bytes, d_model 128, 2 layers, 4 heads, batch 32). Every method trains the same model
(same seed) on the same batches with SGD (lr 0.01, momentum 0.9):

* ``pytorch``: the plain loop on the whole batch (the reference of every ratio);
* ``checkpoint``: ``torch.utils.checkpoint`` (non-reentrant) around every block
  (``edgetrain.memory.recompute.apply_recompute(model, "all")``);
* ``accumulate``: micro-batches of 32 (8 for gpt), gradients accumulated, one step;
* ``recompute+int8``: every block recomputed and what it keeps (its input) compressed
  by the int8 codec (``compress_activations(model, "int8")`` around the forward);
* ``lossless``: the lossless codec on every saved activation, no recomputation;
* ``optimizer_in_backward``: each parameter is stepped by its own one-parameter SGD
  (``per_parameter_optimizers``, state shared) in a ``register_post_accumulate_grad_hook``
  and its gradient freed at once, as ``optimizer_in_backward: true`` does in ``fit``.

Each (model, method) runs in a fresh subprocess (glibc's ``MALLOC_MMAP_THRESHOLD_`` set
to 128 KiB so that RSS follows live memory, as in ``activation_memory.py``). The child
loads the data, takes its batches, then resets the RSS high-water mark (``VmHWM``
through ``/proc/self/clear_refs``; ``ru_maxrss`` if that is not allowed) and records
RSS; it then builds the model and optimizer, runs a warm-up step and ``--steps`` timed
steps. Columns:

* ``accounted``: training bytes by exact accounting, as ``edgetrain.memory.report``
  counts them: parameters + buffers + gradients + optimizer state + the peak of the
  tensors saved for backward during one forward (``SavedTensorCounter``; for the codecs
  the stored, compressed bytes). With recomputation only what the blocks keep is
  counted, not the one block rebuilt at a time in backward; with accumulation the
  activations of one micro-batch; with optimizer-in-backward the gradients counted are
  those of the largest parameter (the others are freed as soon as they are used).
* ``acc_ratio``: accounted / pytorch's.
* ``mem_ratio``: process peak RSS growth (above the RSS after loading the data, so it
  includes parameters, gradients, optimizer state, activations, temporaries and the
  allocator's slack) / pytorch's, same run.
* ``time_ratio``: median wall time of a training step / pytorch's (gpt: at least 20
  timed steps, as its steps are short). With ``--rounds`` > 1
  the methods' subprocesses run in alternating order (ABC..., ...CBA) and times and RSS
  are pooled (median step, median peak), so that drift of the machine hits all alike.

The step is forward, loss, backward and the optimizer step (and ``zero_grad``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from procmem import peak_rss_bytes, reset_peak_rss, status_bytes

MODELS = ("resnet18", "mobilenetv2", "vgg11", "gpt")
QUICK_MODELS = ("resnet18", "gpt")
METHODS = (
    "pytorch",
    "checkpoint",
    "accumulate",
    "recompute+int8",
    "lossless",
    "optimizer_in_backward",
)
BASELINE = "pytorch"
GOAL_MEM, GOAL_TIME = 0.5, 1.3


@dataclass
class Row:
    """One (model, method) measurement."""

    model: str
    method: str
    batch: int
    micro_batch: int
    accounted_bytes: int
    acc_ratio: float | None
    peak_rss_growth_bytes: int | None
    mem_ratio: float | None
    step_s: float | None
    time_ratio: float | None
    loss: float | None
    param_bytes: int
    grad_bytes: int
    optimizer_state_bytes: int
    activation_bytes: int


# -- child process: one (model, method) -------------------------------------------------


def _batches(model: str, batch: int, count: int) -> tuple[Any, Any]:
    """``count`` batches (inputs, targets) stacked: [count, batch, ...], the same in every process."""
    import torch

    from edgetrain.zoo import load_dataset

    if model == "gpt":
        data, _ = load_dataset("pycorpus", max_bytes=200_000, seq_len=64)
    else:
        data, _ = load_dataset("digits", image_size=32, channels=3)
    n = len(data)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(n, generator=gen)
    idx = [int(order[i % n]) for i in range(batch * count)]
    items = [data[i] for i in idx]
    x = torch.stack([it[0] for it in items]).view(count, batch, *items[0][0].shape)
    y = torch.stack([torch.as_tensor(it[1]) for it in items]).view(count, batch, *items[0][1].shape)
    return x.contiguous(), y.contiguous()


def _build(model: str) -> Any:
    from edgetrain.zoo import build_model

    if model == "gpt":
        return build_model(
            "gpt", num_classes=256, in_channels=1, input_size=(1, 64),
            d_model=128, n_layers=2, n_heads=4,
        )  # fmt: skip
    return build_model(model, num_classes=10, in_channels=3, input_size=(32, 32))


def _loss(out: Any, y: Any) -> Any:
    from torch.nn import functional as F

    if out.dim() == 3:  # language model: [N, T, V]
        return F.cross_entropy(out.flatten(0, 1), y.flatten())
    return F.cross_entropy(out, y)


def child(spec: dict[str, Any]) -> None:
    """Train ``spec["steps"]`` + 1 steps of one method; print peak RSS growth, times, accounting."""
    import torch

    from edgetrain.memory import SavedTensorCounter, compress_activations, unique_bytes
    from edgetrain.memory.recompute import apply_recompute
    from edgetrain.train.features.optim_backward import per_parameter_optimizers

    torch.set_num_threads(spec["threads"])
    method, batch, micro = spec["method"], spec["batch"], spec["micro_batch"]
    steps = spec["steps"] + 1  # the first is the warm-up
    xs, ys = _batches(spec["model"], batch, steps)
    reset = reset_peak_rss()
    rss0 = status_bytes("VmRSS") or 0

    torch.manual_seed(0)
    model = _build(spec["model"]).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    ctx = None
    if method in ("checkpoint", "recompute+int8"):
        apply_recompute(model, "all")
    if method == "recompute+int8":
        ctx = compress_activations(model, "int8", seed=0)
    elif method == "lossless":
        ctx = compress_activations(model, "lossless")
    stepping = [False]
    if method == "optimizer_in_backward":
        for p, single, _group in per_parameter_optimizers(opt):

            def hook(t: torch.Tensor, single: torch.optim.Optimizer = single) -> None:
                if stepping[0]:
                    single.step()
                    t.grad = None

            p.register_post_accumulate_grad_hook(hook)
    chunks = batch // micro if method == "accumulate" else 1
    act_peak = [0]
    grad_peak = [0]

    def forward(x: torch.Tensor, y: torch.Tensor, count: bool) -> torch.Tensor:
        if ctx is not None:
            with ctx:
                loss = _loss(model(x), y)
            if count:
                act_peak[0] = max(act_peak[0], ctx.stats.peak_stored_bytes)
            return loss
        if count:
            with SavedTensorCounter(model) as counter:
                loss = _loss(model(x), y)
            act_peak[0] = max(act_peak[0], counter.peak_bytes)
            return loss
        return _loss(model(x), y)

    def step(i: int, count: bool) -> float:
        x, y = xs[i], ys[i]
        opt.zero_grad(set_to_none=True)
        stepping[0] = True
        total = 0.0
        for c in range(chunks):
            sl = slice(c * (batch // chunks), (c + 1) * (batch // chunks))
            loss = forward(x[sl], y[sl], count and c == 0) / chunks
            loss.backward()
            total += float(loss.detach())
        stepping[0] = False
        if method == "optimizer_in_backward":
            grad_peak[0] = max(p.numel() * p.element_size() for p in params)
        else:
            grad_peak[0] = unique_bytes(p.grad for p in params)
            opt.step()
        return total

    times: list[float] = []
    losses: list[float] = []
    for i in range(steps):
        started = time.perf_counter()
        losses.append(step(i, count=i == 0))  # accounting hooks only on the warm-up step
        if i > 0:
            times.append(time.perf_counter() - started)
    if ctx is not None:
        ctx.reset()
    peak = peak_rss_bytes()
    state = unique_bytes(v for s in opt.state.values() for v in s.values() if torch.is_tensor(v))
    param_bytes = unique_bytes(model.parameters())
    print(
        json.dumps(
            {
                "peak_rss_growth_bytes": peak - rss0 if reset else None,
                "times": times,
                "loss": losses[-1],
                "param_bytes": param_bytes,
                "buffer_bytes": unique_bytes(model.buffers()),
                "grad_bytes": grad_peak[0],
                "optimizer_state_bytes": state,
                "activation_bytes": act_peak[0],
            }
        )
    )


def run_child(spec: dict[str, Any]) -> dict[str, Any] | None:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        print(f"  child failed for {spec['model']}/{spec['method']}: {done.stderr[-500:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the benchmark ----------------------------------------------------------------------


def run_model(model: str, methods: list[str], args: argparse.Namespace) -> list[Row]:
    batch = 32 if model == "gpt" else 128
    micro = batch // 4
    steps = max(args.steps, 20) if model == "gpt" else args.steps  # gpt steps take ~0.05 s
    spec = {"model": model, "batch": batch, "micro_batch": micro, "steps": steps,
            "threads": args.threads}  # fmt: skip
    order = [BASELINE, *[m for m in methods if m != BASELINE]]
    got: dict[str, list[dict[str, Any]]] = {m: [] for m in order}
    for r in range(args.rounds):
        for method in order if r % 2 == 0 else order[::-1]:
            out = run_child({**spec, "method": method})
            if out is not None:
                got[method].append(out)

    def summary(method: str) -> tuple[int | None, float | None, dict[str, Any] | None]:
        outs = got[method]
        if not outs:
            return None, None, None
        rss = [o["peak_rss_growth_bytes"] for o in outs if o["peak_rss_growth_bytes"] is not None]
        step = statistics.median(t for o in outs for t in o["times"])
        return (int(statistics.median(rss)) if rss else None), step, outs[0]

    def accounted(o: dict[str, Any]) -> int:
        return int(
            o["param_bytes"] + o["buffer_bytes"] + o["grad_bytes"]
            + o["optimizer_state_bytes"] + o["activation_bytes"]
        )  # fmt: skip

    base_rss, base_step, base = summary(BASELINE)
    base_acc = accounted(base) if base else None
    rows = []
    for method in order:
        rss, step, o = summary(method)
        if o is None:
            continue
        acc = accounted(o)
        rows.append(
            Row(
                model=model,
                method=method,
                batch=batch,
                micro_batch=micro if method == "accumulate" else batch,
                accounted_bytes=acc,
                acc_ratio=acc / base_acc if base_acc else None,
                peak_rss_growth_bytes=rss,
                mem_ratio=rss / base_rss if rss is not None and base_rss else None,
                step_s=step,
                time_ratio=step / base_step if step is not None and base_step else None,
                loss=o["loss"],
                param_bytes=o["param_bytes"],
                grad_bytes=o["grad_bytes"],
                optimizer_state_bytes=o["optimizer_state_bytes"],
                activation_bytes=o["activation_bytes"],
            )
        )
    return rows


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def print_table(rows: list[Row]) -> None:
    head = ("model", "method", "accounted MiB", "acc_ratio", "RSS growth MiB", "mem_ratio",
            "step s", "time_ratio", "goal")  # fmt: skip
    lines = [head]
    for r in rows:
        goal = ""
        if r.method != BASELINE and r.mem_ratio is not None and r.time_ratio is not None:
            goal = "met" if r.mem_ratio <= GOAL_MEM and r.time_ratio <= GOAL_TIME else "no"
        lines.append(
            (
                r.model, r.method, _mib(r.accounted_bytes), _x(r.acc_ratio),
                _mib(r.peak_rss_growth_bytes), _x(r.mem_ratio),
                "-" if r.step_s is None else f"{r.step_s:.3f}", _x(r.time_ratio), goal,
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
    parser.add_argument("--models", nargs="+", default=None, choices=MODELS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=2, help="subprocesses per method (ABBA)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--csv", dest="csv_path", default=None)
    parser.add_argument(
        "--quick", action="store_true", help="2 timed steps (20 for gpt), 1 round, resnet18 and gpt"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0
    if args.quick:
        args.steps, args.rounds = min(args.steps, 2), 1
        args.models = args.models or list(QUICK_MODELS)
    models = args.models or list(MODELS)
    import torch

    machine = f"{platform.machine()} {platform.processor() or ''}".strip()
    print(
        f"machine: {machine}, {os.cpu_count()} cpus, {platform.platform()}; python "
        f"{platform.python_version()}, torch {torch.__version__}, threads {args.threads}, "
        f"device cpu, {args.steps} timed steps after 1 warm-up, {args.rounds} round(s)"
    )
    rows: list[Row] = []
    for model in models:
        started = time.perf_counter()
        rows.extend(run_model(model, args.methods, args))
        print(f"  {model}: {time.perf_counter() - started:.0f} s")
    print_table(rows)
    print(
        f"goal: mem_ratio <= {GOAL_MEM}x at time_ratio <= {GOAL_TIME}x (process RSS growth, "
        "CPU wall time; ratios against pytorch in this run)"
    )
    if args.csv_path:
        with open(args.csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])) if rows else ["model"])
            writer.writeheader()
            for r in rows:
                writer.writerow(asdict(r))
    if args.json_path:
        payload = {
            "machine": machine,
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": args.threads,
            "steps": args.steps,
            "rounds": args.rounds,
            "rows": [asdict(r) for r in rows],
        }
        with open(args.json_path, "w") as f:
            json.dump(payload, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
