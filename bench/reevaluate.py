"""``python -m bench.reevaluate``: choose with less luck: re-train a study's top configurations.

The study's best ``--top-k`` distinct completed configurations are trained again with ``--seeds``
fresh seeds each, on the search's validation split, as jobs on the workers (in parallel, resumable
like a search). The ``--ensemble`` configurations (default 2) with the best *mean validation*
scores are refit on all training images and registered as the mean of their probabilities (one
with ``--ensemble 1``); every run's test accuracy is reported beside them, never used to choose.
``bench.report --finalize`` is the same command.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from bench.cli import Parser, add_ensemble_flag, add_worker_flags, bounded_int
from bench.errors import BenchError, redact


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m bench.reevaluate", description=__doc__.splitlines()[0])
    p.add_argument("--study-name", required=True, help="the searched study")
    p.add_argument("--storage", help="Optuna storage (default optuna-studies.log)")
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    )
    p.add_argument("--top-k", type=bounded_int(1, 50), default=3, help="configurations (default 3)")
    p.add_argument("--seeds", type=bounded_int(2, 20), default=3, help="seeds each (default 3)")
    add_ensemble_flag(p, "re-evaluated configurations (at most --top-k)")
    p.add_argument("--no-refit", action="store_true", help="register nothing new; report only")
    add_worker_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from bench.cli import engine_main

    return engine_main(_run, build_parser().parse_args(argv))


def _run(args: argparse.Namespace, interrupts) -> int:
    from bench import data
    from bench import optuna_adapter as opt
    from bench.designs.search import SearchDesign
    from bench.engine import batch_space, batch_tag, check_same_data, open_batch
    from bench.engine.store import JobStore
    from bench.records import BASELINE, SEARCH
    from bench.resources import plan_workers, usable_cpus, visible_gpus
    from bench.search import run_batch
    from bench.tracking import Tracker, check_uri, resolve_uri
    from bench.training import download_dataset

    storage = args.storage or opt.DEFAULT_STORAGE
    if opt.is_journal(storage) and not Path(storage).is_file():
        raise BenchError(
            f"--storage {redact(storage)}: no such journal file; run bench.search first"
        )
    study = opt.load_study(args.study_name, storage)
    store = JobStore(storage)
    searches = [b for b in store.batches(args.study_name) if b.design == "search"]
    if not searches:
        raise BenchError(f"--study-name {args.study_name}: no search batch to re-evaluate")
    last = searches[-1]
    jobs = [j for b in searches for j in store.jobs(b.id) if j.purpose in (SEARCH, BASELINE)]
    design = SearchDesign(last.settings, maximize=opt.direction(study) == "maximize")
    sources = design.candidates(jobs, args.top_k)
    if not sources:
        raise BenchError(f"study '{args.study_name}' has no completed trial to re-evaluate")
    settings = {
        **last.settings,
        "register": not args.no_refit,
        "refit": True,
        "reeval_top_k": args.top_k,
        "reeval_seeds": args.seeds,
        "ensemble": args.ensemble,
        "sources": [s.key for s in sources],
    }
    identity = hashlib.sha256(
        json.dumps(
            [
                settings["sources"],
                [s.batch_id for s in sources],
                args.top_k,
                args.seeds,
                settings["register"],
            ]
        ).encode()
    ).hexdigest()[:16]
    specs = SearchDesign(settings, design.maximize).reeval_jobs(sources)
    space = batch_space(last.settings)  # the space stored with the search batch
    dataset = data.load_dataset(
        last.settings["dataset"], last.settings.get("data_dir"), download=download_dataset
    )
    check_same_data(last, dataset.digest)  # re-evaluated on the data the search scored
    uri = resolve_uri(args.tracking_uri)
    check_uri(uri)
    tracker = Tracker(uri, last.settings["experiment"])

    def start_parent(batch) -> str:
        return tracker.start_parent(
            f"{args.study_name}-reeval-{batch.number}",
            {"top_k": args.top_k, "seeds": args.seeds, "sources": ",".join(settings["sources"])},
            {
                "study_name": args.study_name,
                **batch_tag(batch),
                "design": "reeval",
                "role": "study",
                "dataset_digest": dataset.digest,
            },
        )

    batch, created = open_batch(
        store,
        args.study_name,
        "reeval",
        identity,
        settings,
        lambda _s: specs,
        start_parent,
        tracker,
        join_done=True,
    )
    if batch.state == "done":
        from bench.engine.mirror import complete_mirrors

        complete_mirrors(store, args.study_name, tracker)
        print(f"already re-evaluated in batch {batch.number}:", file=sys.stderr)
        print_reeval(batch.summary or {})
        return 0
    plan = plan_workers(args.jobs, args.threads, len(specs), usable_cpus(), visible_gpus())
    args.timeout, args.tensorboard = None, None
    code = run_batch(
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
        purposes=("reeval",),
    )
    print_reeval(store.get_batch(batch.id).summary or {})
    return code


def print_reeval(summary: dict) -> None:
    rows = summary.get("reeval") or []
    if not rows:
        return
    print("\nre-evaluated configurations (mean over seeds, 95% t-interval; chosen by validation):")
    for r in sorted(rows, key=lambda r: -(r["val_mean"] or 0)):
        chosen = {m["source"] for m in summary.get("ensemble") or []} or {summary.get("source")}
        star = "*" if r["source"] in chosen else " "
        vl, vh = r["val_ci"]
        tl, th = r["test_ci"]
        print(
            f" {star} {r['source']}: val {r['val_mean']:.4f} [{vl:.4f}, {vh:.4f}]  "
            f"test {r['test_mean']:.4f} [{tl:.4f}, {th:.4f}]  ({r['seeds']} seeds)"
        )


def console() -> None:
    """Console-script entry point."""
    from bench.cli import run

    run(main)


if __name__ == "__main__":
    console()
