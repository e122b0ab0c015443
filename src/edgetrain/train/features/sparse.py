"""Sparse updates inside training: velocity tracking, selection and freezing, once per epoch.

The probe batch is built, moved and run by the run's task (``state.task``), so sparse updates
work on any task: classification, regression, language modelling on token ids (an
embedding's neurons are its rows), a model computing its own loss. Before training the
probe outputs are recorded; at the start of each epoch the
configured scheme picks the rows to update and :class:`~edgetrain.sparse.RowFreezer`
freezes the rest; at the end of each epoch the probe is recorded again and velocities are
updated. ``RUN/sparse_update.csv`` gets one row per epoch and neuron layer; ``metrics.csv``
gets ``trainable_frac`` (updated parameters / trainable parameters).
"""

from __future__ import annotations

import logging
from typing import Any

from torch.utils.data import DataLoader, Dataset

from edgetrain.config.sparse import BUDGETED_SCHEMES, SparseUpdateConfig
from edgetrain.errors import EdgeTrainError
from edgetrain.sparse import (
    WEIGHT_ONLY_SAVES,
    Budget,
    MemoryCost,
    ModelUnits,
    ParamCost,
    RowFreezer,
    Selection,
    SelectionPlanner,
    VelocityTracker,
    describe_model,
    optimizer_state_slots,
    probe_batch,
    profile_activations,
    resolve_budget,
    weight_norms,
)
from edgetrain.train.callbacks import Callback, TrainState

__all__ = ["SPARSE_UPDATE_COLUMNS", "SparseUpdateCallback"]

log = logging.getLogger(__name__)

SPARSE_UPDATE_COLUMNS: tuple[str, ...] = (
    "epoch",
    "scheme",
    "layer",
    "kind",
    "neurons",
    "selected",
    "params",
    "selected_params",
    "requires_grad",
    "phi_mean",
    "velocity_mean",
    "velocity_abs_mean",
    "velocity_min",
    "velocity_max",
    "at_equilibrium",
    "budget_kind",
    "budget",
    "cost",
    "est_train_bytes",
)


