"""Output names that never replace an input or another output, and the one output rule of every command.

Commands that write one file per input (``detection predict``, ``segmentation predict``) name their
outputs with :func:`output_paths`; commands that write to a path the user gives (``--json``,
``convert IN OUT``, ``export --output``) check it with :func:`refuse_input_overwrite` before any work.
Paths are compared after resolving symbolic links and relative parts, and as files (hard links, the
same file reached through another mount or spelling).

:class:`OutputRule` is the rule every command applies to the files it will write (see its doc): they are
claimed before anything runs, and a claim is refused (:class:`OutputPathError`, one line) when a file is
an input, lies in another run's folder, exists without having been written by the same command earlier
(``--overwrite`` allows it), is not a regular file, or is reached through a link below its folder.
"""

from __future__ import annotations

import json
import os
import stat
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "MANIFEST",
    "OutputPathError",
    "OutputRule",
    "avoid_inputs",
    "output_paths",
    "refuse_input_overwrite",
    "run_folder_of",
]

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


def output_paths(
    inputs: Sequence[PathLike], folder: PathLike, suffix: str = "", ext: str = ".png", create: bool = True
) -> list[Path]:
    """One output path per input in ``folder``: ``<stem><suffix><ext>``, never the same path twice and never
    the path of an input. Creates the subfolders it names.

    Inputs whose names would collide keep their folders relative to the inputs' common folder
    (``a/x.jpg`` and ``b/x.jpg`` -> ``a/x<suffix><ext>`` and ``b/x<suffix><ext>``), then their extension
    (``x.jpg`` and ``x.png`` -> ``x_jpg<suffix><ext>``, ``x_png<suffix><ext>``); a name still taken (the
    same file given twice) or that would replace an input gets ``_2``, ``_3``, ... after ``suffix``.
    The folders and stems chosen depend on the inputs only, so several calls with different ``suffix``
    (``_label``, ``_color``) name one input's outputs alike. ``create=False``: name them only.
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
        if create and p.parent != folder:
            p.parent.mkdir(parents=True, exist_ok=True)
    return out


MANIFEST = ".focalnet-outputs.json"  # in every folder a command wrote into: which command wrote which file
RUN_MARKERS = ("run.json", ".run.lock")  # a folder holding one of them is a run folder (finished, or locked)
_RUN_SUBFOLDERS = ("checkpoints", "tensorboard")


def _absolute(path: PathLike) -> Path:
    return Path(os.path.abspath(os.fspath(path)))


def run_folder_of(path: PathLike) -> Path | None:
    """The run folder that writing ``path`` would write into: its folder (or the run folder above its
    ``checkpoints/``/``tensorboard/``) when that holds a run file (``run.json``) or a run lock; else ``None``."""
    parent = _absolute(path).parent
    for cand in (parent, parent.parent if parent.name in _RUN_SUBFOLDERS else None):
        if cand is not None and any((cand / m).exists() for m in RUN_MARKERS):
            return cand
    return None


def _read_manifest(folder: Path) -> dict[str, dict]:
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return {k: v for k, v in files.items() if isinstance(v, dict)} if isinstance(files, dict) else {}


class OutputRule:
    """The files one command writes, claimed before anything runs.

    ``command`` names the command (``"detection predict"``); ``inputs`` are every file and folder it reads
    (images, checkpoint, config, annotations; a folder stands for itself and the files directly in it).
    :meth:`claim` checks a command's output files together and refuses (:class:`OutputPathError`, one
    line, nothing written) a file that

    - is one of the inputs (by path, link or hard link);
    - lies in another run's folder (a folder holding ``run.json`` or ``.run.lock``, or its
      ``checkpoints/``/``tensorboard/``): only that run writes there;
    - is a folder, a FIFO, a device or anything but a regular file;
    - is reached through a symbolic link below the folder it is written into (the file itself, or a
      subfolder the output names create);
    - exists and was not written by an earlier run of the same command (its folder's ``MANIFEST`` records
      the command, size and modification time of every file the rule let a command write; a file changed
      since is someone else's), unless ``overwrite`` (``--overwrite``).

    :meth:`finish` (called when the command ends) records the claimed files written by then in their
    folders' manifests (atomically), so that running the command again may replace them. A file written by
    a run that was killed before it could record it needs ``--overwrite``: the safe direction.
    """

    def __init__(self, command: str, inputs: Iterable[PathLike | None] = (), *, overwrite: bool = False) -> None:
        self.command = command
        self.inputs = [Path(p) for p in inputs if p is not None and str(p) != ""]
        self.overwrite = overwrite
        self._inputs = _resolved(self.inputs, expand_dirs=True)
        self._claimed: dict[Path, set[str]] = {}  # folder -> names claimed by this rule

    def check(self, path: PathLike, folder: PathLike | None = None, what: str = "output") -> Path:
        """``path`` if this command may write it (see the class doc), else :class:`OutputPathError`.
        ``folder``: the folder the user named (links below it are refused); default ``path``'s folder."""
        p = _absolute(path)
        base = _absolute(folder) if folder is not None else p.parent
        try:
            rel = p.relative_to(base)
        except ValueError:
            rel = Path(p.name)
            base = p.parent
        q = base
        for part in rel.parts:
            q = q / part
            if q.is_symlink():
                raise OutputPathError(
                    f"{what} {path} would be written through the link {q} (-> {os.readlink(q)}); "
                    "remove the link or choose another folder"
                )
        try:
            st = p.stat()
        except FileNotFoundError:
            st = None
        except OSError as e:
            raise OutputPathError(f"{what} {path}: cannot be written ({e.strerror})") from None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise OutputPathError(f"{what} {path} is a folder; give a file path")
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise OutputPathError(
                f"{what} {path} is not a regular file (a FIFO, socket or device); choose another path"
            )
        hit = _clashes(p, self._inputs)
        if hit is not None:
            same = "" if hit == p else f" (it is {hit})"
            raise OutputPathError(
                f"{what} {path} is one of the inputs{same}: writing it would replace it; choose another path"
            )
        run = run_folder_of(p)
        if run is not None:
            raise OutputPathError(
                f"{what} {path} lies in the run folder {run}, which only its training run writes; "
                "choose another folder (a new one, or a subfolder of it)"
            )
        if st is not None and not self.overwrite and not self._ours(p, st):
            raise OutputPathError(
                f"{what} {path} exists and was not written by an earlier `focalnet {self.command}`; "
                "pass --overwrite to replace it, or choose another path"
            )
        return p

    def _ours(self, p: Path, st: os.stat_result) -> bool:
        if p.name in self._claimed.get(p.parent, ()):
            return True
        entry = _read_manifest(p.parent).get(p.name)
        if not entry or entry.get("command") != self.command:
            return False
        return entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns

    def claim(self, paths: Iterable[PathLike], folder: PathLike | None = None, what: str = "output") -> list[Path]:
        """Check every file of ``paths`` (:meth:`check`) and, when all pass, take them as this command's;
        returns them as absolute paths. Nothing is created (:meth:`make_folders` does it)."""
        checked = [self.check(p, folder, what) for p in paths]
        by_folder: dict[Path, set[str]] = {}
        for p in checked:
            by_folder.setdefault(p.parent, set()).add(p.name)
        for d in by_folder:
            man = d / MANIFEST
            if man.is_symlink() or (man.exists() and not man.is_file()):
                raise OutputPathError(f"{what} folder {d}: {MANIFEST} is not a regular file; remove it")
        for d, names in by_folder.items():
            self._claimed.setdefault(d, set()).update(names)
        return checked

    def make_folders(self) -> None:
        """Create the folders of the claimed files (when the command is about to write them)."""
        from .files import make_output_dir

        for d in self._claimed:
            make_output_dir(d, "output folder")

    def finish(self) -> None:
        """Record the size and time of every claimed file written by now (call it once the command is done)."""
        for d, names in self._claimed.items():
            stats = {}
            for n in names:
                try:
                    st = (d / n).stat()
                except OSError:
                    continue
                stats[n] = {"command": self.command, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
            if stats:
                self._write_manifest(d, stats)

    def _write_manifest(self, folder: Path, entries: dict[str, dict]) -> None:
        files = _read_manifest(folder)
        files.update(entries)
        tmp = folder / f".{MANIFEST}.{os.getpid()}.tmp"
        try:
            tmp.write_text(json.dumps({"version": 1, "files": files}, indent=1, sort_keys=True))
            os.replace(tmp, folder / MANIFEST)
        finally:
            tmp.unlink(missing_ok=True)
