"""Budgeted sparse updates: track neuron velocity (NEq), select neurons under a parameter or
memory budget, and freeze the rest so that they neither move nor cost backward work.

Neurons are output units of Linear layers, output channels of convolutions and rows of
embeddings (a token's vector). Probing runs the model through a task's forward, so any
batch structure works (``describe_model(model, batch, task.forward)``).

A building block: it acts on a model and an optimizer and knows nothing about files or the
CLI (``edgetrain.train.features.sparse`` composes it into training).

Example::

    units = describe_model(model, probe[:2])
    tracker = VelocityTracker(model, [la.name for la in units.layers], probe)
    freezer = RowFreezer(model, optimizer)
    tracker.observe()                          # before training
    ...train one epoch...
    tracker.observe()                          # velocities now exist
    fixed = fixed_rows(units, head=True, norm=False)
    selection = select_velocity(units, ParamCost(units), 10_000, tracker.velocity, fixed)
    freezer.apply(selection.rows)
"""

import logging

from edgetrain.sparse.budget import (
    WEIGHT_ONLY_SAVES,
    ActivationProfile,
    Budget,
    CostModel,
    MemoryCost,
    ParamCost,
    optimizer_state_slots,
    profile_activations,
    resolve_budget,
    trainable_names,
)
from edgetrain.sparse.freeze import FreezeStats, RowFreezer
from edgetrain.sparse.layers import ModelUnits, NeuronLayer, describe_model
from edgetrain.sparse.plan import SelectionPlanner
from edgetrain.sparse.select import (
    Selection,
    fixed_rows,
    select_bias_only,
    select_full,
    select_last_k,
    select_random,
    select_static,
    select_velocity,
    weight_norms,
)
from edgetrain.sparse.velocity import (
    VelocityTracker,
    neuron_similarity,
    probe_batch,
    velocity_step,
)

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "WEIGHT_ONLY_SAVES",
    "ActivationProfile",
    "Budget",
    "CostModel",
    "FreezeStats",
    "MemoryCost",
    "ModelUnits",
    "NeuronLayer",
    "ParamCost",
    "RowFreezer",
    "Selection",
    "SelectionPlanner",
    "VelocityTracker",
    "describe_model",
    "fixed_rows",
    "neuron_similarity",
    "optimizer_state_slots",
    "probe_batch",
    "profile_activations",
    "resolve_budget",
    "select_bias_only",
    "select_full",
    "select_last_k",
    "select_random",
    "select_static",
    "select_velocity",
    "trainable_names",
    "velocity_step",
    "weight_norms",
]
