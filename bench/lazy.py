"""One way to defer a heavy import: a module stand-in that imports on first use.

Each adapter package names its one library this way (``optuna = lazy("optuna")``), so importing
the package costs nothing, a function uses ``optuna.trial.TrialState`` as if imported, and the
library loads the first time such a function runs. Like Optuna's own ``_LazyImport``.
"""

from __future__ import annotations

import importlib
import types
from typing import Any


class _LazyModule(types.ModuleType):
    def __init__(self, name: str):
        super().__init__(name)
        self._module: types.ModuleType | None = None

    def _load(self) -> types.ModuleType:
        if self._module is None:
            self._module = importlib.import_module(self.__name__)
        return self._module

    def __getattr__(self, attr: str) -> Any:
        module = self._load()
        try:
            return getattr(module, attr)
        except AttributeError:  # a subpackage its __init__ does not import
            return importlib.import_module(f"{self.__name__}.{attr}")

    def __dir__(self) -> list[str]:
        return dir(self._load())


def lazy(name: str) -> Any:
    """A stand-in for module ``name`` that imports it on the first attribute access."""
    return _LazyModule(name)
