"""``python -m bench.ablate``: a controlled, seeded one-factor-at-a-time study around a base.

Every factor (a parameter the space searches) is varied alone around a base configuration (the
study's champion by default), and every cell trains with the same seeds, the full epoch budget,
early stopping and no pruning. Cells are jobs on the engine's workers, so an ablation runs in
parallel (``--jobs``), resumes after Ctrl-C or a kill, and is tracked as one MLflow parent run with
a nested run per cell x seed. The outcome is "What matters": paired differences to the base with
confidence intervals, in words (:mod:`bench.results.what_matters`).

Everything a user can get wrong is checked before anything is written.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import logging
import math
import sys
from pathlib import Path

from bench.cli import (
    Parser,
    add_store_flags,
    add_worker_flags,
    bounded_int,
    check_name,
    engine_main,
    run,
    worker_plan,
)
from bench.errors import EXIT_OK, BenchError, SpaceError, redact
from bench.records import DONE
from bench.space import load_space_text, parse_space, read_yaml_file, resolve_space

log = logging.getLogger("bench")
BASE_FILE_KEYS = ("params", "train", "name", "description")
PATH_ENDS = ("baseline", "trial", "config")
JOB_OVERHEAD_SECONDS = 4.0  # per job: building and compiling the model, the test evaluation


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m bench.ablate",
        description="Controlled one-factor-at-a-time comparisons around a base configuration: "
        "every level of every factor trains with the same seeds; effects with 95%% intervals.",
    )
    add_store_flags(
        p, "the study (default: the storage's only study, else <dataset>-<space file stem>)"
    )
    base = p.add_mutually_exclusive_group()
    base.add_argument(
        "--base-trial",
        type=bounded_int(0, 10**9),
        metavar="N",
        help="base configuration: the study's completed trial N (default: the study's champion)",
    )
    base.add_argument(
        "--base-config",
        metavar="FILE",
        help="base configuration: a YAML file with params: (the keys of a "
        "baselines.yaml entry) and optional train: overrides",
    )
    p.add_argument(
        "--factors",
        help="comma-separated parameters to vary (default: every "
        "searched one: normalization, optimizer, n_layers, units, dropout, l2, "
        "learning_rate, lr_schedule, batch_size)",
    )
    p.add_argument(
        "--cross",
        metavar="A,B[,C]",
        help="cross 2 or 3 factors instead: every combination of their levels, each with the "
        "same seeds, the rest at the base; reports main effects, interaction contrasts and an "
        "interaction plot",
    )
    p.add_argument(
        "--path",
        action="store_true",
        help="the ablation path instead: from a reference (--from) to a target (--to), move the "
        "parameters that differ one at a time, each step keeping the best move; with each step's "
        "gain, the cumulative gain and a leave-one-out check",
    )
    p.add_argument(
        "--global",
        dest="global_",
        type=bounded_int(8, 1024, " configurations"),
        metavar="N",
        help="importance over the whole space instead: N configurations spread by a scrambled "
        "Sobol sequence (at least 8), each trained once with the search's epoch budget, a few "
        "repeated over --seeds for the noise floor; fANOVA and PED-ANOVA with bootstrap intervals",
    )
    for flag, default in (("--from", "the space's first baseline"), ("--to", "the champion")):
        p.add_argument(
            flag,
            nargs=2,
            metavar=("KIND", "VALUE"),
            dest=flag.lstrip("-") + "_",
            help=f"with --path: baseline NAME, trial N or config FILE (default: {default})",
        )
    p.add_argument(
        "--max-cells",
        type=bounded_int(4, 10_000),
        default=100,
        metavar="N",
        help="the most cells --cross may plan (default 100: 5 x 5 levels fit, 5 x 5 x 5 do not)",
    )
    p.add_argument(
        "--seeds",
        type=bounded_int(2, 50),
        default=3,
        help="seeds per cell, the same for every cell (default 3, at least 2)",
    )
    p.add_argument(
        "--space",
        help="search-space YAML or built-in name (default: the study's latest search's, else mlp)",
    )
    p.add_argument("--dataset", help="dataset (default: the study's search's, else fashion-mnist)")
    p.add_argument("--data-dir", help="folder with the dataset's IDX files (default: the search's)")
    p.add_argument(
        "--max-epochs",
        type=bounded_int(1, 10_000),
        help="override the epoch budget (default: the search's)",
    )
    p.add_argument(
        "--experiment", help="MLflow experiment (default: the search's, else <dataset>-mlp)"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the cells and an estimated time; train nothing, write nothing",
    )
    add_worker_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return engine_main(_run, build_parser().parse_args(argv))


def _read_base_file(path: str, flag: str = "--base-config") -> tuple[dict, dict]:
    """``(config, train)`` of a ``--base-config`` file; unknown keys are errors."""

    try:
        data = read_yaml_file(path, flag, "configuration file")
    except SpaceError as exc:
        message = str(exc)
        raise BenchError(message if message.startswith(flag) else f"{flag} {message}") from None
    if not isinstance(data, dict):
        raise BenchError(f"{flag} {path}: needs a mapping with a 'params:' mapping")

    for key in data:
        if key not in BASE_FILE_KEYS:
            near = difflib.get_close_matches(str(key), BASE_FILE_KEYS, n=1, cutoff=0.5)
            hint = (
                f"; did you mean '{near[0]}'?" if near else f"; valid keys: {list(BASE_FILE_KEYS)}"
            )
            raise BenchError(f"{flag} {path}: unknown key '{key}'{hint}")
    if not isinstance(data.get("params"), dict):
        raise BenchError(f"{flag} {path}: needs a 'params:' mapping of parameter values")
    doc = {
        "baselines": [{"name": "base", "params": data["params"], "train": data.get("train") or {}}]
    }
    try:
        b = parse_space(doc, f"{flag} {path}").baselines[0]
    except SpaceError as exc:
        raise BenchError(str(exc).replace("baselines[0].", "")) from None
    return b.config, dict(b.train)


def identity(
    base: dict,
    train: dict,
    factors: list[str],
    seeds: list[int],
    space_hash: str,
    dataset: str,
    max_epochs: int,
    crossed: bool = False,
    kind: str | None = None,
) -> str:
    blob = json.dumps(
        {
            **({"crossed": True} if crossed else {}),  # a one-factor ablation keeps its identity
            **({"kind": kind} if kind else {}),
            "base": base,
            "train": train,
            "factors": factors,
            "seeds": seeds,
            "space": space_hash,
            "dataset": dataset,
            "max_epochs": max_epochs,
        },
        sort_keys=True,
    )
    prefix = f"{kind}-" if kind else "crossed-" if crossed else "ablation-"
    return prefix + hashlib.sha256(blob.encode()).hexdigest()[:16]


def _names(value: str | None, flag: str) -> list[str] | None:
    """A comma-separated list of factor names, or None where the flag was not given."""
    if value is None:
        return None
    names = [f.strip() for f in value.split(",") if f.strip()]
    if not names:
        raise BenchError(f"{flag}: name at least one parameter, e.g. normalization,optimizer")
    return names


def _check_cross(cross: list[str] | None, factors: list[str] | None) -> None:
    """``--cross`` and ``--factors`` plan two different designs: one of them per run."""
    if cross is None or factors is None:
        return
    both = [f for f in factors if f in cross]
    if both:
        raise BenchError(
            f"--cross and --factors both name '{both[0]}': a factor is crossed or varied alone, "
            "not both; drop it from --factors"
        )
    raise BenchError(
        f"--factors {','.join(factors)} with --cross: a crossed run varies only its crossed "
        f"factors; run the one-factor ablation on its own (bench.ablate --factors "
        f"{','.join(factors)})"
    )


def _check_path(args: argparse.Namespace, cross, factors) -> None:
    """``--path`` is a design of its own; ``--from`` and ``--to`` belong to it."""
    if not args.path:
        for flag, value in (("--from", args.from_), ("--to", args.to_)):
            if value is not None:
                raise BenchError(f"{flag}: only with --path (the ablation path's two ends)")
        return
    for flag, value in (("--cross", cross), ("--factors", factors), ("--base-trial",
                        args.base_trial), ("--base-config", args.base_config)):  # fmt: skip
        if value is not None:
            raise BenchError(
                f"--path with {flag}: the path moves the parameters that differ between --from "
                "and --to; run the other design on its own"
            )
    for flag, value in (("--from", args.from_), ("--to", args.to_)):
        if value is not None and value[0] not in PATH_ENDS:
            raise BenchError(
                f"{flag} {value[0]} {value[1]}: KIND must be one of {', '.join(PATH_ENDS)} "
                f"(e.g. {flag} baseline dense300-100-sgd-standard)"
            )


def _check_global(args: argparse.Namespace, cross, factors) -> None:
    """``--global`` is a design of its own: no base, no crossed or varied factors, no path."""
    if args.global_ is None:
        return
    for flag, value in (("--cross", cross), ("--factors", factors), ("--path", args.path or None),
                        ("--base-trial", args.base_trial),
                        ("--base-config", args.base_config)):  # fmt: skip
        if value is not None:
            raise BenchError(
                f"--global with {flag}: the global design spreads configurations over the whole "
                "space, around no base; run the other design on its own"
            )


def _baselines(space, dataset: str) -> list:
    """The space's own baselines, then the built-in seed tutorials' for this dataset."""
    from bench.space import load_space

    found = list(space.baselines)
    names = {b.name for b in found}
    for b in load_space("baselines").baselines:
        if b.name not in names and b.dataset in (None, dataset):
            found.append(b)
    return found


def _endpoint(
    value, flag: str, space, view, maximize: bool, dataset: str
) -> tuple[dict, dict, str]:
    """``(config, train, where from)`` of one end of a path."""
    from bench.results.study import champion_config, trial_config

    if value is None and flag == "--to":
        return champion_config(view, maximize)
    baselines = _baselines(space, dataset)
    if value is None:
        if not baselines:
            raise BenchError(
                f"--path: no baseline for {dataset} to start from; give --from trial N or "
                "--from config FILE"
            )
        b = baselines[0]
        return b.config, dict(b.train), f"baseline {b.name}"
    kind, what = value
    if kind == "baseline":
        names = [b.name for b in baselines]
        for b in baselines:
            if b.name == what:
                return b.config, dict(b.train), f"baseline {b.name}"
        near = difflib.get_close_matches(what, names, n=1, cutoff=0.5)
        hint = f"did you mean '{near[0]}'? " if near else ""
        raise BenchError(
            f"{flag} baseline {what}: no such baseline for {dataset}; {hint}"
            f"baselines: {', '.join(names) or 'none'}"
        )
    if kind == "trial":
        try:
            number = int(what)
        except ValueError:
            raise BenchError(f"{flag} trial {what}: N must be a trial number") from None
        return trial_config(view, number, flag)
    config, train = _read_base_file(what, flag)
    return config, train, f"{flag} config {what}"


def _epoch_share(configs, view, budget: int, train: dict, n_inputs: int, n_classes: int):
    """The share of the epoch budget the jobs are expected to use, weighted by their cost: a
    decaying learning rate trains to its end (unless early stopping applies to it), a constant
    one stops early (see ``results.study.expected_epoch_share``); ``(share, how)``."""
    from bench.designs.ablation_plan import dense_macs
    from bench.results.study import expected_epoch_share

    stop_decaying = bool(train["early_stop_decaying"])
    patience = int(train["patience"])
    shares = {d: expected_epoch_share(view, budget, patience, d and not stop_decaying)
              for d in (False, True)}  # fmt: skip
    costs = [(dense_macs(c, n_inputs, n_classes), c.get("lr_schedule", "constant") != "constant")
             for c in configs]  # fmt: skip
    total = sum(c for c, _ in costs) or 1
    share = sum(c * shares[d][0] for c, d in costs) / total
    kinds = {d for _, d in costs}
    if kinds == {True}:
        return share, shares[True][1]
    if kinds == {False} or shares[True][0] == shares[False][0]:
        return share, shares[False][1]
    n = sum(d for _, d in costs)
    return share, f"{shares[False][1]}; the {n} job(s) with a decaying learning rate to their end"


def _fmt_minutes(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


# ---------------------------------------------------------------- the command


def _run(args: argparse.Namespace, interrupts) -> int:
    # the command's one deferred block: what --help and bad flags never need (NumPy, SQLAlchemy)
    from bench import data
    from bench import optuna_adapter as opt
    from bench.designs import ablation, crossed, path, space_filling
    from bench.designs.ablation_plan import dense_macs
    from bench.designs.ablation_plan import plan as make_plan
    from bench.engine import batch_space
    from bench.engine.driver import BatchRun, drive, open_design_batch
    from bench.engine.mirror import complete_mirrors
    from bench.engine.store import JobStore
    from bench.results import interactions, what_matters
    from bench.results.study import (
        StudyView,
        champion_config,
        seconds_per_mac,
        trial_config,
    )
    from bench.tracking import Tracker, check_uri, resolve_uri
    from bench.training import download_dataset

    storage = args.storage or opt.DEFAULT_STORAGE
    factors = _names(args.factors, "--factors")
    cross = _names(args.cross, "--cross")
    _check_cross(cross, factors)
    _check_path(args, cross, factors)
    _check_global(args, cross, factors)
    if args.study_name:
        check_name("--study-name", args.study_name)
    base_file = None
    if args.base_config:
        base_file = _read_base_file(args.base_config)
    view = StudyView(storage, args.study_name)
    if view.name is None and len(view.names) == 1:
        view.name = view.names[0]
    search = view.search_batch()
    s = search.settings if search is not None else {}
    needs_study = (not args.path or args.to_ is None) and args.global_ is None
    if args.path and any(end is not None and end[0] == "trial" for end in (args.from_, args.to_)):
        needs_study = True
    if args.base_config is None and not view.exists and needs_study:
        where = f"study '{view.name}'" if view.name else f"{redact(storage)}"
        known = ", ".join(view.names) or "none"
        raise BenchError(
            f"{where}: no such study to take a base configuration from (studies: "
            f"{known}); give --study-name, or --base-config FILE"
        )
    space_path = str(Path(resolve_space(args.space or s.get("space") or "mlp")).resolve())
    max_epochs = args.max_epochs or s.get("max_epochs")
    if args.space is None and s.get("space_text") is not None:  # the search's own space
        space_text = s["space_text"]
        space = batch_space({**s, "max_epochs": max_epochs})
    else:
        space, space_text = load_space_text(space_path)
        space = space.with_overrides(max_epochs=max_epochs)
    dataset_name = args.dataset or s.get("dataset") or "fashion-mnist"
    data_dir = args.data_dir or s.get("data_dir")
    study_name = check_name("--study-name", view.name or f"{dataset_name}-{Path(space_path).stem}")
    view.name = study_name
    maximize = space.direction == "maximize"
    seeds = list(range(args.seeds))
    if args.global_ is not None:
        plan = space_filling.global_plan(space, args.global_, seeds, int(s.get("seed", 0)))
        config, train = plan.base.config, {}
        source = f"{args.global_} space-filling configurations"
    elif args.path:
        ref, _, from_source = _endpoint(args.from_, "--from", space, view, maximize, dataset_name)
        config, train, source = _endpoint(args.to_, "--to", space, view, maximize, dataset_name)
    elif base_file is not None:
        (config, train), source = base_file, f"--base-config {args.base_config}"
    elif args.base_trial is not None:
        config, train, source = trial_config(view, args.base_trial)
    else:
        config, train, source = champion_config(view, maximize)
    if args.global_ is not None:
        design = space_filling.GlobalDesign
    elif args.path:
        plan = path.path_plan(space, ref, config, seeds)
        design = path.PathDesign
    elif cross is not None:
        plan = crossed.cross_plan(space, config, cross, seeds, max_cells=args.max_cells)
        design = crossed.CrossedDesign
    else:
        plan = make_plan(space, config, factors, seeds)
        design = ablation.AblationDesign
    dataset = data.load_dataset(dataset_name, data_dir, download=download_dataset)
    spec_train = {**space.train.__dict__, **train}
    data.check_validation_size(dataset, spec_train["validation_size"], space.path)
    uri = resolve_uri(args.tracking_uri)
    check_uri(uri)
    budget = int(spec_train["max_epochs"])
    n_jobs = len(plan.job_configs())  # every plan lists its jobs' configurations
    workers = worker_plan(args, n_jobs)
    n_train = len(dataset.y_train) - int(spec_train["validation_size"])
    rate, how = seconds_per_mac(view, n_train)

    n_inputs = math.prod(dataset.image_shape)
    estimate = (
        plan.estimate_seconds(
            rate * dense_macs(plan.base.config, n_inputs, dataset.n_classes),
            budget,
            n_train=n_train,
            n_inputs=n_inputs,
            n_classes=dataset.n_classes,
        )
        / workers.jobs
    )
    kind = "crossed ablation" if cross else "ablation"
    if args.global_ is not None:
        print(f"study '{study_name}': importance over the whole space of "
              f"{Path(space_path).name}", file=sys.stderr)  # fmt: skip
    elif args.path:
        print(f"study '{study_name}': ablation path from {from_source} to {source}; every cell "
              f"trains with {source}'s train settings", file=sys.stderr)  # fmt: skip
    else:
        print(f"study '{study_name}': {kind} around {source}", file=sys.stderr)
    for line in plan.describe():
        print(line, file=sys.stderr)
    print(
        f"each job: up to {budget} epochs, early stopping (patience {spec_train['patience']}), "
        f"no pruning; dataset {dataset.name}, {n_train} training images",
        file=sys.stderr,
    )
    if args.global_ is not None and not view.jobs():
        # no base tuned its learning rate: measured on Fashion-MNIST (benchmarks/RESULTS.md),
        # constant-rate configurations ran 70 % of the budget and decaying ones all of it
        share, share_how = 1.0, "no finished job here: configurations from the whole space "
        share_how += "assumed to train their full budget"
    else:
        share, share_how = _epoch_share(
            plan.job_configs(), view, budget, spec_train, n_inputs, dataset.n_classes
        )
    overhead = JOB_OVERHEAD_SECONDS * n_jobs / workers.jobs
    expected, estimate = estimate * share + overhead, estimate + overhead
    print(
        f"estimated time: about {_fmt_minutes(expected)} on {workers.jobs} worker(s) "
        f"({share_how}; {how}); at most {_fmt_minutes(estimate)} if every job used its full "
        "budget",
        file=sys.stderr,
    )
    if args.dry_run:
        return EXIT_OK

    resolved = list(plan.factors)
    ident_base = plan.base.config
    if args.global_ is not None:  # the sequence's length and seed make the configurations
        ident_base = {"configurations": args.global_, "qmc_seed": plan.qmc_seed}
    ident = identity(
        ident_base, train, resolved, seeds, space.search_hash, dataset.name, budget,
        crossed=cross is not None,
        kind="path" if args.path else "global" if args.global_ is not None else None,
    )  # fmt: skip
    experiment = check_name(
        "--experiment", args.experiment or s.get("experiment") or f"{dataset.name}-mlp"
    )
    settings = {
        "space": space_path,
        "space_text": space_text,
        "dataset": dataset_name,
        "dataset_digest": dataset.digest,
        "data_dir": data_dir,
        "experiment": experiment,
        "model_name": s.get("model_name") or f"{dataset.name}-mlp",
        "seed": int(s.get("seed", 0)),  # the search's: the same validation split
        "max_epochs": max_epochs,
        "metric": space.metric,
        "base_source": source,
        "factors": resolved,
        "seeds": seeds,
        "plan": (
            space_filling
            if args.global_ is not None
            else path
            if args.path
            else crossed
            if cross
            else ablation
        ).plan_to_settings(plan, train),
    }
    if args.path:
        settings.update(from_source=from_source, to_source=source)
    opt.open_study(study_name, storage, space, settings["seed"], record_space=False)
    store = JobStore(storage)
    tracker = Tracker(uri, experiment)
    batch, created = open_design_batch(
        store, tracker, design, study_name, ident, settings, space, dataset, storage,
        join_done=True,
    )  # fmt: skip

    def results(summary: dict) -> str:
        if args.global_ is not None:
            from bench.results import importance

            return importance.summary_text(summary)
        if args.path:
            from bench.results import path as path_results

            result = path_results.from_summary(summary, resolved)
            if result is None:
                return f"no analysis: {summary.get('error') or 'no cell finished'}\n"
            return path_results.text(result)
        if cross is not None:
            return interactions.summary_text(summary, resolved)
        return what_matters.summary_text(summary)

    if batch.state == DONE:
        complete_mirrors(store, study_name, tracker)
        print(
            f"{design.name} batch {batch.number} of study '{study_name}' is already complete; "
            "its results:",
            file=sys.stderr,
        )
        print(results(batch.summary or {}), end="")
        return EXIT_OK
    run = BatchRun(
        store, batch, created, tracker, uri, storage, workers, space,
        quiet=args.quiet,
    )  # fmt: skip
    code = drive(run, interrupts)
    record = store.get_batch(batch.id)
    if record.state == DONE:
        print()
        print(results(record.summary or {}), end="")
    return code


def console() -> None:
    """Console-script entry point (``pip install`` puts it on PATH)."""
    run(main)


if __name__ == "__main__":
    console()
