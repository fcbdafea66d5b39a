"""MLflow runs, batched metrics and models for one process (the registry is in ``registry.py``).

Runs are driven through ``MlflowClient`` with explicit run ids, never through the fluent
"active run" stack, so several worker processes (or machines) can write trial runs under one
parent run without "run already active" errors. Calls made while a trial trains go through
:meth:`Tracker.safe`: when the store is down the trial keeps training and its result still lands
in the Optuna storage; the failure is reported once and counted. Per-epoch metrics are sent by a
background thread (:meth:`Tracker.log_metrics_later`), off the training loop's path; a job waits
for them (:meth:`Tracker.flush`) before its result or its run's end is recorded.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from bench.errors import BenchError, redact
from bench.faults import signal_point
from bench.lazy import lazy

if TYPE_CHECKING:
    import mlflow

    from bench.data import Dataset
else:
    mlflow = lazy("mlflow")  # this package is the only MLflow importer; it loads on first use

log = logging.getLogger("bench")
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow's own default: `mlflow ui` finds it
# MLflow's own marker of a model-training experiment (3.4+); without it the UI opens GenAI views.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
UI_DEFAULT = "http://127.0.0.1:5000"  # where `mlflow ui` listens unless told otherwise
RETRY_AFTER = 30.0  # seconds a failed tracking store is left alone before the next attempt


def resolve_uri(cli_uri: str | None) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else MLflow's default sqlite store."""
    return cli_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def artifact_root(uri: str) -> str | None:
    """Artifacts of a local sqlite store live in ``mlruns/`` beside the database file."""
    if uri.startswith("sqlite:///"):
        return str(Path(uri[len("sqlite:///") :]).resolve().parent / "mlruns")
    return None


def check_uri(uri: str) -> None:
    """Reject tracking URIs that cannot work, before anything is written.

    Raises:
        BenchError: the file store, an unwritable sqlite location, an unknown scheme.
    """
    parsed = urlparse(uri)
    shown = redact(uri)
    if parsed.scheme in ("", "file"):
        raise BenchError(
            f"--tracking-uri {shown}: MLflow's file store is not supported (MLflow 3.13+ "
            "refuses it); use sqlite:///mlflow.db or an http(s):// tracking server"
        )
    if parsed.scheme == "sqlite":
        folder = Path(uri[len("sqlite:///") :]).resolve().parent
        if not folder.is_dir():
            raise BenchError(
                f"--tracking-uri {shown}: folder {folder} does not exist; create it "
                "or point the tracking database somewhere that does"
            )
        try:  # a real write probe: permission bits say little to root or on read-only mounts
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".bench-probe-"):
                pass
        except OSError as exc:
            raise BenchError(
                f"--tracking-uri {shown}: cannot write in {folder} ({exc.strerror}); "
                "choose a writable location for the tracking database and mlruns/"
            ) from None
        return
    if parsed.scheme in ("http", "https"):
        _check_reachable(parsed, shown)
        return
    if parsed.scheme not in (
        "http",
        "https",
        "postgresql",
        "mysql",
        "mssql",
        "databricks",
    ) and not parsed.scheme.startswith(("postgresql+", "mysql+")):
        raise BenchError(
            f"--tracking-uri {shown}: unknown scheme '{parsed.scheme}'; use "
            "sqlite:///PATH, http(s)://HOST:PORT or a database URL"
        )


def _check_reachable(parsed, shown: str) -> None:
    """Refuse a tracking server nothing listens on, before the study or job store is written.

    Only the TCP connection is tried (any HTTP answer, even 401, means a server is there): an
    outage later in a search is survived, but one at the start is a wrong URL or a server not
    started, and waiting for MLflow's own retries would first write the Optuna study.
    """
    import socket

    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError:
        raise BenchError(f"--tracking-uri {shown}: the port is not a number") from None
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=10):
            pass
    except OSError as exc:
        raise BenchError(
            f"--tracking-uri {shown}: cannot open the tracking store (nothing answers at "
            f"{parsed.hostname}:{port}: {exc.strerror or type(exc).__name__}); start the MLflow "
            "server or fix the URL"
        ) from None


