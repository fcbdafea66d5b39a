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
import sys
import time
from pathlib import Path

from bench.cli import (
    SEED_MAX,
    Parser,
    add_ensemble_flag,
    add_worker_flags,
    bounded_int,
    positive_seconds,
)
from bench.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    BenchError,
    redact,
    store_location,
)

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
    p.add_argument(
        "--study-name",
        help="Optuna study (default <dataset>-<space file stem>, e.g. fashion-mnist-mlp)",
    )
    p.add_argument(
        "--storage",
        help="Optuna storage: a journal file path (default "
        "optuna-studies.log) or a database URL, e.g. postgresql://...",
    )
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    )
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
        "--allow-space-change",
        action="store_true",
        help="continue a study created with a different search space",
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
    from bench.cli import engine_main

    return engine_main(_run, build_parser().parse_args(argv))


def _run(args: argparse.Namespace, interrupts) -> int:
    from bench import data
    from bench import optuna_adapter as opt
    from bench.cli import check_name
    from bench.engine.store import JobStore
    from bench.resources import plan_workers, usable_cpus, visible_gpus
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
    plan = plan_workers(args.jobs, args.threads, n_trials, usable_cpus(), visible_gpus())
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
    }
    # creates the study, or checks it was made for this space, before anything else is written
    study = opt.open_study(study_name, storage, space, args.seed, args.allow_space_change)
    store = JobStore(storage)
    if not args.allow_space_change:
        check_split_seed(store, study_name, args.seed)
    if space.enqueue and n_trials:
        opt.enqueue(study, space.enqueue)  # the space's starting points, once per study
    tracker = Tracker(uri, experiment)
    batch, created = open_search_batch(
        store, study_name, settings, space, dataset, tracker, storage
    )
    return run_batch(args, interrupts, store, batch, created, tracker, uri, storage, plan, space)


def check_split_seed(store, study: str, seed: int) -> None:
    """``--seed`` also seeds the validation split (and the cross-validation folds): a study's
    batches are ranked together, so a new one must be scored on the split of the last one.

    Raises:
        BenchError: another seed than the study's latest search batch, in one line.
    """
    latest = store.latest_batch(study, "search")
    if latest is None:
        return
    old = int(latest.settings.get("seed", 0))
    if old != seed:
        raise BenchError(
            f"--seed {seed}: study '{study}' is scored on the validation split of --seed {old} "
            f"(batch {latest.number}); use --seed {old}, another --study-name, or "
            "--allow-space-change to mix splits knowingly"
        )


def open_search_batch(store, study_name, settings, space, dataset, tracker, storage):
    from bench.designs.search import SearchDesign
    from bench.engine import batch_tag, open_batch

    def start_parent(batch) -> str:
        run_id = tracker.start_parent(
            f"{study_name}-batch-{batch.number}",
            {
                "n_trials": settings["n_trials"],
                "dataset": dataset.name,
                "space": Path(settings["space"]).name,
                "sampler": space.sampler.name,
                "pruner": space.pruner.name,
                "seed": settings["seed"],
                "metric": space.metric,
                "storage": store_location(storage),  # never a password
                "refit": settings["refit"],
                "ensemble": settings["ensemble"],
                "reeval_top_k": settings["reeval_top_k"],
                **{f"train.{k}": v for k, v in space.train.__dict__.items()},
                **{f"fixed.{k}": v for k, v in space.fixed_values().items()},
            },
            {
                "study_name": study_name,
                "batch": batch.number,
                **batch_tag(batch),
                "design": batch.design,
                "space_hash": space.search_hash,
                "dataset_digest": dataset.digest,
                "role": "study",
            },
        )
        tracker.safe(tracker.log_space, run_id, settings)
        tracker.safe(tracker.log_dataset, run_id, dataset)
        return run_id

    def initial(stored: dict):
        return SearchDesign(stored).initial_jobs(stored.get("baselines") or [], stored["n_trials"])

    return open_batch(
        store,
        study_name,
        "search",
        "search",
        settings,
        initial,
        start_parent,
        tracker,
    )


