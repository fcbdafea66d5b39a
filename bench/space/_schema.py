"""Reading and validating search-space YAML into :class:`bench.space.Space` (PyYAML only).

Every problem is a :class:`~bench.errors.SpaceError` whose one-line message names the file, the
key and what is wrong; unknown keys come with the nearest valid key.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import reprlib
import stat
from pathlib import Path
from typing import Any

import yaml

from bench.errors import SpaceError, name_problem
from bench.space._types import (
    ACTIVATIONS,
    LR_SCHEDULES,
    METRICS,
    NORMALIZATIONS,
    OPTIMIZERS,
    PARAM_DEFAULTS,
    PER_LAYER_OK,
    PRUNERS,
    SAMPLERS,
    Baseline,
    CategoricalParam,
    FixedParam,
    FloatParam,
    IntParam,
    Param,
    PrunerSpec,
    SamplerSpec,
    Space,
    TrainSpec,
)

MAX_FILE_BYTES = 1 << 20  # a search space is a page of YAML; 1 MiB leaves room for comments
MAX_NODES = 10_000  # YAML nodes after alias expansion: an "alias bomb" expands to billions
MAX_DEPTH = 32  # nesting of lists and mappings: a space needs 5; PyYAML recurses per level
MAX_INT_DIGITS = 100  # an integer literal's length: Python refuses to convert past 4,300 digits
# a baseline's name is part of its job keys ("reeval-b12.baseline-NAME+-s1000000"), which the job
# store keeps in a 255-character column: a longer key fails the insert and leaves a batch half-open
MAX_BASELINE_NAME = 100
SHOWN_CHARS = 80  # a value quoted in an error message is cut to this length

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxtuple = 2, 6, 4, 6
_REPR.maxstring = _REPR.maxother = SHOWN_CHARS


def _show(value: Any) -> str:
    """``repr(value)`` for an error message, bounded in time and length however big ``value`` is."""
    text = _REPR.repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


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


_TOP_KEYS = ("version", "description", "study", "train", "params", "baselines")
_BASELINE_KEYS = ("name", "description", "params", "train", "published_test_accuracy", "dataset")


def _parse_baseline(ctx: _Ctx, i: int, data: Any, train_kinds: dict) -> Baseline:
    where = f"baselines[{i}]"
    data = ctx.keys(where, data, _BASELINE_KEYS)
    name = _typed(ctx, f"{where}.name", data.get("name"), str, "a string")
    if (problem := name_problem(name, MAX_BASELINE_NAME)) is not None:
        raise ctx.fail(f"{where}.name", f"{problem}, got {_show(name)}")
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
    _check_train(ctx, f"{where}.train", train)
    published = data.get("published_test_accuracy")
    if published is not None:
        _typed(ctx, f"{where}.published_test_accuracy", published, (int, float), "a number")
    dataset = data.get("dataset")
    if dataset is not None:
        _typed(ctx, f"{where}.dataset", dataset, str, "a dataset name")
    return Baseline(name, config, dict(train), published, dataset, str(data.get("description", "")))


_STUDY_KEYS = ("direction", "metric", "sampler", "pruner", "enqueue")
_DIST_KEYS = {
    "int": ("type", "low", "high", "step", "log", "per_layer"),
    "float": ("type", "low", "high", "step", "log", "per_layer"),
    "categorical": ("type", "choices", "per_layer"),
}


_AT_LEAST_ONE = (
    "max_epochs",
    "patience",
    "smooth_epochs",
    "validation_size",
    "steps_per_execution",
    "eval_batch_size",
    "cv_folds",
)


def _check_train(ctx: _Ctx, where: str, train: dict[str, Any]) -> None:
    """The range rules of a ``train:`` section, for the space's own and a baseline's overrides."""
    for key in _AT_LEAST_ONE:
        if key in train and train[key] < 1:
            raise ctx.fail(f"{where}.{key}", f"must be >= 1, got {_show(train[key])}")
    if train.get("cv_folds", 1) > 20:
        shown = _show(train["cv_folds"])
        raise ctx.fail(f"{where}.cv_folds", f"must be 1 (off) to 20, got {shown}")
    if train.get("min_epochs", 0) < 0:
        raise ctx.fail(f"{where}.min_epochs", f"must be >= 0, got {_show(train['min_epochs'])}")
    if train.get("min_delta", 0) < 0:
        raise ctx.fail(f"{where}.min_delta", f"must be >= 0, got {_show(train['min_delta'])}")
    jit = train.get("jit_compile")
    if isinstance(jit, str) and jit != "auto":
        raise ctx.fail(f"{where}.jit_compile", f"must be true, false or auto, got {_show(jit)}")


class _Ctx:
    def __init__(self, path: str):
        self.path = path

    def fail(self, where: str, problem: str) -> SpaceError:
        return SpaceError(f"{self.path}: {where}: {problem}")

    def keys(self, where: str, data: Any, allowed: tuple[str, ...]) -> dict:
        if not isinstance(data, dict):
            raise self.fail(where, f"must be a mapping, got {type(data).__name__} {_show(data)}")
        for key in data:
            if key not in allowed:
                shown = _show(str(key))[1:-1]  # a key can be as long as a value
                near = difflib.get_close_matches(str(key)[:100], allowed, n=1, cutoff=0.5)
                hint = f"; did you mean '{near[0]}'?" if near else f"; valid keys: {list(allowed)}"
                label = f"{where}.{shown}" if where else shown
                raise self.fail(label, f"unknown key '{shown}'{hint}")
        return data


def _typed(ctx: _Ctx, where: str, value: Any, kind: type | tuple, what: str) -> Any:
    ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in _as_tuple(kind))
    if not ok:
        raise ctx.fail(where, f"must be {what}, got {type(value).__name__} {_show(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ctx.fail(where, f"must be finite, got {_show(value)}")
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
                    raise ctx.fail(f"{where}[{i}]", f"{why}, got {_show(v)}")
            return FixedParam(tuple(spec), per_layer=True)
        if (why := _check_value(name, spec)) is not None:
            raise ctx.fail(where, f"{why}, got {_show(spec)}")
        return FixedParam(spec)
    if "type" not in spec:
        raise ctx.fail(
            where, "a distribution needs 'type': int, float or categorical (or give a plain value)"
        )
    kind = spec["type"]
    if not isinstance(kind, str) or kind not in _DIST_KEYS:  # a list is unhashable: no `in`
        near = difflib.get_close_matches(str(kind), list(_DIST_KEYS), n=1, cutoff=0.5)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise ctx.fail(
            f"{where}.type", f"must be int, float or categorical, got {_show(kind)}{hint}"
        )
    ctx.keys(where, spec, _DIST_KEYS[kind])
    per_layer = _typed(
        ctx, f"{where}.per_layer", spec.get("per_layer", False), bool, "true or false"
    )
    if per_layer and name not in PER_LAYER_OK:
        raise ctx.fail(f"{where}.per_layer", f"only {list(PER_LAYER_OK)} can vary per layer")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ctx.fail(f"{where}.choices", f"must be a non-empty list, got {_show(choices)}")
        for i, c in enumerate(choices):
            if (why := _check_value(name, c)) is not None:
                raise ctx.fail(f"{where}.choices[{i}]", f"{why}, got {_show(c)}")
        if len(set(map(repr, choices))) != len(choices):
            raise ctx.fail(f"{where}.choices", f"must not repeat a value, got {_show(choices)}")
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
        raise ctx.fail(
            where, f"`low <= high` must hold, but got (low={_show(low)}, high={_show(high)})"
        )
    if log and low <= 0:
        raise ctx.fail(
            where, f"`low > 0` must hold for a log distribution, but got low={_show(low)}"
        )
    if log and step is not None and not (kind == "int" and step == 1):
        raise ctx.fail(
            where, f"`step` cannot be combined with `log: true`, but got step={_show(step)}"
        )
    if step is not None and step <= 0:
        raise ctx.fail(f"{where}.step", f"must be > 0, got {_show(step)}")
    for label, v in (("low", low), ("high", high)):
        if (why := _check_value(name, v)) is not None:
            raise ctx.fail(f"{where}.{label}", f"{why}, got {_show(v)}")
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
        raise ctx.fail("version", f"only version 1 is supported, got {_show(version)}")
    description = _typed(ctx, "description", data.get("description", ""), str, "a string")

    study = ctx.keys("study", data.get("study") or {}, _STUDY_KEYS)
    metric = study.get("metric", "val_accuracy")
    if not isinstance(metric, str) or metric not in METRICS:  # a list is unhashable: no `in`
        raise ctx.fail("study.metric", f"must be one of {list(METRICS)}, got {_show(metric)}")
    direction = study.get("direction", METRICS[metric])
    if direction != METRICS[metric]:
        raise ctx.fail(
            "study.direction", f"{metric} must be {METRICS[metric]}d, got {_show(direction)}"
        )
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
            "gamma": ((int, float, type(None)), "a number or null"),
        },
    )
    if sampler.gamma is not None and not 0 < sampler.gamma < 1:
        raise ctx.fail(
            "study.sampler.gamma", f"must be between 0 and 1, got {_show(sampler.gamma)}"
        )
    if sampler.name not in SAMPLERS:
        raise ctx.fail(
            "study.sampler.name", f"must be one of {list(SAMPLERS)}, got {_show(sampler.name)}"
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
        raise ctx.fail(
            "study.pruner.name", f"must be one of {list(PRUNERS)}, got {_show(pruner.name)}"
        )
    if pruner.reduction_factor < 2 or pruner.min_resource < 1:
        raise ctx.fail("study.pruner", "needs reduction_factor >= 2 and min_resource >= 1")
    if sampler.n_startup_trials < 0 or pruner.n_startup_trials < 0 or pruner.n_warmup_steps < 0:
        raise ctx.fail("study", "n_startup_trials and n_warmup_steps must be >= 0")

    train_kinds = {
        "max_epochs": (int, "an integer"),
        "patience": (int, "an integer"),
        "min_delta": ((int, float), "a number"),
        "early_stop_decaying": (bool, "true or false"),
        "smooth_epochs": (int, "an integer"),
        "min_epochs": (int, "an integer"),
        "validation_size": (int, "an integer"),
        "steps_per_execution": (int, "an integer"),
        "jit_compile": ((bool, str), "true, false or auto"),
        "eval_batch_size": (int, "an integer"),
        "cv_folds": (int, "an integer"),
    }
    train = _struct(ctx, "train", data.get("train"), TrainSpec, train_kinds)
    _check_train(ctx, "train", train.__dict__)

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
        raise ctx.fail("baselines", f"must be a list of configurations, got {_show(raw_baselines)}")
    baselines = tuple(_parse_baseline(ctx, i, b, train_kinds) for i, b in enumerate(raw_baselines))
    names = [b.name for b in baselines]
    if len(set(names)) != len(names):
        raise ctx.fail("baselines", f"names must be unique, got {_show(names)}")
    raw_starts = study.get("enqueue", [])
    if raw_starts is None:
        raw_starts = []
    if not isinstance(raw_starts, list):
        shown = _show(raw_starts)
        raise ctx.fail("study.enqueue", f"must be a list of configurations, got {shown}")
    enqueue = tuple(_parse_start(ctx, i, e, params) for i, e in enumerate(raw_starts))
    return Space(
        path,
        version,
        metric,
        direction,
        sampler,
        pruner,
        train,
        params,
        description,
        baselines,
        enqueue,
    )


def _parse_start(ctx: _Ctx, i: int, entry: Any, params: dict[str, Param]) -> dict[str, Any]:
    """One ``study.enqueue`` entry as Optuna parameter names and values (``units_0``, ...).

    Only sampled parameters may be given, each inside its range or among its choices; a
    per-layer parameter takes one value per layer. Parameters left out are sampled as usual.
    """
    where = f"study.enqueue[{i}]"
    if not isinstance(entry, dict) or not entry:
        raise ctx.fail(where, f"must be a mapping of parameter: value, got {_show(entry)}")
    n_param = params["n_layers"]
    n_layers = entry.get("n_layers", n_param.value if isinstance(n_param, FixedParam) else None)
    out: dict[str, Any] = {}
    for name, value in entry.items():
        if name not in params:
            raise ctx.fail(f"{where}.{name}", f"not a parameter; one of {list(params)}")
        p = params[name]
        if isinstance(p, FixedParam):
            raise ctx.fail(f"{where}.{name}", "is fixed in this space; leave it out")
        if p.per_layer:
            if n_layers is None:
                raise ctx.fail(f"{where}.{name}", "per-layer values need n_layers in the entry")
            if not isinstance(value, list) or len(value) != n_layers:
                raise ctx.fail(
                    f"{where}.{name}", f"needs a list of {n_layers} values, got {_show(value)}"
                )
            named = [(f"{name}_{j}", v) for j, v in enumerate(value)]
        else:
            named = [(name, value)]
        for key, v in named:
            out[key] = _start_value(ctx, f"{where}.{name}", p, v)
    return out


def _start_value(ctx: _Ctx, where: str, p: Param, v: Any) -> Any:
    if isinstance(p, CategoricalParam):
        # the same type too: 256.0 or true is not the choice 256 or 1 (Optuna would keep it as is)
        if not any(type(v) is type(c) and v == c for c in p.choices):
            raise ctx.fail(where, f"must be one of {list(p.choices)}, got {_show(v)}")
        return v
    is_int = isinstance(v, int) and not isinstance(v, bool)
    if isinstance(p, IntParam) and not is_int:
        raise ctx.fail(where, f"must be an integer, got {_show(v)}")
    if not (is_int or isinstance(v, float)) or not p.low <= v <= p.high:
        raise ctx.fail(where, f"must be a number from {p.low} to {p.high}, got {_show(v)}")
    if p.step and not math.isclose((v - p.low) / p.step, round((v - p.low) / p.step)):
        raise ctx.fail(where, f"must be {p.low} plus a multiple of step {p.step}, got {_show(v)}")
    return int(v) if isinstance(p, IntParam) else float(v)


def load_space(path: str | Path) -> Space:
    """Read and validate a YAML search-space file (safe loading only).

    Raises:
        SpaceError: unreadable file, malformed YAML or an invalid space, in one line.
    """
    path = str(path)
    return space_from_file_text(_read_bounded(path), path)


def space_from_file_text(text: str, path: str) -> Space:
    """Validate the text just read from the file ``path`` (messages name its line and column).

    Raises:
        SpaceError: malformed YAML or an invalid space, in one line.
    """
    try:
        data = _safe_load_bounded(text, path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise SpaceError(f"{path}: {where}: {problem} (the file is not valid YAML)") from None
    return parse_space(data, path)


_KINDS = {
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
}


def _read_bounded(path: str, flag: str = "--space", kind: str = "search-space file") -> str:
    """The file's text, read without waiting on a FIFO and never past :data:`MAX_FILE_BYTES`.

    ``flag`` and ``kind`` name the file in messages (the flag that gave it, what it holds).

    ``st_size`` is 0 for devices and FIFOs, so the size is bounded by the read itself; opening
    non-blocking returns at once where a FIFO has no writer, and anything but a regular file is
    refused (a worker could not read a pipe a second time anyway).
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                what = _KINDS.get(stat.S_IFMT(mode), "not a file")
                raise SpaceError(
                    f"{path}: not a regular file ({what}); pass a YAML file with {flag}"
                )
            chunks, size = [], 0
            while size <= MAX_FILE_BYTES and (chunk := os.read(fd, MAX_FILE_BYTES + 1 - size)):
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
        if size > MAX_FILE_BYTES:
            raise SpaceError(
                f"{path}: the {kind} is over {MAX_FILE_BYTES:,} bytes; a {kind} "
                f"holds at most {MAX_FILE_BYTES:,} (is it the right file?)"
            )
        return b"".join(chunks).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise SpaceError(
            f"{path}: cannot read the {kind} ({reason}); pass an existing YAML file with {flag}"
        ) from None


