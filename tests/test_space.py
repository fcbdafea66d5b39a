"""Search-space parsing: good files, every rule with its message, and a property-based fuzz."""

from __future__ import annotations

import re

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from bench.errors import SpaceError
from bench.space import BUILTIN_DIR as SPACES
from bench.space import (
    CategoricalParam,
    FixedParam,
    FloatParam,
    IntParam,
    load_space,
    parse_space,
    suggest,
)


@pytest.mark.parametrize("path", sorted(SPACES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_space_validates(path):
    space = load_space(path)
    assert space.params["n_layers"] is not None
    assert space.searches or space.baselines


def test_default_space_searches_the_seed_questions():
    space = load_space(SPACES / "mlp.yaml")
    assert isinstance(space.params["normalization"], CategoricalParam)
    assert set(space.params["normalization"].choices) == {
        "none",
        "minmax",
        "symmetric",
        "standard",
        "per_pixel",
    }
    assert isinstance(space.params["units"], IntParam) and space.params["units"].per_layer
    assert space.params["units"].log
    assert (
        isinstance(space.params["learning_rate"], FloatParam) and space.params["learning_rate"].log
    )
    assert space.train.patience == 5 and space.train.min_delta == pytest.approx(1e-3)
    assert space.sampler.name == "tpe" and space.sampler.seed == 0 and space.sampler.multivariate


_SAMPLED = {
    "n_layers": {"type": "int", "low": 1, "high": 3},
    "units": {"type": "int", "low": 32, "high": 1024, "per_layer": True},
    "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
}


def _space(params: dict | None = None, **top) -> dict:
    doc = {"version": 1, "params": params or {}}
    doc.update(top)
    return doc


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            _space({"n_layers": {"type": "int", "low": 3, "high": 1}}),
            "params.n_layers: `low <= high` must hold, but got (low=3, high=1)",
        ),
        (
            _space({"learning_rate": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}),
            "`low > 0` must hold for a log distribution",
        ),
        (
            _space(
                {
                    "learning_rate": {
                        "type": "float",
                        "low": 0.01,
                        "high": 0.1,
                        "log": True,
                        "step": 0.01,
                    }
                }
            ),
            "`step` cannot be combined with `log: true`",
        ),
        (
            _space({"optimizer": {"type": "categorical", "choices": []}}),
            "params.optimizer.choices: must be a non-empty list",
        ),
        (
            _space({"optimizer": {"type": "categorical", "choices": ["adam", "lion"]}}),
            "params.optimizer.choices[1]: must be one of",
        ),
        (_space({"normalization": "zscore"}), "params.normalization: must be one of"),
        (
            _space({"learning_rat": 0.1}),
            "unknown key 'learning_rat'; did you mean 'learning_rate'?",
        ),
        (
            _space({"units": {"type": "int", "low": "a", "high": 3}}),
            "params.units.low: must be an integer, got str",
        ),
        (_space({"units": {"typ": "int"}}), "a distribution needs 'type'"),
        (_space({"dropout": {"type": "float", "low": 0.0, "high": 1.0}}), "0 <= dropout < 1"),
        (
            _space({"n_layers": {"type": "int", "low": 1, "high": 3}, "units": [300, 100]}),
            "needs a fixed `n_layers: 2`",
        ),
        (_space(study={"sampler": {"name": "cmaes"}}), "study.sampler.name: must be one of"),
        (
            _space(study={"sampler": {"name": "tpe", "gamma": 1.5}}),
            "study.sampler.gamma: must be between 0 and 1, got 1.5",
        ),
        (
            _space(study={"sampler": {"name": "tpe", "gamma": "top"}}),
            "study.sampler.gamma: must be a number or null, got str",
        ),
        (
            _space(study={"pruner": {"name": "median", "n_warmup": 2}}),
            "did you mean 'n_warmup_steps'?",
        ),
        (
            _space(study={"metric": "val_accuracy", "direction": "minimize"}),
            "val_accuracy must be maximized",
        ),
        (_space(train={"max_epochs": 0}), "train.max_epochs: must be >= 1"),
        (_space(train={"smooth_epochs": 0}), "train.smooth_epochs: must be >= 1, got 0"),
        (_space(train={"smooth_epochs": 1.5}), "train.smooth_epochs: must be an integer"),
        (_space(train={"min_epochs": -1}), "train.min_epochs: must be >= 0, got -1"),
        (
            _space(_SAMPLED, study={"enqueue": [{"learning_rate": 0.5}]}),
            "study.enqueue[0].learning_rate: must be a number from 0.0001 to 0.01, got 0.5",
        ),
        (
            _space(_SAMPLED, study={"enqueue": [{"optimizer": "lion"}]}),
            "study.enqueue[0].optimizer: must be one of ['sgd', 'adam'], got 'lion'",
        ),
        (
            _space(_SAMPLED, study={"enqueue": [{"n_layers": 2, "units": [512]}]}),
            "study.enqueue[0].units: needs a list of 2 values, got [512]",
        ),
        (
            _space(_SAMPLED, study={"enqueue": [{"units": [512, 256]}]}),
            "study.enqueue[0].units: per-layer values need n_layers in the entry",
        ),
        (
            _space(_SAMPLED, study={"enqueue": [{"batch_size": 256}]}),
            "study.enqueue[0].batch_size: is fixed in this space; leave it out",
        ),
        (
            _space(_SAMPLED, study={"enqueue": [{"n_layer": 2}]}),
            "study.enqueue[0].n_layer: not a parameter",
        ),
        (_space(_SAMPLED, study={"enqueue": {"n_layers": 2}}), "study.enqueue: must be a list"),
        (
            _space(_SAMPLED, study={"enqueue": [{"n_layers": True}]}),
            "study.enqueue[0].n_layers: must be an integer, got True",
        ),
        (
            _space(_SAMPLED, study={"enqueue": [{"learning_rate": float("nan")}]}),
            "study.enqueue[0].learning_rate: must be a number from",
        ),
        (
            _space(
                {"batch_size": {"type": "categorical", "choices": [128, 256]}},
                study={"enqueue": [{"batch_size": 256.0}]},
            ),
            "study.enqueue[0].batch_size: must be one of [128, 256], got 256.0",
        ),
        (
            _space(
                {"n_layers": {"type": "int", "low": 1, "high": 5, "step": 2}},
                study={"enqueue": [{"n_layers": 2}]},
            ),
            "study.enqueue[0].n_layers: must be 1 plus a multiple of step 2, got 2",
        ),
        (_space(train={"patience": "five"}), "train.patience: must be an integer"),
        ({"version": 2}, "only version 1 is supported"),
        ({"parms": {}}, "did you mean 'params'?"),
        ([1, 2], "must be a mapping"),
    ],
)
def test_invalid_spaces_name_the_file_key_and_problem(doc, message):
    with pytest.raises(SpaceError) as err:
        parse_space(doc, "spaces/x.yaml")
    text = str(err.value)
    assert text.startswith("spaces/x.yaml: ")
    assert message in text
    assert "\n" not in text


