"""The layering of ``bench/``, checked: every module imports on its own, no module reaches up, and
each heavy library is imported by exactly one layer.

Layers, low to high (a module may import its own layer and any lower one)::

    0  errors, records, faults, logs, resources      plain Python
    1  space, data, images                            what to train on, what to search, what to read
    2  training (Keras), optuna_adapter (Optuna), tracking (MLflow)
    3  engine, designs, results
    4  CLIs: cli, search, ablate, reevaluate, report, predict, register, ui

Imports inside ``if TYPE_CHECKING:`` never run and are not counted. ``bench.tracking`` logs and
loads Keras models through ``mlflow.keras``; it never imports Keras itself, so no exception to the
Keras rule is needed.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env

BENCH = REPO / "bench"
LAYERS = {
    "errors": 0, "records": 0, "faults": 0, "logs": 0, "resources": 0, "lazy": 0,
    "space": 1, "data": 1, "images": 1,
    "training": 2, "optuna_adapter": 2, "tracking": 2,
    "engine": 3, "designs": 3, "results": 3,
    "cli": 4, "search": 4, "ablate": 4, "reevaluate": 4, "report": 4, "predict": 4, "register": 4,
    "ui": 4,
}  # fmt: skip
# Each heavy library and the one package allowed to import it.
OWNERS = {
    "tensorflow": "training",
    "keras": "training",
    "optuna": "optuna_adapter",
    "mlflow": "tracking",
    "ray": "engine.ray_slots",  # an optional extra: one module, imported only for --executor ray
}


def _modules() -> list[str]:
    out = []
    for path in sorted(BENCH.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append(".".join(parts))
    return out


MODULES = _modules()


def _component(module: str) -> str | None:
    """``bench.engine.worker`` -> ``engine``; ``bench`` itself -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """``(line, imported module)`` for every import that can run, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif (  # bench.lazy's deferred import: lazy("optuna") imports optuna on first use
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "lazy"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            if name in ("bench",) or name.startswith("bench."):
                # ``from bench import data`` imports the submodule bench.data
                found.extend((node.lineno, f"{name}.{a.name}") for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def test_every_module_has_a_layer():
    unknown = sorted({c for m in MODULES if (c := _component(m)) and c not in LAYERS})
    assert not unknown, f"bench modules without a layer in this test: {unknown}"


def test_no_module_imports_a_higher_layer():
    bad = []
    for module in MODULES:
        here = _component(module)
        if here is None or here not in LAYERS:
            continue
        path = BENCH.joinpath(*module.split(".")[1:])
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        for line, name in _imports(path, module):
            if not name.startswith("bench."):
                continue
            there = _component(name)
            if there in LAYERS and LAYERS[there] > LAYERS[here]:
                bad.append(f"{path.relative_to(REPO)}:{line} ({here}, layer {LAYERS[here]}) "
                           f"imports {name} ({there}, layer {LAYERS[there]})")  # fmt: skip
    assert not bad, "imports that reach up a layer:\n" + "\n".join(bad)


# The commands: one floor of the house. They share ``bench.cli`` (flags, the error wrapper) and
# call down into the engine and results; none imports another, so none changes under another.
COMMANDS = {"search", "ablate", "reevaluate", "report", "predict", "register", "ui"}


def test_no_command_imports_another_command():
    bad = []
    for module in MODULES:
        here = _component(module)
        if here not in COMMANDS:
            continue
        path = BENCH / f"{here}.py"
        for line, name in _imports(path, module):
            there = _component(name) if name.startswith("bench.") else None
            if there in COMMANDS and there != here:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert not bad, "commands that import another command:\n" + "\n".join(bad)


def test_heavy_libraries_are_imported_by_their_one_layer_only():
    bad = []
    for module in MODULES:
        path = BENCH.joinpath(*module.split(".")[1:])
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        for line, name in _imports(path, module):
            top = name.split(".")[0]
            owner = OWNERS.get(top)
            if owner and module != f"bench.{owner}" and not module.startswith(f"bench.{owner}."):
                bad.append(f"{path.relative_to(REPO)}:{line} imports {name} "
                           f"(only bench.{OWNERS[top]} may)")  # fmt: skip
    assert not bad, "heavy imports outside their layer:\n" + "\n".join(bad)


def _import_alone(module: str) -> tuple[str, int, str]:
    proc = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return module, proc.returncode, proc.stderr.strip().splitlines()[-1:]


@pytest.mark.slow
def test_every_module_imports_on_its_own_in_a_fresh_interpreter():
    with ThreadPoolExecutor(max_workers=2) as pool:  # a fresh process per module
        results = list(pool.map(_import_alone, MODULES))
    bad = [f"{m}: {err}" for m, code, err in results if code != 0]
    assert not bad, "modules that fail to import on their own:\n" + "\n".join(bad)


def _loaded_after(code: str) -> set[str]:
    probe = (
        "import sys, runpy\n"
        f"{code}\n"
        "print('loaded:', *(m for m in ('tensorflow', 'keras', 'mlflow', 'optuna') "
        "if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=cli_env(), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("loaded:"), proc.stdout[-2000:]
    return set(last.split()[1:])


def _help(module: str) -> str:
    return (
        f"sys.argv = ['{module}', '--help']\n"
        "try:\n"
        f"    runpy.run_module('{module}', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass"
    )


_ANALYSIS = (
    "import tempfile\n"
    "from bench.results.what_matters import analyse, forest_plot, markdown\n"
    "rows = [{'factor': f, 'level': lv, 'seed': s, 'is_base': f == 'base',\n"
    "         'val_accuracy': 0.9 + d + s / 1000, 'test_accuracy': 0.9 + d}\n"
    "        for f, lv, d in (('base', 'base', 0.0), ('optimizer', 'sgd', -0.02))\n"
    "        for s in range(3)]\n"
    "results = analyse(rows)\n"
    "forest_plot(results, tempfile.mkdtemp() + '/forest.png')\n"
    "markdown(results)"
)

_INTERACTIONS = (
    "import tempfile\n"
    "from bench.results.interactions import analyse, interaction_plot, markdown\n"
    "rows = [{'levels': {'n': n, 'o': o}, 'seed': s, 'val_accuracy': 0.9 - (n == o) / 9 + s / 97}\n"
    "        for n in 'ab' for o in 'ab' for s in range(3)]\n"
    "r = analyse(rows, ['n', 'o'], {'n': ['a', 'b'], 'o': ['a', 'b']}, {'n': 'a', 'o': 'a'})\n"
    "interaction_plot(r, tempfile.mkdtemp() + '/i.png')\n"
    "markdown(r)"
)

# The fast paths (the style guide's rule): what each must never load. One place for the check.
FAST_PATHS = {
    "search --help": (_help("bench.search"), {"tensorflow", "keras", "mlflow"}),
    "report --help": (_help("bench.report"), {"tensorflow", "keras"}),
    "predict --help": (_help("bench.predict"), {"tensorflow", "keras", "mlflow"}),
    "ui --help": (_help("bench.ui"), {"tensorflow", "keras", "mlflow", "optuna"}),
    "loading every built-in space": (
        "from bench.space import builtin_names, load_space\n"
        "assert [load_space(n) for n in builtin_names()]\n"
        "import bench.data, bench.cli, bench.errors, bench.resources",
        {"tensorflow", "keras"},
    ),
    "what-matters analysis and forest plot": (_ANALYSIS, {"tensorflow", "keras"}),
    "interaction analysis and plot": (_INTERACTIONS, {"tensorflow", "keras", "mlflow"}),
}


@pytest.mark.component
@pytest.mark.parametrize("path", sorted(FAST_PATHS))
def test_fast_paths_never_load_a_heavy_library(path):
    code, never = FAST_PATHS[path]
    loaded = _loaded_after(code)
    assert not never & loaded, f"{path} loaded {sorted(never & loaded)}"
