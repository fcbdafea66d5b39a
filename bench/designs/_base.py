"""The design contract: what every design is given, what it returns, and what it may not do.

A design turns a batch's stored settings into jobs and reads their results; the engine does the
rest (who trains what, where, when; Optuna and MLflow). Every worker rebuilds the design from the
stored batch (:func:`bench.designs.make_design`), so a design keeps no state of its own beyond
its settings, and every job key it produces is deterministic: two workers that compute the next
stage at once produce the same keys, and the job store keeps each key once.

The engine calls, in order:

1. ``Design(settings, maximize)`` with the settings stored when the batch was opened.
2. :meth:`Design.parent_run` once, when the batch is opened: the MLflow parent run's name,
   params and tags (plain values; the engine logs them).
3. :meth:`Design.initial_jobs` once, when the batch is opened.
4. :meth:`Design.next_jobs` whenever no job of the batch waits or runs: the next stage's jobs,
   or ``[]`` when the batch is complete.
5. :meth:`Design.summary` once, when the batch is complete: stored as the batch's summary.

A new design is one file with a subclass, one line in :data:`bench.designs.DESIGNS`, and the
CLI that opens its batches.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from bench.records import Batch, Job, JobSpec


@dataclass(frozen=True)
class OpeningFacts:
    """What a design may put on its parent run besides its settings; no secret among them.

    Attributes:
        study: The study the batch belongs to.
        dataset: The dataset's name.
        dataset_digest: What every worker's data must match.
        space_file: The space file's name (not its path: paths differ between machines).
        space_hash: The hash of the space's searched part.
        metric: The space's validation metric.
        storage: Where the study lives, with any password masked.
        train: The space's ``train:`` section.
        fixed: The space's fixed parameter values.
        sampler: The space's sampler name.
        pruner: The space's pruner name.
    """

    study: str
    dataset: str
    dataset_digest: str
    space_file: str
    space_hash: str
    metric: str
    storage: str
    train: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    sampler: str = ""
    pruner: str = ""


@dataclass(frozen=True)
class ParentRun:
    """The MLflow parent run of a batch, as plain values (the engine starts and tags it)."""

    name: str
    params: dict[str, Any]
    tags: dict[str, str]
    log_dataset: bool = False  # attach the dataset's description (its digest, its sizes)


class Design(ABC):
    """A way of choosing what to train, as stages of jobs.

    Attributes:
        name: Stored as the batch's ``design``; the key of :data:`bench.designs.DESIGNS`.
        purposes: The purposes of the jobs that are this design's own work: what progress
            counts and what the batch's outcome lists.
        run_label: The middle of the parent run's name (default: :attr:`name`).
        role: The parent run's ``role`` tag (default: :attr:`name`).
        settings: The batch's stored settings.
        maximize: Whether a higher value of the space's metric is better.
    """

    name: ClassVar[str]
    purposes: ClassVar[tuple[str, ...]]
    run_label: ClassVar[str] = ""  # the parent run is named <study>-<run_label>-<number>
    role: ClassVar[str] = ""  # the parent run's ``role`` tag, which the UI and tests look for
    _log_dataset: ClassVar[bool] = False

    def __init__(self, settings: dict[str, Any], maximize: bool = True):
        self.settings = settings
        self.maximize = maximize
        self.sign = 1.0 if maximize else -1.0

    @abstractmethod
    def initial_jobs(self) -> list[JobSpec]:
        """The jobs of a new batch, from :attr:`settings` alone."""

    def next_jobs(self, jobs: list[Job], max_epochs: int) -> list[JobSpec]:
        """The next stage's jobs, given every job of the batch; ``[]`` when it is complete.

        Called only when no job waits or runs. ``max_epochs`` is the space's epoch budget (a
        refit's schedule length). Keys of jobs already in the batch are ignored by the store.
        """
        return []

    @abstractmethod
    def summary(self, jobs: list[Job]) -> dict[str, Any]:
        """The batch's outcome as plain (JSON) values, once it is complete."""

    def parent_run(self, batch: Batch, facts: OpeningFacts) -> ParentRun:
        """The parent run of ``batch``: the facts every design shares, plus :meth:`_params`
        and :meth:`_tags` of this design."""
        params = {
            "design": self.name,
            "dataset": facts.dataset,
            "space": facts.space_file,
            "metric": facts.metric,
            "storage": facts.storage,
            **{f"train.{k}": v for k, v in facts.train.items()},
            **self._params(facts),
        }
        tags = {
            "study_name": facts.study,
            "batch": str(batch.number),
            "design": self.name,
            "space_hash": facts.space_hash,
            "dataset_digest": facts.dataset_digest,
            "role": self.role or self.name,
            **self._tags(batch, facts),
        }
        label = self.run_label or self.name
        return ParentRun(f"{facts.study}-{label}-{batch.number}", params, tags, self._log_dataset)

    def _params(self, facts: OpeningFacts) -> dict[str, Any]:
        """This design's own parent-run params."""
        return {}

    def _tags(self, batch: Batch, facts: OpeningFacts) -> dict[str, str]:
        """This design's own parent-run tags."""
        return {}
