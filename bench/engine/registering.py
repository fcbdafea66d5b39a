"""The steps that end a batch by registering a model: a refit's registration, the ensemble
(average the refit members, log, register), and registering an already trained model.

Functions of the slot's :class:`~bench.engine.worker.Worker` (its store, tracker, dataset and
study); each side effect is made only while the attempt still owns its job (``still_owns``).
Registration needs the tracking store: when it fails the job goes back to waiting
(:func:`registration`) instead of losing an attempt to an outage.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from bench import optuna_adapter as opt
from bench.engine.ledger import job_tags
from bench.errors import redact
from bench.records import (
    COMPLETED,
    DONE,
    REFIT,
    STUDY_CONFUSION,
    Job,
    JobResult,
)
from bench.results.champion import (
    Member,
    member_params,
    member_tags,
    run_note,
    version_description,
)
from bench.tracking.registry import register_champion, selection_procedure
from bench.training import average_models, confusion, evaluate

if TYPE_CHECKING:
    from bench.data import Dataset
    from bench.engine.interrupts import Interrupts
    from bench.engine.ledger import Ledger
    from bench.engine.store import JobStore
    from bench.records import Batch
    from bench.space import Space
    from bench.tracking import Tracker


class Slot(Protocol):
    """What these steps use of the slot's worker (:class:`bench.engine.worker.Worker`, which
    calls them: this module does not import it)."""

    store: JobStore
    tracker: Tracker
    ledger: Ledger
    dataset: Dataset
    batch: Batch
    space: Space
    study: Any
    token: str
    interrupts: Interrupts

    def still_owns(self, job: Job, live: Any = None) -> bool: ...


def register_refit(w: Slot, job: Job, live, result, out: JobResult) -> bool:
    """After a refit trained: make sure its model is in MLflow, register it (an ensemble's
    member is registered by the ensemble job instead). False when the attempt was given up."""
    member = is_member(job)
    with registration(w, job):
        if job.run_id is None:
            raise RuntimeError("the refit's run could not be created")
        if out.model_uri is None:  # the model must be in MLflow to be registered or loaded
            info = w.tracker.log_model(
                job.run_id, result.model, w.dataset.image_shape, w.dataset.n_classes
            )
            out.model_uri = info.model_uri
        if not member:
            if not w.still_owns(job, live):  # stopped while it evaluated or logged
                return False
            out.registered = register(w, job, out)
    if not member:
        store_confusion(w, job, result.model)
    return True


def register(w: Slot, job: Job, out: JobResult) -> dict:

    s = w.batch.settings
    info = job.spec.info
    members = info.get("members") or []
    refit = job.purpose == REFIT or bool(members)
    metric = w.space.metric.removeprefix("val_")
    parts = members_of(w, job, out)
    description = version_description(
        parts,
        refit=refit,
        train_images=len(w.dataset.x_train),
        metric=w.space.metric,
        score=info.get("selection_score"),
        test_accuracy=out.test_accuracy,
        test_loss=out.test_loss,
    )
    registered = register_champion(
        w.tracker,
        out.model_uri,
        s["model_name"],
        identity=identity(w, job),
        tags={
            "test_accuracy": out.test_accuracy,
            "test_loss": out.test_loss,
            f"val_{metric}": info.get("selection_score"),
            "source": "ensemble" if len(members) > 1 else REFIT if refit else job.purpose,
            "chosen_from": info.get("source"),
            "refit": "true" if refit else "false",
            "refit_epochs": (
                info["refit_epochs"] if members else out.epochs_run if refit else None
            ),
            "ensemble_size": len(members) if members else None,
            "ensemble_test_accuracies": (
                _json([m.get("test_accuracy") for m in members]) if members else None
            ),
            "dataset": w.dataset.name,
            "class_names": _json(list(w.dataset.class_names)),
            "space_hash": w.space.search_hash,
        },
        selection_score=_score_or_nan(info.get("selection_score")),
        dataset_digest=w.dataset.digest,
        metric=w.space.metric,
        direction=w.space.direction,
        procedure=selection_procedure(
            info.get("selection"), w.space.train.validation_size, w.space.train.cv_folds
        ),
        description=description,
    )
    describe_run(w, job, parts, description, registered)
    return registered


def members_of(w: Slot, job: Job, out: JobResult | None = None) -> list:
    """The configurations a refit, ensemble or register job's model is made of, with the
    runs that trained and scored them (:class:`bench.results.champion.Member`)."""

    by_key = {j.key: j for j in w.store.jobs(w.batch.id)}

    def run_of(key: str | None) -> str | None:
        found = by_key.get(key) if key else None
        return found.run_id if found else None

    info = job.spec.info
    if info.get("members"):
        parts = []
        for m in info["members"]:
            refit = by_key.get(m["job"])
            parts.append(
                Member(
                    source=m["source"],
                    config=(refit.spec.config or {}) if refit else {},
                    epochs=m.get("refit_epochs"),
                    run_id=refit.run_id if refit else None,
                    source_run_id=run_of(m["source"]),
                    test_accuracy=m.get("test_accuracy") if len(info["members"]) > 1 else None,
                    selection=refit.spec.info.get("selection") if refit else None,
                )
            )
        return parts
    source = info.get("source") or job.key
    config = job.spec.config or (out.config if out else {}) or {}
    how = info.get("selection")
    if job.purpose == REFIT:
        epochs = out.epochs_run if out else None
        return [Member(source, config, epochs, job.run_id, run_of(source), selection=how)]
    # --no-refit: the search run's own model is registered
    found = by_key.get(source)
    epochs = found.result.epochs_run if found and found.result else None
    return [Member(source, config, epochs, run_of(source), None, selection=how)]


def describe_run(w: Slot, job: Job, parts: list, description: str, registered: dict) -> None:
    """Put the sentence and links to the members' runs on the registered model's run, as
    its MLflow note (the run page's description); a failure costs only the note."""

    run_id = job.run_id or (parts[0].run_id if len(parts) == 1 else None)
    if not run_id:
        return
    name = w.batch.settings["model_name"]
    champion = registered.get("champion_version") == registered.get("version")
    words = f"{name} version {registered.get('version')}" + (" (champion)" if champion else "")
    note = run_note(parts, w.tracker.experiment_id, description, words, here=run_id)
    w.tracker.safe(w.tracker.set_tags, run_id, {"mlflow.note.content": note})


def store_confusion(w: Slot, job: Job, model) -> None:
    """The registered model's test confusion matrix, for bench.report (reported only)."""

    opt.set_study_attr(
        w.study,
        STUDY_CONFUSION,
        {
            "job": job.key,
            "source": job.spec.info.get("source"),
            "classes": list(w.dataset.class_names),
            "matrix": confusion(model, w.dataset),
        },
    )


@contextlib.contextmanager
def registration(w: Slot, job: Job):
    """Registration needs the tracking store: when it fails, the job goes back to waiting
    (no attempt is lost to an outage) and this worker stops, so the batch stays open for a
    rerun or ``bench.register`` instead of finishing without a champion."""
    try:
        yield
    except Exception as exc:
        w.store.release(job.id, w.token, f"registration failed: {redact(exc, 200)}")
        raise RuntimeError(
            f"registering the champion failed ({type(exc).__name__}: {redact(exc, 200)}); "
            "every trial is kept; when the tracking store answers, rerun the same command or "
            f"python -m bench.register --study-name {w.batch.study}"
        ) from None


def identity(w: Slot, job: Job) -> dict[str, Any]:
    """Tags that identify a registration, so a rerun finds it instead of adding another."""
    return {
        "study_name": w.batch.study,
        "batch": w.batch.number,
        "batch_uid": w.batch.settings.get("uid", ""),
        "job": job.key,
    }


def run_ensemble(w: Slot, job: Job) -> None:
    """Average the refit members into one model, log it in a run of its own, register it.

    A rerun after a crash that followed the registration never gets here (``run_job`` finds
    that version by its identity tags); after a crash before registering, the rerun ends the
    dead attempt's run as FAILED and starts again from the members' logged models.
    """

    members = job.spec.info["members"]
    if job.run_id:  # an earlier attempt's run, not registered: replaced
        w.tracker.safe(w.tracker.end_run, job.run_id, "FAILED")
    with registration(w, job):
        models = [w.tracker.load_model(m["model_uri"]) for m in members]
    model = average_models(models)  # a Keras error here is a failure, not an outage
    if not w.still_owns(job):
        return
    parts = members_of(w, job)
    with registration(w, job):
        run_id = w.tracker.start_child(
            w.batch.parent_run_id,
            f"ensemble-of-{len(members)}",
            {
                "purpose": "ensemble",
                "members": ",".join(m["source"] for m in members),
                "refit_epochs": job.spec.info["refit_epochs"],
                "dataset": w.dataset.name,
                **member_params(parts),  # what it averages, without opening other runs
            },
            {
                **job_tags(job),
                "study_name": w.batch.study,
                "refit": "true",
                **member_tags(parts),
            },
        )
        w.store.update_owned(job.id, w.token, run_id=run_id)
        info = w.tracker.log_model(run_id, model, w.dataset.image_shape, w.dataset.n_classes)
    run_register(w, replace(job, run_id=run_id), info.model_uri, model)


def run_register(w: Slot, job: Job, uri: str, model=None) -> None:
    """Register an already trained model: the chosen search run's own (``--no-refit``), the
    averaged ensemble (``model`` given, already in memory), or the one a refit or ensemble
    registered before its worker died."""

    if model is None:
        with registration(w, job):
            model = w.tracker.load_model(uri)
    loss, acc = evaluate(model, w.dataset)
    epochs = int(job.spec.train.get("max_epochs", 0)) if job.purpose == REFIT else 0
    out = JobResult(
        COMPLETED,
        job.spec.info.get("selection_score"),
        max(0, epochs - 1),
        epochs,
        0.0,
        0,
        0.0,
        job.spec.config or {},
        test_accuracy=acc,
        test_loss=loss,
        model_uri=uri,
    )
    with w.interrupts.critical():
        if not w.still_owns(job):
            return
        with registration(w, job):
            out.registered = register(w, job, out)
        store_confusion(w, job, model)
        if w.store.finish(job.id, w.token, DONE, out):
            w.ledger.sync(w.store.get_job(job.id), w.token)


def is_member(job: Job) -> bool:
    """A refit that is one member of an ensemble: the ensemble, not the member, is registered."""
    return job.spec.info.get("member") is not None


def _json(value: Any) -> str:
    return json.dumps(value)


def _score_or_nan(value: Any) -> float:
    """A selection score; NaN when missing, so it never wins the champion rule."""
    return math.nan if value is None else float(value)
