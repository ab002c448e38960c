"""What the app may read: the files a client uploaded, the app's own examples, and (only when the app was
started with ``--allow-load DIR``) checkpoints under ``DIR``.

Anyone who can reach the app's port can call its HTTP API with any JSON, including a ``{"path": ...}`` that
names a file on the server; Gradio checks such paths only when the payload carries its ``FileData`` marker.
The handlers therefore take every path through :class:`Guard` before opening anything:

* an image path must resolve (symbolic links followed) inside Gradio's upload folder of this app or the
  examples folder; anything else is refused with the same sentence, whether or not it exists, so the app
  never answers as an oracle for the server's files;
* inside those folders it must be a regular file (a FIFO, a device or a folder is refused before it is
  opened: a FIFO would block the handler's lane) no larger than the upload limit;
* a checkpoint path typed into the page is refused unless loading was allowed, and then must resolve inside
  the allowed folder.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["Guard", "OneLineTracebacks", "RefusedPath", "TempFiles", "payload_path"]

#: the one answer for any image path that is not an upload or an example, existing or not
NOT_AN_UPLOAD = "only images uploaded through this page (or its examples) are accepted"


class RefusedPath(ValueError):
    """A path from a client that the app will not open (one line, safe to show in the page)."""


def payload_path(payload: Any) -> str | None:
    """The file named by a raw upload payload (a ``FileData`` dict with or without ``meta``, a plain
    string, or None). Anything else (a number, a list, a dict without a string ``path``) is refused."""
    if payload is None:
        return None
    if isinstance(payload, dict):
        payload = payload.get("path")
        if payload is None:
            return None
    if not isinstance(payload, str) or not payload or "\x00" in payload:
        raise RefusedPath("the request does not name an uploaded file")
    return payload


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(path))


def _inside(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


class Guard:
    """The app's read policy (see the module docstring).

    ``upload_roots``: Gradio's upload folder of this app and the examples folder; ``max_upload_bytes``:
    the largest image accepted; ``load_root``: the folder ``--allow-load`` names, or None (loading by
    path is off)."""

    def __init__(
        self,
        upload_roots: Iterable[str | os.PathLike],
        max_upload_bytes: int,
        load_root: str | os.PathLike | None = None,
    ) -> None:
        self.upload_roots = tuple(_real(r) for r in upload_roots)
        self.max_upload_bytes = int(max_upload_bytes)
        self.load_root = _real(load_root) if load_root is not None else None

    def image(self, payload: Any) -> Path | None:
        """The upload to read, or None when the payload names no file; :class:`RefusedPath` otherwise."""
        text = payload_path(payload)
        if text is None:
            return None
        real = _real(text)
        if not _inside(real, self.upload_roots):
            raise RefusedPath(NOT_AN_UPLOAD)
        try:
            st = os.stat(real)
        except OSError:
            raise RefusedPath(NOT_AN_UPLOAD) from None
        if not stat.S_ISREG(st.st_mode):
            raise RefusedPath("the upload is not a regular file")
        if st.st_size > self.max_upload_bytes:
            mb = self.max_upload_bytes / 2**20
            raise RefusedPath(f"the upload is {st.st_size / 2**20:.1f} MB, over the app's limit of {mb:g} MB")
        return real

    def checkpoint(self, text: Any) -> Path:
        """A checkpoint path typed into the page, resolved inside ``--allow-load DIR``."""
        if self.load_root is None:
            raise RefusedPath(
                "loading a checkpoint by path is off in this app; start it with `focalnet app --allow-load DIR` "
                "to allow the files under DIR, or `--checkpoint PATH`"
            )
        if not isinstance(text, str) or not text.strip() or "\x00" in text:
            raise RefusedPath("give the path of a checkpoint")
        p = Path(text.strip()).expanduser()
        real = _real(p if p.is_absolute() else self.load_root / p)
        if not _inside(real, (self.load_root,)):
            raise RefusedPath(f"only checkpoints under {self.load_root} may be loaded (--allow-load)")
        try:
            st = os.stat(real)
        except OSError:
            raise RefusedPath(f"no such checkpoint under {self.load_root}: {text.strip()}") from None
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):  # a model folder is a checkpoint too
            raise RefusedPath(f"{text.strip()} is not a regular file or a model folder")
        return real


class TempFiles:
    """Files the app writes for a client (the raw maps of each classification), the newest ``keep`` kept:
    older ones are deleted as new ones come, the rest when the app stops (:meth:`clear`)."""

    def __init__(self, folder: str | os.PathLike, keep: int = 16) -> None:
        self.folder = Path(folder)
        self.keep = int(keep)
        self._files: deque[Path] = deque()

    def add(self, path: str | os.PathLike) -> Path:
        p = Path(path)
        self._files.append(p)
        while len(self._files) > self.keep:
            self._files.popleft().unlink(missing_ok=True)
        return p

    def clear(self) -> None:
        while self._files:
            self._files.popleft().unlink(missing_ok=True)


class OneLineTracebacks:
    """A text stream around the app's stderr that turns each traceback Gradio prints for a refused request
    (its own path check on a ``FileData`` payload, say) into one line; everything else passes through."""

    def __init__(self, stream: Any, prefix: str = "focalnet app: a request failed: ") -> None:
        self.stream = stream
        self.prefix = prefix
        self._partial = ""
        self._in_traceback = False

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def _line(self, line: str) -> None:
        if line.startswith("Traceback (most recent call last)"):
            self._in_traceback = True
        elif line.startswith(("The above exception was", "During handling of the above")) or (
            self._in_traceback and (not line.strip() or line[:1].isspace())
        ):
            pass
        elif self._in_traceback:
            self._in_traceback = False
            self.stream.write(self.prefix + line[:300] + "\n")
        else:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)
