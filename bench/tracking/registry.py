"""The champion rule, in one place: register a chosen model and decide whether it is champion.

A model version is identified by its tags (study, batch, job), so registering again after a crash
finds the version made before it instead of adding a duplicate. Promotion compares *selection*
scores, never test accuracy, and only like with like. Each version records what its score is:
``selection_metric`` (``val_accuracy``, ``val_loss``), ``selection_direction`` (``maximize``,
``minimize``) and ``selection_procedure`` (one search run's best, a mean over N re-evaluation
seeds, an ensemble's member mean; with the validation split). The new version becomes
``@champion`` when

- there is none, or the champion was chosen on another dataset (its scores mean nothing here);
- the champion records no metric or score (registered by hand or by an older bench);
- both were chosen by the same metric and procedure and the new score is at least as good in
  the metric's direction (``>=`` for an accuracy, ``<=`` for a loss).

A different metric or procedure is *not comparable*: the champion stays and the new version's
``promotion_reason`` says why (move the alias by hand, or re-evaluate both the same way). A NaN
score never takes the alias from a champion. The test accuracy is stored beside it to report,
not to choose.

Two batches may register under one name at once. The read-compare-move is serialized so the
better one always ends champion (see :func:`_settle_champion`).
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from bench.faults import kill_point

if TYPE_CHECKING:
    from bench.tracking._client import Tracker

ALIAS = "champion"
METRIC_TAG, DIRECTION_TAG, PROCEDURE_TAG = (
    "selection_metric",
    "selection_direction",
    "selection_procedure",
)
REPAIR_ROUNDS = 50  # a registration race settles in two or three; the cap only bounds a storm


def selection_procedure(how: str | None, validation_size: float, cv_folds: int) -> str:
    """What a selection score measures, as stored on the version: how it was computed and on
    which validation split (``"mean over 3 re-evaluation seeds; holdout 0.1"``)."""
    split = f"{cv_folds}-fold cross-validation" if cv_folds > 1 else f"holdout {validation_size}"
    return f"{how or 'one search run'}; {split}"


def _score(tags: dict[str, str], key: str = "selection_score") -> float:
    try:
        return float(tags.get(key, "nan"))
    except ValueError:
        return math.nan


def decide(champion: dict[str, str] | None, new: dict[str, str]) -> tuple[bool, str]:
    """The champion rule (module docstring) on two versions' tags.

    Args:
        champion: The current champion's tags; None when there is no champion.
        new: The candidate's tags (``selection_score``, ``dataset_digest`` and the three
            ``selection_*`` tags).

    Returns:
        ``(promoted, reason)``.
    """
    score = _score(new)
    if champion is None:
        return True, "no champion yet"
    if champion.get("dataset_digest") != new.get("dataset_digest"):
        return True, "the champion was chosen on another dataset"
    old = _score(champion)
    if not math.isfinite(old) or champion.get(METRIC_TAG) is None and _legacy_metric(champion):
        return True, "the champion records no comparable validation score"
    if not math.isfinite(score):
        return False, f"this version's validation score is {score}; the champion stays"
    mine = (new.get(METRIC_TAG), new.get(DIRECTION_TAG))
    theirs = (_metric(champion), champion.get(DIRECTION_TAG) or "maximize")
    if mine != theirs:
        return False, (
            f"not comparable: chosen by {mine[0]} ({mine[1]}), the champion by {theirs[0]} "
            f"({theirs[1]}); the champion stays"
        )
    procedure, champion_procedure = new.get(PROCEDURE_TAG), champion.get(PROCEDURE_TAG)
    if procedure and champion_procedure and procedure != champion_procedure:
        return False, (
            f"not comparable: scored as {procedure}, the champion as {champion_procedure}; "
            "the champion stays (re-evaluate both the same way to compare)"
        )
    better = score >= old if mine[1] == "maximize" else score <= old
    return better, f"{mine[0]} {score:.4f} vs champion's {old:.4f}"


def _metric(tags: dict[str, str]) -> str:
    """A version's selection metric; an older bench stored the score as ``val_<metric>``."""
    return tags.get(METRIC_TAG) or ("val_loss" if "val_loss" in tags else "val_accuracy")


def _legacy_metric(tags: dict[str, str]) -> bool:
    """An older bench's version with neither a metric tag nor a ``val_*`` score tag."""
    return "val_loss" not in tags and "val_accuracy" not in tags


def register_champion(
    tracker: Tracker,
    model_uri: str,
    name: str,
    identity: dict[str, Any],
    tags: dict[str, Any],
    selection_score: float,
    dataset_digest: str,
    *,
    metric: str = "val_accuracy",
    direction: str = "maximize",
    procedure: str | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """Register ``model_uri`` under ``name`` (once per identity) and apply the champion rule.

    Args:
        tracker: The MLflow access of this process.
        model_uri: The logged model (``models:/m-...``).
        name: Registered model name.
        identity: Tags that identify this registration (study, batch, job); reused on rerun.
        tags: Further tags (test accuracy, source, epochs...).
        selection_score: The validation score the model was chosen by.
        dataset_digest: Scores are comparable only on the same dataset.
        metric: What ``selection_score`` is (``val_accuracy``, ``val_loss``).
        direction: ``maximize`` or ``minimize``: which way is better for ``metric``.
        procedure: How the score was computed (:func:`selection_procedure`); None: unrecorded,
            compared with any procedure.
        description: The version's description (how the model was made, in a sentence); set
            again on a rerun, so a crash between registering and describing leaves no gap.

    Returns:
        ``{"version", "champion_version", "promoted", "reason", "selection_metric",
        "selection_direction", "selection_procedure"}``.
    """
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction must be maximize or minimize, got {direction!r}")
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
                METRIC_TAG: metric,
                DIRECTION_TAG: direction,
                PROCEDURE_TAG: procedure,
            },
        )
    if description is not None and getattr(version, "description", None) != description:
        tracker.describe_version(name, version.version, description)
    kill_point("register")
    out = {METRIC_TAG: metric, DIRECTION_TAG: direction, PROCEDURE_TAG: procedure}
    lock = getattr(tracker, "lock_path", _lock_path(tracker.uri))
    if lock is not None:
        with _file_lock(lock, name):
            return {**out, **_move_if_better(tracker, name, version)}
    return {**out, **_settle_champion(tracker, name, version)}


