"""Search spaces: typed objects, YAML validation, and the spaces that ship with bench.

``--space`` takes a path or the name of a built-in space (``mlp``, ``smoke``, ``baselines``): the
YAML files are edited in the top-level ``search_spaces/`` and shipped inside the wheel as
``bench/space/builtin/``, so a non-editable install finds them by name too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.errors import SpaceError
from bench.space._schema import (
    MAX_FILE_BYTES,
    _read_bounded,
    _safe_load_bounded,
    parse_space,
    space_from_file_text,
)
from bench.space._schema import load_space as _load_file
from bench.space._types import (
    ACTIVATIONS,
    LR_SCHEDULES,
    METRICS,
    NORMALIZATIONS,
    OPTIMIZERS,
    PARAM_DEFAULTS,
    PER_LAYER_OK,
    SCORING_TRAIN_FIELDS,
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
    start_configs,
    suggest,
)


def _builtin_dir() -> Path:
    """Where the built-in spaces are: ``bench/space/builtin/`` inside an installed wheel (the
    packaging maps the top-level ``search_spaces/`` there), else ``search_spaces/`` itself in a
    source checkout, editable install or not."""
    here = Path(__file__).resolve().parent
    packaged = here / "builtin"
    return packaged if packaged.is_dir() else here.parents[1] / "search_spaces"


BUILTIN_DIR = _builtin_dir()
DEFAULT_SPACE = "mlp"


def builtin_names() -> list[str]:
    """Names of the spaces shipped with bench (file stems in :data:`BUILTIN_DIR`)."""
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


def load_space_text(name_or_path: str | Path) -> tuple[Space, str]:
    """Read and validate a space file once, and return its text with it.

    A batch stores the text, so every worker, on any machine, trains exactly the space that was
    validated when the batch was opened, wherever (or whether) the file still is.

    Raises:
        SpaceError: as :func:`load_space`.
    """
    path = str(resolve_space(name_or_path))
    text = _read_bounded(path)  # one bounded read: missing, too big, not a file, not UTF-8
    return space_from_file_text(text, path), text


def read_yaml_file(path: str, flag: str, kind: str) -> Any:
    """Any YAML input file of a command, read and parsed with the bounds a space file gets.

    One bounded, non-blocking read (a device, a FIFO or a folder is refused without waiting),
    and a parse that refuses deep nesting, alias bombs and integers too long to convert. ``flag``
    and ``kind`` name the file in messages (``--base-config``, ``base configuration file``).

    Raises:
        SpaceError: unreadable, too big, not a regular file, not UTF-8 or not valid YAML, in
            one line.
    """
    import yaml

    text = _read_bounded(path, flag, kind)
    try:
        return _safe_load_bounded(text, path)
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0]
        raise SpaceError(f"{flag} {path}: not valid YAML ({first})") from None


def space_from_text(text: str, path: str) -> Space:
    """Validate a space's YAML text (one stored with a batch); ``path`` names it in messages.

    Raises:
        SpaceError: malformed YAML or an invalid space, in one line.
    """
    import yaml

    if len(text.encode("utf-8")) > MAX_FILE_BYTES:
        raise SpaceError(f"{path}: the search space is over {MAX_FILE_BYTES:,} bytes")
    try:
        data = _safe_load_bounded(text, path)
    except yaml.YAMLError:
        raise SpaceError(f"{path}: the stored search space is not valid YAML") from None
    return parse_space(data, path)


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
    "SCORING_TRAIN_FIELDS",
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
    "load_space_text",
    "parse_space",
    "resolve_space",
    "read_yaml_file",
    "space_from_text",
    "start_configs",
    "suggest",
]
