"""Component: what a batch stores decides what its workers train and how its mirror ends.

- The space a worker trains is the YAML stored with the batch when it was opened, never the file
  at the opener's path (gone, moved, or another file on another machine).
- A worker whose data has another digest than the batch's refuses in one line before it takes a
  job, and so does a command that would join the batch.
- The calls that end a batch's MLflow mirror bypass the tracker's circuit breaker; when the
  store is down at that moment the batch stays "unmirrored" and a later command finishes it.

In-process :class:`bench.engine.worker.Worker` objects on scikit-learn's digits, a temporary
sqlite MLflow store or a real ``mlflow server``; the command-line promises run as subprocesses.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.component  # trains Keras in this process
pytest.importorskip("keras")

from bench.engine.driver import drive_here  # noqa: E402
from bench.engine.store import JobStore  # noqa: E402
from bench.records import ALL, DONE, REFIT, SEARCH, WAITING, JobResult, JobSpec  # noqa: E402
from tests.conftest import run_module  # noqa: E402
from tests.faults import free_port, kill_group, mlflow_runs, start_mlflow_server  # noqa: E402

STUDY = "digits-record"
EXPERIMENT = "digits-record-exp"
CONFIG = {"activation": ["relu"], "batch_size": 64, "dropout": [0.0], "l2": 0.0,
          "lr_schedule": "constant", "n_layers": 1, "normalization": "minmax",
          "optimizer": "adam", "learning_rate": 1e-2, "units": [16]}  # fmt: skip


def _smoke_text() -> str:
    from bench.space import resolve_space

    return Path(resolve_space("smoke")).read_text(encoding="utf-8")


def _open(folder: Path, uri: str, specs: list[JobSpec], digest: str | None = None):
    """A search batch opened the way bench.search opens one, from a space file in ``folder``."""
    from bench import data
    from bench import optuna_adapter as opt
    from bench.engine import batch_tag, open_batch
    from bench.space import load_space
    from bench.tracking import Tracker

    text = _smoke_text()
    (folder / "space.yaml").write_text(text, encoding="utf-8")
    space = load_space(folder / "space.yaml")
    storage = str(folder / "journal.log")
    settings = {"space": str(folder / "space.yaml"), "space_text": text, "dataset": "digits",
                "data_dir": None, "experiment": EXPERIMENT, "model_name": "digits-record",
                "seed": 0, "max_epochs": 2, "n_trials": len(specs), "register": False,
                "refit": True, "reeval_top_k": 0, "reeval_seeds": 0, "baselines": [],
                "dataset_digest": digest or data.load_dataset("digits").digest}  # fmt: skip
    opt.open_study(STUDY, storage, space, 0)
    tracker = Tracker(uri, EXPERIMENT)
    store = JobStore(storage)
    batch, created = open_batch(
        store, STUDY, "search", "search", settings, lambda s: specs,
        lambda b: tracker.start_parent(f"{STUDY}-batch-1", {}, {**batch_tag(b), "role": "study"}),
        tracker,
    )  # fmt: skip
    assert created
    return store, batch, storage


def _settings(storage: str, uri: str, batch_id: int):
    from bench.engine.worker import WorkerSettings

    return WorkerSettings(storage=storage, tracking_uri=uri, batch_id=batch_id, threads=1)


def _worker(storage: str, uri: str, batch_id: int):
    from bench.engine.worker import Worker

    return Worker(_settings(storage, uri, batch_id))


def _finish(worker, jobs) -> None:
    """What the driver does once no job is left: the design's summary, the end of the mirror."""
    from bench.designs import make_design

    worker.ledger.finish_batch(make_design(worker.batch, worker.space), jobs)


def _recorded_with_a_running_run(store, worker) -> None:
    """The batch's one job recorded and synced while MLflow was unreachable: its run RUNNING."""
    token = worker.token = "attempt-1"
    job = store.take(worker.batch.id, token, {"slot": 0})
    run_id = worker.tracker.start_child(worker.batch.parent_run_id, job.key, {}, {})
    store.update_owned(job.id, token, run_id=run_id)
    result = JobResult("completed", 0.9, 1, 2, 0.5, 100, 1.0, CONFIG)
    assert store.finish(job.id, token, DONE, result)
    store.mark_synced(job.id, token)


def _statuses(folder: Path, uri: str) -> dict[str, str]:
    return {r.info.run_id: r.info.status for r in mlflow_runs(folder, uri, EXPERIMENT)[1]}


