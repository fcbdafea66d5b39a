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

    def importances(self) -> Any:
        """fANOVA parameter importances, seeded: the same study, the same picture."""
        FanovaImportanceEvaluator = optuna.importance.FanovaImportanceEvaluator
        ov = optuna.visualization.matplotlib

        return ov.plot_param_importances(
            self._view,
            evaluator=FanovaImportanceEvaluator(seed=0),
            params=self.params,
            target_name=self.metric,
        )

    def parallel(self) -> Any:
        ov = optuna.visualization.matplotlib

        return ov.plot_parallel_coordinate(self._view, params=self.params, target_name=self.metric)

    def slices(self) -> Any:
        ov = optuna.visualization.matplotlib

        return ov.plot_slice(self._view, params=self.params, target_name=self.metric)
