"""Unit: the hash that guards a study covers what changes a score, not only the parameters.

Batches of one study are ranked together (the champion, the report's tables), so they must be
scored on the same validation split: a changed ``validation_size`` or ``cv_folds`` is refused
like a changed parameter range, unless ``--allow-space-change``. No TensorFlow, no MLflow.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from bench import optuna_adapter as opt
from bench.errors import BenchError
from bench.space import load_space, resolve_space
from bench.space._types import _jsonable

SMOKE = resolve_space("smoke")


def _variant(tmp_path, old: str, new: str, name: str = "variant.yaml"):
    text = Path(SMOKE).read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / name
    path.write_text(text.replace(old, new), encoding="utf-8")
    return load_space(path)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("validation_size: 300", "validation_size: 400"),
        ("validation_size: 300", "validation_size: 300\n  cv_folds: 3"),
    ],
    ids=["validation_size", "cv_folds"],
)
def test_a_changed_validation_split_changes_the_hash_and_is_refused(tmp_path, old, new):
    journal = str(tmp_path / "optuna-studies.log")
    smoke, changed = load_space(SMOKE), _variant(tmp_path, old, new)
    assert changed.search_hash != smoke.search_hash
    opt.open_study("s", journal, smoke)
    with pytest.raises(BenchError, match="different search space"):
        opt.open_study("s", journal, changed)
    opt.open_study("s", journal, changed, allow_space_change=True)  # knowingly: allowed


def test_the_epoch_budget_and_other_train_settings_keep_the_hash(tmp_path):
    # --max-epochs may differ between batches; patience or XLA do not change what is measured
    smoke = load_space(SMOKE)
    assert smoke.with_overrides(max_epochs=1).search_hash == smoke.search_hash
    assert _variant(tmp_path, "patience: 2", "patience: 5").search_hash == smoke.search_hash
    assert _variant(tmp_path, "jit_compile: false", "jit_compile: true").search_hash == (
        smoke.search_hash
    )


def test_a_study_recorded_before_the_split_was_hashed_is_recognised(tmp_path):
    # a study made by an earlier bench holds the hash of params, metric and baselines only
    journal = str(tmp_path / "optuna-studies.log")
    smoke = load_space(SMOKE)
    study = opt.open_study("s", journal, smoke)
    old = {
        "metric": smoke.metric,
        "params": {k: _jsonable(v) for k, v in smoke.params.items()},
        "baselines": [b.payload() for b in smoke.baselines],
    }
    legacy = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    assert smoke.legacy_search_hash == legacy
    study.set_user_attr(opt.STUDY_SPACE, legacy)
    again = opt.open_study("s", journal, smoke)
    assert again.user_attrs[opt.STUDY_SPACE] == smoke.search_hash  # upgraded, not refused


def _legacy_study_with_a_trial(journal: str, space):
    """A study as an earlier bench left it: the legacy hash, and one finished trial."""
    import optuna

    study = opt.open_study("s", journal, space)
    study.set_user_attr(opt.STUDY_SPACE, space.legacy_search_hash)
    study.add_trial(optuna.trial.create_trial(value=0.9, params={}, distributions={}))
    return study


def test_a_legacy_study_is_upgraded_only_when_its_recorded_split_is_this_spaces(tmp_path):
    """Issue #20, item 4: the legacy hash leaves the split out, so a study recorded then must
    not take a batch on another split without a word."""
    journal = str(tmp_path / "optuna-studies.log")
    smoke = load_space(SMOKE)
    wider = _variant(tmp_path, "validation_size: 300", "validation_size: 400")
    assert wider.legacy_search_hash == smoke.legacy_search_hash  # the defect: the same hash
    _legacy_study_with_a_trial(journal, smoke)
    scored_on_300 = lambda: {"validation_size": 300, "cv_folds": 1}  # noqa: E731
    with pytest.raises(BenchError, match="it was scored on validation_size 300, cv_folds 1"):
        opt.open_study("s", journal, wider, recorded_split=scored_on_300)
    again = opt.open_study("s", journal, smoke, recorded_split=scored_on_300)
    assert again.user_attrs[opt.STUDY_SPACE] == smoke.search_hash  # the same split: upgraded


def test_a_legacy_study_whose_split_nothing_recorded_needs_allow_space_change(tmp_path):
    journal = str(tmp_path / "optuna-studies.log")
    smoke = load_space(SMOKE)
    _legacy_study_with_a_trial(journal, smoke)
    with pytest.raises(BenchError, match="nothing recorded which split it was scored on"):
        opt.open_study("s", journal, smoke, recorded_split=lambda: None)
    study = opt.open_study(
        "s", journal, smoke, allow_space_change=True, recorded_split=lambda: None
    )
    assert study.user_attrs[opt.STUDY_SPACE] == smoke.search_hash


def test_the_recorded_split_is_read_from_the_latest_search_batchs_stored_space(tmp_path):
    from bench.engine.store import JobStore
    from bench.search import recorded_split

    journal = str(tmp_path / "optuna-studies.log")
    assert recorded_split(journal, "s") is None
    store = JobStore(journal)
    store.create_batch("s", "search", "search-1", {"seed": 0})  # before batches kept the text
    assert recorded_split(journal, "s") is None
    text = (
        Path(SMOKE)
        .read_text(encoding="utf-8")
        .replace("validation_size: 300", "validation_size: 400")
    )
    store.create_batch("s", "search", "search-2", {"seed": 0, "space_text": text})
    store.dispose()
    assert recorded_split(journal, "s") == {"validation_size": 400, "cv_folds": 1}


def test_a_new_batch_with_another_seed_is_refused_its_split_differs(tmp_path):
    # --seed seeds the validation split too: batch 2 with another seed would rank its trials
    # against batch 1's on other validation images
    from bench.engine.store import JobStore
    from bench.search import check_split_seed

    store = JobStore(str(tmp_path / "optuna-studies.log"))
    check_split_seed(store, "s", 1)  # a new study: any seed
    store.create_batch("s", "search", "search", {"seed": 0})
    check_split_seed(store, "s", 0)
    with pytest.raises(BenchError) as err:
        check_split_seed(store, "s", 1)
    assert "--seed 0" in str(err.value) and "--allow-space-change" in str(err.value)
    check_split_seed(store, "other study", 1)
    store.dispose()