def test_a_worker_trains_the_space_stored_with_the_batch_when_its_file_is_gone(workdir):
    uri = f"sqlite:///{workdir}/mlflow.db"
    store, batch, storage = _open(workdir, uri, [JobSpec("search-0000", SEARCH, 0)])
    (workdir / "space.yaml").rename(workdir / "renamed.yaml")  # moved, or another machine
    worker = _worker(storage, uri, batch.id)
    assert worker.space.search_hash == batch_space_hash(batch)
    assert worker.space.train.max_epochs == 2  # the batch's --max-epochs, over the file's 3
    assert drive_here(_settings(storage, uri, batch.id)) == 0
    (job,) = store.jobs(batch.id)
    assert job.state == DONE and job.result.status in ("completed", "pruned")
    assert store.get_batch(batch.id).state == "done" and store.unmirrored(STUDY) == []
    assert set(_statuses(workdir, uri).values()) <= {"FINISHED", "KILLED"}


def batch_space_hash(batch) -> str:
    from bench.space import space_from_text

    return space_from_text(batch.settings["space_text"], "stored").search_hash


def test_a_worker_refuses_data_whose_digest_differs_from_the_batch(workdir):
    from bench import optuna_adapter as opt
    from bench.errors import BenchError

    uri = f"sqlite:///{workdir}/mlflow.db"
    store, batch, storage = _open(
        workdir, uri, [JobSpec("search-0000", SEARCH, 0)], digest="0123456789abcdef"
    )
    with pytest.raises(BenchError) as err:
        _worker(storage, uri, batch.id)
    message = str(err.value)
    from bench import data

    assert "0123456789abcdef" in message and data.load_dataset("digits").digest in message
    assert "\n" not in message
    (job,) = store.jobs(batch.id)
    assert job.state == "waiting" and job.attempts == 0 and job.run_id is None  # nothing taken
    assert opt.load_study(STUDY, storage).trials == []


def test_end_of_batch_calls_bypass_a_tripped_breaker(workdir):
    uri = f"sqlite:///{workdir}/mlflow.db"
    store, batch, storage = _open(workdir, uri, [JobSpec("search-0000", SEARCH, 0, config=CONFIG)])
    worker = _worker(storage, uri, batch.id)
    _recorded_with_a_running_run(store, worker)
    tracker = worker.tracker
    tracker.safe(tracker.end_run, "0" * 32, "FINISHED")  # a real failure: no such run
    assert tracker._down_until > time.monotonic()  # the breaker is open for 30 s
    _finish(worker, store.jobs(batch.id))
    (job,) = store.jobs(batch.id)
    statuses = _statuses(workdir, uri)
    assert statuses[batch.parent_run_id] == "FINISHED"
    assert statuses[job.run_id] == "FINISHED"
    run = tracker.client.get_run(job.run_id)
    assert run.data.metrics["best_val_accuracy"] == 0.9 and run.data.tags["state"] == "completed"
    assert store.get_batch(batch.id).state == "done" and store.unmirrored(STUDY) == []


