"""A worker: pops trial slots of the batch, trains them, reports to Optuna and MLflow.

The loop is ``pop slot -> suggest -> train (objective) -> tell``; tracking hangs on the epoch
hook. One worker is one process with its data decoded once and its TensorFlow threads pinned.
Interrupts (SIGINT/SIGTERM) are deferred while a finished trial is being recorded, so a finished
trial is never lost; an interrupted trial is marked failed and its configuration re-enqueued.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from bench import study as st
from bench.errors import BenchError, redact

log = logging.getLogger("bench")


@dataclass(frozen=True)
class SearchConfig:
    """Everything a worker needs; plain values so it crosses process boundaries."""

    space_path: str
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    study_name: str = "fashion-mnist-mlp"
    storage: str = st.DEFAULT_STORAGE
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "fashion-mnist-mlp"
    model_name: str = "fashion-mnist-mlp"
    max_epochs: int | None = None
    seed: int = 0
    register: bool = True
    threads: int | None = None  # TensorFlow intra-op threads per worker (None: TF decides)
    deadline: float | None = None  # wall-clock time after which no new trial starts
    tensorboard_dir: str | None = None
    allow_space_change: bool = False
    max_failures: int = 10  # failing configurations replaced before the batch gives up


class Interrupts:
    """SIGINT/SIGTERM become KeyboardInterrupt, except inside :meth:`critical` (then deferred)."""

    def __init__(self) -> None:
        self.requested = False
        self._depth = 0

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            return  # one interrupt is enough; a second must not break the cleanup
        self.requested = True
        if self._depth == 0:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def critical(self):
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self._depth == 0 and self.requested:
            raise KeyboardInterrupt


class Worker:
    """Runs slots of one batch; create once per process (data, storage and tracker are reused)."""

    def __init__(self, cfg: SearchConfig, batch_id: int, interrupts: Interrupts | None = None):
        from bench import data
        from bench.model import configure_threads
        from bench.space import load_space
        from bench.tracking import Tracker

        configure_threads(cfg.threads)
        self.cfg = cfg
        self.interrupts = interrupts or Interrupts()
        self.space = load_space(cfg.space_path).with_overrides(max_epochs=cfg.max_epochs)
        self.dataset = data.load_dataset(cfg.dataset, cfg.data_dir)
        self.split = data.validation_split(self.dataset, self.space.train.validation_size, cfg.seed)
        self.study = st.open_study(
            cfg.study_name,
            st.make_storage(cfg.storage),
            self.space,
            cfg.seed,
            allow_space_change=True,
        )
        self.tracker = Tracker(cfg.tracking_uri, cfg.experiment)
        batch = st.current_batch(self.study)
        if batch is None or batch.id != batch_id:
            raise BenchError(f"study {cfg.study_name}: batch {batch_id} is no longer current "
                             f"(now {batch.id if batch else 'none'}); rerun to join it")
        self.batch = batch
        self.finished = 0

    # ------------------------------------------------------------ loop

    def run(self) -> str:
        """Work until the batch has no slots left or the deadline passes.

        Returns:
            ``"done"`` or ``"timeout"``. Raises KeyboardInterrupt when interrupted.
        """
        from optuna.trial import TrialState

        while True:
            self.close_runs(st.reap_stale(self.study))
            if self.cfg.deadline is not None and time.time() >= self.cfg.deadline:
                return "timeout"
            with self.interrupts.critical():  # a popped slot must get its owner recorded
                trial = st.pop_slot(self.study, self.batch.id, self.cfg.seed, self.space)
            if trial is None:
                if st.batch_trials(self.study, self.batch.id, states=(TrialState.RUNNING,)):
                    time.sleep(1.0)  # a peer may still die and leave a retry behind
                    continue
                return "done"
            self.run_trial(trial)

    def close_runs(self, trials) -> None:
        for t in trials:
            run_id = t.user_attrs.get("bench.mlflow_run_id")
            if run_id:
                reason = t.user_attrs.get(st.REASON_ATTR, "worker stopped sending heartbeats")
                self.tracker.safe(
                    self.tracker.set_tags, run_id, {"optuna_state": "FAIL", "state_reason": reason}
                )
                self.tracker.safe(self.tracker.end_run, run_id, "FAILED")

    # ------------------------------------------------------------ one trial

    def run_trial(self, trial) -> None:
        from optuna.trial import TrialState

        from bench.objective import train
        from bench.space import flat_config, suggest

        space, cfg = self.space, self.cfg
        seed = cfg.seed + trial.number
        baseline = trial.user_attrs.get(st.BASELINE_ATTR)
        if baseline:
            config, spec = baseline["config"], replace(space.train, **baseline["train"])
        else:
            config, spec = suggest(trial, space), space.train
        trial.set_user_attr("bench.seed", seed)
        trial.set_user_attr("bench.config", config)
        params = {
            **flat_config(config),
            **_train_params(spec),
            "seed": seed,
            "dataset": self.dataset.name,
        }
        tags = {
            "trial_number": trial.number,
            "study_name": cfg.study_name,
            "space_hash": space.search_hash,
            "dataset_digest": self.dataset.digest,
            "optuna_state": "RUNNING",
            "baseline": baseline["name"] if baseline else None,
        }
        run_id = self.tracker.safe(
            self.tracker.start_trial, self.batch.parent_run_id, trial.number, params, tags
        )
        if run_id:
            trial.set_user_attr("bench.mlflow_run_id", run_id)
        tracking_ok = [run_id is not None]  # after one failed call, stop trying for this trial

        def on_epoch(epoch: int, metrics: dict[str, float]) -> bool:
            if tracking_ok[0]:
                before = self.tracker.failures
                self.tracker.safe(self.tracker.log_metrics, run_id, metrics, epoch)
                tracking_ok[0] = self.tracker.failures == before
            value = metrics.get(space.metric)
            if value is not None:
                trial.report(value, epoch)
            return not baseline and trial.should_prune()  # reference rows always run in full

        beat = _Heartbeat(self.study, trial._trial_id)
        try:
            result = train(
                config,
                spec,
                self.split,
                self.dataset.n_classes,
                seed,
                on_epoch,
                metric=space.metric,
                tensorboard_dir=self._tb_dir(trial.number),
            )
        except KeyboardInterrupt:
            beat.stop()
            with self.interrupts.critical():
                self._end(
                    trial,
                    run_id,
                    TrialState.FAIL,
                    "KILLED",
                    "interrupted by the user (SIGINT/SIGTERM)",
                )
                st.retry(self.study, self.study._storage.get_trial(trial._trial_id))
            raise
        except Exception as exc:  # noqa: BLE001 - a failing configuration fails alone
            beat.stop()
            lines = str(exc).strip().splitlines()
            reason = redact(f"{type(exc).__name__}: {lines[0][:300] if lines else ''}")
            log.warning("trial %d failed: %s", trial.number, reason)
            with self.interrupts.critical():
                self._end(trial, run_id, TrialState.FAIL, "FAILED", reason)
                failed = st.batch_trials(self.study, self.batch.id, states=(TrialState.FAIL,))
                if len(failed) <= cfg.max_failures:
                    st.add_slot(self.study, self.batch.id)
            return
        beat.stop()
        with self.interrupts.critical():
            self._record(trial, run_id, result)

    def _record(self, trial, run_id: str | None, result) -> None:
        from optuna.trial import TrialState

        from bench.objective import COMPLETED, PRUNED

        attrs = {
            "bench.epochs": result.epochs_run,
            "bench.best_epoch": result.best_epoch,
            "bench.train_seconds": round(result.train_seconds, 3),
            "bench.param_count": result.param_count,
            "bench.train_flops": result.training_flops,
            "bench.history": {k: [round(v, 6) for v in vals] for k, vals in result.history.items()},
        }
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        final = {
            "epochs_run": result.epochs_run,
            "train_seconds": result.train_seconds,
            "param_count": result.param_count,
        }
        baseline = trial.user_attrs.get(st.BASELINE_ATTR)
        if baseline and result.status == COMPLETED:
            # A reference row is compared with its published test accuracy, so it reads the test
            # set; its score is reported, never used to select a configuration.
            from bench.registry import evaluate

            test_loss, test_acc = evaluate(result.model, self.dataset)
            trial.set_user_attr("bench.test_accuracy", test_acc)
            final.update({"test_accuracy": test_acc, "test_loss": test_loss})
        if result.status == COMPLETED:
            final[f"best_{self.space.metric}"] = result.value
            if run_id and self._is_best(result.value):
                info = self.tracker.safe(
                    self.tracker.log_model,
                    run_id,
                    result.model,
                    self.dataset.image_shape,
                    self.dataset.n_classes,
                )
                if info is not None:
                    trial.set_user_attr("bench.model_uri", info.model_uri)
            self._end(trial, run_id, TrialState.COMPLETE, "FINISHED", "", final, value=result.value)
        else:
            reason = result.reason or ("pruned" if result.status == PRUNED else "diverged")
            self._end(
                trial,
                run_id,
                TrialState.PRUNED,
                "KILLED" if result.status == PRUNED else "FAILED",
                reason,
                final,
            )
        self.finished += 1

    def _end(
        self,
        trial,
        run_id,
        state,
        run_status: str,
        reason: str,
        metrics: dict[str, float] | None = None,
        value: float | None = None,
    ) -> None:
        if reason:
            trial.set_user_attr(st.REASON_ATTR, reason)
        if run_id:
            if metrics:
                self.tracker.safe(self.tracker.log_metrics, run_id, metrics, 0)
            self.tracker.safe(
                self.tracker.set_tags,
                run_id,
                {"optuna_state": state.name, "state_reason": reason or None},
            )
            self.tracker.safe(self.tracker.end_run, run_id, run_status)
        if state.name == "COMPLETE":
            self.study.tell(trial, value)
        else:
            self.study.tell(trial, state=state)

    def _is_best(self, value: float) -> bool:
        try:
            best = self.study.best_value
        except ValueError:
            return True  # the first completed trial
        return value >= best if self.space.direction == "maximize" else value <= best

    def _tb_dir(self, number: int) -> str | None:
        if not self.cfg.tensorboard_dir:
            return None
        return f"{self.cfg.tensorboard_dir}/{self.cfg.study_name}/trial-{number}"

    # ------------------------------------------------------------ end of batch

    def finalize_if_last(self) -> dict[str, Any] | None:
        """Register the champion if this worker finished the batch's last trial (once)."""
        from optuna.trial import TrialState

        from bench.registry import finalize

        if st.batch_trials(self.study, self.batch.id, states=(TrialState.RUNNING,)):
            return None  # a peer is still training; it will finalize
        waiting = st.batch_trials(self.study, self.batch.id, states=(TrialState.WAITING,))
        n_done = len(
            self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        )
        if not st.claim(self.study, f"final-{self.batch.id}-{n_done}"):
            return None
        with self.interrupts.critical():
            try:
                summary = finalize(
                    self.study, self.batch, self.tracker, self.dataset, self.cfg, self.space
                )
            except Exception as exc:  # noqa: BLE001 - the trials are safe; say how to finish
                log.error(
                    "registering the champion failed (%s: %s); the trials are kept in the "
                    "study; when the tracking store answers again run: python -m "
                    "bench.register --study-name %s",
                    type(exc).__name__,
                    redact(str(exc).splitlines()[0] if str(exc) else ""),
                    self.cfg.study_name,
                )
                summary = {"registered": None, "error": redact(type(exc).__name__)}
            st.close_batch(self.study, self.batch, summary, done=not waiting)
            self.tracker.safe(self.tracker.end_run, self.batch.parent_run_id, "FINISHED")
        return summary