def run_batch(
    args,
    interrupts,
    store,
    batch,
    created,
    tracker,
    uri,
    storage,
    plan,
    space,
    purposes=("search", "baseline"),
) -> int:
    """Run workers on an open batch, with progress; print the outcome. Shared by the CLIs."""
    from bench.engine import counts, run_workers
    from bench.engine.mirror import complete_mirrors
    from bench.engine.progress import Progress
    from bench.engine.worker import WorkerSettings

    complete_mirrors(store, batch.study, tracker)  # what an outage left of earlier batches
    jobs = [j for j in store.jobs(batch.id) if j.purpose in purposes]
    done_before = counts(jobs)["done"]
    total = len(jobs)
    if not created:
        tracker.safe(tracker.reopen, batch.parent_run_id)
        print(
            f"joining {batch.design} batch {batch.number} of study '{batch.study}': "
            f"{done_before}/{total} jobs already finished",
            file=sys.stderr,
        )
    print(
        f"study '{batch.study}' {batch.design} batch {batch.number}: {total} jobs on {plan.jobs} "
        f"worker(s) x {plan.threads} thread(s); storage {redact(storage)}; tracking {redact(uri)}",
        file=sys.stderr,
    )
    deadline = time.time() + args.timeout if getattr(args, "timeout", None) else None
    settings = [
        WorkerSettings(
            storage=storage,
            tracking_uri=uri,
            batch_id=batch.id,
            threads=plan.threads,
            deadline=deadline,
            tensorboard_dir=getattr(args, "tensorboard", None),
            env=plan.per_worker_env[i] if plan.per_worker_env else {},
        )
        for i in range(plan.jobs)
    ]
    progress = Progress(
        storage, batch, purposes, space.direction == "maximize", total, enabled=not args.quiet
    )
    progress.start()
    started = time.time()
    try:
        failed_workers = run_workers(settings, interrupts)
    except KeyboardInterrupt:
        progress.stop()
        return _interrupted(store, batch, tracker, purposes, done_before)
    progress.stop()
    return _summary(
        store,
        batch,
        tracker,
        uri,
        storage,
        purposes,
        time.time() - started,
        failed_workers,
        deadline,
    )


def _interrupted(store, batch, tracker, purposes, done_before: int) -> int:
    from bench.engine import counts

    c = counts([j for j in store.jobs(batch.id) if j.purpose in purposes])
    if not c["running"]:
        tracker.safe(tracker.end_run, batch.parent_run_id, "KILLED")
    total = sum(c.values())
    print(
        f"interrupted: kept {c['done']}/{total} finished jobs of batch {batch.number} "
        f"({c['done'] - done_before} this run); rerun the same command to resume",
        file=sys.stderr,
    )
    return EXIT_INTERRUPTED


def ui_command(uri: str, storage: str) -> str:
    """The ``bench.ui`` command that serves this store, with the flags it needs here."""
    from bench.optuna_adapter import DEFAULT_STORAGE
    from bench.tracking import resolve_uri

    flags = "" if uri == resolve_uri(None) else f" --tracking-uri {redact(uri)}"
    flags += "" if storage == DEFAULT_STORAGE else f" --storage {redact(storage)}"
    return f"python -m bench.ui{flags}"


