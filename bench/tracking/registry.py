"""The champion rule, in one place: register a chosen model and decide whether it is champion.

A model version is identified by its tags (study, batch, job), so registering again after a crash
finds the version made before it instead of adding a duplicate. Promotion compares *selection*
scores, never test accuracy: the new version becomes ``@champion`` when there is none, when the
champion was chosen on another dataset, or when its validation score is at least the champion's.
The test accuracy is stored beside it to report, not to choose.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from bench.faults import kill_point

if TYPE_CHECKING:
    from bench.tracking._client import Tracker

ALIAS = "champion"


def _score(tags: dict[str, str], key: str) -> float:
    try:
        return float(tags.get(key, "nan"))
    except ValueError:
        return math.nan


def register_champion(
    tracker: Tracker,
    model_uri: str,
    name: str,
    identity: dict[str, Any],
    tags: dict[str, Any],
    selection_score: float,
    dataset_digest: str,
) -> dict[str, Any]:
    """Register ``model_uri`` under ``name`` (once per identity) and apply the champion rule.

    Args:
        tracker: The MLflow access of this process.
        model_uri: The logged model (``models:/m-...``).
        name: Registered model name.
        identity: Tags that identify this registration (study, batch, job); reused on rerun.
        tags: Further tags (test accuracy, source, epochs...).
        selection_score: The validation score the model was chosen by (higher is better).
        dataset_digest: Scores are comparable only on the same dataset.

    Returns:
        ``{"version", "champion_version", "promoted", "reason"}``.
    """
    version = tracker.find_version(name, identity)
    if version is None:
        version = tracker.register(
            model_uri,
            name,
            {
                **identity,
                **tags,
                "selection_score": selection_score,
                "dataset_digest": dataset_digest,
            },
        )
    kill_point("register")
    champion = tracker.champion(name, ALIAS)
    if champion is not None and str(champion.version) == str(version.version):
        return {
            "version": str(version.version),
            "champion_version": str(version.version),
            "promoted": True,
            "reason": "already champion",
        }
    if champion is None:
        promoted, reason = True, "no champion yet"
    elif champion.tags.get("dataset_digest") != dataset_digest:
        promoted, reason = True, "the champion was chosen on another dataset"
    else:
        old = _score(champion.tags, "selection_score")
        promoted = not old > selection_score  # a champion without a score loses
        reason = (
            f"validation score {selection_score:.4f} vs champion's {old:.4f}"
            if math.isfinite(old)
            else "the champion has no validation score"
        )
    tracker.tag_version(
        name,
        version.version,
        {
            "promoted": str(promoted).lower(),
            "promotion_reason": reason,
            "previous_champion_version": str(champion.version) if champion else "none",
        },
    )
    if promoted:
        tracker.set_alias(name, version.version, ALIAS)
    return {
        "version": str(version.version),
        "champion_version": str(version.version if promoted else champion.version),
        "promoted": promoted,
        "reason": reason,
    }
