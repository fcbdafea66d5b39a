"""A slot's worker: runs one job of a batch at a time, as its driver hands them out.

A slot keeps TensorFlow, the dataset and its splits loaded between jobs. For each job the driver
starts an attempt (a fresh token on the job in the store) and the slot runs it: configure (a
search job asks Optuna for its trial), train with per-epoch tracking and pruning, record the
result, mirror it (:class:`~bench.engine.ledger.Ledger`). Every write and every side effect that
another attempt must never see (the result, a model logged, a version registered, the alias) is
fenced by the attempt's token: once the driver has given the attempt up, they are refused.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, replace
from typing import Any

from bench import data
from bench import optuna_adapter as opt
from bench.engine.interrupts import Interrupts
from bench.engine.ledger import Ledger, job_tags, trial_attrs
from bench.engine.store import JobStore
from bench.errors import BenchError, redact
from bench.faults import kill_point
from bench.records import (
    ABLATION,
    ALL,
    BASELINE,
    COMPLETED,
    DONE,
    ENSEMBLE,
    FAILED,
    FINAL,
    REEVAL,
    REFIT,
    REGISTER,
    RUNNING,
    SEARCH,
    STUDY_CONFUSION,
    TRIAL_BATCH,
    TRIAL_JOB,
    TRIAL_REASON,
    Job,
    JobResult,
    is_ensemble,
)
from bench.results.champion import (
    Member,
    member_params,
    member_tags,
    run_note,
    version_description,
)
from bench.space import flat_config
from bench.tracking import Tracker
from bench.tracking.registry import register_champion, selection_procedure
from bench.training import (
    average_models,
    configure_threads,
    confusion,
    evaluate,
    train,
)

log = logging.getLogger("bench")
# jobs whose test accuracy is measured: reported, never used to choose
TEST_SCORED = (BASELINE, REEVAL, ABLATION, REFIT, REGISTER, ENSEMBLE)


@dataclass(frozen=True)
class WorkerSettings:
    """What a slot needs; plain values so it crosses process (and machine) boundaries."""

    storage: str
    tracking_uri: str
    batch_id: int
    threads: int | None = None
    tensorboard_dir: str | None = None


class Worker:
    """Runs jobs of one batch; create once per slot (data, stores, tracker are reused)."""

    def __init__(self, settings: WorkerSettings, interrupts: Interrupts | None = None):
        # bench.engine imports this module at its top: a top-level import here would be a cycle
        from bench.engine import batch_space, data_mismatch

        configure_threads(settings.threads)
        self.settings = settings
        self.interrupts = interrupts or Interrupts()
        self.store = JobStore(settings.storage)
        self.batch = self.store.get_batch(settings.batch_id)
        s = self.batch.settings
        self.space = batch_space(s)  # the copy stored with the batch, not the opener's path
        self.dataset = data.load_dataset(s["dataset"], s.get("data_dir"))
        if s.get("dataset_digest") and self.dataset.digest != s["dataset_digest"]:
            raise BenchError(data_mismatch(self.batch, self.dataset.digest))  # before any take
        self.study = opt.open_study(
            self.batch.study, settings.storage, self.space, s["seed"], record_space=False
        )
        self.tracker = Tracker(settings.tracking_uri, s["experiment"])
        self.ledger = Ledger(self.store, self.batch, self.study, self.tracker, self.space.metric)
        self.token = ""  # the running attempt's
        self._splits: dict[Any, Any] = {}

    def run_one(self, job_id: int, token: str) -> None:
        """Run the attempt ``token`` of job ``job_id`` (started by the driver) to its record.

        Raises KeyboardInterrupt when interrupted (the job is then released, not counted as a
        death), RuntimeError when the champion's registration failed (the job is released).
        """
        self.token = token
        job = self.store.get_job(job_id)
        if job.state != RUNNING or (job.owner or {}).get("token") != token:
            return  # given up before it started here
        with self.interrupts.cooperative():
            self.run_job(job)

    # ------------------------------------------------------------ one job

    def _split(self, job: Job):

        spec = self._train_spec(job)
        if job.spec.split == ALL:
            key = ALL
            if key not in self._splits:
                self._splits[key] = data.full_split(self.dataset)
        else:
            key = (spec.validation_size, int(self.batch.settings["seed"]))
            if key not in self._splits:
                self._splits[key] = data.validation_split(self.dataset, *key)
        return self._splits[key]

    def _train_spec(self, job: Job):
        overrides = {k: v for k, v in job.spec.train.items() if k != "schedule_epochs"}
        return replace(self.space.train, **overrides)

    def run_job(self, job: Job) -> None:

        # a previous attempt (died, interrupted or stopped by an outage) may have registered
        again = job.attempts > 1 or job.run_id is not None
        if job.purpose in FINAL and again and not _is_member(job):
            # a refit or an ensemble whose worker died after registering: the registered model
            # is the result
            version = self.tracker.safe(
                self.tracker.find_version, self.batch.settings["model_name"], self._identity(job)
            )
            if version is not None:
                return self._run_register(job, version.source)
        if is_ensemble(job.spec):
            return self._run_ensemble(job)
        if job.purpose == REGISTER:
            return self._run_register(job, job.spec.info["model_uri"])
        live, config = self._configure(job)
        spec = self._train_spec(job)
        params = {
            **flat_config(config),
            **_train_params(spec),
            "seed": job.spec.seed,
            "dataset": self.dataset.name,
            "purpose": job.purpose,
            "split": job.spec.split,
            **{k: v for k, v in job.spec.info.items() if k in ("factor", "level", "source")},
        }
        tags = {
            **job_tags(job),
            "study_name": self.batch.study,
            "space_hash": self.space.search_hash,
            "dataset_digest": self.dataset.digest,
            "trial_number": live.number if live else job.trial_number,
            "baseline": (job.spec.info.get("baseline") or {}).get("name"),
            "refit": "true" if job.purpose == REFIT else None,
            "refit_epochs": spec.max_epochs if job.purpose == REFIT else None,
        }
        name = f"trial-{live.number}" if live else job.key
        run_id = self.tracker.safe(
            self.tracker.start_child, self.batch.parent_run_id, name, params, tags
        )
        kill_point("start-run")
        if run_id:
            self.store.update_owned(job.id, self.token, run_id=run_id)
            job = replace(job, run_id=run_id)
        failures = self.tracker.failures
        prune = live is not None

        def on_epoch(epoch: int, metrics: dict[str, float]) -> bool:
            # queued, sent in the background; once one fails, this job's other epochs are not
            if run_id is not None and self.tracker.failures == failures:
                self.tracker.log_metrics_later(run_id, metrics, epoch)
            if epoch == 1:
                kill_point("train" if job.purpose == SEARCH else "reeval")
            value = metrics.get(self.space.metric)
            if prune and value is not None:
                live.report(value, epoch)
                return live.should_prune()
            return False

        try:
            result = self._fit(job, config, spec, on_epoch)
        except KeyboardInterrupt:
            with self.interrupts.critical():
                self.tracker.flush()  # its epochs land before its run is ended
                self.store.release(job.id, self.token, "interrupted by the user (SIGINT/SIGTERM)")
                if live:
                    opt.tell(self.study, live.number, "FAIL")
                if run_id:
                    self.tracker.safe(self.tracker.end_run, run_id, "KILLED")
            raise
        except Exception as exc:  # noqa: BLE001 - a failing configuration fails alone
            lines = redact(exc).strip().splitlines()
            reason = redact(f"{type(exc).__name__}: {lines[0] if lines else ''}", limit=300)
            log.warning("job %s failed: %s", job.key, reason)
            with self.interrupts.critical():
                self.tracker.flush()
                if live:
                    live.set_attrs({TRIAL_REASON: reason})
                failed = JobResult(FAILED, None, 0, 0, 0.0, 0, 0.0, config, reason=reason)
                if self.store.finish(job.id, self.token, FAILED, failed, reason):
                    # its replacement comes from design.next_jobs
                    self.ledger.sync(self.store.get_job(job.id), self.token)
                elif live:
                    opt.tell(self.study, live.number, "FAIL")
            return
        with self.interrupts.critical():
            self.tracker.flush()  # every epoch is in the run before its result is recorded
            self._record(job, live, result, config)

    def _fit(self, job: Job, config: dict, spec, on_epoch):
        """Train the job; with ``train.cv_folds: K`` score it as the mean over K folds.

        The hook (tracking, pruning) sees the first fold's epochs; the other folds run only when
        the first completed. The returned model is the first fold's.
        """

        def fit(split, hook):
            return train(
                config,
                spec,
                split,
                self.dataset.n_classes,
                job.spec.seed,
                hook,
                metric=self.space.metric,
                tensorboard_dir=self._tb_dir(job),
                schedule_epochs=job.spec.train.get("schedule_epochs"),
                on_batch=self.interrupts.check,
            )

        if spec.cv_folds <= 1 or job.spec.split == ALL:
            return fit(self._split(job), on_epoch)
        key = ("folds", spec.cv_folds, int(self.batch.settings["seed"]))
        if key not in self._splits:
            self._splits[key] = data.fold_splits(self.dataset, spec.cv_folds, key[2])
        folds = self._splits[key]
        first = fit(folds[0], on_epoch)
        if first.status != COMPLETED:
            return first
        rest = [fit(f, None) for f in folds[1:]]
        runs = [first, *rest]
        bad = [r for r in rest if r.status != COMPLETED]
        if bad:
            return bad[0]
        first.history[f"cv_{self.space.metric}"] = [r.value for r in runs]
        first.value = sum(r.value for r in runs) / len(runs)
        first.train_seconds = sum(r.train_seconds for r in runs)
        first.samples_trained = sum(r.samples_trained for r in runs)
        first.best_epoch = sorted(r.best_epoch for r in runs)[(len(runs) - 1) // 2]
        return first

    def _configure(self, job: Job):
        """The job's configuration; a first-attempt search job asks Optuna for a fresh trial."""
        if job.purpose != SEARCH:
            return None, job.spec.config
        if job.spec.config is not None:
            return None, job.spec.config  # its first worker died: train the same again
        live = opt.ask(self.study, self.space, job.spec.seed)
        live.set_attrs({TRIAL_JOB: [self.batch.id, job.id], TRIAL_BATCH: self.batch.number})
        kill_point("take")
        self.store.update_owned(job.id, self.token, trial_number=live.number)
        config = live.suggest(self.space)
        self.store.update_owned(job.id, self.token, spec=replace(job.spec, config=config))
        return live, config

    def _still_owns(self, job: Job, live=None) -> bool:
        """Whether this attempt still holds ``job``; when it does not (the slot was frozen or
        cut off long enough for its driver to give the attempt up and start another), drop the
        attempt before any side effect: nothing lands in another attempt's run, nothing is
        registered, no alias moves."""
        if self.store.owns(job.id, self.token):
            return True
        log.warning(
            "job %s: this attempt was given up by the driver (the slot was stopped or cut off) "
            "and the job was handed to another; this attempt's work is dropped",
            job.key,
        )
        if live is not None:
            opt.tell(self.study, live.number, "FAIL")
        return False

    def _record(self, job: Job, live, result, config: dict) -> None:
        if not self._still_owns(job, live):
            return
        job = self.store.get_job(job.id)
        status = result.status
        out = JobResult(
            status=status,
            value=None if result.value != result.value else result.value,  # NaN -> None
            best_epoch=result.best_epoch,
            epochs_run=result.epochs_run,
            train_seconds=round(result.train_seconds, 3),
            param_count=result.param_count,
            train_flops=result.training_flops,
            config=config,
            # a diverged run's history holds NaN/inf, which JSON (the job store) cannot hold
            history={
                k: [round(v, 6) if math.isfinite(v) else None for v in vals]
                for k, vals in result.history.items()
            },
            reason=result.reason,
        )
        if status == COMPLETED and job.purpose in TEST_SCORED:
            out.test_loss, out.test_accuracy = evaluate(result.model, self.dataset)
        if status == COMPLETED and job.run_id and self._wants_model(job, out):
            info = self.tracker.safe(
                self.tracker.log_model,
                job.run_id,
                result.model,
                self.dataset.image_shape,
                self.dataset.n_classes,
            )
            out.model_uri = info.model_uri if info is not None else None
        if job.purpose == REFIT and status == COMPLETED:
            member = _is_member(job)  # registered by the ensemble job, not here
            with self._registration(job):
                if job.run_id is None:
                    raise RuntimeError("the refit's run could not be created")
                if out.model_uri is None:  # the model must be in MLflow to be registered or loaded
                    info = self.tracker.log_model(
                        job.run_id, result.model, self.dataset.image_shape, self.dataset.n_classes
                    )
                    out.model_uri = info.model_uri
                if not member:
                    if not self._still_owns(job, live):  # stopped while it evaluated or logged
                        return
                    out.registered = self._register(job, out)
            if not member:
                self._store_confusion(job, result.model)
        kill_point("record")
        if live:
            live.set_attrs(trial_attrs(job, out))
        if not self.store.finish(job.id, self.token, DONE, out):
            log.warning("job %s: another worker took it over; this result is dropped", job.key)
            if live:
                opt.tell(self.study, live.number, "FAIL")
            return
        kill_point("sync")
        self.ledger.sync(self.store.get_job(job.id), self.token)

    def _wants_model(self, job: Job, out: JobResult) -> bool:
        """A search run's model is logged when it may be registered without a refit."""
        if job.purpose == REFIT:
            return True
        if job.purpose not in (SEARCH, BASELINE) or self.batch.settings.get("refit", True):
            return False
        sign = 1.0 if self.space.direction == "maximize" else -1.0
        mine = [  # the best of this batch so far: only this batch's models can be registered
            j.result.value
            for j in self.store.jobs(self.batch.id, states=(DONE,))
            if j.purpose in (SEARCH, BASELINE) and j.result and j.result.value is not None
        ]
        return not mine or sign * out.value >= max(sign * v for v in mine)

    def _register(self, job: Job, out: JobResult) -> dict:

        s = self.batch.settings
        info = job.spec.info
        members = info.get("members") or []
        refit = job.purpose == REFIT or bool(members)
        metric = self.space.metric.removeprefix("val_")
        parts = self._members(job, out)
        description = version_description(
            parts,
            refit=refit,
            train_images=len(self.dataset.x_train),
            metric=self.space.metric,
            score=info.get("selection_score"),
            test_accuracy=out.test_accuracy,
            test_loss=out.test_loss,
        )
        registered = register_champion(
            self.tracker,
            out.model_uri,
            s["model_name"],
            identity=self._identity(job),
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
                "dataset": self.dataset.name,
                "class_names": _json(list(self.dataset.class_names)),
                "space_hash": self.space.search_hash,
            },
            selection_score=_score_or_nan(info.get("selection_score")),
            dataset_digest=self.dataset.digest,
            metric=self.space.metric,
            direction=self.space.direction,
            procedure=selection_procedure(
                info.get("selection"), self.space.train.validation_size, self.space.train.cv_folds
            ),
            description=description,
        )
        self._describe_run(job, parts, description, registered)
        return registered

    def _members(self, job: Job, out: JobResult | None = None) -> list:
        """The configurations a refit, ensemble or register job's model is made of, with the
        runs that trained and scored them (:class:`bench.results.champion.Member`)."""

        by_key = {j.key: j for j in self.store.jobs(self.batch.id)}

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

    def _describe_run(self, job: Job, parts: list, description: str, registered: dict) -> None:
        """Put the sentence and links to the members' runs on the registered model's run, as
        its MLflow note (the run page's description); a failure costs only the note."""

        run_id = job.run_id or (parts[0].run_id if len(parts) == 1 else None)
        if not run_id:
            return
        name = self.batch.settings["model_name"]
        champion = registered.get("champion_version") == registered.get("version")
        words = f"{name} version {registered.get('version')}" + (" (champion)" if champion else "")
        note = run_note(parts, self.tracker.experiment_id, description, words, here=run_id)
        self.tracker.safe(self.tracker.set_tags, run_id, {"mlflow.note.content": note})

    def _store_confusion(self, job: Job, model) -> None:
        """The registered model's test confusion matrix, for bench.report (reported only)."""

        opt.set_study_attr(
            self.study,
            STUDY_CONFUSION,
            {
                "job": job.key,
                "source": job.spec.info.get("source"),
                "classes": list(self.dataset.class_names),
                "matrix": confusion(model, self.dataset),
            },
        )

    @contextlib.contextmanager
    def _registration(self, job: Job):
        """Registration needs the tracking store: when it fails, the job goes back to waiting
        (no attempt is lost to an outage) and this worker stops, so the batch stays open for a
        rerun or ``bench.register`` instead of finishing without a champion."""
        try:
            yield
        except Exception as exc:
            self.store.release(job.id, self.token, f"registration failed: {redact(exc, 200)}")
            raise RuntimeError(
                f"registering the champion failed ({type(exc).__name__}: {redact(exc, 200)}); "
                "every trial is kept; when the tracking store answers, rerun the same command or "
                f"python -m bench.register --study-name {self.batch.study}"
            ) from None

    def _identity(self, job: Job) -> dict[str, Any]:
        """Tags that identify a registration, so a rerun finds it instead of adding another."""
        return {
            "study_name": self.batch.study,
            "batch": self.batch.number,
            "batch_uid": self.batch.settings.get("uid", ""),
            "job": job.key,
        }

    def _run_ensemble(self, job: Job) -> None:
        """Average the refit members into one model, log it in a run of its own, register it.

        A rerun after a crash that followed the registration never gets here (``run_job`` finds
        that version by its identity tags); after a crash before registering, the rerun ends the
        dead attempt's run as FAILED and starts again from the members' logged models.
        """

        members = job.spec.info["members"]
        if job.run_id:  # an earlier attempt's run, not registered: replaced
            self.tracker.safe(self.tracker.end_run, job.run_id, "FAILED")
        with self._registration(job):
            models = [self.tracker.load_model(m["model_uri"]) for m in members]
        model = average_models(models)  # a Keras error here is a failure, not an outage
        if not self._still_owns(job):
            return
        parts = self._members(job)
        with self._registration(job):
            run_id = self.tracker.start_child(
                self.batch.parent_run_id,
                f"ensemble-of-{len(members)}",
                {
                    "purpose": "ensemble",
                    "members": ",".join(m["source"] for m in members),
                    "refit_epochs": job.spec.info["refit_epochs"],
                    "dataset": self.dataset.name,
                    **member_params(parts),  # what it averages, without opening other runs
                },
                {
                    **job_tags(job),
                    "study_name": self.batch.study,
                    "refit": "true",
                    **member_tags(parts),
                },
            )
            self.store.update_owned(job.id, self.token, run_id=run_id)
            info = self.tracker.log_model(
                run_id, model, self.dataset.image_shape, self.dataset.n_classes
            )
        self._run_register(replace(job, run_id=run_id), info.model_uri, model)

    def _run_register(self, job: Job, uri: str, model=None) -> None:
        """Register an already trained model: the chosen search run's own (``--no-refit``), the
        averaged ensemble (``model`` given, already in memory), or the one a refit or ensemble
        registered before its worker died."""

        if model is None:
            with self._registration(job):
                model = self.tracker.load_model(uri)
        loss, acc = evaluate(model, self.dataset)
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
        with self.interrupts.critical():
            if not self._still_owns(job):
                return
            with self._registration(job):
                out.registered = self._register(job, out)
            self._store_confusion(job, model)
            if self.store.finish(job.id, self.token, DONE, out):
                self.ledger.sync(self.store.get_job(job.id), self.token)

    def _tb_dir(self, job: Job) -> str | None:
        root = self.settings.tensorboard_dir
        return f"{root}/{_safe(self.batch.study)}/{job.key}" if root else None


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).lstrip(".") or "study"


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


def _score_or_nan(value: Any) -> float:
    """A selection score; NaN when missing, so it never wins the champion rule."""
    return math.nan if value is None else float(value)


def _is_member(job: Job) -> bool:
    """A refit that is one member of an ensemble: the ensemble, not the member, is registered."""
    return job.spec.info.get("member") is not None


def _train_params(t) -> dict[str, Any]:
    return {
        "max_epochs": t.max_epochs,
        "patience": t.patience,
        "min_delta": t.min_delta,
        "early_stop_decaying": t.early_stop_decaying,
        "validation_size": t.validation_size,
        "steps_per_execution": t.steps_per_execution,
        "jit_compile": t.jit_compile,
    }