def _summary(
    store, batch, tracker, uri, storage, purposes, seconds, failed_workers, deadline
) -> int:
    import pandas as pd

    from bench.engine import counts
    from bench.tracking import ui_links

    jobs = store.jobs(batch.id)
    mine = [j for j in jobs if j.purpose in purposes]
    c = counts(mine)
    rows = []
    for j in mine:
        r = j.result
        if j.state != "done" or r is None:
            continue
        cfg = r.config or {}
        rows.append(
            {
                "job": j.key if j.trial_number is None else f"trial {j.trial_number}",
                "state": r.status,
                "value": r.value,
                "normalization": cfg.get("normalization", ""),
                "units": "-".join(map(str, cfg.get("units") or [])),
                "dropout": (cfg.get("dropout") or [None])[0],
                "optimizer": cfg.get("optimizer", ""),
                "lr": cfg.get("learning_rate"),
                "batch": cfg.get("batch_size"),
                "epochs": r.epochs_run,
                "seconds": r.train_seconds,
            }
        )
    frame = pd.DataFrame(rows)
    if not frame.empty:  # completed jobs first: a pruned job's value is an early epoch's
        frame["_pruned"] = frame["state"] != "completed"
        frame = (
            frame.sort_values(["_pruned", "value"], ascending=[True, False], na_position="last")
            .drop(columns="_pruned")
            .head(10)
        )
        print(frame.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    record = store.get_batch(batch.id)
    total = sum(c.values())
    print(f"\nbatch {batch.number}: {c['done']}/{total} jobs finished in {seconds:.0f} s")
    failed = [j for j in mine if j.state == "failed"]
    if c["done"] == 0 and (failed or failed_workers):
        cause = failed[-1].reason if failed else "every worker exited with an error (see above)"
        print(
            f"error: no job of batch {batch.number} finished; {len(failed)} failed, the last "
            f"with: {redact(cause)}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    info = record.summary or {}
    if info.get("version"):
        members = info.get("ensemble") or []
        how = (
            f"the mean of {len(members)} configurations refit on all training images for "
            f"{info.get('refit_epochs')} epochs; alone they score "
            + ", ".join(f"{m['test_accuracy']:.4f}" for m in members if m.get("test_accuracy"))
            if len(members) > 1
            else f"refit on all training images for {info.get('refit_epochs')} epochs"
            if info.get("refit")
            else "the search run's own model"
        )
        gap = info.get("val_test_gap")
        loss = info.get("selection_metric") == "val_loss"  # the gap is then a loss minus a loss
        print(
            f"registered {record.settings['model_name']} version {info['version']} "
            f"({how}; chosen by validation {'loss ' if loss else ''}"
            f"{info.get('selection_score', float('nan')):.4f}, "
            + (f"test loss {info['test_loss']:.4f}, " if loss else "")
            + f"test accuracy {info['test_accuracy']:.4f}"
            + (
                f", val->test gap {gap:+.4f}"
                if gap is not None and loss
                else f", val->test gap {gap * 100:+.1f} points"
                if gap is not None
                else ""
            )
            + f"); champion: version {info['champion_version']}, "
            f"models:/{record.settings['model_name']}@champion"
            + ("" if info.get("promoted", True) else f" ({info.get('reason')})")
        )
    final = [j for j in jobs if j.purpose in ("refit", "register")]
    registers = record.design in ("search", "reeval") and record.settings.get("register", True)
    if record.state == "done" and registers and not info.get("version"):
        if info.get("no_champion"):
            print(f"error: no champion registered: {info['no_champion']}", file=sys.stderr)
            return EXIT_FAILURE
        if any(j.state == "failed" for j in final):
            cause = next(j.reason for j in final if j.state == "failed")
            print(f"error: the champion was not registered: {redact(cause)}", file=sys.stderr)
            return EXIT_FAILURE
        if not final:
            print(
                "note: no job completed (all pruned or failed): nothing to register",
                file=sys.stderr,
            )
    links = ui_links(uri, tracker.experiment_id, record.settings.get("model_name"))
    print(f"runs:   {links['runs']}")
    if info.get("version"):
        print(f"model:  {links['model']}")
    if "start" in links:  # a local store: nothing serves it until `bench.ui` does
        print(f"        (start the UI first: {ui_command(uri, storage)})")
    print(f"report: python -m bench.report --study-name {batch.study}")
    if record.state != "done":
        reason = "the --timeout passed" if deadline and time.time() >= deadline else None
        if failed_workers and not reason:
            print(
                f"error: {failed_workers} worker(s) exited with an error before the batch was "
                "complete; finished jobs are kept; rerun the same command to continue",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        print(
            f"batch {batch.number} is not complete ({reason or 'jobs remain'}); rerun the same "
            "command to continue",
            file=sys.stderr,
        )
    return EXIT_OK


def console() -> None:
    """Console-script entry point (``pip install`` puts it on PATH)."""
    from bench.cli import run

    run(main)


if __name__ == "__main__":
    console()
