"""Low-precision optimizer state: momentum and Adam's moments kept in bfloat16 between steps.

A building block on an optimizer (``optimizer_state: bf16`` in training is the callback
in ``edgetrain.train.features.optim_state``; a memory plan applies it through
``edgetrain.adapt.levers``). Also home of :func:`per_parameter_optimizers`, which the
optimizer step in backward shares.

Parameters, gradients and optimizer state are the memory no micro-batch size reduces (the
"static floor", docs/design.md, "Memory planner"); SGD's momentum is as large as the
parameters, Adam's two moments twice as large. With ``optimizer_state: bf16`` every
floating-point state tensor of the shape of its parameter is stored in bfloat16, halving
those bytes.

Each parameter is stepped on its own, with its state cast up to the parameter's dtype for
that step only and cast back right after (so at most one parameter's state is held at full
precision at any time): the update itself is computed exactly as the optimizer computes
it. The cast back rounds *stochastically* (up or down with the probabilities that make the
expected value exact): with round-to-nearest, an Adam second moment decaying by 0.999 per
step would lose every update smaller than bfloat16's 2^-8 relative step, and the moment
would freeze. Rounding draws from a generator seeded by the run's seed, saved in the
checkpoint, so a resumed run continues the same sequence.

It is installed with the optimizer's own public hooks: a step pre-hook steps every
parameter that has a gradient (as above) and hides the gradients from the optimizer's own
step, which then has nothing to do; a post-hook gives the gradients back. So every caller
of ``optimizer.step()`` (the loop, a GradScaler, the memory accounting's real step, an LR
scheduler's bookkeeping) gets the low-precision step. The optimizer step in backward
(``edgetrain.train.features.optim_backward``) steps each parameter through
:meth:`LowPrecisionState.step_parameter` when one is installed.

This changes what training computes (the state is rounded), so it is opt-in; its accuracy
effect is measured by ``benchmarks/optimizer_state.py`` (README, "Optimizer state").
"""

from __future__ import annotations

import inspect
import weakref
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.hooks import RemovableHandle

from edgetrain.errors import EdgeTrainError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "ELEMENTWISE",
    "STATE_DTYPES",
    "LowPrecisionState",
    "constructor_kwargs",
    "installed",
    "is_own_hook",
    "param_ids",
    "per_parameter_optimizers",
    "state_saving_bytes",
    "stochastic_round",
]

STATE_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16}
# optimizers whose update of each element reads only that element's parameter, gradient
# and state (and scalars): a large parameter may be stepped in slices
ELEMENTWISE: frozenset[type] = frozenset(
    {
        torch.optim.SGD,
        torch.optim.Adam,
        torch.optim.AdamW,
        torch.optim.RMSprop,
        torch.optim.Adagrad,
        torch.optim.Adamax,
        torch.optim.NAdam,
        torch.optim.RAdam,
    }
)
_NAME = "optimizer_state"
# elements rounded at a time: the random bits of 1 MiB at most beside the state (the
# transient of a step is then one parameter's state at full precision, its rounded copy
# and about 3 MiB)
_CHUNK = 1 << 18
_MARK = "_edgetrain_state_precision"  # set on this module's hook functions
# each optimizer's installed LowPrecisionState (at most one)
_INSTALLED: weakref.WeakKeyDictionary[torch.optim.Optimizer, LowPrecisionState] = (
    weakref.WeakKeyDictionary()
)


def installed(optimizer: torch.optim.Optimizer) -> LowPrecisionState | None:
    """The :class:`LowPrecisionState` installed on ``optimizer`` (None: none)."""
    return _INSTALLED.get(optimizer)


def is_own_hook(hook: object) -> bool:
    """Whether ``hook`` (an optimizer step hook) is one of this module's."""
    return bool(getattr(hook, _MARK, False))