def _check_depth(text: str, path: str) -> None:
    """Refuse nesting past :data:`MAX_DEPTH` before PyYAML's recursive composer meets it.

    The event stream comes from PyYAML's parser, a state machine with an explicit stack, so a
    file of 600 brackets is walked here without recursion.
    """
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                raise SpaceError(
                    f"{path}: line {mark.line + 1}, column {mark.column + 1}: nested deeper "
                    f"than {MAX_DEPTH} lists or mappings; a search space needs a handful"
                )
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


_DIGITS = re.compile(r"[0-9a-fA-F]")


def _check_scalar(node: yaml.ScalarNode, path: str) -> None:
    """Refuse an integer too long to be a setting (Python will not even convert 4,301 digits)."""
    if node.tag == "tag:yaml.org,2002:int" and len(node.value) > MAX_INT_DIGITS:
        mark = node.start_mark
        digits = len(_DIGITS.findall(node.value))
        raise SpaceError(
            f"{path}: line {mark.line + 1}, column {mark.column + 1}: an integer of "
            f"{digits:,} digits; no setting needs more than {MAX_INT_DIGITS}"
        )


def _expanded_nodes(node: yaml.Node, memo: dict[int, int], limit: int, path: str) -> int:
    """How many nodes ``node`` stands for once every alias is expanded (stops past ``limit``);
    checks each scalar on the way (:func:`_check_scalar`)."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = limit + 1  # a node met again while being counted: a cycle, count it as too many
    total = 1
    if isinstance(node, yaml.ScalarNode):
        _check_scalar(node, path)
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    else:
        children = []
    for child in children:
        total += _expanded_nodes(child, memo, limit, path)
        if total > limit:
            break
    memo[key] = total
    return total


def _safe_load_bounded(text: str, path: str) -> Any:
    """``yaml.safe_load``, refusing documents whose aliases expand past :data:`MAX_NODES`.

    PyYAML shares an aliased node instead of copying it, so a 300-byte "billion laughs" file
    loads fast, but anything that walks or prints the result (validation, an error message)
    would expand it; the expanded size is counted on the node graph before construction.
    """
    _check_depth(text, path)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        n = _expanded_nodes(node, {}, MAX_NODES, path)
        if n > MAX_NODES:
            raise SpaceError(
                f"{path}: the YAML expands to more than {MAX_NODES:,} nodes through its "
                "aliases (&anchor/*alias); write the values out instead"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()
