"""What a registered model says it is: its version's sentence, its run's note, member params.

Plain text from plain facts (:mod:`bench.results.champion`); no MLflow, no Keras. The digits
study in ``test_study_digits`` checks the same on a real registered champion.
"""

from __future__ import annotations

from bench.results.champion import (
    Member,
    describe_config,
    member_params,
    member_tags,
    run_note,
    version_description,
)

A = {"normalization": "standard", "n_layers": 3, "units": [256, 256, 256],
     "activation": ["relu"] * 3, "dropout": [0.1, 0.2, 0.1], "l2": 1e-5, "optimizer": "adam",
     "learning_rate": 0.0012, "lr_schedule": "constant", "batch_size": 128}  # fmt: skip
B = {**A, "normalization": "minmax", "n_layers": 2, "units": [512, 128], "dropout": [0.3, 0.3],
     "optimizer": "sgd", "learning_rate": 0.05, "lr_schedule": "cosine"}  # fmt: skip
ENSEMBLE = [
    Member("search-0012", A, 27, "r-refit", "r-search-12", 0.9051, "one search run"),
    Member("search-0031", B, 33, "r-refit-1", "r-search-31", 0.9012, "one search run"),
]


def test_a_configuration_in_a_few_words():
    assert describe_config(A) == "standard, 3x256 relu, adam lr 0.0012"
    assert describe_config(B) == "minmax, 512-128 relu, sgd lr 0.05 cosine"


def test_an_ensemble_says_what_it_averages_in_one_sentence():
    text = version_description(
        ENSEMBLE, refit=True, train_images=60_000, metric="val_accuracy", score=0.9071,
        test_accuracy=0.9062,
    )  # fmt: skip
    assert text == (
        "Mean of the probabilities of 2 configurations (search-0012: standard, 3x256 relu, adam "
        "lr 0.0012; search-0031: minmax, 512-128 relu, sgd lr 0.05 cosine) refit on all 60,000 "
        "training images for 27+33 epochs; chosen by validation accuracy 0.9071 (the members' "
        "mean, each one search run); test accuracy 0.9062."
    )


def test_a_single_refit_and_a_search_runs_own_model():
    one = [Member("search-0012", A, 27, "r-refit", "r-search-12", None, "mean over 3 "
                  "re-evaluation seeds")]  # fmt: skip
    text = version_description(one, refit=True, train_images=60_000, metric="val_accuracy",
                               score=0.9051, test_accuracy=0.9)  # fmt: skip
    assert text == (
        "search-0012 (standard, 3x256 relu, adam lr 0.0012) refit on all 60,000 training images "
        "for 27 epochs; chosen by validation accuracy 0.9051 (mean over 3 re-evaluation seeds); "
        "test accuracy 0.9000."
    )
    own = [Member("search-0012", A, 30, "r-search-12", None, None, "one search run")]
    text = version_description(own, refit=False, train_images=60_000, metric="val_loss",
                               score=0.31, test_accuracy=0.9, test_loss=0.33)  # fmt: skip
    assert text.startswith("search-0012's own model (standard, 3x256 relu, adam lr 0.0012), "
                           "trained on the search's training split for 30 epochs; ")  # fmt: skip
    assert text.endswith("chosen by validation loss 0.3100 (one search run); test loss 0.3300; "
                         "test accuracy 0.9000.")  # fmt: skip


def test_the_run_note_links_every_member_run():
    sentence = version_description(ENSEMBLE, refit=True, train_images=10, metric="val_accuracy",
                                   score=0.9, test_accuracy=0.9)  # fmt: skip
    note = run_note(ENSEMBLE, "7", sentence, "fashion-mnist-mlp version 4 (champion)")
    assert note.startswith(sentence + "\n\nRegistered as fashion-mnist-mlp version 4 (champion).")
    for refit, search in (("r-refit", "r-search-12"), ("r-refit-1", "r-search-31")):
        assert f"[refit run](#/experiments/7/runs/{refit})" in note
        assert f"[search run](#/experiments/7/runs/{search})" in note
    assert "- member 1: search-0031 (minmax, 512-128 relu, sgd lr 0.05 cosine), test accuracy " \
           "alone 0.9012: " in note  # fmt: skip


def test_each_member_configuration_is_a_prefixed_param_and_its_runs_are_tags():
    params = member_params(ENSEMBLE)
    assert params["member0.source"] == "search-0012" and params["member1.source"] == "search-0031"
    assert params["member0.normalization"] == "standard" and params["member1.optimizer"] == "sgd"
    assert params["member1.units_0"] == 512 and params["member1.dropout_1"] == 0.3
    assert params["member0.refit_epochs"] == 27 and "member1.units_2" not in params
    assert member_tags(ENSEMBLE) == {
        "member0.run": "r-refit",
        "member0.source_run": "r-search-12",
        "member1.run": "r-refit-1",
        "member1.source_run": "r-search-31",
    }


def test_a_note_does_not_link_its_own_run():
    own = [Member("search-0012", A, 30, "r-search-12", None, None, "one search run")]
    note = run_note(own, "1", "s.", here="r-search-12")
    assert "](#/" not in note
    assert note.endswith("- search-0012 (standard, 3x256 relu, adam lr 0.0012)")
