"""Search-space files: YAML parsed into frozen dataclasses, validated eagerly, sampled with Optuna.

Needs only PyYAML (and Optuna for :func:`suggest` / :func:`distribution`): no TensorFlow here, so
that validating a file or answering ``--help`` stays fast. See ``README.md`` for the format.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bench.errors import SpaceError

if TYPE_CHECKING:
    import optuna

NORMALIZATIONS = ("none", "minmax", "symmetric", "standard", "per_pixel")
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop")
ACTIVATIONS = ("relu", "elu", "selu", "gelu", "tanh", "swish")
LR_SCHEDULES = ("constant", "cosine", "linear")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "successive_halving", "none")
METRICS = {"val_accuracy": "maximize", "val_loss": "minimize"}

# Defaults for model parameters a space file leaves out, each with its reason.
PARAM_DEFAULTS: dict[str, Any] = {
    "normalization": "minmax",  # /255 is what most tutorials do and trains well everywhere
    "n_layers": 2,  # the classic 300-100 network has two hidden layers
    "units": 128,  # the Keras beginner tutorial's width
    "activation": "relu",  # the seeds' activation; no search unless asked
    "dropout": 0.0,  # regularisation is opt-in
    "l2": 0.0,  # likewise
    "optimizer": "adam",  # robust to the learning rate, the seeds' most common choice
    "learning_rate": 1e-3,  # Adam's default
    "batch_size": 128,  # far faster per epoch than Keras' 32 on CPU, still generalises well
    "lr_schedule": "constant",  # decay is opt-in
}
PER_LAYER_OK = ("units", "dropout", "activation")


def _check_value(name: str, value: Any) -> str | None:
    """Return why ``value`` is not valid for model parameter ``name``, or None."""
    if name == "normalization":
        return None if value in NORMALIZATIONS else f"must be one of {list(NORMALIZATIONS)}"
    if name == "optimizer":
        return None if value in OPTIMIZERS else f"must be one of {list(OPTIMIZERS)}"
    if name == "activation":
        return None if value in ACTIVATIONS else f"must be one of {list(ACTIVATIONS)}"
    if name == "lr_schedule":
        return None if value in LR_SCHEDULES else f"must be one of {list(LR_SCHEDULES)}"
    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_num = is_int or isinstance(value, float)
    if name == "n_layers":
        return None if is_int and 1 <= value <= 16 else "must be an integer from 1 to 16"
    if name in ("units", "batch_size"):
        return None if is_int and 1 <= value <= 1_000_000 else "must be a positive integer"
    if name == "dropout":
        return None if is_num and 0 <= value < 1 else "must be a number with 0 <= dropout < 1"
    if name == "l2":
        return None if is_num and 0 <= value < math.inf else "must be a number >= 0"
    if name == "learning_rate":
        return None if is_num and 0 < value < math.inf else "must be a number > 0"
    return "is not a known parameter"


@dataclass(frozen=True)
class IntParam:
    low: int
    high: int
    step: int = 1
    log: bool = False
    per_layer: bool = False


@dataclass(frozen=True)
class FloatParam:
    low: float
    high: float
    step: float | None = None
    log: bool = False
    per_layer: bool = False


@dataclass(frozen=True)
class CategoricalParam:
    choices: tuple
    per_layer: bool = False


@dataclass(frozen=True)
class FixedParam:
    value: Any  # a scalar, or a tuple with one value per layer
    per_layer: bool = False


Param = IntParam | FloatParam | CategoricalParam | FixedParam


@dataclass(frozen=True)
class SamplerSpec:
    name: str = "tpe"
    seed: int | None = 0  # a seeded sampler makes a study repeatable
    multivariate: bool = True  # models interactions (lr x optimizer, width x dropout)
    n_startup_trials: int = 10  # random trials before TPE has enough history to model


@dataclass(frozen=True)
class PrunerSpec:
    name: str = "median"
    n_startup_trials: int = 5  # a median needs a few finished curves to mean anything
    n_warmup_steps: int = 2  # first epochs are too noisy to judge a configuration
    min_resource: int = 2  # hyperband / successive halving: epochs before the first cut
    reduction_factor: int = 3  # keep the top third at each rung


@dataclass(frozen=True)
class TrainSpec:
    max_epochs: int = 30  # an upper bound; early stopping usually ends a trial well before
    patience: int = 5  # the seeds' EarlyStopping patience
    min_delta: float = 1e-3  # the seeds' min_delta on val_accuracy
    validation_size: int = 5000  # the seeds' validation split of Fashion-MNIST
    steps_per_execution: int = 32  # amortises Python/dispatch overhead, the main CPU cost
    jit_compile: bool | str = "auto"  # "auto": XLA where Keras supports it
    eval_batch_size: int = 2048  # evaluation has no gradients; big batches are cheapest


@dataclass(frozen=True)
class Space:
    path: str
    version: int
    metric: str
    direction: str
    sampler: SamplerSpec
    pruner: PrunerSpec
    train: TrainSpec
    params: dict[str, Param] = field(default_factory=dict)
    description: str = ""
    baselines: tuple[Baseline, ...] = ()

    def with_overrides(self, *, max_epochs: int | None = None, seed: int | None = None) -> Space:
        """Return a copy with CLI overrides applied (``--max-epochs``, ``--seed``)."""
        space = self
        if max_epochs is not None:
            space = replace(space, train=replace(space.train, max_epochs=max_epochs))
        if seed is not None:
            space = replace(space, sampler=replace(space.sampler, seed=seed))
        return space

    @property
    def search_hash(self) -> str:
        """Digest of what defines the search (params, metric); identifies a study's space."""
        payload = {
            "metric": self.metric,
            "params": {k: _jsonable(v) for k, v in self.params.items()},
            "baselines": [b.payload() for b in self.baselines],
        }
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def searches(self) -> bool:
        """Whether any parameter is sampled (a baselines-only file searches nothing)."""
        return any(not isinstance(p, FixedParam) for p in self.params.values())

    def fixed_values(self) -> dict[str, Any]:
        """The parameters this space does not search, as logged values."""
        return {k: v.value for k, v in self.params.items() if isinstance(v, FixedParam)}


