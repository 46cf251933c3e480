"""Heavy optional-at-import libraries (pandas, matplotlib) loaded on first use, so that
``import moelens`` stays cheap: ``from moelens.lazy import pandas as pd`` gives an object whose
first attribute access imports pandas; nothing enters ``sys.modules`` before that.

>>> import sys
>>> from moelens.lazy import LazyModule
>>> json_ = LazyModule("json")
>>> json_.dumps([1])
'[1]'
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

__all__ = ["LazyModule", "pandas"]


class LazyModule:
    """A stand-in for the module ``name``, imported at the first attribute access."""

    def __init__(self, name: str):
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") and attr.endswith("__"):  # copy/pickle/inspect probing: not a use
            raise AttributeError(attr)
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)

    def __repr__(self) -> str:
        return f"LazyModule({self._name!r}, loaded={self._module is not None})"


pandas = LazyModule("pandas")
