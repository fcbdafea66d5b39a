"""KerasTuner's Hyperband against the harness: same space, data split, model and wall-clock budget.

    pip install -e '.[bench-peers]'
    mkdir -p reports   # the harness's rows (search_speed.py prints them as JSON lines)
    python benchmarks/search_speed.py --trials 50 --harness-only --seeds 0,1,2 > reports/h.txt
    python benchmarks/peer_keras_tuner.py --seeds 0,1,2 --harness-json reports/h.txt \\
        --budget-from-harness   # or --budget-seconds 720: the peer gets the whole 12 minutes
    python benchmarks/peer_keras_tuner.py --dataset digits --budget-seconds 30 --seeds 0   # smoke

Two fair pairings (issue #22): neither tool given a start (the harness with ``-- --no-start``,
the peer as it is), or both given the same one (the harness as it is, the peer with ``--start``,
which makes the space's ``study.enqueue`` configurations KerasTuner's first trials: they enter
Hyperband's first bracket like any sampled configuration, and are cut if they fall behind, as the
harness's start is pruned if it falls behind).

The peer is what a careful KerasTuner user would write for this task: ``kt.Hyperband`` (max 36
epochs, factor 3, seeded) over the parameters of ``search_spaces/mlp.yaml``, sampled by
KerasTuner's own ``hp`` API through bench's ``suggest`` (so ranges, log scales and per-layer
widths cannot drift from the harness); the model is bench's ``build_mlp`` (normalization inside the
model), compiled with the space's ``steps_per_execution`` and ``jit_compile`` so that the per-epoch
cost is the harness's and the comparison is between search strategies and process models;
EarlyStopping on val_accuracy with the space's patience and min_delta, best weights restored;
the validation split is ``validation_split(ds, 5000, seed)``, the harness's. KerasTuner runs one
trial at a time in one process (its parallel mode needs a chief/worker cluster), so TensorFlow's
threads use all cores, where the harness runs one single-threaded worker per core.

The budget (``--budget-seconds``, or each seed's harness wall time with
``--budget-from-harness``) counts from the moment the seed's process is started, TensorFlow's
import and data loading included, as the harness's wall time does. At the deadline the oracle
creates no new trial and the running ``fit`` stops after its current step; the best model is then
evaluated once on the test set. Each seed runs in its own process.

Recorded per seed: KerasTuner trials (Hyperband continues promoted configurations as new trials,
so distinct configurations are counted too), epochs, wall time, best validation accuracy, the
best model's test accuracy, and the first time any epoch reached validation accuracy 0.88 and
0.89 (measured at the end of that epoch; ``search_speed.py`` estimates the same from per-epoch
means). Writes everything as JSON (``--out``) and prints a side-by-side table with the harness's
rows, read from ``--harness-json``: ``search_speed.py``'s saved stdout (its rows are matched to
``--seeds`` in order), a JSON object with its row keys, or a ``{seed: row}`` object; ``{seed}``
in the path is replaced by each seed, for one file per seed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
THRESHOLDS = (0.88, 0.89)
MAX_EPOCHS = 36  # the default space's train.max_epochs
FACTOR = 3  # Hyperband's reduction factor, as in the harness's successive halving
DEFAULT_BUDGET_S = 548.0


# ---------------------------------------------------------------- one seed, in its own process


class _KerasTunerTrial:
    """Optuna's ``suggest_*`` calls answered by a KerasTuner ``HyperParameters`` object."""

    def __init__(self, hp):
        self.hp = hp

    def suggest_int(self, name, low, high, step=1, log=False):
        if log:  # with log sampling KerasTuner reads step as a factor; None allows every int
            return self.hp.Int(name, low, high, sampling="log")
        return self.hp.Int(name, low, high, step=step)

    def suggest_float(self, name, low, high, step=None, log=False):
        return self.hp.Float(name, low, high, step=step, sampling="log" if log else "linear")

    def suggest_categorical(self, name, choices):
        return self.hp.Choice(name, list(choices))


class _Replay:
    """Answers the same calls from recorded values: the active parameters of a finished trial
    (KerasTuner also keeps values of layers a shallower configuration does not have)."""

    def __init__(self, values: dict):
        self.values = values

    def suggest_int(self, name, *args, **kwargs):
        return self.values[name]

    suggest_float = suggest_categorical = suggest_int


def _model_functions():
    """bench's model builder and optimizer factory (``bench.training.model``, formerly
    ``bench.model``)."""
    try:
        from bench.training.model import build_mlp, make_optimizer
    except ImportError:
        from bench.model import build_mlp, make_optimizer
    return build_mlp, make_optimizer


