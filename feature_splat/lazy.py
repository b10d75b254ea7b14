"""Lazy package exports: a package's public names imported on first use.

Packages whose modules import torch re-export their public names this way, so that importing a
light module inside them (a config, the backend names) does not import torch; the command line's
``--help`` relies on it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, sources: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``name`` from ``sources[name]`` (a
    module path) when it is first looked up."""

    def __getattr__(name: str) -> Any:
        if name not in sources:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(sources[name]), name)

    return __getattr__
