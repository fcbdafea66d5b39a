"""The report's plots as PNG files: Optuna's matplotlib plots, pandas and scikit-learn displays.

Split from :mod:`bench.report` to keep each module to one concern. Optuna's own plots are drawn by
:mod:`bench.optuna_adapter.plots`; this module lays them out with the rest and saves them. Uses
matplotlib's Agg backend (no display needed) and never imports TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import optuna_adapter as opt
from bench.records import STUDY_CONFUSION, TRIAL_HISTORY

if TYPE_CHECKING:
    import optuna
    import pandas as pd


def _save(axes: Any, path: Path, size: tuple[float, float] | None = None) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    fig = np.ravel(axes)[0].figure
    if size:
        fig.set_size_inches(*size)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _wall_time(study: optuna.Study, metric: str, maximize: bool):
    import matplotlib.pyplot as plt
    import pandas as pd

    trials = opt.trials(study)
    done = [t for t in trials if t.state == "COMPLETE" and t.datetime_complete]
    if not done:
        raise ValueError("no completed trial")
    t0 = min(t.datetime_start for t in trials if t.datetime_start)
    minutes = [(t.datetime_complete - t0).total_seconds() / 60 for t in done]
    series = pd.Series([t.value for t in done], index=minutes, name=metric).sort_index()
    _, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(series.index, series.values, s=12, color="tab:blue", alpha=0.6, label="trial")
    best = series.cummax() if maximize else series.cummin()
    best.plot(ax=ax, drawstyle="steps-post", color="tab:red", label="best so far")
    ax.set(
        xlabel="wall time since the first trial started (minutes)",
        ylabel=metric,
        title="Best so far against wall time",
    )
    ax.legend()
    return ax


def _learning_curves(study: optuna.Study, frame: pd.DataFrame, top_k: int):
    import matplotlib.pyplot as plt
    import pandas as pd
    from matplotlib.ticker import MaxNLocator

    ranked = [int(n) for n in frame.loc[frame["rank"] != "", "trial"]][:top_k]
    by_number = {t.number: t for t in opt.trials(study)}
    histories = {n: by_number[n].user_attrs.get(TRIAL_HISTORY) for n in ranked}
    histories = {n: h for n, h in histories.items() if h and h.get("loss")}
    if not histories:
        raise ValueError("the top trials have no bench.history")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, (n, hist) in enumerate(histories.items()):
        curves = pd.DataFrame({k: v for k, v in hist.items() if k != "learning_rate"})
        curves.index = range(1, len(curves) + 1)
        for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
            for col, style in ((key, "-"), (f"val_{key}", "--")):
                if col in curves:
                    curves[col].plot(
                        ax=ax,
                        style=style,
                        color=f"C{i}",
                        marker=".",
                        label=f"trial {n} {'val' if style == '--' else 'train'}",
                    )
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        ax.set(xlabel="epoch", ylabel=key, title=f"{key}: train (solid) and validation (dashed)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return axes


def _confusion(study: optuna.Study):
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import ConfusionMatrixDisplay

    cm = opt.study_attrs(study).get(STUDY_CONFUSION)
    if not cm:
        raise ValueError("the study has no bench.confusion_matrix (no registered champion yet)")
    matrix = np.asarray(cm["matrix"])
    _, ax = plt.subplots(figsize=(8, 7))
    ConfusionMatrixDisplay(matrix, display_labels=cm["classes"]).plot(
        ax=ax, cmap="Blues", xticks_rotation=45, colorbar=False
    )
    acc = np.trace(matrix) / max(1, matrix.sum())
    ax.grid(False)
    who = cm.get("source") or (f"trial {cm['trial']}" if "trial" in cm else "registered model")
    ax.set_title(f"Champion ({who}) on the test set: accuracy {acc:.4f}")
    return ax


def _at_budget(frame: pd.DataFrame) -> dict[int, float]:
    """Trial number -> its value at the equal budget, for every finished trial that has one."""
    if "at_budget" not in frame.columns or frame.empty:
        return {}
    finished = frame[frame["state"].isin(("COMPLETE", "PRUNED")) & frame["at_budget"].notna()]
    return {int(t): float(v) for t, v in zip(finished["trial"], finished["at_budget"], strict=True)}


def _too_few_for_importances(frame: pd.DataFrame) -> str | None:
    """Why the importances cannot be drawn honestly, or None."""
    from bench.optuna_adapter.plots import MIN_IMPORTANCE_TRIALS

    n = len(_at_budget(frame))
    if n >= MIN_IMPORTANCE_TRIALS:
        return None
    return (
        f"{n} finished trial(s) reached the equal budget, and importances from fewer than "
        f"{MIN_IMPORTANCE_TRIALS} change from one resample to the next; a search's trials are "
        "not a controlled design either: measure what matters with bench.ablate --factors, or "
        "--cross for interactions"
    )


def _importances(study: optuna.Study, frame: pd.DataFrame, metric: str):
    """Each parameter's fANOVA importance for the value at the equal budget, with its bootstrap
    interval and the number of trials behind it."""
    import matplotlib.pyplot as plt
    import numpy as np

    from bench.optuna_adapter.plots import IMPORTANCE_BOOTSTRAPS, importances_at_budget

    got, n = importances_at_budget(study, _at_budget(frame))
    if not got:
        raise ValueError("no parameter varies among the trials that reached the equal budget")
    names = sorted(got, key=lambda p: got[p][0])
    means = np.array([got[p][0] for p in names])
    lows = np.array([got[p][1] for p in names])
    highs = np.array([got[p][2] for p in names])
    _, ax = plt.subplots(figsize=(8, 0.9 + 0.45 * len(names)))
    err = np.vstack([np.clip(means - lows, 0, None), np.clip(highs - means, 0, None)])
    ax.barh(names, means, xerr=np.nan_to_num(err), color="tab:blue", alpha=0.7, capsize=3)
    ax.set_xlabel(f"share of the variance of {metric} at the equal budget (fANOVA)")
    ax.set_title(
        f"{n} finished trials (pruned ones included); bars: 95% intervals over "
        f"{IMPORTANCE_BOOTSTRAPS} resamples",
        fontsize=9,
    )
    ax.set_xlim(0, max(1e-3, float(np.nanmax(highs))) * 1.05)
    ax.grid(axis="x", alpha=0.3)
    return ax


def draw_plots(
    study: optuna.Study, frame: pd.DataFrame, out: Path, top_k: int
) -> tuple[list[tuple[str, Path]], list[str]]:
    """Write each plot as a PNG into ``out``; a plot the study cannot support becomes a note.

    Args:
        study: The study.
        frame: :func:`bench.results.report.trials_frame` of it (its ``rank`` column picks the
            top k).
        out: The folder to write into.
        top_k: How many learning curves to draw.

    Returns:
        ``(title, path)`` of each plot written, and one note per plot skipped.
    """
    import matplotlib

    matplotlib.use("Agg")
    from bench.optuna_adapter import metric_name
    from bench.optuna_adapter.plots import SearchPlots

    metric, maximize = metric_name(study), opt.direction(study) == "maximize"
    search = SearchPlots(study, metric)
    few = (
        f"needs >= 2 completed sampled trials with varying parameters (has {search.n_sampled})"
        if search.n_sampled < 2 or not search.params
        else None
    )
    plots = [  # (title, file, draw, figure size or None, why it cannot be drawn or None)
        (
            "Optimization history",
            "history.png",
            search.history,
            (8, 4.5),
            None,
        ),
        (
            "Best so far against wall time",
            "wall_time.png",
            lambda: _wall_time(study, metric, maximize),
            None,
            None,
        ),
        (
            "Parameter importances (fANOVA) at the equal budget, 95% bootstrap intervals",
            "importances.png",
            lambda: _importances(study, frame, metric),
            None,
            _too_few_for_importances(frame),
        ),
        (
            "Parallel coordinates",
            "parallel.png",
            search.parallel,
            (12, 5),
            few,
        ),
        (
            "Slices",
            "slice.png",
            search.slices,
            (3.2 * max(1, len(search.params)), 3.6),
            few,
        ),
        (
            f"Learning curves of the top {top_k}",
            "learning_curves.png",
            lambda: _learning_curves(study, frame, top_k),
            None,
            None,
        ),
        (
            "Champion confusion matrix (test set)",
            "confusion_matrix.png",
            lambda: _confusion(study),
            None,
            None,
        ),
    ]
    images, notes = [], []
    for title, name, draw, size, skip in plots:
        if skip:
            notes.append(f"{title}: skipped, {skip}")
            continue
        try:
            _save(draw(), out / name, size)
        except Exception as exc:  # noqa: BLE001 - one missing plot must not cost the report
            import matplotlib.pyplot as plt

            plt.close("all")
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            notes.append(f"{title}: skipped, {first}")
            continue
        images.append((title, out / name))
    return images, notes
