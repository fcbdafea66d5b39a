"""Designs: what to train, as jobs for the engine, and how to read their results; nothing else.

A design never trains, never talks to Optuna or MLflow, and never decides who runs what: it
produces job specs with deterministic keys and, once a stage's jobs are all recorded, the next
stage's. The contract is :class:`bench.designs._base.Design`; :data:`DESIGNS` names every one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.designs._base import Design, OpeningFacts, ParentRun
from bench.designs.ablation import AblationDesign
from bench.designs.crossed import CrossedDesign
from bench.designs.path import PathDesign
from bench.designs.search import ReevalDesign, SearchDesign
from bench.designs.space_filling import GlobalDesign

if TYPE_CHECKING:
    from bench.records import Batch
    from bench.space import Space

# A batch's ``design`` -> the class that makes its jobs (a new design: one line here).
DESIGNS: dict[str, type[Design]] = {
    d.name: d
    for d in (SearchDesign, ReevalDesign, AblationDesign, CrossedDesign, PathDesign, GlobalDesign)
}

__all__ = ["DESIGNS", "Design", "OpeningFacts", "ParentRun", "make_design"]


def make_design(batch: Batch, space: Space) -> Design:
    """The design object of a stored batch (workers rebuild it from the batch's settings)."""
    try:
        cls = DESIGNS[batch.design]
    except KeyError:
        raise ValueError(
            f"batch {batch.number} of study '{batch.study}': unknown design {batch.design!r} "
            f"(known: {', '.join(DESIGNS)}); was it opened by a newer bench?"
        ) from None
    return cls(batch.settings, space.direction == "maximize")