def _train_params(t) -> dict[str, Any]:
    return {
        "max_epochs": t.max_epochs,
        "patience": t.patience,
        "min_delta": t.min_delta,
        "validation_size": t.validation_size,
        "steps_per_execution": t.steps_per_execution,
        "jit_compile": t.jit_compile,
    }


class _Heartbeat:
    """Records the trial's heartbeat every interval in a daemon thread (RDB storages)."""

    def __init__(self, study, trial_id: int):
        self._stop = threading.Event()
        st.heartbeat(study, trial_id)
        self._thread = threading.Thread(target=self._run, args=(study, trial_id), daemon=True)
        self._thread.start()

    def _run(self, study, trial_id: int) -> None:
        while not self._stop.wait(st.HEARTBEAT_INTERVAL):
            try:
                st.heartbeat(study, trial_id)
            except Exception:  # noqa: BLE001 - a missed beat is retried next interval
                pass

    def stop(self) -> None:
        self._stop.set()


def worker_main(cfg: SearchConfig, batch_id: int, index: int) -> int:
    """Entry point of a spawned worker process; returns its exit code."""
    from bench.logs import setup_logging

    setup_logging()
    interrupts = Interrupts()
    interrupts.install()
    try:
        worker = Worker(cfg, batch_id, interrupts)
        worker.run()
        worker.finalize_if_last()
        return 0
    except KeyboardInterrupt:
        return 130
    except BenchError as exc:
        log.error("worker %d: %s", index, exc)
        return 2
    except Exception as exc:  # noqa: BLE001 - one line; a running trial is reaped by a peer
        log.error("worker %d crashed: %s: %s", index, type(exc).__name__, redact(exc))
        return 1
