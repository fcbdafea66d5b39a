"""The one declared schema of what bench stores: jobs, their results, batches, and trial attrs.

Everything here is a plain dataclass with ``to_dict``/``from_dict`` so it crosses process
boundaries and lands in JSON columns, Optuna user attributes and MLflow tags unchanged.
Nothing here imports a third-party library.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypedDict

# Purposes of a job: what it trains for. One meaning per word.
SEARCH = "search"  # a configuration the Optuna sampler proposes (pruned by its pruner)
BASELINE = "baseline"  # a fixed reference configuration, scored once on the test set
REEVAL = "reeval"  # a chosen configuration re-trained with another seed, to choose with less luck
ABLATION = "ablation"  # one cell x seed of a controlled one-factor comparison
REFIT = "refit"  # the chosen configuration re-trained on all training images, then registered
REGISTER = "register"  # register an already trained model (the search's best, --no-refit)
ENSEMBLE = "ensemble"  # average the refit members' probabilities into one model, register it
PURPOSES = (SEARCH, BASELINE, REEVAL, ABLATION, REFIT, REGISTER, ENSEMBLE)
FINAL = (REFIT, REGISTER, ENSEMBLE)  # the jobs that end a batch by registering a model


def is_ensemble(spec: JobSpec) -> bool:
    """An averaging job; stores written before ENSEMBLE existed gave it purpose REGISTER and no
    ``model_uri`` of its own."""
    return spec.purpose == ENSEMBLE or (spec.purpose == REGISTER and "model_uri" not in spec.info)


# Designs: what a batch is (the key of bench.designs.DESIGNS, stored as Batch.design).
SEARCH_DESIGN = "search"  # sampler-proposed configurations, then re-evaluation, refit, register
REEVAL_DESIGN = "reeval"  # a finished search's best configurations, re-trained, then refit
ABLATION_DESIGN = "ablation"  # a controlled one-factor-at-a-time comparison
CROSSED_DESIGN = "crossed"  # every combination of 2 or 3 factors' levels: interactions
PATH_DESIGN = "path"  # the ablation path from a reference configuration to a target
GLOBAL_DESIGN = "global"  # space-filling configurations: importance over the whole space

# Batch states in the job store: OPENING (row, parent run, jobs being written), then RUNNING
# and DONE, the same words and meanings as a job's.
OPENING = "opening"

# Splits a job trains on.
HOLDOUT = "holdout"  # training minus the seeded, stratified validation split; judged on it
ALL = "all"  # every training image (refit): no validation, a fixed epoch count

# Job states in the job store.
WAITING, RUNNING, DONE, FAILED = "waiting", "running", "done", "failed"

# Result statuses (what training produced); a configuration that raised is recorded with status
# FAILED (the job state's word: the job fails with it).
COMPLETED, PRUNED, DIVERGED = "completed", "pruned", "diverged"

# Keys bench writes as Optuna trial user attributes (read by bench.report and the dashboard).
TRIAL_CONFIG = "bench.config"
TRIAL_JOB = "bench.job"
TRIAL_SEED = "bench.seed"
TRIAL_BATCH = "bench.batch_id"
TRIAL_BASELINE = "bench.baseline"
TRIAL_RUN = "bench.mlflow_run_id"
TRIAL_MODEL = "bench.model_uri"
TRIAL_REASON = "bench.reason"
TRIAL_TEST_ACCURACY = "bench.test_accuracy"
TRIAL_EPOCHS = "bench.epochs"
TRIAL_BEST_EPOCH = "bench.best_epoch"
TRIAL_TRAIN_SECONDS = "bench.train_seconds"
TRIAL_PARAM_COUNT = "bench.param_count"
TRIAL_TRAIN_FLOPS = "bench.train_flops"
TRIAL_HISTORY = "bench.history"  # per-epoch metrics: {"val_accuracy": [...], ...}
# Keys bench writes as Optuna study user attributes.
STUDY_SPACE = "bench.space_hash"
STUDY_CONFUSION = "bench.confusion_matrix"  # the registered model's test confusion matrix


@dataclass(frozen=True)
class JobSpec:
    """What to train: everything a worker needs besides the batch's shared settings.

    Attributes:
        key: Unique within its batch and deterministic, so enqueuing twice is harmless.
        purpose: One of :data:`PURPOSES`.
        seed: Seeds weights and shuffling.
        config: The model configuration; None for a search job, which samples it on start.
        train: Overrides of the space's ``train:`` section (a baseline's own budget, a refit's
            epoch count).
        split: :data:`HOLDOUT` or :data:`ALL`.
        info: Design-specific facts kept with the job (factor and level, source trial, name).
    """

    key: str
    purpose: str
    seed: int
    config: dict | None = None
    train: dict = field(default_factory=dict)
    split: str = HOLDOUT
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass
class JobResult:
    """What one finished job produced; stored on the job, mirrored to Optuna and MLflow."""

    status: str
    value: float | None  # the space's validation metric at the kept epoch (None: no validation)
    best_epoch: int
    epochs_run: int
    train_seconds: float
    param_count: int
    train_flops: float
    config: dict
    history: dict[str, list[float]] = field(default_factory=dict)
    reason: str = ""
    test_accuracy: float | None = None
    test_loss: float | None = None
    model_uri: str | None = None
    registered: dict | None = None  # a refit or register job: the model version and alias

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for k in ("value", "test_accuracy", "test_loss"):
            if isinstance(data[k], float) and not math.isfinite(data[k]):
                data[k] = None  # JSON has no NaN
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobResult:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass(frozen=True)
class Job:
    """A job as stored: its spec, where it is, and what it produced."""

    id: int
    batch_id: int
    spec: JobSpec
    state: str
    attempts: int = 0
    owner: dict | None = None
    result: JobResult | None = None
    trial_number: int | None = None
    run_id: str | None = None
    reason: str = ""
    synced: bool = False

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def purpose(self) -> str:
        return self.spec.purpose


@dataclass(frozen=True)
class Batch:
    """One invocation of a design (a search, an ablation, a re-evaluation) and its parent run.

    Attributes:
        id: Store-wide id.
        study: The Optuna study it belongs to (the name the user chose).
        number: 1, 2, ... within the study.
        design: ``search`` | ``ablation`` | ``reeval``.
        identity: Same identity means the same batch: rerunning joins or reports it.
        state: ``opening`` | ``running`` | ``done``.
        settings: How it was started (space, dataset, names, design options); no secrets.
        parent_run_id: The MLflow parent run, once created.
        summary: The outcome once done (the champion, the verdicts).
    """

    id: int
    study: str
    number: int
    design: str
    identity: str
    state: str
    settings: dict
    parent_run_id: str | None = None
    summary: dict | None = None


# ---------------------------------------------------------------- batch settings and summaries
# Stored as JSON on the batch row. Every key a command writes or a reader reads is declared here;
# :func:`check_keys` refuses an undeclared one where a batch is opened and where it is finished.


class BatchSettings(TypedDict, total=False):
    """How a batch was started; a continued or joined batch keeps the settings it was opened with.

    Every design:
        uid: A random id that tags the batch's MLflow parent run (unique across storages).
        space: The space file's path on the machine that opened the batch (for messages only).
        space_text: The validated YAML that every worker trains (never the file at ``space``).
        dataset: The dataset name (``fashion-mnist``, ``digits``, ``idx``, ...).
        dataset_digest: What every worker's data must match.
        data_dir: ``--data-dir`` where it was given.
        experiment: The MLflow experiment.
        model_name: The registered model.
        seed: The study seed; it also seeds the validation split and the folds.
        max_epochs: ``--max-epochs`` where it was given (else the space's).
    Search and re-evaluation:
        n_trials: Finished search jobs the batch aims at (baselines count).
        register: Refit (or not) and register a champion at the end.
        refit: Refit the choice on all training images (False: ``--no-refit``).
        ensemble: Distinct configurations the registered model averages.
        reeval_top_k: Configurations re-evaluated before choosing (0: none).
        reeval_seeds: Fresh seeds per re-evaluated configuration.
        baselines: The baselines run first (name, config, train), as plain values.
        max_failures: Failed search jobs replaced by fresh ones (default 10).
        refit_tries: Configurations refit in turn when a refit diverges (default 3).
    Re-evaluation only:
        sources: Keys of the jobs whose configurations are re-evaluated.
        reeval_jobs: Its planned jobs (:class:`JobSpec` as dicts).
    Ablation:
        metric: The space's validation metric.
        base_source: Where the base configuration came from (the champion, a trial, a file).
        factors: The factors varied.
        seeds: The seeds every cell runs with.
        plan: The cells, levels and base training overrides, as plain values.
    Crossed: the ablation's keys (``factors`` are the crossed ones; ``plan`` holds every
        combination as a cell).
    Path: ``metric``, ``seeds`` and ``plan`` (the reference, the target, the parameters that
        differ, the train overrides every cell shares), and:
        from_source: Where the reference came from (a baseline, a trial, a file).
        to_source: Where the target came from.
    """

    uid: str
    space: str
    space_text: str
    dataset: str
    dataset_digest: str
    data_dir: str | None
    experiment: str
    model_name: str
    seed: int
    max_epochs: int | None
    n_trials: int
    register: bool
    refit: bool
    ensemble: int
    reeval_top_k: int
    reeval_seeds: int
    baselines: list[dict]
    max_failures: int
    refit_tries: int
    sources: list[str]
    reeval_jobs: list[dict]
    metric: str
    base_source: str
    factors: list[str]
    seeds: list[int]
    plan: dict
    from_source: str
    to_source: str


class BatchSummary(TypedDict, total=False):
    """A finished batch's outcome (what its design's ``summary`` returns).

    Search and re-evaluation:
        finished, failed: Search (or re-evaluation) jobs that finished, that failed for good.
        best_job, best_value, best_trial: The best completed job, its validation score and
            its Optuna trial number.
        reeval: Per re-evaluated configuration: seeds, failed seeds, means and 95% intervals
            (None where no seed completed).
        selection_direction: ``maximize`` or ``minimize``: how the re-evaluation rows were
            ranked (written with them); registering the champion writes the same value.
        version, champion_version, promoted, reason, selection_metric,
            selection_procedure: What registering the champion did (see
            :func:`bench.tracking.registry.register_and_promote`).
        test_accuracy, test_loss: The registered model's test scores (reported, never used to
            choose).
        refit: Whether the registered model was refit on all training images.
        refit_epochs: Its epoch count (``"31+30"`` for an ensemble's members).
        ensemble: The members averaged (source, selection score, test accuracy alone).
        source: The job (or ``a+b`` jobs) whose configuration was registered.
        selection_score: The validation score it was chosen by.
        val_test_gap: Validation minus test, in the selection metric's own terms.
        no_champion: Why a batch that was to register a champion registered none.
        from_start: The champion's members that are the space's enqueued start (chosen by
            hand, not proposed by the search).
    Ablation:
        finished, failed, seeds: As above; the seeds every cell ran with.
        factors_planned: The factors the plan varied.
        base_levels: The base configuration's level of each factor.
        records: One record per completed cell x seed (the input of the analysis).
        factors: The per-factor analysis (paired differences and intervals).
        headlines: One sentence per factor.
        error: Why there is no analysis (e.g. every base job failed).
    Crossed (besides finished, failed, seeds, factors_planned, base_levels, records, headlines,
    error as in an ablation, with each record's ``levels`` a mapping factor -> level):
        levels: Every crossed factor's levels, in plan order.
    Path (besides finished, failed, seeds, records, headlines, error):
        path: The moves in order, ``{"param", "step"}``; the last one lands on the target.
    Global (besides finished, failed, seeds, headlines, error; each record names its
    configuration by ``index``):
        diverged: Jobs that finished without a finite validation score.
        analysis: The importances, their intervals and floors
            (:class:`bench.results.importance.GlobalResult` as plain values).
    """

    finished: int
    failed: int
    best_job: str
    best_value: float | None
    best_trial: int | None
    reeval: list[dict]
    version: str
    champion_version: str
    promoted: bool
    reason: str
    selection_metric: str
    selection_direction: str
    selection_procedure: str
    test_accuracy: float | None
    test_loss: float | None
    refit: bool
    refit_epochs: int | str | None
    ensemble: list[dict]
    source: str | None
    selection_score: float | None
    val_test_gap: float
    no_champion: str
    from_start: list[str]
    seeds: list[int]
    factors_planned: list[str]
    base_levels: dict
    records: list[dict]
    factors: list[dict]
    headlines: list[str]
    error: str
    levels: dict
    path: list[dict]
    diverged: int
    analysis: dict


def check_keys(values: Mapping[str, Any], schema: type, what: str) -> None:
    """Refuse keys that ``schema`` (a TypedDict above) does not declare.

    Raises:
        ValueError: a programming error, naming the undeclared keys; declare them first.
    """
    unknown = sorted(set(values) - set(schema.__annotations__))
    if unknown:
        raise ValueError(
            f"{what}: undeclared key(s) {', '.join(unknown)}; declare them in "
            f"bench.records.{schema.__name__}"
        )
