"""``mlflow ui`` as a person sees it: a real headless Chromium on the shared search's results.

The server is plain ``mlflow ui`` started in the folder the search ran in, with no backend flags
(MLflow 3.17's default store is ``sqlite:///mlflow.db`` in the current folder); ``bench.ui``, which
starts it for users, is tested in ``tests/test_ui.py``. Screenshots land in
``$BENCH_TEST_ARTIFACTS/mlflow-ui/`` (default ``<repo>/test-artifacts/``). Expected values come
from the store itself through MlflowClient.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env
from tests.servers import free_port, mlflow_command, stop, wait_until_up

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
EXPERIMENT = MODEL = "fashion-mnist-mlp"
PAGE_TIMEOUT_MS = 60_000  # a React page on a busy 2-core machine; every wait is bounded by it
# Environment variables `mlflow server` reads as backend flags: the test must not have them.
BACKEND_VARS = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_BACKEND_STORE_URI",
    "MLFLOW_REGISTRY_STORE_URI",
    "MLFLOW_DEFAULT_ARTIFACT_ROOT",
    "MLFLOW_ARTIFACTS_DESTINATION",
)


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("BENCH_TEST_ARTIFACTS") or REPO / "test-artifacts") / "mlflow-ui"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def expected(fashion_search):
    """What the UI must show, read from the store the search wrote."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{fashion_search / 'mlflow.db'}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    parent = next(r for r in runs.values() if r.data.tags.get("role") == "study")
    trials = {name: r for name, r in runs.items() if name.startswith("trial-")}
    assert set(trials) == {"trial-0", "trial-1"}
    assert all(r.data.tags.get("mlflow.parentRunId") == parent.info.run_id for r in trials.values())
    history = client.get_metric_history(trials["trial-0"].info.run_id, "val_accuracy")
    assert len(history) >= 2, "expected one val_accuracy point per epoch"
    champion = client.get_model_version_by_alias(MODEL, "champion")
    note = client.get_run(champion.run_id).data.tags["mlflow.note.content"]
    return {
        "champion_run": champion.run_id,
        "champion_description": champion.description,
        "champion_links": re.findall(r"\]\((#/experiments/[^)]+)\)", note),
        "experiment_id": exp.experiment_id,
        "parent": parent.info.run_name,
        "trial0_id": trials["trial-0"].info.run_id,
        "history": history,
        "champion_version": champion.version,
        "n_runs": len(runs),
    }


@pytest.fixture(scope="module")
def mlflow_ui(fashion_search, tmp_path_factory):
    log = tmp_path_factory.mktemp("mlflow-ui") / "server.log"
    port = free_port()
    env = cli_env(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    for var in BACKEND_VARS:
        env.pop(var, None)
    # --workers 1 only shortens the start on 2 cores (the default starts 4 uvicorn workers).
    with open(log, "wb") as out:
        command = [
            *mlflow_command(),
            "ui",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ]
        proc = subprocess.Popen(
            command,
            cwd=fashion_search,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(proc, f"{base}/health", log, 120)
        yield base, log
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    if not CHROMIUM.exists() and not os.environ.get("CI"):
        pytest.skip("Debian's chromium is missing: apt-get install chromium")
    if not os.environ.get("CI"):
        pytest.importorskip("playwright")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=PAGE_TIMEOUT_MS)
    profile = tmp_path_factory.mktemp("chromium-profile")  # fresh: no state from earlier runs
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1600, "height": 1000},
        )
        context.set_default_timeout(PAGE_TIMEOUT_MS)
        context.set_default_navigation_timeout(PAGE_TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser_context, mlflow_ui):
    page = browser_context.new_page()
    yield page
    page.close()


def shot(page, name: str) -> None:
    """Save a screenshot, with MLflow's assistant side panel closed when it is open."""
    close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close.count() and close.first.is_visible():
        close.first.click()
    page.screenshot(path=str(artifacts_dir() / f"{name}.png"))


def dismiss_promotion(page, seconds: float = 10) -> None:
    """Close the registry's one-time "new Model Registry UI" dialog if it shows (once a profile)."""
    dialog = page.get_by_role("dialog")
    try:
        dialog.wait_for(state="visible", timeout=seconds * 1000)
    except Exception:  # noqa: BLE001 - playwright's TimeoutError: no dialog this time
        return
    page.keyboard.press("Escape")
    dialog.wait_for(state="hidden")
    # The grey backdrop fades out after the dialog; wait so the screenshot shows the page.
    page.locator("[class*='modal-mask']").last.wait_for(state="hidden", timeout=10_000)


def test_ui_started_without_flags_uses_the_sqlite_store_in_the_folder(mlflow_ui):
    _, log = mlflow_ui
    text = log.read_text(errors="replace")
    assert "Backend store URI not provided. Using sqlite:///mlflow.db" in text


def test_experiment_is_listed(page, mlflow_ui):
    from playwright.sync_api import expect

    base, _ = mlflow_ui
    page.goto(f"{base}/#/experiments")
    expect(page.get_by_role("link", name=EXPERIMENT, exact=True)).to_be_visible()
    shot(page, "01-experiments")


