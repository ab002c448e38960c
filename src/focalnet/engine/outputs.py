"""Output names that never replace an input or another output of the same command.

Commands that write one file per input (``detection predict``, ``segmentation predict``) name their
outputs with :func:`output_paths`; commands that write to a path the user gives (``--json``,
``convert IN OUT``, ``export --output``) check it with :func:`refuse_input_overwrite` before any work.
Paths are compared after resolving symbolic links and relative parts, and as files (hard links, the
same file reached through another mount or spelling).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["OutputPathError", "avoid_inputs", "output_paths", "refuse_input_overwrite"]

PathLike = str | os.PathLike


class OutputPathError(ValueError):
    """An output path is one of the command's inputs."""


def _resolved(paths: Iterable[PathLike], expand_dirs: bool = False) -> list[Path]:
    out = []
    for p in paths:
        try:
            q = Path(p).resolve()
        except (OSError, RuntimeError):  # a symlink loop: compared as written
            q = Path(os.path.abspath(p))
        out.append(q)
        if expand_dirs and q.is_dir():
            try:
                out += [f.resolve() for f in q.iterdir() if f.is_file()]
            except OSError:
                pass
    return out


def _clashes(path: Path, inputs: Sequence[Path]) -> Path | None:
    """The input that writing ``path`` would replace, if any (same path, or the same file on disk)."""
    try:
        target = path.resolve()
    except (OSError, RuntimeError):
        target = Path(os.path.abspath(path))
    for i in inputs:
        if target == i:
            return i
        try:
            if target.exists() and i.exists() and os.path.samefile(target, i):
                return i
        except OSError:
            continue
    return None


def refuse_input_overwrite(output: PathLike, inputs: Iterable[PathLike], what: str = "output") -> Path:
    """``output`` as a ``Path``, or :class:`OutputPathError` (one line) where writing it would replace one of
    ``inputs`` (a folder among ``inputs`` stands for itself and the files directly in it: a model folder's
    ``config.json`` and ``model.safetensors``)."""
    out = Path(output)
    hit = _clashes(out, _resolved(inputs, expand_dirs=True))
    if hit is not None:
        same = "" if hit == Path(os.path.abspath(out)) else f" (it is {hit})"
        raise OutputPathError(
            f"{what} {out} is one of the inputs{same}: writing it would replace it; choose another path"
        )
    return out


def avoid_inputs(path: PathLike, inputs: Iterable[PathLike]) -> Path:
    """``path``, or ``<stem>_pred<suffix>`` (``_pred2``, ...) where writing it would replace one of ``inputs``."""
    p = Path(path)
    taken = _resolved(inputs)
    cand, n = p, 1
    while _clashes(cand, taken) is not None:
        cand = p.with_name(f"{p.stem}_pred{'' if n == 1 else n}{p.suffix}")
        n += 1
    return cand


def output_paths(inputs: Sequence[PathLike], folder: PathLike, suffix: str = "", ext: str = ".png") -> list[Path]:
    """One output path per input in ``folder``: ``<stem><suffix><ext>``, never the same path twice and never
    the path of an input. Creates the subfolders it names.

    Inputs whose names would collide keep their folders relative to the inputs' common folder
    (``a/x.jpg`` and ``b/x.jpg`` -> ``a/x<suffix><ext>`` and ``b/x<suffix><ext>``), then their extension
    (``x.jpg`` and ``x.png`` -> ``x_jpg<suffix><ext>``, ``x_png<suffix><ext>``); a name still taken (the
    same file given twice) or that would replace an input gets ``_2``, ``_3``, ... after ``suffix``.
    The folders and stems chosen depend on the inputs only, so several calls with different ``suffix``
    (``_label``, ``_color``) name one input's outputs alike.
    """
    folder = Path(folder)
    src = [Path(os.path.abspath(p)) for p in inputs]
    rel = [Path(p.stem) for p in src]

    def colliding() -> list[int]:
        counts = Counter(rel)
        return [i for i, r in enumerate(rel) if counts[r] > 1]

    clash = colliding()
    if clash:
        common = Path(os.path.commonpath([str(src[i].parent) for i in clash]))
        for i in clash:
            rel[i] = src[i].parent.relative_to(common) / src[i].stem
        for i in colliding():
            rel[i] = rel[i].with_name(f"{src[i].stem}_{src[i].suffix.lstrip('.') or 'none'}")
    taken_inputs = _resolved(inputs)
    used: set[Path] = set()
    dirs: set[Path] = set()  # folders the outputs need: no output may have their name
    out = []
    for r in rel:
        base = folder / r.parent
        cand, n = base / f"{r.name}{suffix}{ext}", 1
        while cand in used or cand in dirs or used & set(cand.parents) or _clashes(cand, taken_inputs) is not None:
            n += 1
            cand = base / f"{r.name}{suffix}_{n}{ext}"
        used.add(cand)
        dirs.update(cand.parents)
        out.append(cand)
    for p in out:
        if p.parent != folder:
            p.parent.mkdir(parents=True, exist_ok=True)
    return out