def _jsonable(p: Param) -> dict:
    d = {"kind": type(p).__name__}
    d.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in p.__dict__.items()})
    return d


# ---------------------------------------------------------------- parsing

_TOP_KEYS = ("version", "description", "study", "train", "params", "baselines")
_BASELINE_KEYS = ("name", "description", "params", "train", "published_test_accuracy", "dataset")


@dataclass(frozen=True)
class Baseline:
    """A fixed configuration (e.g. a tutorial's network) run as one trial with its own settings."""

    name: str
    config: dict  # the complete model configuration, per-layer values as lists
    train: dict  # TrainSpec fields this configuration overrides (epochs, patience, ...)
    published_test_accuracy: float | None = None
    dataset: str | None = None  # run only on this dataset (None: any)
    description: str = ""

    def payload(self) -> dict:
        """What a trial slot carries so any worker can run this configuration."""
        return {
            "name": self.name,
            "config": self.config,
            "train": self.train,
            "published_test_accuracy": self.published_test_accuracy,
        }


def _parse_baseline(ctx: _Ctx, i: int, data: Any, train_kinds: dict) -> Baseline:
    where = f"baselines[{i}]"
    data = ctx.keys(where, data, _BASELINE_KEYS)
    name = _typed(ctx, f"{where}.name", data.get("name"), str, "a string")
    raw = ctx.keys(f"{where}.params", data.get("params") or {}, tuple(PARAM_DEFAULTS))
    fixed = {}
    for key, default in PARAM_DEFAULTS.items():
        p = _parse_param(ctx, key, raw.get(key, default)) if key in raw else FixedParam(default)
        if not isinstance(p, FixedParam):
            raise ctx.fail(
                f"{where}.params.{key}",
                "a baseline fixes every value; give a value, not a distribution",
            )
        fixed[key] = p
    n = fixed["n_layers"].value
    config: dict[str, Any] = {}
    for key, p in fixed.items():
        if key in PER_LAYER_OK:
            values = list(p.value) if p.per_layer else [p.value] * n
            if len(values) != n:
                raise ctx.fail(
                    f"{where}.params.{key}",
                    f"needs {n} per-layer values (n_layers), got {len(values)}",
                )
            config[key] = values
        else:
            config[key] = p.value
    train = ctx.keys(f"{where}.train", data.get("train") or {}, tuple(train_kinds))
    for key, value in train.items():
        _typed(ctx, f"{where}.train.{key}", value, train_kinds[key][0], train_kinds[key][1])
    published = data.get("published_test_accuracy")
    if published is not None:
        _typed(ctx, f"{where}.published_test_accuracy", published, (int, float), "a number")
    dataset = data.get("dataset")
    if dataset is not None:
        _typed(ctx, f"{where}.dataset", dataset, str, "a dataset name")
    return Baseline(name, config, dict(train), published, dataset, str(data.get("description", "")))


