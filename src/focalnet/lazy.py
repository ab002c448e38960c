"""Packages whose public names are imported on first use (PEP 562).

``import focalnet`` or ``import focalnet.detection`` then costs nothing: torch, torchvision and the task
modules load when a name is first used, so ``focalnet --help`` answers at once and a broken optional
dependency fails only the commands that use it. A package writes its public imports under
``if TYPE_CHECKING:`` (type checkers and readers see them as usual) and ends with ``lazy_exports(__name__)``,
which reads that block and resolves its names on first access.

``focalnet.detection.train`` stays the function even after the submodule of the same name is imported
(as with the eager ``from .train import train`` it replaces).

:func:`module_constants` reads a module's literal constants from its source without importing it: the
light ``*_cli`` module of a command (its parser) shows the defaults of the heavy module that runs it.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["LazyPackage", "lazy_exports", "module_constants"]


class LazyPackage(types.ModuleType):
    """A package module resolving the names of ``__lazy_exports__`` (name -> relative module) on access."""

    __lazy_exports__: Mapping[str, str]

    def __getattr__(self, name: str) -> Any:  # called only for names not yet in the module's dict
        source = self.__dict__.get("__lazy_exports__", {}).get(name)
        if source is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source, self.__name__), name)
        types.ModuleType.__setattr__(self, name, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        # the import system binds a loaded submodule to its package: where the package exports a name
        # of the same spelling from that submodule (``train`` from ``.train``), the export wins
        exports = self.__dict__.get("__lazy_exports__", {})
        if isinstance(value, types.ModuleType) and value.__name__ == f"{self.__name__}.{name}" and name in exports:
            source = importlib.import_module(exports[name], self.__name__)
            value = getattr(source, name)
        types.ModuleType.__setattr__(self, name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.__dict__.get("__lazy_exports__", {})))


def lazy_exports(package: str) -> None:
    """Make ``package`` (an imported package's ``__name__``) import the names of its ``if TYPE_CHECKING:``
    block on first access."""
    module = sys.modules[package]
    module.__class__ = LazyPackage
    module.__lazy_exports__ = _type_checking_imports(Path(module.__file__ or ""))


def _type_checking_imports(init_file: Path) -> dict[str, str]:
    """``{name: module}`` of the ``from X import name`` statements under a top-level ``if TYPE_CHECKING:``."""
    tree = ast.parse(init_file.read_text(encoding="utf-8"))
    exports: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for stmt in node.body:
                if isinstance(stmt, ast.ImportFrom):
                    for alias in stmt.names:
                        exports[alias.asname or alias.name] = "." * stmt.level + (stmt.module or "")
    return exports


def module_constants(module: str, *names: str) -> tuple[Any, ...]:
    """The values of the top-level ``NAME = <literal>`` assignments ``names`` of ``module`` (absolute
    name), read from its source without importing it (``ast.literal_eval``: numbers, strings, tuples,
    lists, dicts)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        raise ModuleNotFoundError(f"no module named {module!r}", name=module)
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    values: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in names:
            try:
                values[target.id] = ast.literal_eval(value)
            except ValueError:  # not a literal (a call, a name): reported below
                values.pop(target.id, None)
    missing = [n for n in names if n not in values]
    if missing:
        raise LookupError(f"{module} assigns no literal {', '.join(missing)}")
    return tuple(values[n] for n in names)
