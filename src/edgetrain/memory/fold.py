"""Gradient accumulation folded into SGD's momentum: no gradient buffer with micro-batches.

With gradient accumulation, PyTorch keeps every parameter's gradient from the first
micro-batch to the optimizer step: the gradients' bytes (as large as the parameters) sit
under every micro-batch's peak. SGD with momentum needs the whole gradient only through
its momentum buffer, and that update is linear::

    buf <- momentum * buf + (1 - dampening) * (sum_i g_i + weight_decay * p)
    p   <- p - lr * buf

so each micro-batch's gradient ``g_i`` can be added into ``buf`` the moment it is ready
(a ``register_post_accumulate_grad_hook``) and freed at once; the weights step after the
last micro-batch. Parameters, momentum and one layer's gradient are all a step holds:
the same memory as the optimizer step in backward without accumulation, at any
micro-batch. The result equals the plain accumulated step up to floating-point rounding
(the sum is taken in another order; the first step, whose buffer starts at zero, is
bitwise equal). See docs/design.md, "Memory planner" (optimizer in backward).

Only :class:`torch.optim.SGD` with momentum and without Nesterov (whose step needs the
whole gradient once more) folds; Adam's second moment is not linear in the gradient.
The momentum buffers are the optimizer's own (``optimizer.state[p]["momentum_buffer"]``),
so checkpoints, resumes and plain steps in between all see the same state.
"""

from __future__ import annotations

import torch

from edgetrain.memory.optimizer_state import installed

__all__ = ["MomentumFold", "fold_refusal"]


def fold_refusal(optimizer: torch.optim.Optimizer) -> str | None:
    """Why gradients cannot be folded into ``optimizer``'s momentum (None: they can)."""
    name = type(optimizer).__name__
    if type(optimizer) is not torch.optim.SGD:
        return f"only SGD's momentum takes folded gradients ({name} needs the whole gradient)"
    for group in optimizer.param_groups:
        if not group.get("momentum"):
            return "SGD without momentum has no buffer to fold gradients into"
        if group.get("nesterov"):
            return "SGD with nesterov needs the whole gradient at the step"
        if group.get("differentiable"):
            return "a differentiable SGD cannot fold gradients"
    if installed(optimizer) is not None:
        return "a low-precision optimizer state cannot take folded gradients"
    return None


class MomentumFold:
    """Fold each micro-batch's gradients into ``optimizer``'s momentum buffers.

    Per logical batch: :meth:`begin`, then :meth:`fold` for each parameter whose gradient
    is ready (from the parameter's post-accumulate-grad hook; it frees the gradient), then
    :meth:`finish` steps the weights. Parameters without a gradient in the whole batch are
    left alone, as SGD's own step leaves them.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        why = fold_refusal(optimizer)
        if why is not None:
            raise ValueError(why)
        self.optimizer = optimizer
        self._groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        # parameters folded in this logical batch -> (parameter, its buffer, coefficient
        # of d_p)
        self._begun: dict[int, tuple[torch.Tensor, torch.Tensor, float]] = {}
        self.active = False

    def begin(self) -> None:
        """A logical batch starts: no parameter folded yet."""
        self._begun = {}
        self.active = True

    @torch.no_grad()
    def fold(self, p: torch.Tensor) -> None:
        """Add ``p.grad`` into its momentum buffer and free it."""
        grad = p.grad
        if grad is None:
            return
        group = self._groups[id(p)]
        begun = self._begun.get(id(p))
        if begun is None:  # the parameter's first gradient in this logical batch
            state = self.optimizer.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:  # SGD's first step: buf = d_p (no dampening)
                buf = state["momentum_buffer"] = torch.zeros_like(
                    p, memory_format=torch.preserve_format
                )
                coef = 1.0
            else:
                buf.mul_(group["momentum"])
                coef = 1.0 - group["dampening"]
            begun = self._begun[id(p)] = (p, buf, coef)
        _, buf, coef = begun
        buf.add_(grad, alpha=-coef if group.get("maximize") else coef)
        p.grad = None

    @torch.no_grad()
    def finish(self) -> None:
        """Add weight decay and step every folded parameter (after the last backward)."""
        for p, buf, coef in self._begun.values():
            group = self._groups[id(p)]
            if group["weight_decay"]:
                buf.add_(p, alpha=coef * group["weight_decay"])
            p.add_(buf, alpha=-group["lr"])
        self._begun = {}
        self.active = False
