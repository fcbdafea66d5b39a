"""Re-evaluation: re-train a study's best configurations with fresh seeds, then choose.

What ``bench.reevaluate`` and ``bench.report --reevaluate`` run: the study's best ``top_k``
distinct completed configurations, ``seeds`` fresh seeds each, on the search's validation split,
as a batch of the :class:`~bench.designs.search.ReevalDesign`; then the refit and registration
of the best by mean validation score. The test set is read to report, never to choose.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from bench import data
from bench import optuna_adapter as opt
from bench.designs.search import ReevalDesign, SearchDesign, reeval_order
from bench.engine import batch_space, check_same_data
from bench.engine.driver import BatchRun, drive, open_design_batch
from bench.engine.mirror import complete_mirrors
from bench.engine.store import JobStore
from bench.errors import BenchError, redact
from bench.records import BASELINE, DONE, SEARCH, SEARCH_DESIGN
from bench.resources import plan_for
from bench.tracking import Tracker, check_uri, resolve_uri
from bench.training import download_dataset


@dataclass(frozen=True)
class ReevalRequest:
    """What to re-evaluate, and how (the flags of ``bench.reevaluate``).

    Attributes:
        study: The searched study.
        storage: Its Optuna storage (None: the default journal file).
        tracking_uri: MLflow (None: ``MLFLOW_TRACKING_URI`` or the default).
        top_k: Configurations re-trained.
        seeds: Fresh seeds each.
        ensemble: Configurations the registered model averages.
        register: Refit and register the choice (False: report only).
        workers: Worker processes (None: planned from the CPUs and GPUs).
        threads: TensorFlow threads per worker (None: planned).
        executor: ``local`` or ``ray`` (see :class:`~bench.resources.WorkerPlan`).
        ray_address: The Ray cluster for ``ray`` (None: ``RAY_ADDRESS``).
        quiet: No progress output.
    """

    study: str
    storage: str | None = None
    tracking_uri: str | None = None
    top_k: int = 3
    seeds: int = 3
    ensemble: int = 2
    register: bool = True
    workers: int | None = None
    threads: int | None = None
    executor: str = "local"
    ray_address: str | None = None
    quiet: bool = False


def reevaluate(req: ReevalRequest, interrupts) -> int:
    """Open (or join, or report) the re-evaluation batch that ``req`` asks for and drive it.

    Returns:
        The command's exit code (see :func:`bench.engine.driver.drive`).

    Raises:
        BenchError: no such storage or study, no search batch, no completed trial, other data.
    """
    storage = req.storage or opt.DEFAULT_STORAGE
    if opt.is_journal(storage) and not Path(storage).is_file():
        raise BenchError(
            f"--storage {redact(storage)}: no such journal file; run bench.search first"
        )
    study = opt.load_study(req.study, storage)
    store = JobStore(storage)
    searches = [b for b in store.batches(req.study) if b.design == SEARCH_DESIGN]
    if not searches:
        raise BenchError(f"--study-name {req.study}: no search batch to re-evaluate")
    last = searches[-1]
    jobs = [j for b in searches for j in store.jobs(b.id) if j.purpose in (SEARCH, BASELINE)]
    design = SearchDesign(last.settings, maximize=opt.direction(study) == "maximize")
    sources = design.candidates(jobs, req.top_k)
    if not sources:
        raise BenchError(f"study '{req.study}' has no completed trial to re-evaluate")
    settings = {
        **last.settings,
        "register": req.register,
        "refit": True,
        "reeval_top_k": req.top_k,
        "reeval_seeds": req.seeds,
        "ensemble": req.ensemble,
        "sources": [s.key for s in sources],
    }
    identity = hashlib.sha256(
        json.dumps(
            [
                settings["sources"],
                [s.batch_id for s in sources],
                req.top_k,
                req.seeds,
                settings["register"],
            ]
        ).encode()
    ).hexdigest()[:16]
    specs = ReevalDesign(settings, design.maximize).reeval_jobs(sources)  # its seeds, not 0
    settings["reeval_jobs"] = [spec.to_dict() for spec in specs]  # ReevalDesign.initial_jobs
    space = batch_space(last.settings)  # the space stored with the search batch
    dataset = data.load_dataset(
        last.settings["dataset"], last.settings.get("data_dir"), download=download_dataset
    )
    check_same_data(last, dataset.digest)  # re-evaluated on the data the search scored
    uri = resolve_uri(req.tracking_uri)
    check_uri(uri)
    tracker = Tracker(uri, last.settings["experiment"])

    batch, created = open_design_batch(
        store, tracker, ReevalDesign, req.study, identity, settings, space, dataset, storage,
        join_done=True,
    )  # fmt: skip
    if batch.state == DONE:
        complete_mirrors(store, req.study, tracker)
        print(f"already re-evaluated in batch {batch.number}:", file=sys.stderr)
        print_reeval(batch.summary or {}, design.maximize)
        return 0
    plan = plan_for(req.workers, req.threads, len(specs), req.executor, req.ray_address)
    run = BatchRun(store, batch, created, tracker, uri, storage, plan, space, quiet=req.quiet)
    code = drive(run, interrupts)
    print_reeval(store.get_batch(batch.id).summary or {}, design.maximize)
    return code


def print_reeval(summary: dict, maximize: bool | None = None) -> None:
    """Print a batch's re-evaluated configurations, best first (see
    :func:`~bench.designs.search.reeval_order`: any that failed a seed after the clean ones).

    Args:
        summary: The batch's summary.
        maximize: Whether a higher value of the metric is better; None: the direction the
            summary states (maximize when it states none).
    """
    rows = summary.get("reeval") or []
    if not rows:
        return
    if maximize is None:
        maximize = summary.get("selection_direction") != "minimize"
    print(
        "\nre-evaluated configurations (mean over seeds, 95% t-interval; chosen by validation; "
        "any that failed a seed listed last, never chosen):"
    )
    chosen = {m["source"] for m in summary.get("ensemble") or []} or {summary.get("source")}
    for r in reeval_order(rows, maximize):
        star = "*" if r["source"] in chosen else " "
        seeds, failed = int(r.get("seeds") or 0), int(r.get("failed_seeds") or 0)
        runs = (
            f"{seeds} seed{'' if seeds == 1 else 's'} completed, {failed} failed"
            if failed
            else f"{seeds} seeds"
        )
        print(
            f" {star} {r['source']}: val {_num(r.get('val_mean'))}{_ci(r.get('val_ci'))}  "
            f"test {_num(r.get('test_mean'))}{_ci(r.get('test_ci'))}  ({runs})"
        )


def _num(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.4f}"


def _ci(pair: list | None) -> str:
    return "" if not pair else f" [{_num(pair[0])}, {_num(pair[1])}]"