_STUDY_KEYS = ("direction", "metric", "sampler", "pruner")
_DIST_KEYS = {
    "int": ("type", "low", "high", "step", "log", "per_layer"),
    "float": ("type", "low", "high", "step", "log", "per_layer"),
    "categorical": ("type", "choices", "per_layer"),
}


class _Ctx:
    def __init__(self, path: str):
        self.path = path

    def fail(self, where: str, problem: str) -> SpaceError:
        return SpaceError(f"{self.path}: {where}: {problem}")

    def keys(self, where: str, data: Any, allowed: tuple[str, ...]) -> dict:
        if not isinstance(data, dict):
            raise self.fail(where, f"must be a mapping, got {type(data).__name__} {data!r}")
        for key in data:
            if key not in allowed:
                near = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.5)
                hint = f"; did you mean '{near[0]}'?" if near else f"; valid keys: {list(allowed)}"
                label = f"{where}.{key}" if where else str(key)
                raise self.fail(label, f"unknown key '{key}'{hint}")
        return data


def _typed(ctx: _Ctx, where: str, value: Any, kind: type | tuple, what: str) -> Any:
    ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in _as_tuple(kind))
    if not ok:
        raise ctx.fail(where, f"must be {what}, got {type(value).__name__} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ctx.fail(where, f"must be finite, got {value!r}")
    return value


def _as_tuple(kind: type | tuple) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def _struct(ctx: _Ctx, where: str, data: Any, cls: type, kinds: dict[str, tuple]) -> Any:
    data = ctx.keys(where, data if data is not None else {}, tuple(kinds))
    values = {}
    for key, (kind, what) in kinds.items():
        if key in data:
            values[key] = _typed(ctx, f"{where}.{key}", data[key], kind, what)
    return cls(**values)


def _parse_param(ctx: _Ctx, name: str, spec: Any) -> Param:
    where = f"params.{name}"
    if not isinstance(spec, dict):
        if isinstance(spec, list):
            if name not in PER_LAYER_OK:
                raise ctx.fail(
                    where, f"a list of per-layer values is allowed only for {list(PER_LAYER_OK)}"
                )
            if not spec:
                raise ctx.fail(where, "a per-layer list must not be empty")
            for i, v in enumerate(spec):
                if (why := _check_value(name, v)) is not None:
                    raise ctx.fail(f"{where}[{i}]", f"{why}, got {v!r}")
            return FixedParam(tuple(spec), per_layer=True)
        if (why := _check_value(name, spec)) is not None:
            raise ctx.fail(where, f"{why}, got {spec!r}")
        return FixedParam(spec)
    if "type" not in spec:
        raise ctx.fail(
            where, "a distribution needs 'type': int, float or categorical (or give a plain value)"
        )
    kind = spec["type"]
    if kind not in _DIST_KEYS:
        near = difflib.get_close_matches(str(kind), list(_DIST_KEYS), n=1, cutoff=0.5)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise ctx.fail(f"{where}.type", f"must be int, float or categorical, got {kind!r}{hint}")
    ctx.keys(where, spec, _DIST_KEYS[kind])
    per_layer = _typed(
        ctx, f"{where}.per_layer", spec.get("per_layer", False), bool, "true or false"
    )
    if per_layer and name not in PER_LAYER_OK:
        raise ctx.fail(f"{where}.per_layer", f"only {list(PER_LAYER_OK)} can vary per layer")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ctx.fail(f"{where}.choices", f"must be a non-empty list, got {choices!r}")
        for i, c in enumerate(choices):
            if (why := _check_value(name, c)) is not None:
                raise ctx.fail(f"{where}.choices[{i}]", f"{why}, got {c!r}")
        if len(set(map(repr, choices))) != len(choices):
            raise ctx.fail(f"{where}.choices", f"must not repeat a value, got {choices!r}")
        return CategoricalParam(tuple(choices), per_layer=per_layer)
    num = int if kind == "int" else (int, float)
    what = "an integer" if kind == "int" else "a number"
    for key in ("low", "high"):
        if key not in spec:
            raise ctx.fail(where, f"a {kind} distribution needs '{key}'")
    low = _typed(ctx, f"{where}.low", spec["low"], num, what)
    high = _typed(ctx, f"{where}.high", spec["high"], num, what)
    log = _typed(ctx, f"{where}.log", spec.get("log", False), bool, "true or false")
    step = spec.get("step")
    if step is not None:
        step = _typed(ctx, f"{where}.step", step, num, what)
    if low > high:
        raise ctx.fail(where, f"`low <= high` must hold, but got (low={low}, high={high})")
    if log and low <= 0:
        raise ctx.fail(where, f"`low > 0` must hold for a log distribution, but got low={low}")
    if log and step is not None and not (kind == "int" and step == 1):
        raise ctx.fail(where, f"`step` cannot be combined with `log: true`, but got step={step}")
    if step is not None and step <= 0:
        raise ctx.fail(f"{where}.step", f"must be > 0, got {step}")
    for label, v in (("low", low), ("high", high)):
        if (why := _check_value(name, v)) is not None:
            raise ctx.fail(f"{where}.{label}", f"{why}, got {v!r}")
    if kind == "int":
        return IntParam(low, high, step or 1, log, per_layer)
    return FloatParam(
        float(low), float(high), None if step is None else float(step), log, per_layer
    )


def parse_space(data: Any, path: str = "<space>") -> Space:
    """Validate a decoded YAML document and build a :class:`Space`.

    Args:
        data: The document, as ``yaml.safe_load`` returns it.
        path: The file name, used in error messages.

    Returns:
        The validated space.

    Raises:
        SpaceError: naming the file, the key and what is wrong.
    """
    ctx = _Ctx(path)
    data = ctx.keys("", data, _TOP_KEYS) if data is not None else ctx.keys("", {}, _TOP_KEYS)
    version = data.get("version", 1)
    if version != 1:
        raise ctx.fail("version", f"only version 1 is supported, got {version!r}")
    description = _typed(ctx, "description", data.get("description", ""), str, "a string")

    study = ctx.keys("study", data.get("study") or {}, _STUDY_KEYS)
    metric = study.get("metric", "val_accuracy")
    if metric not in METRICS:
        raise ctx.fail("study.metric", f"must be one of {list(METRICS)}, got {metric!r}")
    direction = study.get("direction", METRICS[metric])
    if direction != METRICS[metric]:
        raise ctx.fail("study.direction", f"{metric} must be {METRICS[metric]}d, got {direction!r}")
    sampler = _struct(
        ctx,
        "study.sampler",
        study.get("sampler"),
        SamplerSpec,
        {
            "name": (str, "a string"),
            "seed": ((int, type(None)), "an integer or null"),
            "multivariate": (bool, "true or false"),
            "n_startup_trials": (int, "an integer"),
        },
    )
    if sampler.name not in SAMPLERS:
        raise ctx.fail(
            "study.sampler.name", f"must be one of {list(SAMPLERS)}, got {sampler.name!r}"
        )
    pruner = _struct(
        ctx,
        "study.pruner",
        study.get("pruner"),
        PrunerSpec,
        {
            "name": (str, "a string"),
            "n_startup_trials": (int, "an integer"),
            "n_warmup_steps": (int, "an integer"),
            "min_resource": (int, "an integer"),
            "reduction_factor": (int, "an integer"),
        },
    )
    if pruner.name not in PRUNERS:
        raise ctx.fail("study.pruner.name", f"must be one of {list(PRUNERS)}, got {pruner.name!r}")
    if pruner.reduction_factor < 2 or pruner.min_resource < 1:
        raise ctx.fail("study.pruner", "needs reduction_factor >= 2 and min_resource >= 1")
    if sampler.n_startup_trials < 0 or pruner.n_startup_trials < 0 or pruner.n_warmup_steps < 0:
        raise ctx.fail("study", "n_startup_trials and n_warmup_steps must be >= 0")

    train_kinds = {
        "max_epochs": (int, "an integer"),
        "patience": (int, "an integer"),
        "min_delta": ((int, float), "a number"),
        "validation_size": (int, "an integer"),
        "steps_per_execution": (int, "an integer"),
        "jit_compile": ((bool, str), "true, false or auto"),
        "eval_batch_size": (int, "an integer"),
    }
    train = _struct(ctx, "train", data.get("train"), TrainSpec, train_kinds)
    for key in (
        "max_epochs",
        "patience",
        "validation_size",
        "steps_per_execution",
        "eval_batch_size",
    ):
        if getattr(train, key) < 1:
            raise ctx.fail(f"train.{key}", f"must be >= 1, got {getattr(train, key)}")
    if train.min_delta < 0:
        raise ctx.fail("train.min_delta", f"must be >= 0, got {train.min_delta}")
    if isinstance(train.jit_compile, str) and train.jit_compile != "auto":
        raise ctx.fail(
            "train.jit_compile", f"must be true, false or auto, got {train.jit_compile!r}"
        )

    raw_params = data.get("params") or {}
    ctx.keys("params", raw_params, tuple(PARAM_DEFAULTS))
    params: dict[str, Param] = {}
    for name, default in PARAM_DEFAULTS.items():
        params[name] = (
            _parse_param(ctx, name, raw_params[name]) if name in raw_params else FixedParam(default)
        )
    n_layers = params["n_layers"]
    for name in PER_LAYER_OK:
        p = params[name]
        per_layer_list = isinstance(p, FixedParam) and p.per_layer
        if per_layer_list and not (
            isinstance(n_layers, FixedParam) and n_layers.value == len(p.value)
        ):
            raise ctx.fail(
                f"params.{name}",
                f"a list of {len(p.value)} per-layer values needs "
                f"a fixed `n_layers: {len(p.value)}`",
            )
    raw_baselines = data.get("baselines") or []
    if not isinstance(raw_baselines, list):
        raise ctx.fail("baselines", f"must be a list of configurations, got {raw_baselines!r}")
    baselines = tuple(_parse_baseline(ctx, i, b, train_kinds) for i, b in enumerate(raw_baselines))
    names = [b.name for b in baselines]
    if len(set(names)) != len(names):
        raise ctx.fail("baselines", f"names must be unique, got {names}")
    return Space(
        path, version, metric, direction, sampler, pruner, train, params, description, baselines
    )


def load_space(path: str | Path) -> Space:
    """Read and validate a YAML search-space file (safe loading only).

    Raises:
        SpaceError: unreadable file, malformed YAML or an invalid space, in one line.
    """
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise SpaceError(
            f"{path}: cannot read the search-space file ({reason}); "
            "pass an existing YAML file with --space"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise SpaceError(f"{path}: {where}: {problem} (the file is not valid YAML)") from None
    return parse_space(data, path)


# ---------------------------------------------------------------- sampling


def distribution(p: Param) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution of a sampled parameter."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if isinstance(p, IntParam):
        return IntDistribution(p.low, p.high, log=p.log, step=p.step)
    if isinstance(p, FloatParam):
        return FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    if isinstance(p, CategoricalParam):
        return CategoricalDistribution(p.choices)
    raise TypeError(f"fixed parameter has no distribution: {p!r}")


def suggest(trial: optuna.trial.BaseTrial, space: Space) -> dict[str, Any]:
    """Sample one configuration; per-layer parameters become lists of ``n_layers`` values.

    Args:
        trial: The Optuna trial to sample from.
        space: The validated search space.

    Returns:
        The model configuration: every parameter in ``PARAM_DEFAULTS``, fixed ones included.
    """

    def draw(name: str, p: Param) -> Any:
        if isinstance(p, FixedParam):
            return p.value
        if isinstance(p, IntParam):
            return trial.suggest_int(name, p.low, p.high, step=p.step, log=p.log)
        if isinstance(p, FloatParam):
            return trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)
        return trial.suggest_categorical(name, list(p.choices))

    config: dict[str, Any] = {"n_layers": draw("n_layers", space.params["n_layers"])}
    n = config["n_layers"]
    for name, p in space.params.items():
        if name == "n_layers":
            continue
        if name in PER_LAYER_OK:
            if isinstance(p, FixedParam):
                config[name] = list(p.value) if p.per_layer else [p.value] * n
            elif p.per_layer:
                config[name] = [draw(f"{name}_{i}", p) for i in range(n)]
            else:
                config[name] = [draw(name, p)] * n
        else:
            config[name] = draw(name, p)
    return config


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """A configuration with per-layer lists spread into ``name_i`` keys, for logging."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, (list, tuple)):
            flat.update({f"{key}_{i}": v for i, v in enumerate(value)})
        else:
            flat[key] = value
    return flat