def stochastic_round(
    value: torch.Tensor, dtype: torch.dtype, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``value`` (float32 or float64) rounded to ``dtype`` (bfloat16) stochastically.

    bfloat16 is float32 without its low 16 bits. Adding a uniform random integer in
    [0, 2^16) to the bit pattern and dropping the low 16 bits rounds the magnitude up with
    probability equal to the dropped fraction (both signs: the pattern is sign and
    magnitude), so the expected result is ``value``. Infinities and (canonical) NaNs keep
    their low 16 bits at zero, so the noise never carries out of them: they stay what
    they are; a finite value above bfloat16's largest may round up to infinity, as it
    does to nearest.
    """
    if dtype != torch.bfloat16:
        raise EdgeTrainError(f"{_NAME}: stochastic rounding to {dtype} is not supported")
    x = value.to(torch.float32).contiguous().view(-1)
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    noise = torch.empty(min(_CHUNK, x.numel()), dtype=torch.int32, device=x.device)
    for lo in range(0, x.numel(), _CHUNK):  # one chunk's random bits at a time
        part = x[lo : lo + _CHUNK]
        bits = noise[: part.numel()].random_(0, 1 << 16, generator=generator)
        bits.add_(part.view(torch.int32)).bitwise_and_(-65536)  # 0xFFFF0000 as int32
        out[lo : lo + _CHUNK].copy_(bits.view(torch.float32))  # exact: the low bits are 0
    return out.view(value.shape)


def state_saving_bytes(optimizer: torch.optim.Optimizer, dtype: torch.dtype) -> int:
    """Bytes :class:`LowPrecisionState` with ``dtype`` saves on ``optimizer``'s state, exact
    and without stepping it: each group's state tensors per parameter are counted on a
    one-parameter copy of the optimizer (same class and settings) stepped once on a
    small stand-in, then scaled to the group's trainable parameters. State kept in
    ``dtype`` already counts nothing."""
    cls = type(optimizer)
    kwargs = constructor_kwargs(cls, optimizer.defaults)
    size = torch.empty((), dtype=dtype).element_size()
    saved = 0
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.requires_grad]
        if not params:
            continue
        settings = {k: v for k, v in group.items() if k != "params"}
        stand_in = torch.nn.Parameter(torch.ones(2, 2, dtype=params[0].dtype))
        stand_in.grad = torch.full_like(stand_in, 0.5)
        try:
            one = cls([{"params": [stand_in], **settings}], **kwargs)
            one.step()
        except Exception as exc:
            raise EdgeTrainError(
                f"{_NAME}: cannot rebuild {cls.__name__} for one parameter ({exc})"
            ) from exc
        moments = sum(1 for v in one.state[stand_in].values() if _is_moment(v, stand_in))
        for p in params:
            if p.numel() <= 1:
                continue  # a one-element state is left as it is (see _is_moment)
            state = optimizer.state.get(p, {})
            kept = [v for v in state.values() if _is_moment(v, p)]
            if kept:  # the state there is: what is not low precision yet
                saved += sum(
                    v.numel() * (v.element_size() - size) for v in kept if v.dtype != dtype
                )
            else:
                saved += moments * p.numel() * (p.element_size() - size)
    return max(0, saved)


class LowPrecisionState:
    """Keeps ``optimizer``'s state in ``dtype`` between steps (module doc).

    Args:
        optimizer: the optimizer (its class, defaults and groups are rebuilt per parameter
            with :func:`per_parameter_optimizers`,
            sharing its ``state``).
        dtype: the storage dtype (bfloat16).
        seed: seeds the stochastic rounding's generator.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, dtype: torch.dtype = torch.bfloat16, seed: int = 0
    ) -> None:
        if installed(optimizer) is not None:
            raise EdgeTrainError(f"{_NAME}: the optimizer already keeps low-precision state")
        if isinstance(optimizer, torch.optim.LBFGS):
            raise EdgeTrainError(f"{_NAME} cannot step LBFGS per parameter (it needs a closure)")
        self.optimizer = optimizer
        self.dtype = dtype
        self._seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}
        self._pending_states: dict[str, torch.Tensor] = {}
        self._singles: dict[int, tuple[torch.optim.Optimizer, dict[str, Any]]] = {}
        self._slicers: dict[int, torch.optim.Optimizer] = {}  # by the group they step for
        self._params: tuple[int, ...] = ()
        self._hidden: list[tuple[torch.Tensor, torch.Tensor]] = []
        pre = _marked(self._pre_step)
        post = _marked(self._post_step)
        self._handles: list[RemovableHandle] = [
            optimizer.register_step_pre_hook(pre),
            optimizer.register_step_post_hook(post),
        ]
        _INSTALLED[optimizer] = self
        self.compress()

    # -- the step -----------------------------------------------------------------
    def step_parameter(self, p: torch.Tensor, single: torch.optim.Optimizer) -> None:
        """Step ``p`` with its one-parameter optimizer ``single`` (sharing the state): its
        state cast up to ``p``'s dtype, the step, the state rounded back down. A large
        parameter of an elementwise optimizer is stepped in slices (:meth:`_step_slices`)."""
        if self._sliceable(p):
            self._step_slices(p, single.param_groups[0])
            return
        state = self.optimizer.state.get(p)
        for key in list(state or ()):  # keys only: each stored tensor is freed when replaced
            if _is_moment(state[key], p):
                state[key] = state[key].to(p.dtype)
        single.step()
        self._store(p)

    def _sliceable(self, p: torch.Tensor) -> bool:
        grad = p.grad
        return (
            type(self.optimizer) in ELEMENTWISE
            and p.numel() > _CHUNK
            and grad is not None
            and p.is_contiguous()
            and grad.is_contiguous()
            and grad.layout == torch.strided
        )

    def _step_slices(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        """Step ``p`` slice by slice: the optimizer's own step on a view of :data:`_CHUNK`
        elements of the parameter, its gradient and its state cast up, the slice's state
        rounded back into the stored tensor in place. Without this the step's transient
        is the largest parameter's whole state at full precision plus its rounded copy
        (vgg11: 9 MiB + 4.5 MiB at the moment the gradients are all alive, which took
        most of the saving at micro-batch 1). Exact for optimizers that update each
        element from its own parameter, gradient and state (:data:`ELEMENTWISE`); the
        scalar state (Adam's step count) starts every slice from the stored value and is
        stored once, after the last slice."""
        state = self.optimizer.state[p]
        flat_p, flat_g = p.detach().view(-1), p.grad.view(-1)  # type: ignore[union-attr]
        stored = {k: v for k, v in state.items() if _is_moment(v, p)}
        scalars = {k: v for k, v in state.items() if k not in stored}
        before = dict(stored)  # a first step creates the state: every slice starts without
        part = self._slice_optimizer(group)
        last: dict[str, Any] = {}
        for lo in range(0, flat_p.numel(), _CHUNK):
            view = flat_p[lo : lo + _CHUNK]
            view.grad = flat_g[lo : lo + _CHUNK]
            own = {k: v.view(-1)[lo : lo + _CHUNK].to(p.dtype) for k, v in before.items()}
            own.update({k: v.clone() if torch.is_tensor(v) else v for k, v in scalars.items()})
            part.param_groups[0]["params"] = [view]
            part.state.clear()
            part.state[view] = own
            part.step()
            own = part.state.pop(view)
            gen = None
            for key, value in own.items():
                if (
                    torch.is_tensor(value)
                    and value.shape == view.shape
                    and value.is_floating_point()
                ):
                    if key not in stored:  # first step: the state is created here
                        stored[key] = torch.empty(p.shape, dtype=self.dtype, device=p.device)
                    gen = gen or self._generator(value.device)
                    rounded = stochastic_round(value, self.dtype, gen)
                    stored[key].view(-1)[lo : lo + _CHUNK].copy_(rounded)
                else:
                    last[key] = value
            view.grad = None
            del own
        part.param_groups[0]["params"] = []
        state.update(stored)
        state.update(last)

    def _slice_optimizer(self, group: dict[str, Any]) -> torch.optim.Optimizer:
        """A one-parameter optimizer of the same class with the group's settings (as they
        are now: the schedule's rate), whose parameter is swapped for each slice; one per
        group, kept from step to step."""
        settings = {k: v for k, v in group.items() if k != "params"}
        part = self._slicers.get(id(group))
        if part is not None:
            part.param_groups[0].update(settings)
            return part
        cls = type(self.optimizer)
        stand_in = torch.zeros(2)
        part = cls(
            [{"params": [stand_in], **settings}],
            **constructor_kwargs(cls, self.optimizer.defaults),
        )
        part.param_groups[0].update(settings)
        self._slicers[id(group)] = part
        return part

    def _pre_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        # args: (optimizer, *positional arguments of step)
        if len(args) > 1 or kwargs.get("closure") is not None:
            raise EdgeTrainError(f"{_NAME}: a step with a closure cannot run per parameter")
        hooks = list(optimizer._optimizer_step_pre_hooks.values())
        own = next(i for i, h in enumerate(hooks) if is_own_hook(h))
        if any(not is_own_hook(h) for h in hooks[own + 1 :]):
            # it would see the parameters stepped already and their gradients hidden
            raise EdgeTrainError(
                f"{_NAME}: a step hook was added to the optimizer after the low-precision "
                "state (a sparse update's, for example); they cannot be combined"
            )
        singles = self._per_parameter()
        hidden: list[tuple[torch.Tensor, torch.Tensor]] = []
        for group in optimizer.param_groups:
            settings = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                if p.grad is None:
                    continue
                single, _ = singles[id(p)]
                single.param_groups[0].update(settings)  # the schedule's lr, and so on
                self.step_parameter(p, single)
                hidden.append((p, p.grad))
                p.grad = None  # the optimizer's own step then leaves p alone
        self._hidden = hidden

    def _post_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for p, grad in self._hidden:
            p.grad = grad
        self._hidden = []

    def _per_parameter(self) -> dict[int, tuple[torch.optim.Optimizer, dict[str, Any]]]:
        ids = param_ids(self.optimizer)
        if ids != self._params:  # new or reloaded groups
            self._slicers = {}
            self._singles = {
                id(p): (single, group)
                for p, single, group in per_parameter_optimizers(self.optimizer)
            }
            self._params = ids
        for single, _ in self._singles.values():
            if single.state is not self.optimizer.state:
                single.state = self.optimizer.state  # the state was loaded (resume)
        return self._singles

    # -- storage ------------------------------------------------------------------
    def _generator(self, device: torch.device) -> torch.Generator:
        gen = self._generators.get(device)
        if gen is None:
            gen = torch.Generator(device=device)
            pending = self._pending_states.pop(str(device), None)
            if pending is not None:
                gen.set_state(pending)
            else:
                gen.manual_seed(self._seed)
            self._generators[device] = gen
        return gen

    def _store(self, p: torch.Tensor) -> None:
        state = self.optimizer.state.get(p)
        if not state:
            return
        for key in list(state):  # keys only: the full-precision tensor goes when replaced
            value = state[key]
            if _is_moment(value, p) and value.dtype != self.dtype:
                gen = self._generator(value.device)
                del value
                state[key] = stochastic_round(state[key], self.dtype, gen)

    def compress(self) -> None:
        """Store every parameter's state in the low dtype (after a load, which casts the
        state to the parameters' dtype)."""
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                self._store(p)

    def state_bytes(self) -> int:
        """Bytes of the optimizer's state tensors now."""
        return sum(
            v.numel() * v.element_size()
            for s in self.optimizer.state.values()
            for v in s.values()
            if isinstance(v, torch.Tensor)
        )

    def state_dict(self) -> dict[str, Any]:
        """The rounding generators' states (by device), for a resumed run."""
        out = {str(d): g.get_state() for d, g in self._generators.items()}
        return {**self._pending_states, **out}

    def load_state_dict(self, states: dict[str, Any]) -> None:
        self._generators = {}
        self._pending_states = {str(k): v for k, v in states.items()}

    def remove(self, restore: bool = False) -> None:
        """Remove the hooks; the optimizer steps as usual. ``restore``: the state cast back
        to its parameters' dtype (a plan that drops the lever: the optimizer's own steps
        would keep low-precision tensors and round them to nearest); else it stays as
        stored (the end of a run)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if _INSTALLED.get(self.optimizer) is self:
            del _INSTALLED[self.optimizer]
        if restore:
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    state = self.optimizer.state.get(p, {})
                    for key, value in list(state.items()):
                        if _is_moment(value, p):
                            state[key] = value.to(p.dtype)


def _is_moment(value: object, p: torch.Tensor) -> bool:
    """A floating-point state tensor of ``p``'s shape (not a step count)."""
    return (
        isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and value.shape == p.shape
        and value.numel() > 1
    )


def _marked(fn: Callable[..., None]) -> Callable[..., None]:
    def hook(*args: Any) -> None:
        fn(*args)

    setattr(hook, _MARK, True)
    return hook


def per_parameter_optimizers(
    optimizer: torch.optim.Optimizer,
) -> list[tuple[torch.Tensor, torch.optim.Optimizer, dict[str, Any]]]:
    """``(param, one-parameter optimizer, its group in optimizer)`` for each parameter.

    The one-parameter optimizers share ``optimizer.state``.
    """
    out: list[tuple[torch.Tensor, torch.optim.Optimizer, dict[str, Any]]] = []
    cls = type(optimizer)
    kwargs = constructor_kwargs(cls, optimizer.defaults)
    for group in optimizer.param_groups:
        settings = {k: v for k, v in group.items() if k != "params"}
        for p in group["params"]:
            try:
                single = cls([{"params": [p], **settings}], **kwargs)
            except (TypeError, ValueError) as exc:
                raise EdgeTrainError(
                    f"cannot rebuild {cls.__name__} for one parameter ({exc})"
                ) from exc
            single.state = optimizer.state
            out.append((p, single, group))
    return out


def constructor_kwargs(cls: type, defaults: dict[str, Any]) -> dict[str, Any]:
    """The defaults the constructor takes (AdamW's ``decoupled_weight_decay`` is not one;
    the param group carries every setting anyway)."""
    params = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return dict(defaults)
    names = {p.name for p in params}
    return {k: v for k, v in defaults.items() if k in names}


def param_ids(optimizer: torch.optim.Optimizer) -> tuple[int, ...]:
    """The identity of each group and parameter (a loaded state_dict makes new groups):
    per-parameter optimizers built for other ids must be built again."""
    return tuple(i for g in optimizer.param_groups for i in (id(g), *map(id, g["params"])))
