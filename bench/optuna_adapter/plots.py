"""Optuna's own matplotlib plots of a study, for :mod:`bench.results.plots`.

Each method returns the matplotlib axes Optuna drew on; saving them is the caller's business.
Importances, parallel coordinates and slices are drawn from an in-memory copy holding only the
sampled trials: baseline rows have no Optuna parameters and would empty the common search space
those plots need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.lazy import lazy

if TYPE_CHECKING:
    import optuna
else:
    optuna = lazy("optuna")

_FINISHED = ("COMPLETE", "PRUNED")


def _search_view(study: optuna.Study) -> optuna.Study:
    """An in-memory copy of ``study`` holding only its finished sampled trials."""

    view = optuna.create_study(direction=study.direction, study_name=study.study_name)
    view.add_trials(
        [
            t
            for t in study.get_trials(deepcopy=False)
            if t.distributions and t.state.name in _FINISHED
        ]
    )
    return view


def _common_params(view: optuna.Study) -> list[str]:
    TrialState = optuna.trial.TrialState

    done = view.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    names = set.intersection(*(set(t.params) for t in done)) if done else set()
    return sorted(n for n in names if len({repr(t.params[n]) for t in done}) > 1)


class SearchPlots:
    """Optuna's plots of one study, its value named ``metric`` on the axes.

    Attributes:
        params: Parameters every completed sampled trial has and that vary among them: what
            importances, parallel coordinates and slices show.
        n_sampled: Completed sampled trials (baselines left out).
    """

    def __init__(self, study: optuna.Study, metric: str):
        TrialState = optuna.trial.TrialState

        self.study = study
        self.metric = metric
        self._view = _search_view(study)
        self.params = _common_params(self._view)
        self.n_sampled = len(self._view.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    def history(self) -> Any:
        """Optimization history of every trial, baselines included."""
        ov = optuna.visualization.matplotlib

        return ov.plot_optimization_history(self.study, target_name=self.metric)

    def parallel(self) -> Any:
        ov = optuna.visualization.matplotlib

        return ov.plot_parallel_coordinate(self._view, params=self.params, target_name=self.metric)

    def slices(self) -> Any:
        ov = optuna.visualization.matplotlib

        return ov.plot_slice(self._view, params=self.params, target_name=self.metric)


MIN_IMPORTANCE_TRIALS = 20  # below this, fANOVA's forest fits noise: say so instead of drawing
IMPORTANCE_BOOTSTRAPS = 50  # resamples of the trials; about 0.2 s each at 50 trials


def importances_at_budget(
    study: optuna.Study,
    values: dict[int, float],
    n_boot: int = IMPORTANCE_BOOTSTRAPS,
    seed: int = 0,
) -> tuple[dict[str, tuple[float, float, float]], int]:
    """fANOVA importances of the search's parameters for the value at one equal budget.

    Every finished sampled trial (completed or pruned) with a value in ``values`` counts, so
    pruned trials are not left out for having stopped early: each is scored at the budget every
    finished trial reached. The interval is the 2.5 and 97.5 percentiles over ``n_boot``
    resamples of the trials with replacement (each fit with its own forest seed).

    Args:
        study: The study.
        values: Trial number -> its validation value at the equal budget.
        n_boot: Bootstrap resamples.
        seed: Seeds the resampling and the forests: the same study, the same numbers.

    Returns:
        ``({param: (importance, low, high)}, trials used)``; ``({}, n)`` when fewer than 2 trials
        or no parameter varies among them.
    """
    import numpy as np

    create_trial = optuna.trial.create_trial
    trials = [
        create_trial(value=values[t.number], params=t.params, distributions=t.distributions)
        for t in study.get_trials(deepcopy=False)
        if t.distributions and t.state.name in _FINISHED and values.get(t.number) is not None
    ]
    names = set.intersection(*(set(t.params) for t in trials)) if trials else set()
    params = sorted(n for n in names if len({repr(t.params[n]) for t in trials}) > 1)
    if len(trials) < 2 or not params:
        return {}, len(trials)

    def fit(sample: list, forest_seed: int) -> dict[str, float]:
        view = optuna.create_study(direction=study.direction)
        view.add_trials(sample)
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=forest_seed)
        return optuna.importance.get_param_importances(
            view, evaluator=evaluator, params=params, normalize=True
        )

    point = fit(trials, seed)
    rng = np.random.default_rng(seed)
    draws = {p: [] for p in params}
    for b in range(n_boot):
        sample = [trials[i] for i in rng.integers(0, len(trials), len(trials))]
        try:
            got = fit(sample, seed + 1 + b)
        except (RuntimeError, ValueError):  # a resample in which no parameter varies
            continue
        for p in params:
            draws[p].append(got.get(p, 0.0))
    out = {}
    for p in params:
        low, high = np.percentile(draws[p], [2.5, 97.5]) if draws[p] else (np.nan, np.nan)
        out[p] = (float(point[p]), float(low), float(high))
    return out, len(trials)
