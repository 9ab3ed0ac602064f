"""Plug-ins: user modules or ``.py`` files imported once, before a command does anything else.

A plug-in registers what it adds (an algorithm, a loss, a backend, a reward variant...) into the
registries at import time; ``--plugins a.b,my_algo.py`` on any command imports them first.
"""

from __future__ import annotations

import importlib
import importlib.util
import pathlib
import sys

__all__ = ["import_plugins"]

_IMPORTED: set[str] = set()


def import_plugins(spec: str) -> None:
    """Import the comma-separated modules or ``.py`` files in ``spec`` (they register algorithms, losses, backends).

    A module name is looked up as ``import`` does, then in the current folder. Idempotent: a plug-in already
    imported by this process is not imported again (a ``.py`` file run twice would register its names twice).
    """
    for name in (m.strip() for m in spec.split(",")):
        key = str(pathlib.Path(name).resolve()) if name.endswith(".py") else name
        if not name or key in _IMPORTED:
            continue
        if name.endswith(".py"):
            path = pathlib.Path(name)
            if not path.is_file():
                raise ImportError(f"plugins: no such file {name!r}; give a .py file or an importable module name.")
            mod_name = f"promptr1_plugin_{path.stem}"
            module_spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[mod_name] = module
            module_spec.loader.exec_module(module)
        elif name:
            try:
                _import_module(name)
            except ImportError as exc:
                raise ImportError(f"plugins: cannot import {name!r} ({exc}); give importable module names, "
                                  "e.g. --plugins my_project.algos") from exc
        _IMPORTED.add(key)


def _import_module(name: str) -> None:
    """Import ``name``; a module or package of the current folder is found too (``--plugins my_algos`` next to
    ``my_algos.py``), as ``python -m`` finds it, even when the command was started by its console script."""
    try:
        importlib.import_module(name)
        return
    except ModuleNotFoundError as exc:
        top = name.split(".")[0]
        here = pathlib.Path.cwd()
        if exc.name != top or not ((here / f"{top}.py").is_file() or (here / top).is_dir()):
            raise
    sys.path.append(str(here))  # after everything else: never shadows an installed package
    importlib.import_module(name)