class SparseUpdateCallback(Callback):
    """Updates only the selected neurons each epoch (see :mod:`edgetrain.sparse`).

    Args:
        config: the ``sparse_update`` section.
        probe_data: the training split (a Dataset, or a DataLoader: its data set and
            collate_fn); its first ``probe_size`` samples, in order and un-augmented,
            collated (``state.collate_fn``, else default_collate), are the probe set.
        seed: seed of the random scheme (default: ``config.seed``, else the run's seed).

    Only one instance acts on a run: a second one (the default callback plus one passed by
    the caller) finds the first active and does nothing. The epoch's
    :class:`~edgetrain.sparse.Selection` is in ``state.sparse_selection``.
    """

    name = "sparse_update"
    unique = True

    def __init__(
        self,
        config: SparseUpdateConfig,
        probe_data: Dataset | DataLoader,
        *,
        seed: int | None = None,
    ) -> None:
        self.config = config
        self.probe_data = probe_data
        self.seed = seed
        self.active = False
        self.units: ModelUnits | None = None
        self.budget: Budget | None = None
        self.planner: SelectionPlanner | None = None
        self.memory: MemoryCost | None = None
        self.tracker: VelocityTracker | None = None
        self.freezer: RowFreezer | None = None
        self.selection: Selection | None = None
        self.scheme_used = ""
        self.updated_params: list[int] = []
        self._restored: dict[str, Any] | None = None
        self._summary: dict[str, Any] = {}

    # -- set-up --------------------------------------------------------------------------
    def on_fit_start(self, state: TrainState) -> None:
        self.active = True
        cfg, model, task = self.config, state.model, state.task
        dtype = next(model.parameters()).dtype
        try:
            probe = probe_batch(self.probe_data, cfg.probe_size, state.collate_fn)
            example = probe  # two samples at least: training-mode batch norm needs them
            if task.size(probe) < 2:
                example = probe_batch(self.probe_data, 2, state.collate_fn, repeat=True)
            probe = task.to_device(probe, state.device, dtype)
            example = task.to_device(example, state.device, dtype)
            units = describe_model(model, example, task.forward)
        except ValueError as exc:
            raise EdgeTrainError(f"sparse_update: {exc}") from exc
        self.units = units
        owners = [la.name for la in units.layers if la.kind in WEIGHT_ONLY_SAVES]
        profile = profile_activations(model, example, owners, task.forward, size=task.size(example))
        self.memory = MemoryCost(
            units, profile, self._micro_batch(state), optimizer_state_slots(state.optimizer)
        )
        budgeted = cfg.scheme in BUDGETED_SCHEMES and cfg.budget is not None
        if cfg.budget is not None and not budgeted:
            log.warning("sparse_update.budget is ignored by scheme '%s'", cfg.scheme)
        self.budget = resolve_budget(cfg.budget, units.total_params) if budgeted else None
        cost = self.memory if self.budget and self.budget.kind == "bytes" else ParamCost(units)
        seed = self.seed if self.seed is not None else cfg.seed
        self.planner = SelectionPlanner(
            cfg,
            units,
            cost,
            self.budget.limit if self.budget else None,
            state.config.seed if seed is None else seed,
            weight_norms(model, units),
        )
        if cfg.scheme != "full":
            self.freezer = RowFreezer(model, state.optimizer, mask_only=cfg.mask_only)
            self.tracker = VelocityTracker(
                model, [la.name for la in units.layers], probe, mu=cfg.mu, task=task
            )
        restored, self._restored = self._restored, None
        if restored is not None:
            self._load(restored, state)
        elif self.tracker is not None:
            self.tracker.observe()  # the reference before training
        log.info(
            "sparse updates: scheme %s, budget %s, %d neuron layers, %d trainable parameters",
            cfg.scheme,
            self.budget.describe() if self.budget else "none",
            len(units.layers),
            units.total_params,
        )

    def _load(self, restored: dict[str, Any], state: TrainState) -> None:
        assert self.planner is not None
        if restored.get("static") is not None:
            self.planner.set_static_rows(restored["static"])
        self.updated_params = list(restored.get("updated_params", []))
        if self.tracker is not None:
            self.tracker.load_state_dict(restored.get("tracker", {}))
            self.tracker.reference()  # outputs of the checkpointed weights
        if state.run is not None:
            done = len(state.history)
            state.run.truncate_log(
                "sparse_update.csv",
                lambda r: r.get("epoch", "") != "" and int(r["epoch"]) <= done,
            )

    @staticmethod
    def _micro_batch(state: TrainState) -> int:
        return max(1, min(state.micro_batch_size or state.batch_size, state.batch_size))

    # -- each epoch ----------------------------------------------------------------------
    def on_epoch_start(self, state: TrainState) -> None:
        if not self.active:
            return
        assert self.planner is not None and self.units is not None and self.memory is not None
        self.memory.batch_size = self._micro_batch(state)
        tracker = self.tracker
        velocity = tracker.velocity if tracker is not None and tracker.has_velocity else None
        self.selection, self.scheme_used = self.planner.select(state.epoch, velocity)
        if self.freezer is not None:
            self.freezer.apply(self.selection.rows)
        state.sparse_selection = self.selection  # for other callbacks
        cost = self.planner.cost.of_rows(self.selection.rows)
        budgeted = self.budget is not None and self.scheme_used in BUDGETED_SCHEMES
        if budgeted and self.budget is not None and cost > self.budget.limit:
            # the schemes guarantee this: reaching it is a bug
            raise AssertionError(f"selection cost {cost} exceeds the budget {self.budget}")
        state.epoch_row["trainable_frac"] = self._trainable_frac()

    def _trainable_frac(self) -> float:
        assert self.selection is not None and self.units is not None
        return self.selection.updated_params(self.units) / max(1, self.units.total_params)

    def on_epoch_end(self, state: TrainState) -> None:
        if not self.active:
            return
        assert self.selection is not None and self.units is not None
        if self.tracker is not None:
            self.tracker.observe()
        self.updated_params.append(self.selection.updated_params(self.units))
        state.epoch_row["trainable_frac"] = self._trainable_frac()
        if state.run is not None:
            out = state.run.log("sparse_update.csv", SPARSE_UPDATE_COLUMNS)
            for row in self._rows(state.epoch + 1):
                out.append(row)

    def _rows(self, epoch: int) -> list[dict[str, Any]]:
        assert self.selection is not None and self.units and self.planner and self.memory
        sel, units = self.selection, self.units
        cost = self.planner.cost.of_rows(sel.rows)
        est = self.memory.of_rows(sel.rows)
        trainable = sel.trainable()
        tracker = self.tracker
        rows = []
        for la in units.layers:
            row: dict[str, Any] = {
                "epoch": epoch,
                "scheme": self.scheme_used,
                "layer": la.name,
                "kind": la.kind,
                "neurons": la.neurons,
                "selected": int(sel.neurons(la).sum()),
                "params": la.total_params,
                "selected_params": sum(sel.param_count(units, p) for p in la.params),
                "requires_grad": la.weight in trainable or self.config.mask_only,
                "budget_kind": self.budget.kind if self.budget else None,
                "budget": self.budget.limit if self.budget else None,
                "cost": cost,
                "est_train_bytes": est,
            }
            if tracker is not None and la.name in tracker.velocity:
                v, phi = tracker.velocity[la.name], tracker.phi[la.name]
                row.update(
                    phi_mean=float(phi.mean()),
                    velocity_mean=float(v.mean()),
                    velocity_abs_mean=float(v.abs().mean()),
                    velocity_min=float(v.min()),
                    velocity_max=float(v.max()),
                    at_equilibrium=int((v.abs() <= self.config.epsilon).sum()),
                )
            rows.append(row)
        return rows

    def on_fit_end(self, state: TrainState) -> None:
        if not self.active:
            return
        if self.freezer is not None:
            self.freezer.remove()
        units = self.units
        if units is None:
            return
        mean_updated = (
            sum(self.updated_params) / len(self.updated_params) if self.updated_params else None
        )
        self._summary = {
            "scheme": self.config.scheme,
            "budget_kind": self.budget.kind if self.budget else None,
            "budget": self.budget.limit if self.budget else None,
            "total_params": units.total_params,
            "mean_updated_params": mean_updated,
            "mean_trainable_frac": (
                mean_updated / max(1, units.total_params) if mean_updated is not None else None
            ),
            "est_train_bytes_full": self.memory.total(frozenset(units.param_shapes))
            if self.memory
            else None,
        }
        self.active = False

    def summary(self) -> dict[str, Any]:
        return {"sparse_update": self._summary} if self._summary else {}

    # -- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "tracker": self.tracker.state_dict() if self.tracker is not None else {},
            "static": self.planner.static_rows() if self.planner is not None else None,
            "updated_params": list(self.updated_params),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._restored = dict(state)