def _move_if_better(tracker: Tracker, name: str, version) -> dict[str, Any]:
    """Read the champion, compare, move the alias: the caller holds the lock."""
    champion = tracker.champion(name, ALIAS)
    if champion is not None and str(champion.version) == str(version.version):
        return _result(version.version, version.version, True, "already champion")
    promoted, reason = decide(dict(champion.tags) if champion else None, dict(version.tags))
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
    return _result(version.version, version.version if promoted else champion.version,
                   promoted, reason)  # fmt: skip


def _result(version, champion_version, promoted: bool, reason: str) -> dict[str, Any]:
    return {
        "version": str(version),
        "champion_version": str(champion_version),
        "promoted": promoted,
        "reason": reason,
    }


# ---------------------------------------------------------------- serializing the alias move


def _lock_path(uri: str) -> str | None:
    """A local sqlite store is locked by a file beside it; other stores have no shared file."""
    if uri.startswith("sqlite:///"):
        return os.path.abspath(uri[len("sqlite:///") :]) + ".champion.lock"
    return None


@contextlib.contextmanager
def _file_lock(path: str, name: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``, held while one registration reads, compares and
    moves ``name``'s alias.

    Every process that registers into a local sqlite store sees the same file beside it, and the
    kernel releases a ``flock`` when its holder's descriptor closes, including when the process
    is killed (``kill -9``, the OOM killer): a dead registrant never leaves the alias locked.
    Locks are per open file description, so threads of one process exclude each other too. All
    model names share one file: registrations are rare and take milliseconds.
    """
    del name  # one lock for the store
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _settle_champion(tracker: Tracker, name: str, version) -> dict[str, Any]:
    """The alias move for a store no OS lock covers (an MLflow server, a database URL).

    MLflow has no compare-and-set (setting an alias or a tag is a plain write), so a registered
    model tag cannot act as a guard that really holds. Instead the champion is made a function of
    the stored versions alone: the rule (:func:`decide`) is replayed over every version carrying a
    selection score, in version order, starting from the first. Each registrant lists the
    versions, sets the alias to the replay's result, lists again and repeats until the list it
    computed from is still the list after its write. Why this holds: a version's selection tags
    are written with the version, atomically. Take the last alias write; its writer listed after
    that write and saw the same versions it computed from, so every version created before that
    second listing is in its result. A version created after it has a registrant that lists,
    computes and writes later still: that write would be the last one. So the last write is the
    replay over all versions, whoever wins the race. A registrant that dies before its write
    leaves the alias to the others (or to the replay of the next registration).

    The cost: on such a store a registration recomputes the champion from the versions' tags, so
    an alias moved by hand is replaced by the replay's choice at the next registration.
    """
    computed: list[tuple[str, str]] | None = None
    target = None
    for _ in range(REPAIR_ROUNDS):
        versions = tracker.client.search_model_versions(f"name = '{_quote(name)}'")
        seen = sorted((str(v.version), v.tags.get("selection_score", "")) for v in versions)
        if seen == computed:
            break
        computed = seen
        target, reason = _replay(versions, version)
        current = tracker.champion(name, ALIAS)
        if target is not None and (current is None or str(current.version) != target):
            with contextlib.suppress(Exception):  # a concurrent first write; the next round sees it
                tracker.set_alias(name, target, ALIAS)
        time.sleep(0.01)  # let a concurrent registration's write land before listing again
    promoted = target == str(version.version)
    tracker.tag_version(
        name,
        version.version,
        {"promoted": str(promoted).lower(), "promotion_reason": reason},
    )
    return _result(version.version, target, promoted, reason)


def _replay(versions, mine) -> tuple[str | None, str]:
    """The champion the rule makes of ``versions`` taken in version order, and the rule's reason
    about ``mine`` when it was met."""
    champion: dict[str, str] | None = None
    champion_version: str | None = None
    reason = "no champion yet"
    for v in sorted(versions, key=lambda v: int(v.version)):
        tags = dict(v.tags)
        if "selection_score" not in tags:
            continue  # not chosen by bench's rule
        promoted, why = decide(champion, tags)
        if str(v.version) == str(mine.version):
            reason = why
        if promoted:
            champion, champion_version = tags, str(v.version)
    if champion_version != str(mine.version) and reason.startswith("no champion"):
        reason = f"version {champion_version} is champion"
    return champion_version, reason


def _quote(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("'", "\\'")
