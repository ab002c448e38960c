"""Run folders: one run per output folder, a lock while it runs, run ids, temp-file cleanup.

A training run owns its output folder. :func:`prepare_run_folder` is called by every task before it
writes anything: it takes the folder's lock (:func:`lock_run_folder`: ``fcntl.flock`` on ``.run.lock``,
held for the run's life and released by the OS when the process ends, so a killed run leaves no stale
lock) before it touches anything, so a second launch into a running run's folder is refused; a new run
refuses a folder that holds another run's checkpoints unless it is resumed (``--resume``) or explicitly
replaced (``--overwrite``); the run's id is recorded in ``run.json``, in every checkpoint and at the top
of ``config.yaml``; temporary files left by a killed run are removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from .files import RunFolderError, make_output_dir, write_json
from .outputs import avoid_inputs, run_folder_of

__all__ = [
    "LOCK_FILE",
    "RUN_FILE",
    "RunFolderError",
    "avoid_inputs",
    "cleanup_temp_files",
    "lock_run_folder",
    "make_output_dir",
    "prepare_run_folder",
    "read_run_file",
    "run_folder_lock",
    "unlock_run_folder",
]

log = logging.getLogger("focalnet")

RUN_FILE = "run.json"
LOCK_FILE = ".run.lock"  # flock'ed by the process that runs in the folder; holds its pid, host and run id
_TMP = re.compile(r"^\..+\.tmp$")  # our atomic writes: .<name>.<random>.tmp / .<name>.tmp
_CKPT = re.compile(r"^checkpoint-(\d+)\.pt$")
# files of a run that --overwrite removes (the others are rewritten by the new run)
_RUN_OUTPUTS = ("metrics.json", "curves.png", "model.safetensors", "model_ema.safetensors", "model.pt", RUN_FILE)


_HELD: dict[str, int] = {}  # real path of a locked folder -> the descriptor holding its lock (this process)


def _holder(folder: Path) -> str:
    """``pid N on HOST, run ID`` from a locked folder's lock file, as far as it is readable."""
    try:
        info = json.loads((folder / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return "its process is unknown"
    if not isinstance(info, dict):
        return "its process is unknown"
    parts = [f"pid {info['pid']}" + (f" on {info['host']}" if info.get("host") else "")] if info.get("pid") else []
    if info.get("run_id"):
        parts.append(f"run {info['run_id']}")
    return ", ".join(str(p) for p in parts) or "its process is unknown"


def _write_holder(folder: str, **fields: object) -> None:
    fd = _HELD.get(folder)
    if fd is None:
        return
    try:
        old = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        old = {}
    data = json.dumps({**(old if isinstance(old, dict) else {}), **fields}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def lock_run_folder(folder: str | os.PathLike) -> bool:
    """Take ``folder``'s run lock for this process; ``True`` if this call took it, ``False`` if the
    process already held it (or the file system has no locks: a warning says so).

    The lock is an exclusive ``fcntl.flock`` on ``folder/.run.lock``: it is released by
    :func:`unlock_run_folder` or by the OS when the process ends (a killed run never leaves a stale
    lock). Another process holding it is a :class:`RunFolderError` naming the folder and, where the lock
    file tells, the holder's pid and run id. Nothing else in the folder is touched.
    """
    out = make_output_dir(folder)
    key = os.path.realpath(out)
    if key in _HELD:
        return False
    try:
        fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise RunFolderError(f"--output {out}: cannot create the lock file {LOCK_FILE} ({e.strerror})") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunFolderError(
            f"--output {out} is in use by a running run ({_holder(out)}): wait for it to end, or choose another folder"
        ) from None
    except OSError as e:  # e.g. ENOLCK: a file system without locks
        os.close(fd)
        log.warning("cannot lock %s (%s): a second run in this folder would not be detected", out, e.strerror)
        return False
    _HELD[key] = fd
    _write_holder(key, pid=os.getpid(), host=socket.gethostname(), since=time.strftime("%Y-%m-%dT%H:%M:%S"))
    return True


def unlock_run_folder(folder: str | os.PathLike) -> None:
    """Release this process's lock on ``folder`` (nothing if it holds none); the lock file stays."""
    fd = _HELD.pop(os.path.realpath(folder), None)
    if fd is not None:
        os.close(fd)  # closing the only descriptor of the open file releases the flock


@contextlib.contextmanager
def run_folder_lock(folder: str | os.PathLike, enabled: bool = True) -> Iterator[None]:
    """Hold ``folder``'s run lock for the ``with`` block (``enabled``: the process that prepares the folder,
    rank 0 under torchrun); released at the end only if this block took it."""
    took = lock_run_folder(folder) if enabled else False
    try:
        yield
    finally:
        if took:
            unlock_run_folder(folder)


def cleanup_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files (``.<name>...tmp``) a killed run left in ``folder`` and its checkpoints."""
    removed = []
    base = Path(folder)
    for d in (base, base / "checkpoints"):
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if _TMP.match(p.name) and p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run: %s", len(removed), removed[0].name)
    return removed


def read_run_file(folder: str | os.PathLike) -> dict | None:
    """The ``run.json`` of a run folder (``{"run_id", "task", "created"}``), or ``None``."""
    p = Path(folder) / RUN_FILE
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("run_id"), str) else None


def _checkpoints(folder: Path) -> list[tuple[int, Path]]:
    d = folder / "checkpoints"
    if not d.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in d.iterdir() if (m := _CKPT.match(p.name)))


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def prepare_run_folder(
    output_dir: str | os.PathLike,
    *,
    resume: str | None,
    overwrite: bool = False,
    task: str | None = None,
    is_main: bool = True,
    outputs: Sequence[str] = (),
) -> str:
    """Check that a run may use ``output_dir`` and return its run id (new, or the resumed run's).

    - No ``resume``: a folder holding checkpoints is refused (:class:`RunFolderError`, naming
      ``--resume auto`` and ``--overwrite``); with ``overwrite`` those checkpoints and the old run's
      outputs are deleted first.
    - ``resume``: the folder's run id is kept (``run.json``); a folder of another task is refused.

    - ``outputs``: names of the files the run writes (a run without checkpoints, e.g. ``demo``): where one
      exists and the folder is not a run of ``task`` (its ``run.json``), the folder is refused unless
      ``overwrite``, which deletes them first; a folder of another task's run is refused unless ``overwrite``.

    Every process may call it (only ``is_main`` writes). ``is_main`` first takes the folder's lock
    (:func:`lock_run_folder`; kept after a successful return, until :func:`unlock_run_folder` or the end of
    the process, released on a refusal if this call took it), then removes leftover temporary files.
    """
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--output {out} is a file, not a folder")
    if resume and overwrite:
        raise RunFolderError("give either --resume (continue the run) or --overwrite (start over), not both")
    outer = run_folder_of(Path(os.path.abspath(out)))
    if outer is not None:  # a run inside another run's folder (its checkpoints/, say) would mix their files
        raise RunFolderError(f"--output {out} lies in the run folder {outer}; choose a folder outside it")
    took = lock_run_folder(out) if is_main else False
    try:
        if outputs:
            _check_outputs(out, outputs, overwrite, task, is_main)
        run_id = _prepare(out, resume, overwrite, task, is_main)
    except BaseException:
        if took:
            unlock_run_folder(out)
        raise
    if is_main:
        _write_holder(os.path.realpath(out), run_id=run_id)
    return run_id


def _check_outputs(out: Path, outputs: Sequence[str], overwrite: bool, task: str | None, is_main: bool) -> None:
    info = read_run_file(out)
    existing = [n for n in outputs if (out / n).exists() or (out / n).is_symlink()]
    other = info is not None and info.get("task") != task
    if not (other or (info is None and existing)):
        return  # a new folder, or an earlier run of this task: its files are rewritten
    if not overwrite:
        what = f"holds a {info.get('task')} run ({info['run_id']})" if info else f"holds {', '.join(existing[:3])}"
        raise RunFolderError(f"--output {out} {what}: choose another folder, or replace them with --overwrite")
    if is_main:
        for n in existing:
            (out / n).unlink(missing_ok=True)
        (out / RUN_FILE).unlink(missing_ok=True)
        log.warning("--overwrite: deleted %s in %s", ", ".join(existing) or "the previous run's record", out)


def _prepare(out: Path, resume: str | None, overwrite: bool, task: str | None, is_main: bool) -> str:
    if is_main:
        cleanup_temp_files(out)
    info = read_run_file(out)
    ckpts = _checkpoints(out)
    if info and task and info.get("task") not in (None, task) and (ckpts or resume):
        raise RunFolderError(
            f"--output {out} holds a {info.get('task')} run, not a {task} run; choose another folder"
            + ("" if resume else " or pass --overwrite")
        )
    if not resume and ckpts:
        if not overwrite:
            rid = info["run_id"] if info else "of unknown id"
            raise RunFolderError(
                f"--output {out} holds the checkpoints of another run ({rid}, {len(ckpts)} checkpoint(s), last "
                f"step {ckpts[-1][0]}): continue it with --resume auto, or delete them and start over with --overwrite"
            )
        if is_main:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
            shutil.rmtree(out / "tensorboard", ignore_errors=True)
            for name in _RUN_OUTPUTS:
                (out / name).unlink(missing_ok=True)
            log.warning("--overwrite: deleted the previous run's checkpoints and outputs in %s", out)
        info = None
    if resume and info is not None:
        return str(info["run_id"])
    run_id = new_run_id()
    if resume and resume != "auto":
        run_id = _checkpoint_run_id(resume) or run_id
    elif resume and ckpts:  # a folder of an older version (no run.json): adopt its checkpoints' id
        run_id = next((r for _, p in reversed(ckpts) if (r := _checkpoint_run_id(p))), run_id)
    if is_main:
        _write_run_file(out, {"run_id": run_id, "task": task, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return run_id


def _checkpoint_run_id(path: str | os.PathLike) -> str | None:
    try:
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    rid = state.get("run_id") if isinstance(state, dict) else None
    return rid if isinstance(rid, str) else None


def _write_run_file(out: Path, data: dict) -> None:
    write_json(out / RUN_FILE, data)
