"""``python -m bench.search``: run (or resume, or join) a study's batch of trials.

The coordinator validates everything a user can get wrong before anything is written, opens or
joins the batch (one MLflow parent run per batch), starts the workers, shows progress and prints
the summary. It never imports TensorFlow itself unless it trains (``--jobs 1``).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import sys
import time
from pathlib import Path

from bench.cli import Parser, positive_int, positive_seconds
from bench.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, BenchError, redact

log = logging.getLogger("bench")
SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
DEFAULT_SPACE = str(SPACES_DIR / "mlp.yaml")
BASELINES_SPACE = str(SPACES_DIR / "baselines.yaml")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m bench.search",
        description="Search Keras MLP configurations with Optuna; track every trial in "
        "MLflow; register the best model.",
    )
    p.add_argument(
        "--trials",
        type=positive_int,
        default=50,
        help="finished (completed or pruned) trials in this batch, across all workers "
        "and restarts (default 50)",
    )
    p.add_argument(
        "--space", default=DEFAULT_SPACE, help="search-space YAML (default search_spaces/mlp.yaml)"
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
        "--max-epochs", type=positive_int, help="override the space file's train.max_epochs"
    )
    p.add_argument(
        "--timeout", type=positive_seconds, help="start no new trial after this many seconds"
    )
    p.add_argument(
        "--jobs", type=positive_int, help="worker processes on this machine (default: one per core)"
    )
    p.add_argument(
        "--threads", type=positive_int, help="TensorFlow threads per worker (default: cores / jobs)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="study seed; trial seeds are seed + trial number"
    )
    p.add_argument(
        "--no-register", action="store_true", help="skip test evaluation and registration"
    )
    p.add_argument(
        "--allow-space-change",
        action="store_true",
        help="continue a study created with a different search space",
    )
    p.add_argument(
        "--with-baselines",
        action="store_true",
        help="enqueue the seed tutorials' configurations first (search_spaces/baselines.yaml)",
    )
    p.add_argument(
        "--tensorboard",
        metavar="DIR",
        nargs="?",
        const="tensorboard",
        help="write TensorBoard logs per trial under DIR (default ./tensorboard)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bench.logs import setup_logging

    setup_logging()
    from bench.worker import Interrupts

    interrupts = Interrupts()
    interrupts.install()
    try:
        return _run(args, interrupts)
    except BenchError as exc:
        print(f"error: {redact(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted before the search started; nothing was kept or lost", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace, interrupts) -> int:
    from bench import data
    from bench import study as st
    from bench.space import load_space
    from bench.tracking import check_uri, resolve_uri
    from bench.worker import SearchConfig

    space = load_space(args.space).with_overrides(max_epochs=args.max_epochs)
    dataset = data.load_dataset(args.dataset, args.data_dir)
    n_train = len(dataset.x_train)
    if not 0 < space.train.validation_size <= n_train // 2:
        raise BenchError(
            f"{space.path}: train.validation_size: {space.train.validation_size} does "
            f"not fit {dataset.name}'s {n_train} training images; use at most {n_train // 2}"
        )
    if args.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise BenchError(
            "--tensorboard: the tensorboard package is not installed; "
            "pip install tensorboard (or the project's [tensorboard] extra)"
        )
    uri = resolve_uri(args.tracking_uri)
    check_uri(uri)
    first = [b.payload() for b in space.baselines if b.dataset in (None, dataset.name)]
    if args.with_baselines:
        extra = load_space(BASELINES_SPACE).baselines
        first += [b.payload() for b in extra if b.dataset in (None, dataset.name)]
    if space.baselines and not first:
        raise BenchError(f"{space.path}: none of its baselines runs on {dataset.name}")
    n_trials = args.trials if space.searches else len(first)  # a baselines file runs each once
    default_name = f"{dataset.name}-mlp"
    cores = os.cpu_count() or 1
    jobs = args.jobs or max(1, min(cores, n_trials))
    cfg = SearchConfig(
        space_path=args.space,
        dataset=args.dataset,
        data_dir=args.data_dir,
        study_name=args.study_name or f"{dataset.name}-{Path(args.space).stem}",
        storage=args.storage or st.DEFAULT_STORAGE,
        tracking_uri=uri,
        experiment=args.experiment or default_name,
        model_name=args.model_name or default_name,
        max_epochs=args.max_epochs,
        seed=args.seed,
        register=not args.no_register,
        threads=args.threads or max(1, cores // jobs),
        deadline=time.time() + args.timeout if args.timeout else None,
        tensorboard_dir=args.tensorboard,
        allow_space_change=args.allow_space_change,
    )
    storage = st.make_storage(cfg.storage)
    study = st.open_study(cfg.study_name, storage, space, cfg.seed, args.allow_space_change)
    from bench.tracking import Tracker

    tracker = Tracker(uri, cfg.experiment)

    def start_parent(batch_id: int) -> str:
        run_id = tracker.start_parent(
            f"{cfg.study_name}-batch-{batch_id}",
            {
                "n_trials": n_trials,
                "dataset": dataset.name,
                "space": Path(args.space).name,
                "sampler": space.sampler.name,
                "pruner": space.pruner.name,
                "seed": cfg.seed,
                "metric": space.metric,
                "storage": cfg.storage,
                **{f"train.{k}": v for k, v in space.train.__dict__.items()},
                **{f"fixed.{k}": v for k, v in space.fixed_values().items()},
            },
            {
                "study_name": cfg.study_name,
                "batch": batch_id,
                "space_hash": space.search_hash,
                "dataset_digest": dataset.digest,
                "role": "study",
            },
        )
        tracker.safe(tracker.log_artifact, run_id, args.space, "space")
        tracker.safe(tracker.log_dataset, run_id, dataset)
        return run_id

    meta = {
        "space": str(Path(args.space).resolve()),
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "experiment": cfg.experiment,
        "model_name": cfg.model_name,
        "seed": cfg.seed,
    }
    batch = st.open_batch(study, n_trials, start_parent, first, meta=meta)
    done_before = len(_finished(study, batch.id))
    if not batch.created:
        tracker.safe(tracker.reopen, batch.parent_run_id)
        print(
            f"joining batch {batch.id} of study '{cfg.study_name}': {done_before}/{batch.trials} "
            "trials already finished",
            file=sys.stderr,
        )
    print(
        f"study '{cfg.study_name}' batch {batch.id}: {batch.trials} trials on {jobs} worker(s) x "
        f"{cfg.threads} thread(s); storage {redact(cfg.storage)}; tracking {redact(uri)}",
        file=sys.stderr,
    )
    progress = _Progress(cfg, batch, space.direction, enabled=not args.quiet)
    progress.start()
    started = time.time()
    try:
        if jobs == 1:
            from bench.worker import Worker

            worker = Worker(cfg, batch.id, interrupts)
            worker.run()
            worker.finalize_if_last()
        else:
            failed = _run_processes(cfg, batch.id, jobs, interrupts)
            if failed:
                log.error("%d worker(s) exited with an error; finished trials are kept", failed)
    except KeyboardInterrupt:
        progress.stop()
        return _interrupted(cfg, study, batch, tracker, done_before)
    progress.stop()
    return _summary(cfg, study, batch, time.time() - started)


def _finished(study, batch_id: int):
    from optuna.trial import TrialState

    from bench.study import batch_trials

    return batch_trials(study, batch_id, states=(TrialState.COMPLETE, TrialState.PRUNED))


def _run_processes(cfg, batch_id: int, jobs: int, interrupts) -> int:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_child, args=(cfg, batch_id, i), name=f"bench-worker-{i}")
        for i in range(jobs)
    ]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            for p in procs:
                p.join(timeout=0.5)
    except KeyboardInterrupt:
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGINT)
        deadline = time.time() + 8
        for p in procs:
            p.join(timeout=max(0.1, deadline - time.time()))
            if p.is_alive():
                p.kill()
        raise
    return sum(1 for p in procs if p.exitcode not in (0,))


def _child(cfg, batch_id: int, index: int) -> None:
    from bench.worker import worker_main

    sys.exit(worker_main(cfg, batch_id, index))


def _interrupted(cfg, study, batch, tracker, done_before: int) -> int:
    from optuna.trial import TrialState

    from bench.study import batch_trials

    with_others = batch_trials(study, batch.id, states=(TrialState.RUNNING,))
    if not with_others:
        tracker.safe(tracker.end_run, batch.parent_run_id, "KILLED")
    done = len(_finished(study, batch.id))
    print(
        f"interrupted: kept {done}/{batch.trials} finished trials of batch {batch.id} "
        f"({done - done_before} this run); rerun the same command to resume",
        file=sys.stderr,
    )
    return EXIT_INTERRUPTED


class _Progress:
    """A progress bar fed by polling the study storage (works for any number of workers)."""

    def __init__(self, cfg, batch, direction: str, enabled: bool):
        import threading

        self.cfg, self.batch, self.direction, self.enabled = cfg, batch, direction, enabled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        if self.enabled:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        import optuna
        from tqdm import tqdm

        from bench import study as st

        try:
            study = optuna.load_study(
                study_name=self.cfg.study_name, storage=st.make_storage(self.cfg.storage)
            )
        except Exception:  # noqa: BLE001 - progress is cosmetic
            return
        bar = tqdm(
            total=self.batch.trials,
            desc="trials",
            unit="trial",
            file=sys.stderr,
            dynamic_ncols=True,
        )
        while True:
            try:
                done = _finished(study, self.batch.id)
                values = [t.value for t in done if t.state.name == "COMPLETE"]
                bar.n = len(done)
                if values:
                    best = max(values) if self.direction == "maximize" else min(values)
                    bar.set_postfix_str(f"best {best:.4f}", refresh=False)
                bar.refresh()
            except Exception:  # noqa: BLE001
                pass
            if self._stop.wait(2.0):
                break
        bar.close()


def _summary(cfg, study, batch, seconds: float) -> int:
    import pandas as pd

    from bench.study import current_batch

    trials = [t for t in study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")]
    rows = []
    for t in trials:
        c = t.user_attrs.get("bench.config", {})
        units = c.get("units") or []
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "value": t.value,
                "normalization": c.get("normalization", ""),
                "units": "-".join(map(str, units)),
                "dropout": (c.get("dropout") or [None])[0],
                "optimizer": c.get("optimizer", ""),
                "lr": c.get("learning_rate"),
                "batch": c.get("batch_size"),
                "epochs": t.user_attrs.get("bench.epochs"),
                "seconds": t.user_attrs.get("bench.train_seconds"),
            }
        )
    frame = pd.DataFrame(rows)
    if not frame.empty:  # completed trials first: a pruned trial's value is an early epoch's
        frame["_pruned"] = frame["state"] != "COMPLETE"
        frame = (
            frame.sort_values(
                ["_pruned", "value"],
                ascending=[True, study.direction.name != "MAXIMIZE"],
                na_position="last",
            )
            .drop(columns="_pruned")
            .head(10)
        )
        print(frame.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    record = current_batch(study)
    done = len(_finished(study, batch.id))
    print(f"\nbatch {batch.id}: {done}/{batch.trials} trials finished in {seconds:.0f} s")
    failed = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state.name == "FAIL" and t.user_attrs.get("bench.batch_id") == batch.id
    ]
    if done == 0 and failed:
        reason = failed[-1].user_attrs.get("bench.reason", "unknown")
        print(
            f"error: no trial of batch {batch.id} finished; {len(failed)} failed, the last with: "
            f"{redact(reason)}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    info = (record.summary or {}) if record and record.id == batch.id else {}
    if info.get("registered"):
        print(
            f"registered {cfg.model_name} version {info['registered']} (test accuracy "
            f"{info['test_accuracy']:.4f}); champion: version {info['champion_version']}, "
            f"models:/{cfg.model_name}@champion"
        )
    print(f"browse: mlflow ui --backend-store-uri {redact(cfg.tracking_uri)} --host 127.0.0.1")
    return EXIT_OK


if __name__ == "__main__":
    from bench.cli import run

    run(main)
