"""After a batch: evaluate the study's best model once on the test set, register it, and move the
``champion`` alias only when it beats the current champion's test accuracy.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

    from bench.data import Dataset
    from bench.space import Space
    from bench.study import Batch
    from bench.tracking import Tracker
    from bench.worker import SearchConfig

log = logging.getLogger("bench")
ALIAS = "champion"
CONFUSION_ATTR = (
    "bench.confusion_matrix"  # on the study: the registered best model's test confusion
)


def best_logged_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best completed trial that has a logged model."""
    from optuna.trial import TrialState

    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("bench.model_uri")
    ]
    if not done:
        return None
    sign = -1 if study.direction.name == "MAXIMIZE" else 1
    return min(done, key=lambda t: (sign * t.value, t.number))


def evaluate(model, dataset: Dataset) -> tuple[float, float]:
    """Test loss and accuracy of a model on the dataset's test split."""
    loss, acc = model.evaluate(dataset.x_test, dataset.y_test, batch_size=2048, verbose=0)
    return float(loss), float(acc)


def confusion(model, dataset: Dataset) -> list[list[int]]:
    """Test-set confusion matrix (rows: true class, columns: predicted class)."""
    import numpy as np

    predicted = model.predict(dataset.x_test, batch_size=2048, verbose=0).argmax(axis=1)
    k = dataset.n_classes
    counts = np.bincount(dataset.y_test * k + predicted, minlength=k * k).reshape(k, k)
    return counts.tolist()


def finalize(
    study: optuna.Study,
    batch: Batch,
    tracker: Tracker,
    dataset: Dataset,
    cfg: SearchConfig,
    space: Space,
) -> dict[str, Any]:
    """Evaluate and register the study's best model; returns a summary for the batch record."""
    best = best_logged_trial(study)
    if best is None:
        log.warning("no completed trial with a logged model; nothing to register")
        return {"registered": None}
    summary: dict[str, Any] = {"best_trial": best.number, "best_value": best.value}
    if not cfg.register:
        return summary
    uri = best.user_attrs["bench.model_uri"]
    identity = {"study_name": cfg.study_name, "trial_number": str(best.number)}
    version = tracker.find_version(cfg.model_name, identity)
    if version is not None:
        test_acc = float(version.tags.get("test_accuracy", "nan"))
        test_loss = float(version.tags.get("test_loss", "nan"))
    else:
        model = tracker.load_model(uri)
        test_loss, test_acc = evaluate(model, dataset)
        matrix = confusion(model, dataset)
        study.set_user_attr(
            CONFUSION_ATTR,
            {"trial": best.number, "classes": list(dataset.class_names), "matrix": matrix},
        )
        tracker.safe(
            tracker.log_text,
            batch.parent_run_id,
            json.dumps({"classes": list(dataset.class_names), "matrix": matrix}),
            "champion/confusion_matrix.json",
        )
        model_id = uri.split("/", 1)[1].lstrip("/") if uri.startswith("models:/") else None
        metrics = {"test_accuracy": test_acc, "test_loss": test_loss}
        tracker.log_metrics(batch.parent_run_id, metrics)
        run_id = best.user_attrs.get("bench.mlflow_run_id")
        if run_id and model_id:
            tracker.safe(tracker.log_metrics, run_id, metrics, 0, model_id)
        version = tracker.register(
            uri,
            cfg.model_name,
            {
                **identity,
                "test_accuracy": test_acc,
                "test_loss": test_loss,
                f"val_{space.metric.removeprefix('val_')}": best.value,
                "dataset": dataset.name,
                "class_names": json.dumps(list(dataset.class_names)),
                "dataset_digest": dataset.digest,
                "space_hash": space.search_hash,
            },
        )
    champion = tracker.champion(cfg.model_name)
    if champion is not None and str(champion.version) == str(version.version):
        promoted = False  # already the champion (a rerun whose best trial did not change)
    else:
        old = float(champion.tags.get("test_accuracy", "nan")) if champion else None
        promoted = champion is None or not (old >= test_acc)  # a champion without a score loses
        tags = {
            "previous_champion_test_accuracy": "none" if old is None else old,
            "previous_champion_version": str(champion.version) if champion else "none",
        }
        if champion is not None and champion.tags.get("source") == "finalize":
            # its score is the best of several seeds (biased upward) and it was chosen on a
            # mean over seeds: one lucky run must not displace it; --finalize compares fairly
            promoted = False
            tags["not_promoted_reason"] = (
                "the champion was chosen by bench.report --finalize "
                "over seeds; rerun --finalize to compare"
            )
        tracker.tag_version(
            cfg.model_name, version.version, {**tags, "promoted": str(promoted).lower()}
        )
        if promoted:
            tracker.set_alias(cfg.model_name, version.version, ALIAS)
    current = str(version.version if promoted or champion is None else champion.version)
    summary.update(
        {
            "registered": str(version.version),
            "test_accuracy": test_acc,
            "test_loss": test_loss,
            "champion_version": current,
            "promoted": promoted,
        }
    )
    return summary