def run_seed(args, seed: int, clock_start: float) -> dict:
    """Run the Hyperband search for one seed; returns the JSON row."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import keras_tuner as kt

    # get_best_models loads weights into a model whose optimizer has not run yet; harmless here
    warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")

    from bench.data import load_dataset, validation_split
    from bench.space import flat_config, load_space, start_configs, suggest

    build_mlp, make_optimizer = _model_functions()
    deadline = clock_start + args.budget_seconds
    space = load_space(args.space)
    spec = space.train
    ds = load_dataset(args.dataset, args.data_dir)
    split = validation_split(ds, spec.validation_size, seed)
    n_train = len(split.x_train)
    epoch_log: list[tuple[float, float]] = []  # (seconds since clock start, val_accuracy)
    state: dict = {"builds": 0, "cut": 0, "config": None}

    class PastDeadline(keras.callbacks.Callback):
        """Stops ``fit`` once the budget is spent; KerasTuner keeps the epochs done so far."""

        def on_train_batch_end(self, batch, logs=None):
            if time.time() >= deadline and not self.model.stop_training:
                self.model.stop_training = True
                state["cut"] += 1

    class EpochClock(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get("val_accuracy")
            if value is not None:
                epoch_log.append((time.time() - clock_start, float(value)))

    class MLP(kt.HyperModel):
        def build(self, hp):
            config = suggest(_KerasTunerTrial(hp), space)
            state["config"] = config  # fit needs the batch size, fixed or searched
            keras.utils.set_random_seed(seed + state["builds"])
            state["builds"] += 1
            steps = max(1, math.ceil(n_train / int(config["batch_size"])))
            model = build_mlp(config, ds.image_shape, ds.n_classes, split.x_train)
            model.compile(
                optimizer=make_optimizer(
                    config["optimizer"],
                    float(config["learning_rate"]),
                    config["lr_schedule"],
                    steps * spec.max_epochs,
                ),
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy"],
                jit_compile=spec.jit_compile,
                steps_per_execution=min(spec.steps_per_execution, steps),
            )
            return model

        def fit(self, hp, model, *fit_args, callbacks=(), **fit_kwargs):
            # Fresh per fit: KerasTuner deep-copies the callbacks it is given, and the clock
            # must write into this process's log, not a copy's.
            stopper = keras.callbacks.EarlyStopping(
                monitor="val_accuracy",
                mode="max",
                patience=spec.patience,
                min_delta=spec.min_delta,
                restore_best_weights=True,
            )
            extra = [stopper, keras.callbacks.TerminateOnNaN(), EpochClock(), PastDeadline()]
            return model.fit(
                *fit_args,
                batch_size=int(state["config"]["batch_size"]),
                callbacks=[*callbacks, *extra],
                **fit_kwargs,
            )

    # ``--start``: the space's enqueued configurations, as the parameter names that ``suggest``
    # asks KerasTuner for (units_0, units_1, ...), handed out before any random draw
    starts = [dict(params) for params in space.enqueue] if args.start else []
    start_list = start_configs(space) if args.start else []

    class DeadlineHyperbandOracle(kt.oracles.HyperbandOracle):
        def _random_values(self):
            if starts:
                return starts.pop(0)
            return super()._random_values()

        def populate_space(self, trial_id):
            if time.time() >= deadline:
                return {"status": "STOPPED"}
            return super().populate_space(trial_id)

    class DeadlineHyperband(kt.Hyperband):
        """``kt.Hyperband`` whose oracle stops at the deadline (its run_trial and checkpoint
        reloading are what promoted configurations need, so only the oracle is replaced)."""

        def __init__(self, hypermodel, oracle, **kwargs):
            kt.Tuner.__init__(self, oracle=oracle, hypermodel=hypermodel, **kwargs)

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            done = len(self.oracle.end_order)
            done_trial = self.oracle.get_trial(trial.trial_id)
            value = done_trial.score
            score = "—" if value is None else f"{value:.4f}"
            values = done_trial.hyperparameters.values
            # only with --start: without one no trial is replayed through the space's rules
            is_start = bool(start_list) and suggest(_Replay(values), space) in start_list
            mark = " (the start)" if is_start else ""
            print(
                f"seed {seed} trial {done}: val {score}{mark} after "
                f"{time.time() - clock_start:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    oracle = DeadlineHyperbandOracle(
        objective=kt.Objective("val_accuracy", "max"),
        max_epochs=args.max_epochs,
        factor=args.factor,
        hyperband_iterations=None,  # unbounded: the budget ends the search
        seed=seed,
    )
    with tempfile.TemporaryDirectory(prefix="bench-kt-") as folder:
        tuner = DeadlineHyperband(
            MLP(), oracle, directory=folder, project_name=f"seed{seed}", overwrite=True
        )
        tuner.search(
            split.x_train,
            split.y_train,
            validation_data=(split.x_val, split.y_val),
            validation_batch_size=spec.eval_batch_size,
            verbose=0,
        )
        search_s = time.time() - clock_start
        finished = [t for t in tuner.oracle.trials.values() if t.status == "COMPLETED"]
        test_acc = best_val = None
        best_config: dict = {}
        if finished:
            best = tuner.oracle.get_best_trials(1)[0]
            best_val = None if best.score is None else float(best.score)
            best_config = suggest(_Replay(best.hyperparameters.values), space)
            model = tuner.get_best_models(1)[0]
            test_acc = float(
                model.evaluate(ds.x_test, ds.y_test, batch_size=spec.eval_batch_size, verbose=0)[1]
            )
    first = {}
    for at, value in epoch_log:
        for thr in THRESHOLDS:
            if value >= thr and thr not in first:
                first[thr] = at
    configs = sum(1 for t in finished if "tuner/trial_id" not in t.hyperparameters.values)
    return {
        "seed": seed,
        "trials": len(finished),
        "configs": configs,
        "cut_at_deadline": state["cut"],
        "epochs": len(epoch_log),
        "budget_s": args.budget_seconds,
        "search_s": search_s,
        **{f"t_{thr}": first.get(thr) for thr in THRESHOLDS},
        "best_val": best_val,
        "test_acc": test_acc,
        "best_config": flat_config(best_config),
        "start": bool(args.start),
        "best_is_start": bool(best_config) and best_config in start_list,
        "keras_tuner": kt.__version__,
    }


# ---------------------------------------------------------------- the harness's rows


def harness_rows(path_pattern: str, seeds: list[int]) -> dict[int, dict | None]:
    """The harness's row per seed from ``search_speed.py``'s output (see the module doc).

    ``search_speed.py --seeds 0,1,2`` prints one harness row per seed, in order and without the
    seed, so several rows in one file are matched to ``seeds`` by position (rows that carry a
    ``seed``, as in a ``{seed: row}`` file, by that): give both scripts the same seeds.
    """
    found: dict[int, dict | None] = {}
    for i, seed in enumerate(seeds):
        path = Path(path_pattern.replace("{seed}", str(seed)))
        rows = _rows_in(path) if path.is_file() else []
        by_seed = {r["seed"]: r for r in rows if isinstance(r.get("seed"), int)}
        if by_seed:
            found[seed] = by_seed.get(seed)
        elif "{seed}" in path_pattern:
            found[seed] = rows[-1] if rows else None
        else:
            found[seed] = rows[i] if i < len(rows) else None
    return found


def _rows_in(path: Path) -> list[dict]:
    """Harness rows in a file: a row, ``{seed: row}``, or saved stdout with JSON lines."""
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:  # saved stdout: the JSON lines among the others
        rows = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        # the naive row comes first; only harness rows count pruned trials
        return [r for r in rows if "pruned" in r] or rows[-1:]
    if isinstance(data, dict) and "trials" in data:
        return [data]
    if isinstance(data, dict):
        return [{**row, "seed": int(key)} for key, row in data.items() if key.isdigit() and row]
    return []


# ---------------------------------------------------------------- the table


COLUMNS = (  # key, format: the columns both runs share
    ("wall_s", ".0f"),
    ("trials_per_hour", ".0f"),
    ("t_0.88", ".0f"),
    ("t_0.89", ".0f"),
    ("best_val", ".4f"),
    ("test_acc", ".4f"),
)


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _mean_sd(rows: list[dict], key: str, spec: str) -> str:
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return format(values[0], spec)
    return f"{format(statistics.mean(values), spec)} ± {format(statistics.stdev(values), spec)}"


def table(peer: dict[int, dict], harness: dict[int, dict | None]) -> str:
    """Markdown: per seed a KerasTuner row and the harness's, then mean ± sd of each."""
    lines = [
        "| seed | run | trials (configs) | wall s | trials/h | t→0.88 s | t→0.89 s "
        "| best val | test acc |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def row(seed, name: str, trials: str, cells: list[str]) -> None:
        lines.append(f"| {seed} | {name} | {trials} | {' | '.join(cells)} |")

    for seed, p in peer.items():
        cells = [_fmt(p.get(key), spec) for key, spec in COLUMNS]
        row(seed, "keras-tuner", f"{p['trials']} ({p['configs']})", cells)
        h = harness.get(seed)
        if h:
            row(seed, "harness", str(h["trials"]), [_fmt(h.get(k), s) for k, s in COLUMNS])
    if len(peer) > 1:
        for name, rows in (
            ("keras-tuner", list(peer.values())),
            ("harness", [h for h in harness.values() if h]),
        ):
            if rows:
                cells = [_mean_sd(rows, key, spec) for key, spec in COLUMNS]
                row("mean ± sd", name, _mean_sd(rows, "trials", ".0f"), cells)
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0", help="comma-separated seeds, one search each (0)")
    p.add_argument(
        "--budget-seconds",
        type=float,
        default=DEFAULT_BUDGET_S,
        help=f"wall-clock budget per seed, start-up included ({DEFAULT_BUDGET_S:.0f})",
    )
    p.add_argument(
        "--budget-from-harness",
        action="store_true",
        help="use each seed's harness wall time (from --harness-json) as its budget",
    )
    p.add_argument("--harness-json", help="search_speed.py's output; '{seed}' is replaced")
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist | mnist | digits")
    p.add_argument("--data-dir", help="folder with the IDX files (bench's usual search otherwise)")
    p.add_argument(
        "--space",
        help="search space, name or path (mlp; smoke for digits, whose 1,797 images cannot "
        "spare mlp's 5,000-image validation split)",
    )
    p.add_argument(
        "--start",
        action="store_true",
        help="KerasTuner's first trials are the space's study.enqueue configurations (the start "
        "the harness's search gets unless it runs with --no-start)",
    )
    p.add_argument("--max-epochs", type=int, default=MAX_EPOCHS, help=f"({MAX_EPOCHS})")
    p.add_argument("--factor", type=int, default=FACTOR, help=f"Hyperband factor ({FACTOR})")
    p.add_argument(
        "--out", default="reports/peer_keras_tuner.json", help="JSON results (%(default)s)"
    )
    p.add_argument("--one-seed", type=int, help=argparse.SUPPRESS)
    p.add_argument("--clock-start", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.space = args.space or ("smoke" if args.dataset == "digits" else "mlp")
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds {args.seeds!r}: give integers separated by commas, e.g. 0,1,2")
    if args.budget_from_harness and not args.harness_json:
        p.error("--budget-from-harness needs --harness-json")
    return args


def child_command(args, seed: int, clock_start: float, budget: float, out: Path) -> list[str]:
    cmd = [sys.executable, __file__, "--one-seed", str(seed), "--clock-start", repr(clock_start)]
    cmd += ["--budget-seconds", repr(budget), "--dataset", args.dataset, "--space", args.space]
    cmd += ["--max-epochs", str(args.max_epochs), "--factor", str(args.factor), "--out", str(out)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    if args.start:
        cmd.append("--start")
    return cmd


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.one_seed is not None:
        row = run_seed(args, args.one_seed, args.clock_start or time.time())
        Path(args.out).write_text(json.dumps(row), encoding="utf-8")
        return
    harness = harness_rows(args.harness_json, args.seed_list) if args.harness_json else {}
    for seed in [s for s, row in harness.items() if row is None]:
        print(f"no harness row for seed {seed} in {args.harness_json}", file=sys.stderr)
    peer: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp:
        for seed in args.seed_list:
            budget = args.budget_seconds
            if args.budget_from_harness:
                if not harness.get(seed):
                    raise SystemExit(f"--budget-from-harness: no harness row for seed {seed}")
                budget = float(harness[seed]["wall_s"])
            out = Path(tmp, f"seed{seed}.json")
            start = time.time()
            proc = subprocess.run(child_command(args, seed, start, budget, out))
            if proc.returncode != 0:
                raise SystemExit(f"seed {seed}: the KerasTuner run failed ({proc.returncode})")
            peer[seed] = json.loads(out.read_text(encoding="utf-8"))
            wall = time.time() - start  # as search_speed.py measures: the whole process
            peer[seed].update(wall_s=wall, trials_per_hour=3600 * peer[seed]["trials"] / wall)
            print(json.dumps(peer[seed]), flush=True)
    text = table(peer, harness)
    print(text)
    result = {
        "peer": "keras-tuner Hyperband",
        "settings": {
            "dataset": args.dataset,
            "space": args.space,
            "max_epochs": args.max_epochs,
            "factor": args.factor,
            "start": bool(args.start),
            "cores": os.cpu_count(),
        },
        "runs": {str(s): r for s, r in peer.items()},
        "harness": {str(s): r for s, r in harness.items()},
        "table": text,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
