"""Optuna's QMC sampler and importance evaluators, for the global design and its analysis.

The global design (:mod:`bench.designs.space_filling`) draws its configurations here and its
analysis (:mod:`bench.results.importance`) calls the evaluators here: this package is the one
that imports Optuna. Trials travel as plain rows ``(value, params, distributions as JSON)``, the
form they are stored in with a batch.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from bench.lazy import lazy
from bench.space import PER_LAYER_OK, CategoricalParam, FixedParam, FloatParam, IntParam, Param

if TYPE_CHECKING:
    import optuna

    from bench.space import Space
else:
    optuna = lazy("optuna")

Row = tuple[float, dict[str, Any], dict[str, str]]  # value, params, distributions (JSON)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Optuna's INFO lines ("a new study created", "trial N finished") off, then restored."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _distribution(p: Param) -> Any:
    d = optuna.distributions
    if isinstance(p, IntParam):
        return d.IntDistribution(p.low, p.high, step=p.step or 1, log=p.log)
    if isinstance(p, FloatParam):
        return d.FloatDistribution(p.low, p.high, step=p.step, log=p.log)
    assert isinstance(p, CategoricalParam)
    return d.CategoricalDistribution(list(p.choices))


def _deepest(space: Space) -> int:
    p = space.params["n_layers"]
    if isinstance(p, IntParam):
        return p.high
    if isinstance(p, CategoricalParam):
        return max(int(c) for c in p.choices)
    return int(p.value)


def qmc_draws(space: Space, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` configurations from a scrambled Sobol sequence over ``space`` (Optuna's
    ``QMCSampler``; its first point is random, as Optuna makes it).

    Per-layer parameters are drawn for the deepest network, so the sequence fills a fixed box,
    and kept as parameters only for the layers a configuration has. Each draw is
    ``{"config", "params", "distributions"}``: the model configuration, the Optuna parameters
    it uses, and their distributions as JSON.
    """
    from bench.space import suggest

    searched = {k: p for k, p in space.params.items() if not isinstance(p, FixedParam)}
    box = {}
    for name, p in searched.items():
        if name in PER_LAYER_OK and getattr(p, "per_layer", False):
            box.update({f"{name}_{i}": _distribution(p) for i in range(_deepest(space))})
        else:
            box[name] = _distribution(p)
    with warnings.catch_warnings():  # "QMCSampler is experimental": Optuna's, used as is
        warnings.simplefilter("ignore")
        sampler = optuna.samplers.QMCSampler(
            qmc_type="sobol", scramble=True, seed=seed, warn_independent_sampling=False
        )
    out = []
    with quiet():
        study = optuna.create_study(sampler=sampler)
        for _ in range(n):
            trial = study.ask(box)
            config = suggest(trial, space)
            study.tell(trial, 0.0)
            used = [k for k in trial.params if _used(k, config, searched)]
            to_json = optuna.distributions.distribution_to_json
            out.append({
                "config": config,
                "params": {k: trial.params[k] for k in used},
                "distributions": {k: to_json(trial.distributions[k]) for k in used},
            })  # fmt: skip
    return out


def _used(name: str, config: dict, searched: dict) -> bool:
    """Whether ``config`` uses the drawn parameter: a per-layer one only for its own layers."""
    base, _, layer = name.rpartition("_")
    if base in searched and base in PER_LAYER_OK and layer.isdigit():
        return int(layer) < config["n_layers"]
    return True


def evaluate(name: str, rows: Sequence[Row], seed: int, maximize: bool = True) -> dict[str, float]:
    """Optuna's ``fanova`` or ``ped-anova`` importances of ``rows``, unnormalised."""
    to_dist = optuna.distributions.json_to_distribution
    trials = [
        optuna.trial.create_trial(
            value=value,
            params=dict(params),
            distributions={k: to_dist(d) for k, d in dists.items()},
        )
        for value, params, dists in rows
    ]
    if name == "fanova":
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    else:
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    with quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(direction="maximize" if maximize else "minimize")
        study.add_trials(trials)
        return optuna.importance.get_param_importances(study, evaluator=evaluator, normalize=False)