def _limit_http_retries() -> None:
    # MLflow's defaults retry a dead server for minutes per call; a search should notice sooner.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


class Tracker:
    """MLflow access for one process: created once, reused for every trial."""

    def __init__(self, uri: str, experiment: str):
        _limit_http_retries()
        self.uri = uri
        self.experiment = experiment
        self.mlflow = mlflow
        mlflow.set_tracking_uri(uri)  # the first use imports mlflow, which sets its own levels
        if not os.environ.get("BENCH_VERBOSE"):  # so quiet it after: before any store is opened
            logging.getLogger("mlflow").setLevel(logging.ERROR)
            logging.getLogger("alembic").setLevel(logging.ERROR)
        self.client = mlflow.MlflowClient(uri)
        self.failures = 0
        self._warned = False
        self._down_until = 0.0
        self._sender: ThreadPoolExecutor | None = None  # started on the first queued epoch
        self._queued: list[Future] = []
        try:
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                try:
                    root = artifact_root(uri)
                    self.experiment_id = self.client.create_experiment(
                        experiment,
                        artifact_location=Path(root).as_uri() if root else None,
                        tags=dict([EXPERIMENT_KIND]),
                    )
                except Exception:  # noqa: BLE001 - another worker created it first
                    exp = self.client.get_experiment_by_name(experiment)
                    if exp is None:
                        raise
                    self.experiment_id = exp.experiment_id
            else:
                self.experiment_id = exp.experiment_id
                if exp.tags.get(EXPERIMENT_KIND[0]) is None:
                    self.client.set_experiment_tag(self.experiment_id, *EXPERIMENT_KIND)
        except BenchError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise BenchError(
                f"--tracking-uri {redact(uri)}: cannot open the tracking store "
                f"({redact(_short(exc))})"
            ) from None

    # -------------------------------------------------------------- resilience

    def safe(self, fn, *args, **kwargs) -> Any:
        """Call ``fn``; on failure warn once, count it and return None instead of raising.

        After a failure, calls in the next ``RETRY_AFTER`` seconds are skipped at once (and
        counted), so a dead server costs one timeout per interval instead of one per call.
        """
        if time.monotonic() < self._down_until:
            self.failures += 1
            return None
        return self.now(fn, *args, **kwargs)

    def now(self, fn, *args, **kwargs) -> Any:
        """Like :meth:`safe`, but tried even within ``RETRY_AFTER`` of a failure.

        For the calls that end a batch's mirror (its parent run, the runs an outage left
        RUNNING): skipping them would leave runs RUNNING for good, and they are few.
        """
        for attempt in range(3):
            try:
                with signal_point(getattr(fn, "__name__", "")):
                    return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001
                if _is_locked(exc) and attempt < 2:
                    time.sleep(0.5 * (attempt + 1))
                    continue
                self.failures += 1
                self._down_until = time.monotonic() + RETRY_AFTER
                if not self._warned:
                    self._warned = True
                    log.warning(
                        "tracking store %s failed (%s); results still go to the Optuna "
                        "storage, tracking resumes when the store answers",
                        redact(self.uri),
                        redact(_short(exc)),
                    )
                return None
        return None

    # -------------------------------------------------------------- runs

    def start_parent(self, name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name, tags=_clean(tags))
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def find_runs(self, tags: dict[str, Any], status: str | None = None) -> list[str]:
        """Ids of this experiment's runs carrying all ``tags`` (and ``status``), oldest first."""
        clauses = [f"tags.`{k}` = '{_quote(v)}'" for k, v in _clean(tags).items()]
        if status:
            clauses.append(f"attributes.status = '{status}'")
        runs = self.client.search_runs(
            [self.experiment_id], " and ".join(clauses), order_by=["attributes.start_time ASC"]
        )
        return [r.info.run_id for r in runs]

    def delete_run(self, run_id: str) -> None:
        self.client.delete_run(run_id)

    def reopen(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    def start_child(
        self, parent_id: str | None, name: str, params: dict[str, Any], tags: dict[str, Any]
    ) -> str:
        """A run nested under ``parent_id`` (one per job), with its params."""
        tags = {"mlflow.parentRunId": parent_id, **tags}
        run = self.client.create_run(self.experiment_id, run_name=name, tags=_clean(tags))
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:

        items = [mlflow.entities.Param(k, redact(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(
        self, run_id: str, metrics: dict[str, float], step: int = 0, model_id: str | None = None
    ) -> None:
        """One batched call for all of an epoch's metrics."""

        now = int(time.time() * 1000)
        batch = [
            mlflow.entities.Metric(k, float(v), now, step, model_id=model_id)
            for k, v in metrics.items()
        ]
        self.client.log_batch(run_id, metrics=batch)

    def log_metrics_later(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        """Queue one epoch's metrics; one background thread sends them in order.

        The training loop does not wait for the tracking store (a server on a busy machine costs
        tens of milliseconds a call, a stalled one up to its timeout). Failures take the path of
        :meth:`safe` there: counted, warned once, and the rest of an outage skipped at once.
        MLflow's own ``log_batch(synchronous=False)`` was not used: its failures surface only
        when waited on, so an outage would cost one timeout per epoch instead of one.
        """
        if self._sender is None:
            self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-metrics")
        self._queued.append(self._sender.submit(self.safe, self.log_metrics, run_id, metrics, step))

    def flush(self) -> None:
        """Wait until every queued epoch has been sent (or counted as failed)."""
        queued, self._queued = self._queued, []
        for future in queued:
            future.result()

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:

        self.client.log_batch(
            run_id, tags=[mlflow.entities.RunTag(k, v) for k, v in _clean(tags).items()]
        )

    def end_run(self, run_id: str, status: str) -> None:
        """End a run as FINISHED, FAILED or KILLED."""
        self.client.set_terminated(run_id, status)

    def log_artifact(self, run_id: str, path: str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, path, artifact_path)

    def log_space(self, run_id: str, settings: dict[str, Any]) -> None:
        """Log a batch's space file under ``space/``: the text stored with the batch (the file
        itself may since have moved), else the file at its path."""
        name = Path(settings["space"]).name
        if settings.get("space_text") is not None:
            self.client.log_text(run_id, settings["space_text"], f"space/{name}")
        else:
            self.client.log_artifact(run_id, settings["space"], "space")

    def log_dataset(self, run_id: str, ds: Dataset) -> None:
        """Record the dataset (name, digest, source, shape) as the parent run's input."""

        sample = ds.x_train[:1000]
        dataset = mlflow.data.from_numpy(
            sample, targets=ds.y_train[:1000], source=ds.source, name=ds.name, digest=ds.digest
        )
        entity = dataset._to_mlflow_entity()
        self.client.log_inputs(
            run_id,
            [
                mlflow.entities.DatasetInput(
                    entity, [mlflow.entities.InputTag("mlflow.data.context", "training")]
                )
            ],
        )

    # -------------------------------------------------------------- models

    def log_model(self, run_id: str, model, image_shape: tuple[int, ...], n_classes: int):
        """Log a Keras model (raw uint8 images -> probabilities) to a trial run.

        Returns:
            MLflow's ``ModelInfo`` (``model_uri``, ``model_id``).
        """
        from importlib.metadata import version

        import numpy as np

        # The input tensor is unnamed. With a name, pyfunc hands Keras ``{"pixels": x}``, which
        # Keras 3 unpacks to ``[x]`` and then warns that ``[x]`` does not match the model's single
        # input. Unnamed, pyfunc and the scoring server pass ``x`` on as it is.
        signature = mlflow.models.ModelSignature(
            inputs=mlflow.types.Schema(
                [mlflow.types.TensorSpec(np.dtype(np.uint8), (-1, *image_shape))]
            ),
            outputs=mlflow.types.Schema(
                [mlflow.types.TensorSpec(np.dtype(np.float32), (-1, n_classes), "probabilities")]
            ),
        )
        requirements = [
            f"mlflow=={self.mlflow.__version__}",
            f"keras=={version('keras')}",  # metadata: the tracking layer never imports Keras
            f"tensorflow=={version('tensorflow')}",
            f"numpy=={np.__version__}",
        ]
        with self.mlflow.start_run(run_id=run_id, nested=True):
            return self.mlflow.keras.log_model(
                model, name="model", signature=signature, pip_requirements=requirements
            )

    def load_model(self, model_uri: str):
        """Load a logged Keras model (Keras' safe mode: no arbitrary code)."""
        return self.mlflow.keras.load_model(model_uri)

    def register(self, model_uri: str, name: str, tags: dict[str, Any]):
        """Register ``model_uri`` as a new version of ``name``, without MLflow's own prints.

        ``register_model`` announces "Successfully registered model" and "Created version" on
        MLflow's event stream; bench prints its own summary line, so the stream is off meanwhile.
        """
        logging_utils = mlflow.utils.logging_utils

        was_enabled = getattr(logging_utils.MLFLOW_LOGGING_STREAM, "enabled", True)
        logging_utils.disable_logging()
        try:
            return self.mlflow.register_model(model_uri, name, tags=_clean(tags))
        finally:
            if was_enabled:
                logging_utils.enable_logging()

    def find_version(self, name: str, tags: dict[str, str]):
        """The registered version of ``name`` carrying all ``tags``, or None."""

        try:
            versions = self.client.search_model_versions(f"name = '{_quote(name)}'")
        except mlflow.exceptions.MlflowException:
            return None
        for v in versions:
            if all(v.tags.get(k) == str(val) for k, val in tags.items()):
                return v
        return None

    def champion(self, name: str, alias: str = "champion"):

        try:
            return self.client.get_model_version_by_alias(name, alias)
        except mlflow.exceptions.MlflowException:
            return None

    def set_alias(self, name: str, version: str, alias: str = "champion") -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def describe_version(self, name: str, version: str, description: str) -> None:
        """Set a registered version's description (the UI shows it on the version's page)."""
        self.client.update_model_version(name, version, description=redact(description))

    def tag_version(self, name: str, version: str, tags: dict[str, Any]) -> None:
        for k, v in _clean(tags).items():
            self.client.set_model_version_tag(name, version, k, v)


def _quote(value: Any) -> str:
    """A value inside a single-quoted MLflow filter string."""
    return str(value).replace("\\", "\\\\").replace("'", "\\'")


def ui_links(uri: str, experiment_id: str, model_name: str | None = None) -> dict[str, str]:
    """Clickable pages of the MLflow UI: the experiment's runs and the registered model.

    With a tracking server the server is the UI; with a local store, ``mlflow ui`` serves it on
    127.0.0.1:5000 (the command to start it is returned too).
    """
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI_DEFAULT
    links = {"runs": f"{base}/#/experiments/{experiment_id}/runs"}
    if model_name:
        links["model"] = f"{base}/#/models/{model_name}"
    if not uri.startswith(("http://", "https://")):
        links["start"] = f"mlflow ui --backend-store-uri {redact(uri)} --host 127.0.0.1"
    return links


def _clean(tags: dict[str, Any]) -> dict[str, str]:
    return {k: redact(v) for k, v in tags.items() if v is not None}


def _short(exc: BaseException) -> str:
    """The first line of an error, secrets masked before it is cut."""
    text = redact(exc).strip().splitlines()
    return redact(f"{type(exc).__name__}: {text[0]}", limit=300) if text else type(exc).__name__


def _is_locked(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, sqlite3.OperationalError) or "database is locked" in str(cause):
            return "locked" in str(cause)
        cause = cause.__cause__ or cause.__context__
    return False