def test_malformed_and_unreadable_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("params:\n  units: [1, 2\n")
    with pytest.raises(SpaceError, match=r"bad.yaml: line \d+, column \d+: .*not valid YAML"):
        load_space(bad)
    with pytest.raises(SpaceError, match="cannot read the search-space file"):
        load_space(tmp_path / "missing.yaml")


def test_yaml_is_loaded_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("params: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(evil)


def test_defaults_fill_missing_params_and_fixed_lists_are_per_layer():
    space = parse_space(_space({"n_layers": 2, "units": [300, 100], "dropout": 0.1}))
    assert space.params["units"] == FixedParam((300, 100), per_layer=True)
    assert space.params["optimizer"] == FixedParam("adam")
    assert not space.searches


def test_search_hash_ignores_train_settings_but_not_params():
    a = parse_space(_space({"n_layers": {"type": "int", "low": 1, "high": 3}}))
    b = parse_space(
        _space({"n_layers": {"type": "int", "low": 1, "high": 3}}, train={"max_epochs": 3})
    )
    c = parse_space(_space({"n_layers": {"type": "int", "low": 1, "high": 4}}))
    assert a.search_hash == b.search_hash != c.search_hash
    # a smoothed score is another score: a study cannot mix the two; smoothing off (1) is the
    # score as before, so studies recorded before the setting existed keep their hash
    d = parse_space(
        _space({"n_layers": {"type": "int", "low": 1, "high": 3}}, train={"smooth_epochs": 3})
    )
    e = parse_space(
        _space({"n_layers": {"type": "int", "low": 1, "high": 3}}, train={"smooth_epochs": 1})
    )
    assert d.search_hash != a.search_hash == e.search_hash


def test_enqueued_configurations_are_what_the_first_trials_sample_once_per_study():
    import optuna

    from bench import optuna_adapter as opt

    start = {"n_layers": 2, "units": [512, 256], "optimizer": "adam", "learning_rate": 1e-3}
    space = parse_space(_space(_SAMPLED, study={"enqueue": [start]}), "x.yaml")
    assert space.enqueue == (
        {"n_layers": 2, "units_0": 512, "units_1": 256, "optimizer": "adam", "learning_rate": 1e-3},
    )
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    assert opt.enqueue(study, space.enqueue) == 1
    assert opt.enqueue(study, space.enqueue) == 0  # a rerun queues nothing more
    first = study.ask()
    config = suggest(first, space)
    assert config["units"] == [512, 256] and config["optimizer"] == "adam"
    assert config["learning_rate"] == pytest.approx(1e-3)
    study.tell(first, 0.9)
    assert opt.enqueue(study, space.enqueue) == 0  # tried already: not queued again
    second = suggest(study.ask(), space)  # then the sampler takes over
    assert second != config


def test_the_default_space_starts_from_one_documented_configuration():
    space = load_space(SPACES / "mlp.yaml")
    (start,) = space.enqueue
    assert start["n_layers"] == 2 and [start["units_0"], start["units_1"]] == [512, 256]
    assert start["dropout"] == pytest.approx(0.1) and start["lr_schedule"] == "cosine"


def test_suggest_gives_per_layer_lists_with_optuna():
    import optuna

    space = load_space(SPACES / "mlp.yaml")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        trial = study.ask()
        config = suggest(trial, space)
        n = config["n_layers"]
        assert 1 <= n <= 4
        assert len(config["units"]) == n == len(config["dropout"]) == len(config["activation"])
        assert all(64 <= u <= 1024 for u in config["units"])
        assert set(trial.params) >= {"n_layers", "units_0", "optimizer", "learning_rate"}
        assert f"units_{n}" not in trial.params
        study.tell(trial, 0.5)


# ---- property-based: any document parses to a valid space or raises SpaceError, nothing else

_scalars = hs.one_of(
    hs.none(),
    hs.booleans(),
    hs.integers(-5, 2000),
    hs.floats(allow_nan=True),
    hs.text(max_size=8),
    hs.sampled_from(["adam", "minmax", "tpe", "int", "float", "categorical", "relu", "median"]),
)
_keys = hs.sampled_from(
    [
        "type",
        "low",
        "high",
        "log",
        "step",
        "choices",
        "per_layer",
        "name",
        "seed",
        "max_epochs",
        "patience",
        "units",
        "n_layers",
        "dropout",
        "optimizer",
        "learning_rate",
        "normalization",
        "params",
        "study",
        "train",
        "sampler",
        "pruner",
        "version",
        "metric",
        "baselines",
        "bogus",
    ]
)
_docs = hs.recursive(
    _scalars,
    lambda inner: hs.one_of(hs.lists(inner, max_size=4), hs.dictionaries(_keys, inner, max_size=5)),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_docs)
def test_parser_never_raises_anything_but_space_error(doc):
    try:
        space = parse_space(doc, "fuzz.yaml")
    except SpaceError as exc:
        assert str(exc).startswith("fuzz.yaml: ")
        return
    assert space.version == 1
    for p in space.params.values():
        if isinstance(p, (IntParam, FloatParam)):
            assert p.low <= p.high and (not p.log or p.low > 0)


@settings(max_examples=150, deadline=None)
@given(hs.text(max_size=60))
def test_any_text_file_parses_or_raises_space_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "s.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_space(path)
    except SpaceError:
        pass


def test_round_trip_of_shipped_space_through_yaml():
    doc = yaml.safe_load((SPACES / "mlp.yaml").read_text())
    assert parse_space(doc).search_hash == load_space(SPACES / "mlp.yaml").search_hash


# ---------------------------------------------------------------- hostile files


def test_built_in_spaces_load_by_name():
    from bench.space import builtin_names, resolve_space

    assert {"mlp", "smoke", "baselines"} <= set(builtin_names())
    assert load_space("smoke").path == str(SPACES / "smoke.yaml")
    assert resolve_space("smoke.yaml") == "smoke.yaml"  # a file name stays a path


def test_alias_bomb_is_refused_before_it_is_walked(tmp_path):
    rows = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    rows += [
        f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    ]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(rows) + "\n")  # 9**9 strings if expanded
    with pytest.raises(SpaceError, match="expands to more than 10,000 nodes") as err:
        load_space(path)
    assert len(str(err.value)) < 300


