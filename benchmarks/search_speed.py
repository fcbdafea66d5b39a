"""The harness against the naive loop: same data, space, seed and trial count, one machine.

    python benchmarks/search_speed.py --trials 12            # naive reference, then the harness
    python benchmarks/search_speed.py --trials 50 --harness-only

The naive reference is a faithful rendition of the Keras tutorials plus Optuna's Keras example:
``model.fit`` with Keras' defaults (batch 32, no steps_per_execution, no XLA), one trial at a time
in one process, no pruning, EarlyStopping(patience=5, min_delta=1e-3), per-epoch metrics and a
model (requirements inferred, as ``log_model`` does by default) logged to MLflow for every trial.
It samples from the same search space with the same seeded TPE sampler (the searched batch size is
ignored: the seeds train with ``fit``'s default of 32). The harness is ``python -m bench.search``
with its defaults, run as a subprocess exactly as a user would.

Prints a table (wall time, trials/hour, seconds per epoch, achieved training GFLOPS as a share of
this machine's measured matmul peak, time to first reach validation accuracy 0.88 and 0.89, best
validation accuracy, the champion's test accuracy) and appends it to benchmarks/RESULTS.md with
``--record``. Ratios are what transfer between machines; absolute seconds hold for this one only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
THRESHOLDS = (0.88, 0.89)


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best observed float32 GFLOPS of an n x n matmul in NumPy (all cores)."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def summarize(trials, started: float, wall: float, test_acc: float | None) -> dict:
    """Table row from finished trials carrying bench.* user attrs (history, seconds, FLOPs)."""
    epochs = sum(t.user_attrs.get("bench.epochs", 0) for t in trials)
    train_s = sum(t.user_attrs.get("bench.train_seconds", 0.0) for t in trials)
    flops = sum(t.user_attrs.get("bench.train_flops", 0.0) for t in trials)
    first = {}
    for t in trials:
        hist = t.user_attrs.get("bench.history", {}).get("val_accuracy", [])
        if not hist or t.datetime_start is None:
            continue
        per_epoch = t.user_attrs.get("bench.train_seconds", 0.0) / len(hist)
        begin = t.datetime_start.timestamp()
        for i, v in enumerate(hist):
            for thr in THRESHOLDS:
                if v >= thr:
                    at = begin + per_epoch * (i + 1) - started
                    first[thr] = min(first.get(thr, float("inf")), at)
    values = [t.value for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    return {"trials": len(trials), "wall_s": wall, "trials_per_hour": 3600 * len(trials) / wall,
            "s_per_epoch": train_s / max(1, epochs), "epochs": epochs, "gflops": flops / wall / 1e9,
            **{f"t_{thr}": first.get(thr) for thr in THRESHOLDS},
            "best_val": max(values) if values else float("nan"), "test_acc": test_acc}


# ---------------------------------------------------------------- naive reference


def run_naive(n_trials: int, space_path: str, seed: int, folder: Path) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import mlflow
    import optuna

    from bench.data import load_dataset, validation_split
    from bench.model import build_mlp, dense_flops, make_optimizer
    from bench.space import flat_config, load_space, suggest

    space = load_space(space_path)
    ds = load_dataset("fashion-mnist")
    split = validation_split(ds, space.train.validation_size, seed)
    mlflow.set_tracking_uri(f"sqlite:///{folder}/naive.db")
    mlflow.set_experiment("naive")
    started = time.time()

    def objective(trial: optuna.Trial) -> float:
        config = suggest(trial, space)
        keras.utils.set_random_seed(seed + trial.number)
        model = build_mlp(config, ds.image_shape, ds.n_classes, split.x_train)
        model.compile(optimizer=make_optimizer(config["optimizer"], config["learning_rate"],
                                               "constant", 1),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        with mlflow.start_run(run_name=f"trial-{trial.number}"):
            mlflow.log_params(flat_config(config))

            class Log(keras.callbacks.Callback):
                def on_epoch_end(self, epoch, logs=None):
                    mlflow.log_metrics({k: float(v) for k, v in logs.items()}, step=epoch)

            t = time.perf_counter()
            hist = model.fit(split.x_train, split.y_train, epochs=space.train.max_epochs,
                             validation_data=(split.x_val, split.y_val), verbose=0,
                             callbacks=[keras.callbacks.EarlyStopping(
                                 monitor="val_accuracy", patience=5, min_delta=1e-3,
                                 restore_best_weights=True), Log()])
            seconds = time.perf_counter() - t
            mlflow.keras.log_model(model, name="model")
            val = hist.history["val_accuracy"]
            trial.set_user_attr("bench.history", {"val_accuracy": val})
            trial.set_user_attr("bench.epochs", len(val))
            trial.set_user_attr("bench.train_seconds", seconds)
            trial.set_user_attr("bench.train_flops", 3.0 * dense_flops(model) * len(split.x_train) * len(val))
            trial.set_user_attr("model_uri", mlflow.get_artifact_uri("model"))
            trial.set_user_attr("test_acc", float(model.evaluate(ds.x_test, ds.y_test, verbose=0)[1]))
            return max(val)

    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                         n_startup_trials=space.sampler.n_startup_trials)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=n_trials)
    wall = time.time() - started
    # the test number of the best trial (evaluated inside the loop so nothing is reloaded here)
    test_acc = study.best_trial.user_attrs["test_acc"]
    return summarize(study.trials, started, wall, test_acc)


# ---------------------------------------------------------------- the harness


def run_harness(n_trials: int, space_path: str, seed: int, folder: Path, extra: list[str]) -> dict:
    import optuna

    from bench.engine.store import JobStore
    from bench.optuna_adapter import make_storage

    cmd = [sys.executable, "-m", "bench.search", "--trials", str(n_trials), "--space", space_path,
           "--seed", str(seed), "--study-name", "speed", "--quiet", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.time()
    proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.time() - started
    if proc.returncode != 0:
        raise SystemExit(f"harness failed ({proc.returncode}): {proc.stderr[-2000:]}")
    study = optuna.load_study(study_name="speed", storage=make_storage(str(folder / "optuna-studies.log")))
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    batch = JobStore(str(folder / "optuna-studies.log")).latest_batch("speed", "search")
    summary = (batch.summary if batch else None) or {}
    row = summarize(finished, started, wall, summary.get("test_accuracy"))
    row["pruned"] = sum(t.state.name == "PRUNED" for t in finished)
    row["selection_score"] = summary.get("selection_score")
    row["refit"] = summary.get("refit")
    row["completed"] = sum(t.state.name == "COMPLETE" for t in finished)
    row["members"] = summary.get("ensemble")  # each refit member's own test accuracy
    row["registered"] = next(
        (line for line in proc.stdout.splitlines() if line.startswith("registered ")), None
    )
    return row


def table(rows: dict[str, dict], peak: float) -> str:
    def fmt(v, spec=".1f"):
        return "—" if v is None else format(v, spec)

    lines = ["| run | trials | wall s | trials/h | s/epoch | GFLOPS (% peak) | t→0.88 s | t→0.89 s | best val | test acc |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['trials']} | {r['wall_s']:.0f} | {r['trials_per_hour']:.0f} | "
                     f"{r['s_per_epoch']:.2f} | {r['gflops']:.1f} ({100 * r['gflops'] / peak:.0f} %) | "
                     f"{fmt(r['t_0.88'], '.0f')} | {fmt(r['t_0.89'], '.0f')} | {r['best_val']:.4f} | "
                     f"{fmt(r['test_acc'], '.4f')} |")
    if "naive" in rows and "harness" in rows:
        n, h = rows["naive"], rows["harness"]
        ratio = lambda a, b: "—" if a is None or b is None else f"{a / b:.1f}×"  # noqa: E731
        lines.append("")
        lines.append(f"harness vs naive: wall time {ratio(n['wall_s'], h['wall_s'])} shorter, "
                     f"time to 0.88 {ratio(n['t_0.88'], h['t_0.88'])} shorter, "
                     f"best val {h['best_val'] - n['best_val']:+.4f}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--space", default=str(REPO / "bench" / "space" / "builtin" / "mlp.yaml"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2: one harness run each")
    p.add_argument("--harness-only", action="store_true")
    p.add_argument("--naive-only", action="store_true")
    p.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    p.add_argument("--keep", help="run in this folder and keep the stores (default: a temporary one)")
    p.add_argument("harness_args", nargs="*", help="extra flags for bench.search (after --)")
    args = p.parse_args()
    sys.path.insert(0, str(REPO))
    peak = matmul_peak_gflops()
    print(f"matmul peak (2048² float32, numpy): {peak:.0f} GFLOPS; {os.cpu_count()} cores", flush=True)
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as tmp:
        if args.keep:
            tmp = args.keep
            Path(tmp).mkdir(parents=True, exist_ok=True)
        if not args.harness_only:
            folder = Path(tmp, "naive")
            folder.mkdir()
            rows["naive"] = run_naive(args.trials, args.space, args.seed, folder)
            print(json.dumps(rows["naive"]), flush=True)
        seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
        for seed in seeds if not args.naive_only else []:
            name = "harness" if len(seeds) == 1 else f"harness seed {seed}"
            folder = Path(tmp, f"harness-{seed}")
            folder.mkdir()
            rows[name] = {"seed": seed, **run_harness(args.trials, args.space, seed, folder,
                                                      args.harness_args)}
            print(json.dumps(rows[name]), flush=True)
    text = table(rows, peak)
    print(text)
    if args.record:
        stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        with open(REPO / "benchmarks" / "RESULTS.md", "a") as f:
            f.write(f"\n### search_speed.py --trials {args.trials}"
                    f"{' --harness-only' if args.harness_only else ''} ({stamp}, {os.cpu_count()} cores, "
                    f"peak {peak:.0f} GFLOPS)\n\n{text}\n")


if __name__ == "__main__":
    main()