def test_parent_run_shows_its_trials_nested_under_it(page, mlflow_ui, expected):
    from playwright.sync_api import expect

    base, _ = mlflow_ui
    page.goto(f"{base}/#/experiments")
    # MLflow 3.17 opens experiments in its GenAI view; training runs are under "Model training".
    page.get_by_text("Model training", exact=True).click()
    page.get_by_role("link", name=EXPERIMENT, exact=True).click()
    parent_row = page.get_by_role("row").filter(has_text=expected["parent"])
    expect(parent_row).to_have_count(1)
    expect(page.get_by_text(f"{expected['n_runs']} matching runs")).to_be_visible()
    # Collapsed: the trials are hidden inside their parent, not listed beside it.
    expect(page.get_by_role("link", name="trial-0", exact=True)).to_have_count(0)
    shot(page, "02-runs-collapsed")

    parent_row.get_by_role("button").first.click()  # the expander in the Run Name cell
    for name in ("trial-0", "trial-1"):
        expect(page.get_by_role("link", name=name, exact=True)).to_be_visible()
    # Nested as a person sees it: the trials sit below their parent and are indented under it.
    box = {
        n: page.get_by_role("link", name=n, exact=True).bounding_box()
        for n in (expected["parent"], "trial-0", "trial-1")
    }
    for name in ("trial-0", "trial-1"):
        assert box[name]["y"] > box[expected["parent"]]["y"], box
        assert box[name]["x"] > box[expected["parent"]]["x"], box
    shot(page, "03-runs-expanded")

    page.get_by_role("link", name="trial-0", exact=True).click()
    expect(page.get_by_text("Parent run", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name=expected["parent"], exact=True)).to_be_visible()
    expect(page.get_by_text("val_accuracy", exact=True).first).to_be_visible()
    shot(page, "04-trial-0")


def test_trial_val_accuracy_chart_shows_every_epoch(page, mlflow_ui, expected):
    from playwright.sync_api import expect

    base, _ = mlflow_ui
    query = urllib.parse.urlencode(
        {
            "runs": json.dumps([expected["trial0_id"]]),
            "metric": json.dumps("val_accuracy"),
            "experiments": json.dumps([expected["experiment_id"]]),
            "plot_metric_keys": json.dumps(["val_accuracy"]),
            "plot_layout": "{}",
            "x_axis": "step",
            "y_axis_scale": "linear",
            "line_smoothness": 1,
            "show_point": "true",
            "deselected_curves": "[]",
            "last_linear_y_axis_range": "[]",
        }
    )
    page.goto(f"{base}/#/metric/val_accuracy?{query}")
    expect(page.get_by_text("trial-0 (val_accuracy)")).to_be_visible()  # the chart's legend
    history = sorted(expected["history"], key=lambda m: m.step)
    # One plotted point per epoch (the page draws with Plotly; its layers are stable names).
    points = page.locator(".js-plotly-plot .scatterlayer .trace .points path")
    expect(points).to_have_count(len(history))
    expect(page.locator(".js-plotly-plot .xtitle")).to_have_text("Step")
    last = history[-1]
    best = max(history, key=lambda m: m.value)
    table = page.get_by_role("row").filter(has_text="(step=")
    expect(table).to_contain_text(f"{last.value!r} (step={last.step})")
    expect(table).to_contain_text(f"{best.value!r} (step={best.step})")
    shot(page, "05-trial-0-val-accuracy")


def test_registered_model_carries_the_champion_alias(page, mlflow_ui, expected):
    from playwright.sync_api import expect

    base, _ = mlflow_ui
    page.goto(f"{base}/#/models")
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=MODEL, exact=True))
    expect(row).to_contain_text("champion")
    expect(row).to_contain_text(f"Version {expected['champion_version']}")
    dismiss_promotion(page)
    shot(page, "06-registered-models")

    page.goto(f"{base}/#/models/{MODEL}")
    version = page.get_by_role("row").filter(has_text=f"Version {expected['champion_version']}")
    expect(version).to_contain_text("champion")
    expect(version).to_contain_text("test_accuracy")
    shot(page, "07-model-versions")


def test_the_champion_run_says_what_it_is_and_links_its_members(page, mlflow_ui, expected):
    from playwright.sync_api import expect

    base, _ = mlflow_ui
    links = expected["champion_links"]
    assert links, "the champion's run note should link the runs it was made from"
    page.goto(f"{base}/#/experiments/{expected['experiment_id']}/runs/{expected['champion_run']}")
    # the run's description is the version's sentence: how it was made and chosen
    expect(page.get_by_text(expected["champion_description"]).first).to_be_visible()
    more = page.get_by_text("Show more", exact=True)  # MLflow folds a long description
    if more.count():
        more.first.click()
    for href in links:
        expect(page.locator(f'a[href="{href}"]')).to_be_visible()
    shot(page, "08-champion-run")
    with page.context.expect_page() as opened:  # MLflow opens a note's links in a new tab
        page.locator(f'a[href="{links[0]}"]').click()
    member = opened.value
    try:
        expect(member).to_have_url(re.compile(re.escape(links[0].rsplit("/", 1)[1]) + "$"))
        expect(member.get_by_text("Parent run", exact=True)).to_be_visible()
    finally:
        member.close()
