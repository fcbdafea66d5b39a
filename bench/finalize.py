"""``bench.report --finalize``: a champion chosen on more than one lucky seed.

The study's top-k configurations are retrained with R fresh seeds each, on the same training
split and with the same early stopping as the search; every retrained model is scored once on the
test set. Per configuration the report shows the mean test accuracy with a 95 % confidence
interval (Student's t over the seeds). The configuration with the best mean is the champion: its
best-seed model is logged to a new MLflow run under the study's parent run, registered with the
mean, the interval and the seed count as tags, and given the ``champion`` alias.

Importing this module is cheap; TensorFlow loads only inside :func:`run`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError, redact

if TYPE_CHECKING:
    import argparse

    import optuna

    from bench.tracking import Tracker

FINALIZED_ATTR = "bench.finalized"  # on the study: the record bench.report shows
SEED0 = 1_000_000  # retrain seeds: disjoint from the search's (study seed + trial number)
LEVEL = 0.95


@dataclass(frozen=True)
class Options:
    """What ``--finalize`` needs besides the study.

    A field left None is taken from how the search was started (the batch record's ``meta``, then
    the parent run's params), else from ``bench.search``'s defaults.
    """

    top_k: int = 3
    seeds: int = 3
    dataset: str | None = None  # else the search's, else fashion-mnist
    data_dir: str | None = None
    space_path: str | None = None  # else the search's, else search_spaces/mlp.yaml
    max_epochs: int | None = None  # else the search's (parent run), else the space file's
    split_seed: int | None = None  # the search's --seed, which chose the validation split
    model_name: str | None = None  # else the search's, else <dataset>-mlp
    tracking_uri: str = "sqlite:///mlflow.db"


def options_from_args(args: argparse.Namespace, tracking_uri: str) -> Options:
    return Options(args.top_k, args.seeds, args.dataset, args.data_dir, args.space,
                   args.max_epochs, args.seed, args.model_name, tracking_uri)


def mean_ci(values: list[float], level: float = LEVEL) -> tuple[float, float, float]:
    """Mean and two-sided ``level`` confidence interval of the mean (t-distribution).

    Returns:
        ``(mean, low, high)``; the bounds are NaN with fewer than two values.
    """
    import numpy as np
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def candidates(study: optuna.Study, k: int) -> list[optuna.trial.FrozenTrial]:
    """The best ``k`` completed trials with distinct configurations (ties: lower number first)."""
    from optuna.trial import TrialState

    sign = -1 if study.direction.name == "MAXIMIZE" else 1
    done = sorted((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                   if t.user_attrs.get("bench.config") and t.value is not None),
                  key=lambda t: (sign * t.value, t.number))
    picked, seen = [], set()
    for t in done:
        key = json.dumps([t.user_attrs["bench.config"],
                          (t.user_attrs.get("bench.baseline") or {}).get("train")], sort_keys=True)
        if key not in seen:
            seen.add(key)
            picked.append(t)
    return picked[:k]


def parent_run(study: optuna.Study, uri: str) -> tuple[str | None, dict, str | None, str]:
    """The study's parent MLflow run (``bench.batch``): its id, params and experiment name.

    Returns:
        ``(run_id, params, experiment, "")``, or ``(None, {}, None, why)`` when there is none;
        a report never creates a tracking store just to look.
    """
    parent = (study.user_attrs.get("bench.batch") or {}).get("parent_run_id")
    if not parent:
        return None, {}, None, "the study has no parent run (bench.batch)"
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        return None, {}, None, f"no tracking database at {redact(uri)}"
    from mlflow import MlflowClient

    try:
        client = MlflowClient(uri)
        run = client.get_run(parent)
        return parent, dict(run.data.params), client.get_experiment(run.info.experiment_id).name, ""
    except Exception as exc:  # noqa: BLE001 - a lost parent run only loses the nesting
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return None, {}, None, f"parent run {parent} unreadable in {redact(uri)}: {redact(first)}"


def finalized_tables(record: dict[str, Any]) -> tuple[str, Any]:
    """The ``bench.finalized`` record as a one-line champion summary and a table of configs."""
    import pandas as pd

    ch = record["champion"]
    half = (ch["ci_high"] - ch["ci_low"]) / 2
    line = (f"trial {ch['trial']}'s configuration: test accuracy {ch['mean']:.4f} ± {half:.4f} "
            f"({record.get('level', LEVEL):.0%} CI {ch['ci_low']:.4f}-{ch['ci_high']:.4f}, "
            f"t-distribution, {len(record['seeds'])} seeds); registered {ch.get('model_name')} "
            f"version {ch.get('version')} (best seed {ch['seed']}: {ch['test_accuracy']:.4f})")
    table = pd.DataFrame([{
        "champion": "*" if c["trial"] == ch["trial"] else "", "trial": c["trial"],
        "baseline": c.get("baseline") or "", "seeds": len(c["test_accuracy"]), "mean": c["mean"],
        "ci95_low": c["ci_low"], "ci95_high": c["ci_high"],
        "test_accuracies": ", ".join(f"{a:.4f}" for a in c["test_accuracy"])}
        for c in record["configs"]])
    return line, table


def run(study: optuna.Study, opts: Options) -> dict[str, Any]:
    """Retrain, score, register; store and return the record (``bench.finalized``).

    Raises:
        BenchError: too few seeds, nothing to finalize, or a dataset/space the study was not
            searched with.
    """
    from bench.space import load_space

    if opts.seeds < 2:
        raise BenchError(f"--seeds {opts.seeds}: a confidence interval needs at least 2 seeds")
    parent, params, experiment, _ = parent_run(study, opts.tracking_uri)
    opts = _with_search_defaults(study, opts, params)
    space = load_space(opts.space_path).with_overrides(max_epochs=opts.max_epochs)
    known = study.user_attrs.get("bench.space_hash")
    if known and known != space.search_hash:
        raise BenchError(f"--space {space.path}: study '{study.study_name}' was searched with "
                         f"another space (hash {known}, this file {space.search_hash}); pass the "
                         "--space the study was created with")
    if params.get("dataset") and params["dataset"] != opts.dataset and opts.dataset != "idx":
        raise BenchError(f"--dataset {opts.dataset}: study '{study.study_name}' was searched on "
                         f"{params['dataset']}; pass --dataset {params['dataset']}")
    picked = candidates(study, opts.top_k)
    if not picked:
        raise BenchError(f"study '{study.study_name}' has no completed trial with a "
                         "configuration (bench.config); nothing to finalize")
    # The parent run recorded the search's --max-epochs and --seed: retrain exactly as it trained.
    searched_epochs = int(params.get("train.max_epochs", space.train.max_epochs))
    if opts.max_epochs is None and searched_epochs != space.train.max_epochs:
        print(f"using the search's max_epochs {searched_epochs} (recorded in its parent run)",
              file=sys.stderr)
        space = space.with_overrides(max_epochs=searched_epochs)
    seeds = [SEED0 + i for i in range(opts.seeds)]
    key = {"trials": [t.number for t in picked], "seeds": seeds, "space_hash": space.search_hash,
           "dataset": opts.dataset, "max_epochs": space.train.max_epochs,
           "split_seed": opts.split_seed}
    old = study.user_attrs.get(FINALIZED_ATTR)
    if old and old.get("key") == key:
        print(f"already finalized with these {len(picked)} configurations and seeds; "
              f"champion version {old['champion'].get('version')} stands", file=sys.stderr)
        return old
    if len(picked) < opts.top_k:
        print(f"only {len(picked)} distinct completed configuration(s); finalizing those",
              file=sys.stderr)
    from bench import data
    from bench.model import configure_threads
    from bench.tracking import Tracker

    configure_threads(None)
    dataset = data.load_dataset(opts.dataset, opts.data_dir)
    tracker = Tracker(opts.tracking_uri, experiment or f"{dataset.name}-mlp")
    record = _retrain_all(study, picked, seeds, space, dataset, tracker, parent, opts)
    record["key"] = key
    study.set_user_attr(FINALIZED_ATTR, record)
    return record


def _with_search_defaults(study: optuna.Study, opts: Options, params: dict) -> Options:
    from bench.search import DEFAULT_SPACE

    meta = (study.user_attrs.get("bench.batch") or {}).get("meta") or {}
    seed = opts.split_seed
    if seed is None:
        seed = int(meta.get("seed", params.get("seed", 0)))
    return replace(opts, dataset=opts.dataset or meta.get("dataset") or "fashion-mnist",
                   space_path=opts.space_path or meta.get("space") or DEFAULT_SPACE,
                   data_dir=opts.data_dir or meta.get("data_dir"),
                   model_name=opts.model_name or meta.get("model_name"), split_seed=seed)


def _retrain_all(study, picked, seeds, space, dataset, tracker: Tracker, parent: str | None,
                 opts: Options) -> dict[str, Any]:
    from bench import data
    from bench.objective import COMPLETED, train
    from bench.registry import confusion, evaluate
    from bench.space import flat_config

    configs, best_models, splits = [], {}, {}
    total, started = len(picked) * len(seeds), time.time()
    for trial in picked:
        config, baseline = trial.user_attrs["bench.config"], trial.user_attrs.get("bench.baseline")
        spec = replace(space.train, **baseline["train"]) if baseline else space.train
        if spec.validation_size not in splits:
            splits[spec.validation_size] = data.validation_split(dataset, spec.validation_size,
                                                                 opts.split_seed)
        rows = []
        for seed in seeds:
            result = train(config, spec, splits[spec.validation_size], dataset.n_classes, seed,
                           metric=space.metric)
            ok = result.status == COMPLETED
            loss, acc = evaluate(result.model, dataset) if ok else (math.nan, math.nan)
            row = {"seed": seed, "test_accuracy": acc, "test_loss": loss, "status": result.status,
                   space.metric: result.value, "epochs": result.epochs_run,
                   "seconds": round(result.train_seconds, 3)}
            tags = {"mlflow.parentRunId": parent, "role": "finalize", "study_name":
                    study.study_name, "finalized_from_trial": trial.number, "seed": seed}
            run_id = tracker.safe(tracker.start_parent,
                                  f"finalize-trial-{trial.number}-seed-{seed}",
                                  {**flat_config(config), "seed": seed}, tags)
            if run_id:
                metrics = {k: v for k, v in row.items() if k in ("test_accuracy", "test_loss",
                           space.metric, "epochs", "seconds") and not math.isnan(v)}
                tracker.safe(tracker.log_metrics, run_id, metrics)
                tracker.safe(tracker.end_run, run_id, "FINISHED" if ok else "FAILED")
            row["run_id"] = run_id
            rows.append(row)
            best = best_models.get(trial.number)
            if ok and (best is None or acc > best[1]):
                best_models[trial.number] = (result.model, acc, seed)
            print(f"retrain {len(rows) + len(configs) * len(seeds)}/{total}: trial {trial.number} "
                  f"seed {seed}: test accuracy {acc:.4f} ({result.epochs_run} epochs, "
                  f"{result.train_seconds:.0f} s)", file=sys.stderr)
        accs = [r["test_accuracy"] for r in rows if not math.isnan(r["test_accuracy"])]
        mean, low, high = mean_ci(accs)
        configs.append({"trial": trial.number, "baseline": (baseline or {}).get("name"),
                        "config": config, "test_accuracy": accs, "mean": mean, "ci_low": low,
                        "ci_high": high, "runs": rows})
    scored = [c for c in configs if c["trial"] in best_models]
    if not scored:
        raise BenchError("every retrain diverged; no champion to register")
    champ = max(scored, key=lambda c: (c["mean"], -c["trial"]))
    model, acc, seed = best_models[champ["trial"]]
    champion = {"trial": champ["trial"], "seed": seed, "test_accuracy": acc, "mean": champ["mean"],
                "ci_low": champ["ci_low"], "ci_high": champ["ci_high"]}
    champion.update(_register(study, champion, model, dataset, space, tracker, parent, opts,
                              len(champ["test_accuracy"])))
    study.set_user_attr("bench.confusion_matrix", {
        "trial": champ["trial"], "seed": seed, "source": "finalize",
        "classes": list(dataset.class_names), "matrix": confusion(model, dataset)})
    return {"configs": configs, "seeds": seeds, "champion": champion, "retrains": total,
            "seconds": round(time.time() - started, 1), "level": LEVEL}


def _register(study, champion: dict, model, dataset, space, tracker: Tracker, parent: str | None,
              opts: Options, n_seeds: int) -> dict[str, Any]:
    """Log the champion's best-seed model on a new run, register it, move the alias."""
    from bench.registry import ALIAS

    name = opts.model_name or f"{dataset.name}-mlp"
    stats = {"test_accuracy": champion["test_accuracy"], "test_accuracy_mean": champion["mean"],
             "test_accuracy_ci95_low": champion["ci_low"],
             "test_accuracy_ci95_high": champion["ci_high"]}
    run_id = tracker.start_parent(f"finalize-champion-trial-{champion['trial']}", {
        "finalized_from_trial": champion["trial"], "seed": champion["seed"], "n_seeds": n_seeds},
        {"mlflow.parentRunId": parent, "role": "finalize-champion", "study_name": study.study_name})
    tracker.log_metrics(run_id, {k: v for k, v in stats.items() if not math.isnan(v)})
    info = tracker.log_model(run_id, model, dataset.image_shape, dataset.n_classes)
    tracker.end_run(run_id, "FINISHED")
    # No "trial_number" tag: bench.registry looks versions up by (study_name, trial_number), and
    # this model is a retrain, not the search trial's own model.
    version = tracker.register(info.model_uri, name, {
        **stats, "n_seeds": n_seeds, "ci_level": LEVEL, "source": "finalize",
        "study_name": study.study_name, "finalized_from_trial": champion["trial"],
        "seed": champion["seed"], "dataset": dataset.name, "dataset_digest": dataset.digest,
        "class_names": json.dumps(list(dataset.class_names)), "space_hash": space.search_hash})
    tracker.set_alias(name, version.version, ALIAS)
    print(f"registered {name} version {version.version} (trial {champion['trial']}'s "
          f"configuration, mean test accuracy {champion['mean']:.4f}) as @{ALIAS} in "
          f"{redact(opts.tracking_uri)}", file=sys.stderr)
    return {"model_name": name, "version": version.version, "model_uri": info.model_uri,
            "run_id": run_id}
