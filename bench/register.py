"""``python -m bench.register``: evaluate and register a study's best model explicitly.

Workers register the champion once when a batch ends; this command is for when that could not
happen (tracking store down at the time) or for registering on purpose. It is idempotent: a model
version already registered for the same study and trial is reused, never duplicated.
"""

from __future__ import annotations

import argparse
import sys

from bench.cli import Parser
from bench.errors import EXIT_OK, EXIT_USAGE, BenchError, redact


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m bench.register", description=__doc__.splitlines()[0])
    p.add_argument("--study-name", required=True, help="the study whose best model to register")
    p.add_argument("--storage", help="Optuna storage (default optuna-studies.log)")
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    )
    p.add_argument("--model-name", help="registered model name (default: the one the search used)")
    p.add_argument("--data-dir", help="dataset folder (default: the one the search used)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bench.logs import setup_logging

    setup_logging()
    try:
        summary = register(args)
    except BenchError as exc:
        print(f"error: {redact(exc)}", file=sys.stderr)
        return EXIT_USAGE
    if not summary.get("registered"):
        print("nothing to register: no completed trial has a logged model", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"{summary['model_name']} version {summary['registered']} (test accuracy "
        f"{summary['test_accuracy']:.4f}); champion: version {summary['champion_version']}"
    )
    return EXIT_OK


def register(args: argparse.Namespace) -> dict:
    import optuna

    from bench import data
    from bench import study as st
    from bench.registry import finalize
    from bench.space import load_space
    from bench.tracking import Tracker, check_uri, resolve_uri
    from bench.worker import SearchConfig

    storage = st.make_storage(args.storage)
    try:
        study = optuna.load_study(study_name=args.study_name, storage=storage)
    except KeyError:
        raise BenchError(
            f"--study-name {args.study_name}: no such study in "
            f"{redact(args.storage or st.DEFAULT_STORAGE)}"
        ) from None
    batch = st.current_batch(study)
    if batch is None or not batch.meta:
        raise BenchError(f"--study-name {args.study_name}: the study was not made by bench.search")
    meta = batch.meta
    uri = resolve_uri(args.tracking_uri)
    check_uri(uri)
    space = load_space(meta["space"])
    cfg = SearchConfig(
        space_path=meta["space"],
        dataset=meta["dataset"],
        data_dir=args.data_dir or meta.get("data_dir"),
        study_name=args.study_name,
        storage=args.storage or st.DEFAULT_STORAGE,
        tracking_uri=uri,
        experiment=meta["experiment"],
        model_name=args.model_name or meta["model_name"],
    )
    dataset = data.load_dataset(cfg.dataset, cfg.data_dir)
    summary = finalize(study, batch, Tracker(uri, cfg.experiment), dataset, cfg, space)
    if summary.get("registered"):
        st.close_batch(study, batch, summary, done=batch.state == "done")
    return {**summary, "model_name": cfg.model_name}


if __name__ == "__main__":
    from bench.cli import run

    run(main)
