"""``python -m bench.register``: finish registering a study's champion after an outage.

Registration is the last job of a search batch (the averaged refit members of an ensemble, a
single refit, or the chosen run's own model with ``--no-refit``). When the tracking store was
down at the time, or the batch was stopped before its last stage, this command runs what is left
of the study's latest search batch on one worker and prints the registered version; it is the
same as rerunning the search command, without having to remember its flags. A batch already
registered is only reported.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.cli import Parser, add_store_flags, engine_main, run
from bench.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, BenchError, redact
from bench.records import DONE, SEARCH_DESIGN


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m bench.register", description=__doc__.splitlines()[0])
    add_store_flags(p, "the study whose champion to register", required_study=True)
    return p


def main(argv: list[str] | None = None) -> int:
    return engine_main(_run, build_parser().parse_args(argv))


def _run(args: argparse.Namespace, interrupts) -> int:
    # the command's one deferred block: what --help and bad flags never need (NumPy, SQLAlchemy)
    from bench import optuna_adapter as opt
    from bench.engine import batch_space
    from bench.engine.driver import BatchRun, drive
    from bench.engine.mirror import complete_mirrors
    from bench.engine.store import JobStore
    from bench.resources import plan_workers, usable_cpus, visible_gpus
    from bench.tracking import Tracker, check_uri, resolve_uri

    storage = args.storage or opt.DEFAULT_STORAGE
    if opt.is_journal(storage) and not Path(storage).is_file():
        raise BenchError(f"--storage {redact(storage)}: no such journal file")
    opt.load_study(args.study_name, storage)  # a missing study is named in one line
    batch = JobStore(storage).latest_batch(args.study_name, SEARCH_DESIGN)
    if batch is None:
        raise BenchError(f"--study-name {args.study_name}: the study was not made by bench.search")
    info = batch.summary or {}
    if batch.state == DONE:
        uri = resolve_uri(args.tracking_uri)
        store = JobStore(storage)
        if store.unmirrored(args.study_name):  # an outage left runs RUNNING: end them now
            try:
                check_uri(uri)
                tracker = Tracker(uri, batch.settings["experiment"])
            except BenchError as exc:  # still down: reporting needs no tracking store
                print(f"note: MLflow runs not ended yet: {exc}", file=sys.stderr)
            else:
                complete_mirrors(store, args.study_name, tracker)
        if not info.get("version"):
            if info.get("no_champion"):  # the batch ended without one: a failure, not usage
                print(f"error: no champion registered: {info['no_champion']}", file=sys.stderr)
                return EXIT_FAILURE
            print("nothing to register: the batch chose no model", file=sys.stderr)
            return EXIT_USAGE
        print(
            f"{batch.settings['model_name']} version {info['version']} (test accuracy "
            f"{info['test_accuracy']:.4f}); champion: version {info['champion_version']}"
        )
        return EXIT_OK
    uri = resolve_uri(args.tracking_uri)
    check_uri(uri)
    space = batch_space(batch.settings)
    tracker = Tracker(uri, batch.settings["experiment"])
    store = JobStore(storage)
    plan = plan_workers(1, None, 1, usable_cpus(), visible_gpus())
    run = BatchRun(store, batch, False, tracker, uri, storage, plan, space, quiet=True)
    return drive(run, interrupts)


def console() -> None:
    run(main)


if __name__ == "__main__":
    console()
