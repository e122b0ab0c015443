"""Recompute chosen blocks of a model in backward instead of keeping their activations.

``recompute: none | all | auto | every_<k> | [module names]``::

    blocks = find_blocks(model)                      # [(name, module), ...]
    names = choose_blocks(blocks, "every_2")         # every other block
    handle = enable_recompute(model, names)          # forward is now checkpointed
    ...
    handle.remove()                                  # the original forwards again

Each chosen block's forward runs under non-reentrant
``torch.utils.checkpoint.checkpoint(..., use_reentrant=False, preserve_rng_state=True)``:
only the block's inputs are kept for backward, and backward runs the block's forward
again to rebuild what it needs. The module objects, their parameters and their
``state_dict`` keys are unchanged (the forward is replaced on the instance only).
Evaluation (``torch.is_grad_enabled()`` false) runs the plain forward.

- **Gradients** are bitwise those of plain training for deterministic blocks; the RNG
  state (CPU and the device's) is restored for the recomputation, so dropout draws the
  same masks. BatchNorm's running statistics are updated once per forward, as without
  recomputation: the recomputation updates throw-away copies.
- **With compress_activations** (saved-tensor hooks): saved-tensor hooks stack and only
  the innermost applies. Inside a checkpointed block, checkpoint's own hooks replace
  every saved tensor by a placeholder, so nothing saved *inside* the block reaches the
  codecs, neither in the forward nor in the recomputation (which runs under
  checkpoint's recomputation hooks). What the block keeps, its positional tensor
  inputs, is saved *outside* checkpoint's hooks, so the codecs compress it like any
  other saved activation (a block's input counts as a layer input: lossy codecs apply).
  Tensors passed by keyword are held by a closure, uncompressed. With a lossy codec
  the recomputation starts from the decoded input, so the block's gradients are those
  of the decoded input (close, not equal); "lossless" keeps them bitwise.
- Under ``torch.compile`` the BatchNorm guard (a ``context_fn``) is not used:
  compiled recomputation may update running statistics a second time.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.utils.checkpoint import checkpoint

from edgetrain.errors import EdgeTrainError, suggest

__all__ = [
    "RecomputeHandle",
    "apply_recompute",
    "choose_blocks",
    "enable_recompute",
    "find_blocks",
    "parse_spec",
    "recomputed_blocks",
]

_CONTAINERS = (nn.Sequential, nn.ModuleList)
_EVERY = re.compile(r"^every_([1-9][0-9]*)$")
_MARK = "_edgetrain_recompute"
_KEYWORDS = ("none", "all", "auto", "every_<k>")

Spec = str | Sequence[str]


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def find_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The natural repeated blocks of ``model``, in forward-definition order.

    The composite module type (a module with children and parameters) found most
    often as a child of an ``nn.Sequential`` or ``nn.ModuleList`` (at least twice,
    ties broken by more parameters): ResNet's BasicBlocks across all stages,
    MobileNet's InvertedResiduals, transformer layers. Blocks nested inside another
    chosen block are left out. Without such a type: the top-level children that hold
    parameters.
    """
    found: dict[type, list[tuple[str, nn.Module]]] = {}
    seen: set[int] = set()
    for name, container in model.named_modules():
        if not isinstance(container, _CONTAINERS):
            continue
        for child_name, child in container.named_children():
            if id(child) in seen or not any(True for _ in child.children()):
                continue
            if not _has_params(child):
                continue
            seen.add(id(child))
            full = f"{name}.{child_name}" if name else child_name
            found.setdefault(type(child), []).append((full, child))
    candidates = [group for group in found.values() if len(group) >= 2]
    if candidates:
        best = max(
            candidates,
            key=lambda g: (len(g), sum(p.numel() for _, m in g for p in m.parameters())),
        )
        return _outermost(best)
    return [(n, m) for n, m in model.named_children() if _has_params(m)]


