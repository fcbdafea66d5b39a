"""Search spaces: typed objects, YAML validation, and the spaces that ship with bench.

``--space`` takes a path or the name of a built-in space (``mlp``, ``smoke``, ``baselines``): the
YAML files live in ``bench/space/builtin/`` so a non-editable install finds them.
"""

from __future__ import annotations

from pathlib import Path

from bench.space._schema import load_space as _load_file
from bench.space._schema import parse_space
from bench.space._types import (
    ACTIVATIONS,
    LR_SCHEDULES,
    METRICS,
    NORMALIZATIONS,
    OPTIMIZERS,
    PARAM_DEFAULTS,
    PER_LAYER_OK,
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
    flat_config,
    suggest,
)

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
DEFAULT_SPACE = "mlp"


def builtin_names() -> list[str]:
    """Names of the spaces shipped with bench (file stems in ``builtin/``)."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def resolve_space(name_or_path: str | Path) -> str:
    """A built-in space's file path for a bare name (``smoke``), else the path as given."""
    text = str(name_or_path)
    if "/" not in text and not text.endswith((".yaml", ".yml")) and text in builtin_names():
        return str(BUILTIN_DIR / f"{text}.yaml")
    return text


def load_space(name_or_path: str | Path) -> Space:
    """Read and validate a space file, by path or built-in name.

    Raises:
        SpaceError: unreadable file, malformed YAML or an invalid space, in one line.
    """
    return _load_file(resolve_space(name_or_path))


__all__ = [
    "ACTIVATIONS",
    "BUILTIN_DIR",
    "DEFAULT_SPACE",
    "LR_SCHEDULES",
    "METRICS",
    "NORMALIZATIONS",
    "OPTIMIZERS",
    "PARAM_DEFAULTS",
    "PER_LAYER_OK",
    "Baseline",
    "CategoricalParam",
    "FixedParam",
    "FloatParam",
    "IntParam",
    "Param",
    "PrunerSpec",
    "SamplerSpec",
    "Space",
    "TrainSpec",
    "builtin_names",
    "flat_config",
    "load_space",
    "parse_space",
    "resolve_space",
    "suggest",
]
