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

from bench.cli import (
    Parser,
    add_ensemble_flag,
    add_store_flags,
    add_worker_flags,
    bounded_int,
    engine_main,
    run,
)


class _Renamed(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(
            f"{option_string}: bench.reevaluate calls it --no-register (refit and register "
            "nothing); --no-refit means 'register the search run's own model' in bench.search"
        )


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m bench.reevaluate", description=__doc__.splitlines()[0])
    add_store_flags(p, "the searched study", required_study=True)
    p.add_argument("--top-k", type=bounded_int(1, 50), default=3, help="configurations (default 3)")
    p.add_argument("--seeds", type=bounded_int(2, 20), default=3, help="seeds each (default 3)")
    add_ensemble_flag(p, "re-evaluated configurations (at most --top-k)")
    p.add_argument(
        "--no-register",
        action="store_true",
        help="refit and register nothing; only report the re-evaluated configurations",
    )
    p.add_argument(  # its old name here; in bench.search --no-refit means "register, unrefit"
        "--no-refit", action=_Renamed, nargs=0, help=argparse.SUPPRESS
    )
    add_worker_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return engine_main(_run, build_parser().parse_args(argv))


def _run(args: argparse.Namespace, interrupts) -> int:
    from bench.engine.reevaluation import ReevalRequest, reevaluate

    req = ReevalRequest(
        study=args.study_name,
        storage=args.storage,
        tracking_uri=args.tracking_uri,
        top_k=args.top_k,
        seeds=args.seeds,
        ensemble=args.ensemble,
        register=not args.no_register,
        workers=args.workers,
        threads=args.threads,
        executor=args.executor,
        ray_address=args.ray_address,
        quiet=args.quiet,
    )
    return reevaluate(req, interrupts)


def console() -> None:
    """Console-script entry point."""
    run(main)


if __name__ == "__main__":
    console()
