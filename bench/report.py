"""``python -m bench.report``: a study's tables, plots, ``report.html`` and ``report.md``.

Everything shown comes from the trials' user attributes (``bench.config``, ``bench.history``, ...)
and the job store's batches (search, re-evaluation and ablation summaries), so a report takes
seconds and never imports TensorFlow. When the study has a finished ablation (``bench.ablate``),
the report leads with its "What matters" section and forest plot. Only ``--reevaluate``
(alias ``--finalize``) trains, through :mod:`bench.engine.reevaluation` (what
``bench.reevaluate`` runs). The files are also logged as artifacts of the study's latest search
parent MLflow run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bench import optuna_adapter as opt
from bench.cli import Parser, add_store_flags, bounded_int, engine_main, positive_int, run
from bench.errors import EXIT_OK, EXIT_USAGE, BenchError, folder_name, redact
from bench.records import ABLATION_DESIGN, SEARCH_DESIGN, Batch

if TYPE_CHECKING:
    import optuna


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m bench.report",
        description="Tables, plots, report.html and report.md of a study, with 'What matters' when "
        "it has an ablation; --reevaluate retrains the top configurations "
        "with several seeds first.",
    )
    add_store_flags(p, "the study (default: the storage's only study)")
    p.add_argument("--out", help="output folder (default reports/<study>/)")
    p.add_argument(
        "--top-k",
        type=positive_int,
        default=3,
        help="trials listed first, plotted as learning curves and re-evaluated (default 3)",
    )
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")
    f = p.add_argument_group("--reevaluate (retrains: imports TensorFlow)")
    f.add_argument(
        "--reevaluate",
        "--finalize",
        dest="reevaluate",
        action="store_true",
        help="first run python -m bench.reevaluate: retrain the top-k configurations "
        "with --seeds seeds each and choose by their mean validation score",
    )
    f.add_argument(
        "--seeds", type=bounded_int(2, 20), default=3, help="seeds per configuration (default 3)"
    )
    f.add_argument(
        "--workers",
        "--jobs",
        dest="workers",
        type=bounded_int(1, 256),
        help="worker processes (default: per CPU); --jobs is the same flag",
    )
    f.add_argument("--quiet", action="store_true", help="no progress output while retraining")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bench.logs import setup_logging

    setup_logging()  # also silences Optuna's ExperimentalWarning on every matplotlib plot
    try:
        return _run(args)
    except BenchError as exc:
        print(f"error: {redact(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; files written so far are kept", file=sys.stderr)
        return 130


def open_study(storage_url: str | None, name: str | None) -> optuna.Study:
    """Load ``name``, or the storage's only study.

    Raises:
        BenchError: no storage, no such study, or several studies and no ``name``.
    """

    url = storage_url or opt.DEFAULT_STORAGE
    if opt.is_journal(url) and not Path(url).is_file():
        raise BenchError(
            f"--storage {redact(url)}: no such journal file; run bench.search first "
            "or point --storage at the study's storage"
        )
    names = sorted(opt.study_names(url))
    if name is None:
        if len(names) != 1:
            raise BenchError(
                f"--study-name is required: {redact(url)} holds {len(names)} studies "
                f"({', '.join(names) or 'none'})"
            )
        name = names[0]
    elif name not in names:
        raise BenchError(
            f"--study-name {name!r}: not in {redact(url)}; it holds "
            f"{', '.join(names) or 'no study'}"
        )
    return opt.load_study(name, url)


def _run(args: argparse.Namespace) -> int:
    from bench.results.report import build
    from bench.results.study import job_store
    from bench.tracking import resolve_uri

    study = open_study(args.storage, args.study_name)
    uri = resolve_uri(args.tracking_uri)
    if args.reevaluate:
        from bench.engine.reevaluation import ReevalRequest, reevaluate

        req = ReevalRequest(
            study=study.study_name,
            storage=args.storage,
            tracking_uri=args.tracking_uri,
            top_k=args.top_k,
            seeds=args.seeds,
            workers=args.workers,
            quiet=args.quiet,
        )
        code = engine_main(lambda _args, interrupts: reevaluate(req, interrupts), args)
        if code != EXIT_OK:
            return code
    out = Path(args.out or Path("reports") / folder_name(study.study_name))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"--out {out}: cannot create the folder ({exc.strerror})") from None
    store = job_store(args.storage or opt.DEFAULT_STORAGE)
    everything = store.batches() if store is not None else []
    batches = [b for b in everything if b.study == study.study_name]
    others = [b for b in everything if b.study != study.study_name]
    report = build(study, out, args.top_k, batches, others)
    print(report.text)
    print(
        f"\nwrote {out / 'report.html'} (open it in a browser), report.md and "
        f"{len(report.images)} plot(s) to {out}/"
    )
    if not args.no_mlflow:
        where = log_artifacts(batches, uri, report.files, store)
        print(where, file=sys.stderr if where.startswith("not logged") else sys.stdout)
    return EXIT_OK


def log_artifacts(batches: list[Batch], uri: str, files: list[Path], store=None) -> str:
    """Log the report files to the study's latest search parent run (else its latest ablation's);
    returns a line saying where. With the job ``store``, first finish the MLflow mirror of any
    batch a tracking outage left with runs RUNNING."""
    runs = [b for b in batches if b.design == SEARCH_DESIGN and b.parent_run_id]
    runs = runs or [b for b in batches if b.design == ABLATION_DESIGN and b.parent_run_id]
    if not runs:
        return "not logged to MLflow: the study has no parent run (no search batch in its store)"
    parent = runs[-1].parent_run_id
    experiment = runs[-1].settings.get("experiment") or "Default"
    from bench.tracking import Tracker

    try:
        tracker = Tracker(uri, experiment)
        if store is not None:
            from bench.engine.mirror import complete_mirrors

            complete_mirrors(store, runs[-1].study, tracker)
        for path in files:
            tracker.log_artifact(parent, str(path), "report")
    except Exception as exc:  # noqa: BLE001 - the files on disk are the report; MLflow is a copy
        first = (redact(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"not logged to MLflow ({redact(uri)}): {redact(first, limit=200)}"
    return f"logged {len(files)} file(s) to MLflow run {parent} under report/ ({redact(uri)})"


def console() -> None:
    """Console-script entry point (``pip install`` puts it on PATH)."""
    run(main)


if __name__ == "__main__":
    console()