def _outermost(blocks: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """Drop blocks inside another of ``blocks``."""
    names = [n for n, _ in blocks]
    return [(n, m) for n, m in blocks if not any(n.startswith(o + ".") for o in names)]


def parse_spec(spec: Spec) -> str | list[str]:
    """Validate a recompute spec: "none", "all", "auto", "every_<k>" or a list of names."""
    if isinstance(spec, str):
        if spec in ("none", "all", "auto") or _EVERY.match(spec):
            return spec
        raise EdgeTrainError(
            f"recompute must be one of {', '.join(_KEYWORDS)} or a list of module names, "
            f"got {spec!r}{suggest(spec, ('none', 'all', 'auto', 'every_2'))}"
        )
    names = list(spec)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise EdgeTrainError(f"recompute's module names must be non-empty strings, got {spec!r}")
    return names


def choose_blocks(blocks: Sequence[tuple[str, nn.Module]], spec: Spec) -> list[str]:
    """Names of the blocks to recompute.

    ``"none"``: none; ``"all"`` and ``"auto"`` (for now): every block; ``"every_<k>"``:
    blocks 0, k, 2k, ... of ``blocks``; a list: those module names, as given (checked
    against the model by :func:`enable_recompute`).
    """
    parsed = parse_spec(spec)
    if isinstance(parsed, list):
        return parsed
    if parsed == "none":
        return []
    if parsed in ("all", "auto"):
        return [n for n, _ in blocks]
    match = _EVERY.match(parsed)
    assert match is not None
    k = int(match.group(1))
    return [n for i, (n, _) in enumerate(blocks) if i % k == 0]


class _FreshRunningStats:
    """During recomputation: normalisation layers update copies of their running
    statistics, so a recomputed block updates them once in all, as without recompute."""

    def __init__(self, norms: list[_NormBase]) -> None:
        self.norms = norms
        self.saved: list[tuple[_NormBase, dict[str, torch.Tensor]]] = []

    def __enter__(self) -> None:
        for norm in self.norms:
            kept = {}
            for key in ("running_mean", "running_var", "num_batches_tracked"):
                buf = norm._buffers.get(key)
                if buf is not None:
                    kept[key] = buf
                    norm._buffers[key] = buf.clone()
            self.saved.append((norm, kept))

    def __exit__(self, *exc: object) -> None:
        saved, self.saved = self.saved, []
        for norm, kept in saved:
            norm._buffers.update(kept)


def _context_fn(norms: list[_NormBase]) -> Callable[[], tuple[Any, Any]]:
    def make() -> tuple[Any, Any]:
        return contextlib.nullcontext(), _FreshRunningStats(norms)

    return make


def _checkpointed(module: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
    norms = [m for m in module.modules() if isinstance(m, _NormBase) and m.track_running_stats]
    context_fn = _context_fn(norms) if norms else None

    def recomputed(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)  # evaluation: nothing is saved for backward
        fn = functools.partial(forward, **kwargs) if kwargs else forward
        options: dict[str, Any] = {}
        if context_fn is not None and not torch.compiler.is_compiling():
            options["context_fn"] = context_fn
        return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=True, **options)

    setattr(recomputed, _MARK, True)
    return recomputed


class RecomputeHandle:
    """Restores the original forwards on :meth:`remove` (also as a context manager)."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self._restore: list[tuple[nn.Module, Any]] = []

    def remove(self) -> None:
        """Put back each block's forward (idempotent)."""
        restore, self._restore = self._restore, []
        for module, previous in reversed(restore):
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = previous

    def __enter__(self) -> RecomputeHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def enable_recompute(model: nn.Module, names: Iterable[str]) -> RecomputeHandle:
    """Checkpoint the forward of each named module of ``model`` (see the module docs).

    Raises:
        EdgeTrainError: an unknown name, the model itself, a name inside another
            named block, or a block already recomputed.
    """
    modules = dict(model.named_modules())
    names = list(dict.fromkeys(names))
    for name in names:
        if name not in modules or name == "":
            known = [n for n in modules if n]
            raise EdgeTrainError(
                f"recompute: the model has no module named {name!r}{suggest(name, known)}"
            )
        outer = next((o for o in names if name.startswith(o + ".")), None)
        if outer is not None:
            raise EdgeTrainError(f"recompute: {name!r} is inside {outer!r}; name one of them")
        if getattr(modules[name].__dict__.get("forward"), _MARK, False):
            raise EdgeTrainError(f"recompute: {name!r} is already recomputed")
    handle = RecomputeHandle(names)
    for name in names:
        module = modules[name]
        previous = module.__dict__.get("forward")
        module.__dict__["forward"] = _checkpointed(module, module.forward)
        handle._restore.append((module, previous))
    return handle


def recomputed_blocks(model: nn.Module) -> list[str]:
    """The names of ``model``'s modules whose forward is recomputed now."""
    return [
        name
        for name, module in model.named_modules()
        if getattr(module.__dict__.get("forward"), _MARK, False)
    ]


def apply_recompute(model: nn.Module, spec: Spec) -> RecomputeHandle:
    """``enable_recompute(model, choose_blocks(find_blocks(model), spec))``."""
    parsed = parse_spec(spec)
    blocks = [] if parsed == "none" or isinstance(parsed, list) else find_blocks(model)
    return enable_recompute(model, choose_blocks(blocks, parsed))
