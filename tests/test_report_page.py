"""``report.html``: one self-contained page, read as a person reads it, in a real headless Chromium.

The study is synthetic (Optuna directly, no training; the helpers of ``test_report``), with a
champion, a re-evaluation and a finished ablation, so every section of the page has content.
Screenshots land in ``$BENCH_TEST_ARTIFACTS/report-page/`` (default ``<repo>/test-artifacts/``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.conftest import REPO, run_module
from tests.test_report import (
    PLOTS,
    REEVAL_SUMMARY,
    STUDY,
    ablation_summary,
    add_batch,
    build_study,
    journal,
)

# 10 search trials are too few for importances: Notes says why, before the long trial table
SECTIONS = ["Summary", "Champion", "What matters", "The search", "Notes", "Trials"]
CHAMPION = {
    **REEVAL_SUMMARY,
    "version": "2",
    "champion_version": "2",
    "source": "search-0009+search-0008",
    "refit": True,
    "refit_epochs": "6+5",
    "selection_metric": "val_accuracy",
    "selection_score": 0.8781,
    "test_accuracy": 0.8702,
    "val_test_gap": 0.0079,
    "ensemble": [
        {"source": "search-0009", "selection_score": 0.884, "test_accuracy": 0.869},
        {"source": "search-0008", "selection_score": 0.8723, "test_accuracy": 0.866},
    ],
}
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]


@pytest.fixture(scope="module")
def page_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("report-page")
    log = folder / "optuna-studies.log"
    build_study(journal(log))
    settings = {"experiment": "fashion-mnist-mlp", "model_name": "fashion-mnist-mlp"}
    add_batch(log, STUDY, "search", CHAMPION, settings=settings)
    add_batch(log, STUDY, "ablation", ablation_summary(),
              settings={"base_source": "search-0009", **settings})  # fmt: skip
    proc = run_module("bench.report", "--no-mlflow", "--out", "r", cwd=folder, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "r/report.html (open it in a browser)" in proc.stdout
    return folder / "r" / "report.html"


def test_the_page_is_self_contained_and_ordered_for_a_reader(page_file):
    text = page_file.read_text(encoding="utf-8")
    assert re.findall(r"<h2>([^<]+)</h2>", text) == SECTIONS
    assert "importances from fewer than 20 change from one resample to the next" in text
    # no script, nothing fetched: every image is inside the file, and the page's policy says so
    assert "<script" not in text.lower()
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", text)
    sources = re.findall(r'<img src="([^"]*)"', text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert len(sources) == len(PLOTS) + 1  # every plot, and the forest plot of What matters
    assert "default-src 'none'" in text
    # the champion section carries its confusion matrix; What matters its forest plot
    champion = text.split('<section id="champion">', 1)[1].split("</section>", 1)[0]
    assert "search-0009+search-0008" in champion and 'alt="Champion confusion matrix' in champion
    matters = text.split('<section id="what-matters">', 1)[1].split("</section>", 1)[0]
    assert "normalization: effect" in matters and 'alt="What matters' in matters
    # the long trial table comes last and lists every trial
    trials = text.split('<section id="trials">', 1)[1]
    assert "<table>" in trials and "<section" not in trials
    rows = re.findall(r'<tr><td[^>]*>\d*</td><td class="num">(\d+)</td>', trials)
    assert sorted(map(int, rows)) == list(range(11))
    # the markdown stays, with the same numbers, for git
    assert (page_file.parent / "report.md").is_file()


def test_text_is_escaped():
    from bench.results.html import Section, page, table, text_block

    out = page("a <b> & 'c'", "<i>intro</i>", [Section("s", "<h2>", [text_block("- <x>")])])
    out += table(["<th>"], [["<td>", 1.5, None]])
    assert "<b>" not in out and "<i>" not in out and "<x>" not in out and "<td><" not in out
    assert "&lt;b&gt; &amp; &#x27;c&#x27;" in out and '<td class="num">1.5</td>' in out


@pytest.mark.slow
@pytest.mark.browser
def test_the_page_renders_in_headless_chromium_with_every_plot(page_file):
    """With JavaScript off, as the page must read without it: sections in order, every plot."""
    if not CHROMIUM.exists() and not os.environ.get("CI"):
        pytest.skip("Debian's chromium is missing: apt-get install chromium")
    if not os.environ.get("CI"):
        pytest.importorskip("playwright")
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("BENCH_TEST_ARTIFACTS") or REPO / "test-artifacts") / "report-page"
    shots.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    fetched: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            # read as a reader with JavaScript off (and offline) sees it: the page needs neither
            context = browser.new_context(
                viewport={"width": 1200, "height": 900}, java_script_enabled=False, offline=True
            )
            probe = context.new_page()  # the context really runs no script
            probe.set_content("<title>before</title><script>document.title = 'ran'</script>")
            script_ran = probe.title() == "ran"
            probe.close()
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: fetched.append(r.url))
            page.goto(page_file.as_uri(), wait_until="load")
            headings = page.locator("h2").all_inner_texts()
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])"
            )
            top = {h: page.locator(f"h2:text-is('{h}')").bounding_box()["y"] for h in SECTIONS}
            first_plot = page.get_by_role("img").first.bounding_box()
            page.screenshot(path=str(shots / "report.png"), full_page=True)
        finally:
            browser.close()
    assert not script_ran
    assert headings == SECTIONS
    assert [y for _, y in sorted(top.items(), key=lambda kv: SECTIONS.index(kv[0]))] == sorted(
        top.values()
    )
    assert len(images) == len(PLOTS) + 1
    assert all(complete and width > 0 for _, complete, width in images), images
    assert first_plot["width"] > 200  # drawn, not a broken-image icon
    assert errors == [], errors
    # the page itself is the only thing loaded: images are data: URIs, nothing else is fetched
    assert [u for u in fetched if not u.startswith("data:")] == [page_file.as_uri()]
