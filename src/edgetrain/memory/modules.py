"""Which module's forward is running, and on which inputs: a stack kept by forward hooks."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["ActiveModule", "ModuleTracker", "param_storages"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ActiveModule:
    """A module whose forward is running, its qualified name, its first input's shape and
    the (device, storage address) of every tensor it was called with."""

    module: nn.Module
    name: str
    input_shape: tuple[int, ...] | None
    inputs: frozenset[tuple[str, int]] = field(default_factory=frozenset)


def _storage_keys(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> frozenset[tuple[str, int]]:
    """Storages of the tensors among ``args`` and ``kwargs`` (and in lists or tuples of them)."""
    found = set()
    for value in (*args, *kwargs.values()):
        items = value if isinstance(value, list | tuple) else (value,)
        for item in items:
            if isinstance(item, torch.Tensor) and item.layout == torch.strided:
                found.add((str(item.device), item.untyped_storage().data_ptr()))
    return frozenset(found)


def param_storages(model: nn.Module | None) -> set[tuple[str, int]]:
    """(device, storage address) of every parameter and buffer of ``model``."""
    if model is None:
        return set()
    found = set()
    for t in [*model.parameters(), *model.buffers()]:
        storage = t.untyped_storage()
        if storage.nbytes():
            found.add((str(t.device), storage.data_ptr()))
    return found


class ModuleTracker:
    """Keep a stack of running modules while active (``with tracker: ...``).

    Names are qualified names from ``model.named_modules()``; the model itself is
    named ``root_name``. Re-entrant use (entering twice) is not supported.
    """

    def __init__(self, model: nn.Module | None, root_name: str = "(model)") -> None:
        self.model = model
        self._names = {}
        if model is not None:
            self._names = {id(m): (n or root_name) for n, m in model.named_modules()}
        self._stack: list[ActiveModule] = []
        self._handles: list[RemovableHandle] = []
        self._scopes: list[str] = []

    def __enter__(self) -> ModuleTracker:
        if self.model is not None and not self._handles:
            for module in self.model.modules():
                self._handles.append(module.register_forward_pre_hook(self._push, with_kwargs=True))
                # always_call: pop even when forward raises, so the stack stays right
                self._handles.append(module.register_forward_hook(self._pop, always_call=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._stack.clear()

    def _push(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        first = args[0] if args else None
        shape = tuple(first.shape) if isinstance(first, torch.Tensor) else None
        name = self._names.get(id(module), "?")
        self._stack.append(ActiveModule(module, name, shape, _storage_keys(args, kwargs)))

    def _pop(self, module: nn.Module, args: tuple[object, ...], output: object) -> None:
        while self._stack:
            if self._stack.pop().module is module:
                break

    def current(self) -> ActiveModule | None:
        """The innermost running module, or None outside the model's forward."""
        return self._stack[-1] if self._stack else None

    def is_input(self, key: tuple[str, int]) -> bool:
        """Whether the storage ``key`` holds an input of a running module."""
        return any(key in active.inputs for active in self._stack)

    def current_name(self, outside: str = "(outside)") -> str:
        """Name of the innermost running module, or the innermost scope, or ``outside``."""
        if self._stack:
            return self._stack[-1].name
        return self._scopes[-1] if self._scopes else outside

    def push_scope(self, name: str) -> None:
        """Name saves made outside any module (for example ``"(loss)"``)."""
        self._scopes.append(name)

    def pop_scope(self) -> None:
        """Undo :meth:`push_scope`."""
        self._scopes.pop()
