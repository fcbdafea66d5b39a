"""Secrets never leave the process: ``redact`` masks every credential form that reaches a message,
and what is logged as an MLflow parameter names a store by host and database only."""

from __future__ import annotations

import pytest

from bench import errors
from bench.errors import redact


@pytest.mark.parametrize("password", ["s3cr'et", 's3cr"et', "s3'c\"r/e:t?#", "p@ss"], ids=repr)
def test_a_password_holding_quotes_or_an_at_sign_is_masked(password):
    url = f"postgresql://bench:{password}@db/optuna"
    assert redact(url) == "postgresql://bench:***@db/optuna"
    text = f"cannot connect to {url} (timeout)"
    assert redact(text) == "cannot connect to postgresql://bench:***@db/optuna (timeout)"
    assert redact(f"'{url}'") == "'postgresql://bench:***@db/optuna'"


def test_a_whole_url_with_a_space_in_its_password_is_masked():
    assert redact("postgresql://bench:my s3cret@db/optuna") == "postgresql://bench:***@db/optuna"


@pytest.mark.parametrize(
    ("dsn", "secret"),
    [
        ("host=db user=bench password=s3cret dbname=optuna", "s3cret"),
        ("host=db user=bench password='s3 cr\\'et' dbname=optuna", "cr\\'et"),
        ("host=db user=bench password = 'a b c' dbname=optuna", "a b c"),
        ('host=db password="s3 cret" dbname=optuna', "cret"),
    ],
    ids=["plain", "quoted with an escaped quote", "spaces around =", "double quotes"],
)
def test_a_libpq_dsn_password_is_masked_whole(dsn, secret):
    out = redact(f"connection failed: {dsn}")
    assert secret not in out and "s3" not in out
    assert "password" in out and "***" in out
    assert out.endswith("dbname=optuna")  # what follows the password is kept


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("https://ghp_T0KEN@mlflow.example/api", "https://***@mlflow.example/api"),
        ("https://user:T0KEN@mlflow.example:443/", "https://user:***@mlflow.example:443/"),
        (
            "http://mlflow.example:5000/?token=T0KEN&x=1",
            "http://mlflow.example:5000/?token=***&x=1",
        ),
    ],
)
def test_a_token_in_an_http_url_is_masked(url, masked):
    assert redact(url) == masked
    assert redact(f"tracking {url} failed") == f"tracking {masked} failed"


def test_urls_without_credentials_are_left_alone():
    for url in (
        "http://127.0.0.1:5000/#/experiments/1/runs",
        "sqlite:///mlflow.db",
        "postgresql://bench@db.example:5432/optuna",
        "optuna-studies.log",
    ):
        assert redact(url) == url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://bench:s3cr'et@db.example:5432/optuna?sslmode=require",
         "postgresql://db.example:5432/optuna"),
        ("postgresql+psycopg://bench@db/optuna", "postgresql+psycopg://db/optuna"),
        ("mysql+pymysql://u:p@ss@h/db", "mysql+pymysql://h/db"),
        ("https://T0KEN@mlflow.example/path?token=x", "https://mlflow.example/path"),
        ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
        ("optuna-studies.log", "optuna-studies.log"),
    ],
)  # fmt: skip
def test_store_location_keeps_host_and_database_only(url, shown):
    assert errors.store_location(url) == shown


class _Tracker:
    """What open_design_batch asks of MLflow, recorded."""

    def __init__(self):
        self.parents: list[tuple[str, dict, dict]] = []

    def find_runs(self, tags):
        return []

    def start_parent(self, name, params, tags):
        self.parents.append((name, params, tags))
        return f"run-{len(self.parents)}"

    def safe(self, fn, *args, **kwargs):
        return None

    def log_space(self, *args):
        pass

    def log_dataset(self, *args):
        pass


def _design_settings(design: str, space) -> dict:
    """What each design adds to the shared settings: a real plan for the two ablations."""
    from bench.designs import ablation, crossed
    from bench.designs.ablation_plan import plan

    base = {"normalization": "standard", "n_layers": 1, "units": 16, "dropout": 0.0, "l2": 1e-5,
            "optimizer": "adam", "learning_rate": 0.01}  # fmt: skip
    common = {"base_source": "--base-config b.yaml", "seeds": [0, 1], "metric": "val_accuracy"}
    if design == "ablation":
        p = plan(space, base, ["normalization"], [0, 1])
        return {**common, "factors": ["normalization"], "plan": ablation.plan_to_settings(p, {})}
    if design == "crossed":
        p = crossed.cross_plan(space, base, ["normalization", "optimizer"], [0, 1])
        return {**common, "factors": list(p.factors), "plan": crossed.plan_to_settings(p, {})}
    return {}


def test_a_url_before_a_colon_and_a_compound_scheme_are_masked_cleanly():
    said = redact("--storage postgresql://bench:s3cr'et@db/optuna: no such study")
    assert said == "--storage postgresql://bench:***@db/optuna: no such study"
    assert redact("pip install git+https://T0KEN@github.com/o/r.git") == (
        "pip install git+https://***@github.com/o/r.git"
    )


@pytest.mark.parametrize("design", ["search", "reeval", "ablation", "crossed"])
def test_parent_runs_log_the_storage_by_location_only(tmp_path, design):
    """The storage URL goes to every parent run's params, which an unauthenticated MLflow shows to
    anyone: every design's parent run logs its location only (host, port, database)."""
    from types import SimpleNamespace

    from bench.designs import DESIGNS
    from bench.engine.driver import open_design_batch
    from bench.engine.store import JobStore
    from bench.space import load_space, resolve_space

    space = load_space("smoke")
    settings = {
        "space": resolve_space("smoke"), "space_text": "", "dataset": "digits",
        "dataset_digest": "d1", "experiment": "e", "model_name": "m", "seed": 0, "n_trials": 1,
        "register": False, "refit": True, "ensemble": 1, "reeval_top_k": 2, "reeval_seeds": 2,
        "baselines": [], "sources": [], "reeval_jobs": [],
    }  # fmt: skip
    settings.update(_design_settings(design, space))
    tracker = _Tracker()
    store = JobStore(str(tmp_path / "journal.log"))
    secret = "postgresql://bench:Sup3r-S3cret@db.example:5432/studies"
    open_design_batch(
        store, tracker, DESIGNS[design], "s", design, settings, space,
        SimpleNamespace(name="digits", digest="d1"), secret,
    )  # fmt: skip
    ((_name, params, tags),) = tracker.parents
    assert params["storage"] == "postgresql://db.example:5432/studies"
    assert "Sup3r-S3cret" not in repr((params, tags))
