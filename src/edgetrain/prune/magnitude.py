"""Global magnitude pruning of conv and linear weights with ``torch.nn.utils.prune``.

Every prunable weight is put under a mask (``weight_orig`` x ``weight_mask``), pruned
globally by magnitude to an exact count, and made permanent at the end
(:func:`make_permanent`), after which the model holds plain weights with zeros.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune
from torch.utils.hooks import RemovableHandle

__all__ = [
    "PRUNABLE",
    "attach_masks",
    "current_masks",
    "is_masked",
    "make_permanent",
    "model_sparsity",
    "param_sparsity",
    "plain_state_dict",
    "prunable_modules",
    "prune_to",
]

PRUNABLE: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NAME = "weight"


def prunable_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every conv and linear layer with a weight, in model order."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, PRUNABLE) and getattr(m, _NAME, None) is not None
    ]


def is_masked(module: nn.Module) -> bool:
    """True while ``module.weight`` is under a pruning mask."""
    return hasattr(module, _NAME + "_mask")


def attach_masks(
    model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None
) -> list[tuple[str, nn.Module]]:
    """Put every prunable weight under a mask: the given one, else all ones (nothing pruned).

    Masking from the start keeps the model's memory and its parameters' identity (the
    optimizer keeps them as ``weight_orig``) the same before and after pruning begins.
    Modules already masked are left as they are.
    """
    modules = prunable_modules(model)
    for name, module in modules:
        if is_masked(module):
            continue
        weight = getattr(module, _NAME)
        mask = masks.get(name) if masks is not None else None
        if mask is None:
            mask = torch.ones_like(weight)
        prune.custom_from_mask(module, _NAME, mask.to(weight.device, weight.dtype))
    return modules


def _counts(modules: list[tuple[str, nn.Module]]) -> tuple[int, int]:
    total = sum(getattr(m, _NAME).numel() for _, m in modules)
    pruned = sum(int((getattr(m, _NAME + "_mask") == 0).sum()) for _, m in modules if is_masked(m))
    return total, pruned


def prune_to(model: nn.Module, ratio: float) -> int:
    """Raise the global sparsity of the prunable weights to ``ratio`` (never lowers it).

    Prunes exactly ``round(ratio * total) - already pruned`` weights of smallest magnitude
    among those not yet pruned, across all layers at once; returns that number.
    """
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    modules = attach_masks(model)
    total, pruned = _counts(modules)
    k = round(ratio * total) - pruned
    if k > 0:
        prune.global_unstructured(
            [(m, _NAME) for _, m in modules], pruning_method=prune.L1Unstructured, amount=k
        )
    return max(0, k)


def current_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks as boolean tensors on the CPU (a quarter of fp32 weights), by layer name."""
    return {
        name: getattr(m, _NAME + "_mask").detach().to("cpu", torch.bool)
        for name, m in prunable_modules(model)
        if is_masked(m)
    }


def make_permanent(model: nn.Module) -> int:
    """Apply the masks into the weights and drop them; returns the layers made permanent."""
    done = 0
    for _, module in prunable_modules(model):
        if is_masked(module):
            prune.remove(module, _NAME)
            done += 1
    return done


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [getattr(m, _NAME).detach() for _, m in prunable_modules(model)]


def param_sparsity(model: nn.Module) -> float:
    """Fraction of zeros among the prunable (conv and linear) weights, as the model computes."""
    weights = _weights(model)
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total if total else 0.0


def model_sparsity(model: nn.Module) -> float:
    """Fraction of zeros among all parameters (masked weights counted as the model sees them)."""
    masked = {id(getattr(m, _NAME + "_orig")) for _, m in prunable_modules(model) if is_masked(m)}
    tensors = _weights(model) + [p.detach() for p in model.parameters() if id(p) not in masked]
    seen: set[int] = set()
    zeros = total = 0
    for t in tensors:
        if id(t) in seen:
            continue
        seen.add(id(t))
        zeros += int((t == 0).sum())
        total += t.numel()
    return zeros / total if total else 0.0


def plain_state_dict(model: nn.Module) -> list[RemovableHandle]:
    """Make ``model.state_dict()`` hold plain ``weight`` (orig x mask) for masked layers.

    Checkpoints written while pruning is active then load into an unpruned model, as on
    resume. Returns the hook handles (remove them once the pruning is permanent).
    """

    def hook(module: nn.Module, state: dict[str, Any], prefix: str, _meta: Any) -> None:
        orig = state.pop(prefix + _NAME + "_orig", None)
        mask = state.pop(prefix + _NAME + "_mask", None)
        if orig is not None and mask is not None:
            state[prefix + _NAME] = (orig * mask).detach()

    return [m.register_state_dict_post_hook(hook) for _, m in prunable_modules(model)]
