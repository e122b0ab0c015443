"""Samplers are pinned and seeded per trial number."""

from __future__ import annotations

import optuna
import pytest

from edgetrain.errors import EdgeTrainError
from edgetrain.sweep.samplers import NSGA2_POPULATION, TPE_STARTUP_TRIALS, make_sampler
from edgetrain.sweep.space import load_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _ask(space, sampler_name, n, seed=0, warm_up=0):
    sampler = make_sampler(sampler_name, seed, space.objectives)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    for _ in range(warm_up):  # use the sampler's random state in between
        sampler.inner.reseed_rng()
    params = []
    for i in range(n):
        trial = study.ask(fixed_distributions=space.distributions())
        params.append(trial.params)
        study.tell(trial, [0.5 + 0.01 * i, 10.0 - i])
    return params


@pytest.mark.parametrize("name", ["random", "tpe", "nsga2"])
def test_trial_k_gets_the_same_parameters_in_every_run(make_space, name):
    space = load_space(make_space())
    a = _ask(space, name, 4)
    b = _ask(space, name, 4, warm_up=3)
    assert a == b
    assert _ask(space, name, 4, seed=1) != a
    assert len({str(p) for p in a}) == 4


def test_samplers_are_pinned(make_space):
    space = load_space(make_space())
    tpe = make_sampler("tpe", 0, space.objectives).inner
    assert (
        isinstance(tpe, optuna.samplers.TPESampler) and tpe._n_startup_trials == TPE_STARTUP_TRIALS
    )
    nsga = make_sampler("nsga2", 0, space.objectives).inner
    assert (
        isinstance(nsga, optuna.samplers.NSGAIISampler)
        and nsga._population_size == NSGA2_POPULATION
    )
    assert isinstance(
        make_sampler("random", 0, space.objectives).inner, optuna.samplers.RandomSampler
    )
    with pytest.raises(EdgeTrainError, match="sampler must be one of"):
        make_sampler("grid", 0, space.objectives)
