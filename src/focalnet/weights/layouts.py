"""Checkpoint layouts: each kind of file a task reads, recognised unambiguously.

A task's loading path lists its layouts; :func:`recognise_layout` picks the one a loaded file matches
(exactly one must) and the layout's ``read`` turns the file into the task's canonical form (its
configuration and a state dict under the keys of the package's modules). Adding a layout is one
:class:`Layout` in that list.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .errors import CheckpointMismatchError, MalformedCheckpointError
from .kind import wrong_kind

__all__ = ["Layout", "recognise_layout"]

T = TypeVar("T")


@dataclass(frozen=True)
class Layout(Generic[T]):
    """One kind of checkpoint file: ``recognise(obj)`` tells it apart (it must never raise, whatever
    ``obj`` holds), ``read(obj, source)`` gives the canonical form; ``looks_like`` says what such a file
    holds, for the error when no layout matches."""

    name: str
    looks_like: str
    recognise: Callable[[Mapping[str, Any]], bool]
    read: Callable[[Mapping[str, Any], str], T]


def recognise_layout(
    obj: Any, layouts: Sequence[Layout[T]], source: str, what: str, task: str | None = None
) -> Layout[T]:
    """The one layout of ``layouts`` that ``obj`` (a loaded file) matches; a
    :class:`MalformedCheckpointError` if it is not a mapping, a :class:`CheckpointMismatchError` naming
    what was expected if none or several match (the file of another ``task``: what it is and the command
    that reads it, :func:`~focalnet.weights.kind.wrong_kind`)."""
    if not isinstance(obj, Mapping):
        raise MalformedCheckpointError(f"{source} holds a {type(obj).__name__}, not a {what} (a dict)")
    found = [layout for layout in layouts if layout.recognise(obj)]
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(layout.name for layout in found)
        raise CheckpointMismatchError(f"{source} matches several {what} layouts ({names}); refusing to guess")
    other = wrong_kind(source, task, obj) if task is not None else None
    if other is not None:
        raise CheckpointMismatchError(other)
    expected = "; ".join(f"{layout.name}: {layout.looks_like}" for layout in layouts)
    keys = [str(k) for k in list(obj)[:6]]
    raise CheckpointMismatchError(f"{source} is not a {what} (top-level keys {keys}; expected {expected})")