@pytest.mark.slow
def test_an_outage_at_the_end_of_a_batch_is_mirrored_by_a_later_command(workdir, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    port = free_port()
    backend = f"sqlite:///{workdir}/server.db"
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(workdir, backend, port)
    try:
        store, batch, storage = _open(
            workdir, uri, [JobSpec("search-0000", SEARCH, 0, config=CONFIG)]
        )
        worker = _worker(storage, uri, batch.id)
        _recorded_with_a_running_run(store, worker)
        kill_group(server)
        _finish(worker, store.jobs(batch.id))  # the tracking store is down right now
        assert store.get_batch(batch.id).state == "done"
        assert [b.id for b in store.unmirrored(STUDY)] == [batch.id]

        server = start_mlflow_server(workdir, backend, port)
        assert "RUNNING" in _statuses(workdir, uri).values()
        later = run_module(
            "bench.register", "--study-name", STUDY, "--storage", storage, "--tracking-uri", uri,
            cwd=workdir,
        )  # fmt: skip
        assert "Traceback" not in later.stderr, later.stderr[-3000:]
        assert "nothing to register" in later.stderr  # this batch registers nothing
        statuses = _statuses(workdir, uri)
        assert statuses[batch.parent_run_id] == "FINISHED"
        assert set(statuses.values()) == {"FINISHED"}, statuses
        assert store.unmirrored(STUDY) == []
    finally:
        kill_group(server)


@pytest.mark.slow
def test_rerun_joins_with_the_stored_space_and_refuses_other_data_in_one_line(workdir):
    """The command-line promise: the file moved, the batch still runs; other data: exit 2."""
    (workdir / "a.yaml").write_text(_smoke_text(), encoding="utf-8")
    args = ["--dataset", "digits", "--trials", "1", "--jobs", "1", "--no-register", "--quiet",
            "--study-name", STUDY, "--max-epochs", "2"]  # fmt: skip
    opened = run_module("bench.search", *args, "--space", "a.yaml", "--timeout", "0.001",
                        cwd=workdir)  # fmt: skip
    assert opened.returncode == 0, opened.stderr[-3000:]
    store = JobStore(str(workdir / "optuna-studies.log"))
    (batch,) = store.batches(STUDY)
    assert batch.state == "running" and [j.state for j in store.jobs(batch.id)] == ["waiting"]
    (workdir / "a.yaml").rename(workdir / "b.yaml")
    from bench.engine.store import batches

    real = batch.settings["dataset_digest"]
    other = {**batch.settings, "dataset_digest": "feedfacecafe0000"}  # another machine's files
    with store.engine.begin() as c:
        c.execute(batches.update().values(settings=json.dumps(other)))
    refused = run_module("bench.search", *args, "--space", "b.yaml", cwd=workdir)
    assert refused.returncode == 2, refused.stderr[-3000:]
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "feedfacecafe0000" in lines[0] and real in lines[0], lines
    assert [(j.state, j.attempts) for j in store.jobs(batch.id)] == [("waiting", 0)]

    with store.engine.begin() as c:
        c.execute(batches.update().values(settings=json.dumps(batch.settings)))
    rerun = run_module("bench.search", *args, "--space", "b.yaml", cwd=workdir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "joining search batch 1" in rerun.stderr
    assert [j.state for j in store.jobs(batch.id)] == ["done"]
    store.dispose()


def test_a_worker_that_lost_its_job_while_stopped_leaves_no_trace(workdir):
    # the slot was stopped (SIGSTOP, a node cut off) until the driver gave its attempt up and
    # started another with a run of its own. Resumed, the slot must not log its model into the
    # other attempt's run, register a version or move the alias: the attempt is dropped.
    import mlflow

    uri = f"sqlite:///{workdir}/mlflow.db"
    refit = JobSpec("refit", REFIT, 0, config=CONFIG, train={"max_epochs": 2}, split=ALL,
                    info={"source": "search-0000", "selection_score": 0.9})  # fmt: skip
    store, batch, storage = _open(workdir, uri, [refit])
    worker = _worker(storage, uri, batch.id)
    worker.token = "frozen-attempt"
    job = store.take(batch.id, worker.token, {"slot": 0})
    assert store.reap(job, WAITING, "its node was lost")  # what the driver does then
    peer_token = "next-attempt"
    taken = store.take(batch.id, peer_token, {"slot": 1})
    peer_run = worker.tracker.start_child(batch.parent_run_id, "refit", {}, {})
    assert store.update_owned(taken.id, peer_token, run_id=peer_run)

    worker.run_job(job)  # the stopped worker resumes where it was

    now = store.get_job(job.id)
    assert now.state == "running" and now.run_id == peer_run  # still the peer's, untouched
    client = mlflow.MlflowClient(uri)
    assert client.search_model_versions("name='digits-record'") == []
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert client.search_logged_models([exp.experiment_id]) == []
    assert client.get_run(peer_run).data.metrics == {}


def test_a_database_blip_while_recovering_is_retried_not_fatal(workdir, monkeypatch):
    import sqlalchemy.exc

    from bench.engine.ledger import Ledger

    uri = f"sqlite:///{workdir}/mlflow.db"
    store, batch, storage = _open(workdir, uri, [JobSpec("search-0000", SEARCH, 0)])
    real, calls = Ledger.recover, []

    def blip_once(self):
        calls.append(1)
        if len(calls) == 1:
            raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed"))
        real(self)

    monkeypatch.setattr(Ledger, "recover", blip_once)
    assert drive_here(_settings(storage, uri, batch.id)) == 0
    assert len(calls) == 2 and [j.state for j in store.jobs(batch.id)] == [DONE]