def test_shared_aliases_below_the_cap_still_load(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("params:\n  units: &u {type: int, low: 8, high: 64}\n  batch_size: 32\n")
    assert load_space(path).params["units"].high == 64


def test_oversized_file_is_refused(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * (1 << 20))
    with pytest.raises(SpaceError, match="holds at most 1,048,576"):
        load_space(path)


@pytest.mark.parametrize(
    "text",
    [
        "params:\n  optimizer: " + "x" * 10_000 + "\n",
        "description: [" + ", ".join(["1"] * 5000) + "]\n",
        "params:\n  " + "k" * 900 + ": 1\n",
    ],
    ids=["long string", "long list", "long key"],
)
def test_values_in_messages_are_cut(text):
    with pytest.raises(SpaceError) as err:
        parse_space(yaml.safe_load(text), "s.yaml")
    assert len(str(err.value)) < 400


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ("max_epochs: 0", "baselines[0].train.max_epochs: must be >= 1, got 0"),
        ("patience: -5", "baselines[0].train.patience: must be >= 1, got -5"),
        ("eval_batch_size: 0", "baselines[0].train.eval_batch_size: must be >= 1, got 0"),
        ("min_delta: -0.1", "baselines[0].train.min_delta: must be >= 0"),
        ("jit_compile: sometimes", "baselines[0].train.jit_compile: must be true, false or auto"),
    ],
)
def test_baseline_train_overrides_follow_the_train_rules(train, message):
    doc = yaml.safe_load(f"baselines:\n  - name: b\n    train: {{{train}}}\n")
    with pytest.raises(SpaceError, match=re.escape(message)):
        parse_space(doc, "s.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("study:\n  metric: [a]\n", "study.metric: must be one of ['val_accuracy', 'val_loss']"),
        ("study:\n  metric: {a: 1}\n", "study.metric: must be one of"),
        (
            "params:\n  units: {type: [int], low: 1, high: 2}\n",
            "params.units.type: must be int, float or categorical, got ['int']",
        ),
        ("params:\n  units: {type: {a: 1}}\n", "params.units.type: must be int, float or"),
        ("params: " + "[" * 600 + "]" * 600 + "\n", "line 1, column 40: nested deeper than 32"),
        ("params:\n  units: " + "9" * 5000 + "\n", "line 2, column 10: an integer of 5,000 digits"),
        ("train:\n  max_epochs: -0x" + "f" * 5000 + "\n", "line 2, column 15: an integer of"),
        ("baselines:\n  - name: b\n    published_test_accuracy: 1" + "0" * 4400 + "\n", "4,401"),
    ],
    ids=["metric list", "metric mapping", "type list", "type mapping", "600 brackets",
         "5000 digits", "long hex", "4401 digits"],
)  # fmt: skip
def test_hostile_values_are_one_space_error(tmp_path, text, message):
    path = tmp_path / "hostile.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SpaceError) as err:
        load_space(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    assert len(str(err.value)) < 300


def test_nesting_a_space_needs_still_loads(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("description: " + "[" * 30 + "]" * 30 + "\n", encoding="utf-8")
    with pytest.raises(SpaceError, match="description: must be a string"):
        load_space(path)  # parsed and validated, not refused for its depth


def test_a_device_or_a_folder_is_refused_without_reading_it(tmp_path):
    for path, what in (("/dev/zero", "a character device"), (str(tmp_path), "a folder")):
        with pytest.raises(SpaceError, match=f"{path}: not a regular file \\({what}\\)"):
            load_space(path)


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    import os
    import threading

    fifo = tmp_path / "space.yaml"
    os.mkfifo(fifo)
    outcome = []

    def load():
        try:
            load_space(fifo)
        except SpaceError as exc:
            outcome.append(str(exc))

    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # the old code blocks in open(): give it a writer so the thread ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(10)
        pytest.fail("load_space waited for a writer on a FIFO")
    assert outcome and "not a regular file (a FIFO)" in outcome[0]


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("a/b", "found '/'"),
        ("..", "not starting with a dot"),
        ("../../etc", "found '/'"),
        ("x" * 101, "use 1-100 letters"),
        ("it's", 'found "\'"'),
        ("", "use 1-100 letters"),
    ],
    ids=["slash", "dot-dot", "escape", "101 chars", "quote", "empty"],
)
def test_baseline_names_are_safe_as_keys_and_folder_names(name, problem):
    doc = {"baselines": [{"name": name}]}
    with pytest.raises(SpaceError) as err:
        parse_space(doc, "s.yaml")
    assert str(err.value).startswith("s.yaml: baselines[0].name: ") and problem in str(err.value)
    assert len(str(err.value)) < 300


def test_a_100_character_baseline_name_loads():
    name = "b-1.0_x+" + "y" * 92
    assert parse_space({"baselines": [{"name": name}]}, "s.yaml").baselines[0].name == name
