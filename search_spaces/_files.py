"""Import a user's Python file (a search space or a study) as a module, with one-line errors.

Status: stable (internal).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["import_user_file"]


def import_user_file(path: Path, *, kind: str, passthrough: type[Exception] | None = None) -> ModuleType:
    """Import ``path`` under a private module name; a missing file or any error while importing it is
    a ``ValueError`` naming the file (an exception of type ``passthrough`` is re-raised with the
    path prepended, in its own type)."""
    if not path.is_file():
        raise ValueError(f"{kind} file {path} does not exist (expected FILE.py:NAME)")
    module_name = f"_gsa_user_{kind.replace(' ', '_')}_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:  # a user's file: its error in one line
        del sys.modules[module_name]
        if passthrough is not None and isinstance(error, passthrough):
            raise passthrough(f"{path}: {error}") from None
        raise ValueError(f"importing {path} failed: {type(error).__name__}: {error}") from None
    return module
