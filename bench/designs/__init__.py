"""Designs: what to train, as jobs for the engine, and how to read their results; nothing else.

A design never trains, never talks to Optuna or MLflow, and never decides who runs what: it
produces job specs with deterministic keys and, once a stage's jobs are all recorded, the next
stage's. ``search`` (sampler-proposed configurations, baselines, re-evaluation, refit) and
``ablation`` (controlled one-factor cells) are the two designs; a re-evaluation batch is the
search design starting at its re-evaluation stage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.records import Batch
    from bench.space import Space


def make_design(batch: Batch, space: Space):
    """The design object of a stored batch (workers rebuild it from the batch's settings)."""
    maximize = space.direction == "maximize"
    if batch.design in ("search", "reeval"):
        from bench.designs.search import SearchDesign

        return SearchDesign(batch.settings, maximize)
    if batch.design == "ablation":
        from bench.designs.ablation import AblationDesign

        return AblationDesign(batch.settings, maximize)
    raise ValueError(f"unknown design {batch.design!r}")
