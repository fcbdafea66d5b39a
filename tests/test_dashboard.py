"""optuna-dashboard opens the study's journal file with the one command the README shows.

The server runs as a user starts it (``optuna-dashboard optuna-studies.log``) in the folder two
digits searches ran in; its JSON API on loopback must list the user's study and nothing else (the
engine keeps its jobs in ``optuna-studies.log.jobs.db``, never as studies), every trial exactly as
the Optuna storage holds them, and browsing must leave the journal untouched.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import cli_env, run_module
from tests.servers import free_port, stop, wait_until_up

STUDY = "digits-smoke"
JOURNAL = "optuna-studies.log"


def dashboard_command() -> list[str]:
    beside = Path(sys.executable).with_name("optuna-dashboard")
    return [str(beside)] if beside.exists() else ["optuna-dashboard"]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=60) as resp:
        assert resp.status == 200
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def two_searches(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two-searches")
    for _ in range(2):
        proc = run_module(
            "bench.search", "--dataset", "digits", "--space", "smoke", "--trials", "3",
            "--jobs", "1", "--quiet", cwd=folder,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


@pytest.mark.slow
def test_dashboard_lists_only_the_users_study_and_its_trials(two_searches, tmp_path):
    pytest.importorskip("optuna_dashboard")
    import optuna

    from bench.optuna_adapter import make_storage

    folder = two_searches
    journal = folder / JOURNAL
    digest = hashlib.sha256(journal.read_bytes()).hexdigest()
    study = optuna.load_study(study_name=STUDY, storage=make_storage(str(journal)))
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert trials, "the fixture's study has no trials"

    port = free_port()
    log = tmp_path / "dashboard.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*dashboard_command(), JOURNAL, "--host", "127.0.0.1", "--port", str(port)],
            cwd=folder,
            env=cli_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(proc, f"{base}/api/studies", log, 60)
        summaries = get_json(f"{base}/api/studies")["study_summaries"]
        assert [s["study_name"] for s in summaries] == [STUDY]  # no internal studies
        ours = summaries
        assert ours[0]["directions"] == ["maximize"]

        detail = get_json(f"{base}/api/studies/{ours[0]['study_id']}?after=0")
        shown = {t["number"]: t for t in detail["trials"]}
        assert sorted(shown) == sorted(trials)
        for number, trial in trials.items():
            row = shown[number]
            assert row["state"].upper() == trial.state.name
            if trial.value is not None:
                assert row["values"] == [trial.value]
            curve = {p["step"]: p["value"] for p in row["intermediate_values"]}
            assert curve == trial.intermediate_values  # the per-epoch val_accuracy
        assert detail["trials"] and any(t["intermediate_values"] for t in detail["trials"])
    finally:
        stop(proc)
    assert hashlib.sha256(journal.read_bytes()).hexdigest() == digest, "the journal changed"
