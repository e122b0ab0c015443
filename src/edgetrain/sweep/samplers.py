"""Samplers, pinned explicitly (Optuna's defaults changed between versions).

Every sampler is wrapped so that its random state is re-seeded from ``(seed, trial
number)`` before each trial. With the ``random`` sampler a trial's parameters then
depend only on its number: the same sweep gives the same configurations whether it ran
with one worker or four, in one go or resumed. With ``tpe`` and ``nsga2`` they also
depend on the trials finished before, which parallel workers make timing-dependent.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgetrain.errors import EdgeTrainError
from edgetrain.sweep._optuna import optuna

__all__ = ["NSGA2_POPULATION", "TPE_STARTUP_TRIALS", "TrialSeededSampler", "make_sampler"]

log = logging.getLogger(__name__)

TPE_STARTUP_TRIALS = 10  # random trials before TPE models anything (Optuna's default, pinned)
NSGA2_POPULATION = 20  # Optuna's default (50) would make a 50-trial sweep purely random


def trial_seed(seed: int, number: int) -> int:
    """A 32-bit seed for trial ``number`` of a sweep seeded with ``seed``."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(number)]).generate_state(1)[0])


def _reseed(sampler: Any, seed: int) -> bool:
    """Re-seed a sampler's random states; False if this Optuna keeps them elsewhere."""
    done = False
    for obj in (sampler, getattr(sampler, "_random_sampler", None)):
        rng = getattr(getattr(obj, "_rng", None), "rng", None)
        if isinstance(rng, np.random.RandomState):
            rng.seed(seed)
            done = True
    return done


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """Delegates to an Optuna sampler, re-seeding it from the trial number before each trial.

    Not thread-safe on its own: the runner asks for trials under a lock, so the re-seed
    and the sampling of one trial are not interleaved with another's.
    """

    def __init__(self, inner: Any, seed: int) -> None:
        self.inner = inner
        self.seed = int(seed)
        self._warned = False

    def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
        return self.inner.sample_independent(study, trial, name, dist)

    def before_trial(self, study: Any, trial: Any) -> None:
        if not _reseed(self.inner, trial_seed(self.seed, trial.number)) and not self._warned:
            log.warning("cannot re-seed %s per trial: sampling is not reproducible", self.inner)
            self._warned = True
        self.inner.before_trial(study, trial)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


def make_sampler(name: str, seed: int, objectives: Sequence[str]) -> Any:
    """The sampler ``name`` (random | tpe | nsga2) with every setting pinned.

    Args:
        name: sampler name.
        seed: sweep seed.
        objectives: the study's objectives (NSGA-II is meant for several).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "random":
            inner = optuna.samplers.RandomSampler(seed=seed)
        elif name == "tpe":
            inner = optuna.samplers.TPESampler(
                seed=seed,
                n_startup_trials=TPE_STARTUP_TRIALS,
                n_ei_candidates=24,
                multivariate=True,
                constant_liar=True,  # parallel workers do not all pick the same point
            )
        elif name == "nsga2":
            inner = optuna.samplers.NSGAIISampler(seed=seed, population_size=NSGA2_POPULATION)
        else:
            raise EdgeTrainError(f"sampler must be one of random, tpe, nsga2, got {name!r}")
    return TrialSeededSampler(inner, seed)
