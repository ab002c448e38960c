"""Run folders: one run per output folder, run ids, temp-file cleanup, outputs that never replace inputs.

A training run owns its output folder. :func:`prepare_run_folder` is called by every task before it
writes anything: a new run refuses a folder that holds another run's checkpoints unless it is resumed
(``--resume``) or explicitly replaced (``--overwrite``); the run's id is recorded in ``run.json``, in
every checkpoint and at the top of ``config.yaml``; temporary files left by a killed run are removed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from .files import RunFolderError, make_output_dir, write_json

__all__ = [
    "RUN_FILE",
    "RunFolderError",
    "avoid_inputs",
    "cleanup_temp_files",
    "make_output_dir",
    "prepare_run_folder",
    "read_run_file",
]

log = logging.getLogger("focalnet")

RUN_FILE = "run.json"
_TMP = re.compile(r"^\..+\.tmp$")  # our atomic writes: .<name>.<random>.tmp / .<name>.tmp
_CKPT = re.compile(r"^checkpoint-(\d+)\.pt$")
# files of a run that --overwrite removes (the others are rewritten by the new run)
_RUN_OUTPUTS = ("metrics.json", "curves.png", "model.safetensors", "model_ema.safetensors", "model.pt", RUN_FILE)


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
) -> str:
    """Check that a run may use ``output_dir`` and return its run id (new, or the resumed run's).

    - No ``resume``: a folder holding checkpoints is refused (:class:`RunFolderError`, naming
      ``--resume auto`` and ``--overwrite``); with ``overwrite`` those checkpoints and the old run's
      outputs are deleted first.
    - ``resume``: the folder's run id is kept (``run.json``); a folder of another task is refused.

    Every process may call it (only ``is_main`` writes); it removes leftover temporary files.
    """
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--output {out} is a file, not a folder")
    if resume and overwrite:
        raise RunFolderError("give either --resume (continue the run) or --overwrite (start over), not both")
    if is_main:
        make_output_dir(out)
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


def avoid_inputs(path: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> Path:
    """``path``, or ``<stem>_pred<suffix>`` (``_pred2``, ...) where writing it would replace one of ``inputs``."""
    p = Path(path)
    taken = set()
    for i in inputs:
        try:
            taken.add(Path(i).resolve())
        except OSError:
            continue
    cand, n = p, 1
    while cand.resolve() in taken:
        cand = p.with_name(f"{p.stem}_pred{'' if n == 1 else n}{p.suffix}")
        n += 1
    return cand
