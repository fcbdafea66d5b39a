"""``python -m bench.search``: run (or resume, or join) a study's batch of search trials.

The command validates everything a user can get wrong before anything is written, opens or joins
the batch (one MLflow parent run per batch) through the engine, starts the workers, shows
progress and prints the summary with links. It never imports TensorFlow itself unless it trains
(one worker runs in this process).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
from pathlib import Path

from bench.cli import (
    SEED_MAX,
    Parser,
    add_ensemble_flag,
    add_store_flags,
    add_worker_flags,
    bounded_int,
    check_name,
    engine_main,
    positive_seconds,
    run,
    worker_plan,
)
from bench.errors import (
    BenchError,
)
from bench.records import SEARCH_DESIGN

log = logging.getLogger("bench")
MAX_TRIALS = 100_000  # more would take days; a typo like 10**9 must not enqueue for hours


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m bench.search",
        description="Search Keras MLP configurations with Optuna; track every trial in "
        "MLflow; register the best model.",
    )
    p.add_argument(
        "--trials",
        type=bounded_int(1, MAX_TRIALS),
        default=50,
        help="finished (completed or pruned) trials in this batch, across all workers "
        "and restarts (default 50)",
    )
    p.add_argument(
        "--space",
        default="mlp",
        help="search-space YAML path, or a built-in space: mlp (default), smoke, baselines",
    )
    p.add_argument(
        "--dataset",
        default="fashion-mnist",
        help="fashion-mnist | mnist | digits | idx (default fashion-mnist)",
    )
    p.add_argument(
        "--data-dir",
        help="folder with the four IDX .gz files (else BENCH_DATA_DIR, the "
        "Keras cache, /usr/share/datasets/NAME)",
    )
    add_store_flags(p, "Optuna study (default <dataset>-<space file stem>, e.g. fashion-mnist-mlp)")
    p.add_argument("--experiment", help="MLflow experiment (default <dataset>-mlp)")
    p.add_argument("--model-name", help="registered model name (default <dataset>-mlp)")
    p.add_argument(
        "--max-epochs",
        type=bounded_int(1, 10_000),
        help="override the space file's train.max_epochs",
    )
    p.add_argument(
        "--timeout", type=positive_seconds, help="start no new trial after this many seconds"
    )
    p.add_argument(
        "--seed",
        type=bounded_int(0, SEED_MAX),
        default=0,
        help="study seed; job seeds are seed + job index",
    )
    p.add_argument(
        "--no-register",
        action="store_true",
        help="skip the refit, test evaluation and registration",
    )
    p.add_argument(
        "--no-refit",
        action="store_true",
        help="register the chosen search run's own model instead of refitting it on all "
        "training images",
    )
    add_ensemble_flag(p, "distinct configurations")
    p.add_argument(
        "--reeval-top-k",
        type=bounded_int(0, 50),
        default=0,
        help="before choosing, re-train the top K configurations with --reeval-seeds fresh seeds "
        "and choose by their mean validation score (default 0: off)",
    )
    p.add_argument(
        "--reeval-seeds",
        type=bounded_int(2, 20),
        default=3,
        help="seeds per re-evaluated configuration (default 3)",
    )
    p.add_argument(
        "--max-replacements",
        type=bounded_int(0, 10_000),
        default=10,
        metavar="N",
        help="failed search jobs (an error, or a worker that died 3 times on it) replaced by "
        "fresh configurations so the batch keeps its trial count; 0: none (default 10)",
    )
    p.add_argument(
        "--allow-space-change",
        action="store_true",
        help="continue a study created with a different search space",
    )
    p.add_argument(
        "--no-start",
        action="store_true",
        help="leave out the space's study.enqueue starting configurations: the sampler "
        "proposes every trial (what the search finds by itself)",
    )
    p.add_argument(
        "--with-baselines",
        action="store_true",
        help="run the seed tutorials' configurations first (the built-in space 'baselines')",
    )
    p.add_argument(
        "--tensorboard",
        metavar="DIR",
        nargs="?",
        const="tensorboard",
        help="write TensorBoard logs per trial under DIR (default ./tensorboard)",
    )
    add_worker_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return engine_main(_run, build_parser().parse_args(argv))


def _run(args: argparse.Namespace, interrupts) -> int:
    # the command's one deferred block: what --help and bad flags never need (NumPy, SQLAlchemy)
    from bench import data
    from bench import optuna_adapter as opt
    from bench.designs.search import SearchDesign
    from bench.engine.driver import BatchRun, drive, open_design_batch
    from bench.engine.store import JobStore
    from bench.space import load_space, load_space_text, resolve_space
    from bench.tracking import Tracker, check_uri, resolve_uri
    from bench.training import download_dataset

    space_path = str(Path(resolve_space(args.space)).resolve())
    space, space_text = load_space_text(space_path)
    space = space.with_overrides(max_epochs=args.max_epochs)
    dataset = data.load_dataset(args.dataset, args.data_dir, download=download_dataset)
    data.check_validation_size(dataset, space.train.validation_size, space.path)
    if args.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise BenchError(
            "--tensorboard: the tensorboard package is not installed; "
            "pip install tensorboard (or the project's [tensorboard] extra)"
        )
    uri = resolve_uri(args.tracking_uri)
    check_uri(uri)
    first = [b.payload() for b in space.baselines if b.dataset in (None, dataset.name)]
    if args.with_baselines:
        extra = load_space("baselines").baselines
        first += [b.payload() for b in extra if b.dataset in (None, dataset.name)]
    if space.baselines and not first:
        raise BenchError(f"{space.path}: none of its baselines runs on {dataset.name}")
    n_trials = args.trials if space.searches else len(first)  # a baselines file runs each once
    default_name = f"{dataset.name}-mlp"
    study_name = check_name(
        "--study-name", args.study_name or f"{dataset.name}-{Path(space_path).stem}"
    )
    experiment = check_name("--experiment", args.experiment or default_name)
    model_name = check_name("--model-name", args.model_name or default_name)
    storage = args.storage or opt.DEFAULT_STORAGE
    plan = worker_plan(args, n_trials)
    settings = {
        "space": space_path,
        "space_text": space_text,  # what every worker trains, wherever the file is
        "dataset": args.dataset,
        "dataset_digest": dataset.digest,  # what every worker's data must match
        "data_dir": args.data_dir,
        "experiment": experiment,
        "model_name": model_name,
        "seed": args.seed,
        "max_epochs": args.max_epochs,
        "n_trials": n_trials,
        "register": not args.no_register,
        "refit": not args.no_refit,
        "ensemble": 1 if args.no_refit else args.ensemble,
        "reeval_top_k": args.reeval_top_k,
        "reeval_seeds": args.reeval_seeds if args.reeval_top_k else 0,
        "baselines": first,
        "max_failures": args.max_replacements,
    }
    # creates the study, or checks it was made for this space, before anything else is written
    study = opt.open_study(
        study_name, storage, space, args.seed, args.allow_space_change,
        recorded_split=lambda: recorded_split(storage, study_name),
    )  # fmt: skip
    store = JobStore(storage)
    if not args.allow_space_change:
        check_split_seed(store, study_name, args.seed)
    if space.enqueue and n_trials and not args.no_start:
        opt.enqueue(study, space.enqueue)  # the space's starting points, once per study
    tracker = Tracker(uri, experiment)
    batch, created = open_design_batch(
        store, tracker, SearchDesign, study_name, SEARCH_DESIGN, settings, space, dataset, storage
    )
    run = BatchRun(
        store, batch, created, tracker, uri, storage, plan, space,
        timeout=args.timeout, tensorboard=args.tensorboard, quiet=args.quiet,
    )  # fmt: skip
    return drive(run, interrupts)


def recorded_split(storage: str, study: str) -> dict | None:
    """The validation split (``validation_size``, ``cv_folds``) the study's latest search batch
    was scored on, read from the space text stored with it; None where no batch stored one."""
    from bench.engine.store import JobStore
    from bench.space import SCORING_TRAIN_FIELDS, space_from_text

    store = JobStore(storage)
    try:
        for batch in reversed(store.batches(study)):
            text = batch.settings.get("space_text")
            if batch.design == SEARCH_DESIGN and text:
                space = space_from_text(text, f"batch {batch.number}'s space")
                return {k: getattr(space.train, k) for k in SCORING_TRAIN_FIELDS}
        return None
    finally:
        store.dispose()


def check_split_seed(store, study: str, seed: int) -> None:
    """``--seed`` also seeds the validation split (and the cross-validation folds): a study's
    batches are ranked together, so a new one must be scored on the split of the last one.

    Raises:
        BenchError: another seed than the study's latest search batch, in one line.
    """
    latest = store.latest_batch(study, SEARCH_DESIGN)
    if latest is None:
        return
    old = int(latest.settings.get("seed", 0))
    if old != seed:
        raise BenchError(
            f"--seed {seed}: study '{study}' is scored on the validation split of --seed {old} "
            f"(batch {latest.number}); use --seed {old}, another --study-name, or "
            "--allow-space-change to mix splits knowingly"
        )


def console() -> None:
    """Console-script entry point (``pip install`` puts it on PATH)."""
    run(main)


if __name__ == "__main__":
    console()
