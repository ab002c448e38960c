"""The training loop shared by classification, detection and segmentation.

It owns what every task needs: DDP wrapping (torchrun), a resumable deterministic sampler, gradient
accumulation, AMP (bf16/fp16 on GPU, off on CPU by default), gradient clipping, model EMA, per-update
lr schedules, atomic checkpoints (every epoch / every N steps / on SIGTERM or SIGINT) with auto-resume
at the exact step, progress bars with throughput and ETA, TensorBoard scalars, ``metrics.json`` and a
PNG of the curves. A task supplies a dataset, a ``step_fn`` computing the loss of a batch and an
optional ``eval_fn``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .checkpoint import CheckpointManager, rng_state, set_rng_state
from .curves import plot_curves
from .distributed import DistInfo, ResumableSampler, SeededSamples, all_reduce, init_distributed
from .files import RunFolderError, json_default, make_output_dir, write_json
from .resources import fit_workers
from .runs import prepare_run_folder, run_folder_lock

__all__ = [
    "TrainerConfig",
    "Trainer",
    "amp_dtype",
    "StepFn",
    "EvalFn",
    "collate_skip_none",
    "setup_logging",
    "write_json",
]

log = logging.getLogger("focalnet")

# (model, batch, device) -> (loss, {name: float} logs, number of samples in the batch)
StepFn = Callable[[nn.Module, Any, torch.device], tuple[torch.Tensor, dict[str, float], int]]
# (model, trainer) -> metrics computed over the evaluation set (already reduced over ranks)
EvalFn = Callable[[nn.Module, "Trainer"], dict[str, Any]]


@dataclass
class TrainerConfig:
    """Loop settings. ``max_steps`` (optimizer updates) > 0 makes the schedule iteration-based."""

    output_dir: str
    epochs: int = 1
    max_steps: int = 0
    batch_size: int = 32  # per process
    num_workers: int = 2
    accum_steps: int = 1
    grad_clip: float | None = None
    amp: str = "auto"  # auto | none | bf16 | fp16
    ema_decay: float = 0.0
    log_every: int = 10
    eval_every_epochs: int = 1  # epoch-based runs; 0: only at the end
    eval_every_steps: int = 0  # iteration-based runs (max_steps > 0); 0: only at the end
    ckpt_every_steps: int = 0
    keep_checkpoints: int = 2
    seed: int = 0
    resume: str | None = None  # None, "auto" or a checkpoint path
    overwrite: bool = False  # a new run may replace another run's checkpoints in output_dir
    run_id: str = ""  # set by prepare_run_folder (the task calls it first; else fit() does)
    drop_last: bool = True
    find_unused_parameters: bool = False
    progress: bool = True
    device: str = "auto"


def collate_skip_none(batch: list[Any]) -> Any:
    """Default collate that drops samples the dataset returned as ``None`` (unreadable files)."""
    from torch.utils.data import default_collate

    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    return default_collate(batch)


def setup_logging(output_dir: str | os.PathLike | None, is_main: bool = True) -> None:
    """Console logging on the main rank, plus ``train.log`` in ``output_dir``."""
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in log.handlers):
        h = logging.StreamHandler()
        h.setFormatter(fmt)
        log.addHandler(h)
    if output_dir is not None and is_main:
        make_output_dir(output_dir)
        path = str(Path(output_dir) / "train.log")
        if not any(
            isinstance(h, logging.FileHandler) and h.baseFilename == os.path.abspath(path) for h in log.handlers
        ):
            fh = logging.FileHandler(path)
            fh.setFormatter(fmt)
            log.addHandler(fh)
    log.propagate = False


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of an ``amp`` setting on ``device`` (``None``: full precision)."""
    if amp not in ("auto", "none", "bf16", "fp16"):
        raise ValueError(f"amp must be auto, none, bf16 or fp16, got {amp!r}")
    if amp == "none" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


class Trainer:
    """Runs ``fit()``; see the module docstring. All ranks call it; rank 0 writes files."""

    def __init__(
        self,
        cfg: TrainerConfig,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_set: Dataset,
        step_fn: StepFn,
        *,
        scheduler: Any = None,
        eval_fn: EvalFn | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = collate_skip_none,
        dist_info: DistInfo | None = None,
        run_state: dict[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.dist = dist_info or init_distributed(cfg.device)
        self.device = self.dist.device
        self.model = model.to(self.device)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.train_set = train_set
        self.step_fn = step_fn
        self.eval_fn = eval_fn
        self.run_state = run_state or {}  # saved in checkpoints (config, class names, ...)
        self.out = Path(cfg.output_dir)
        self.is_main = self.dist.is_main
        if self.is_main:
            make_output_dir(self.out)
        setup_logging(self.out, self.is_main)
        self.amp_dtype = amp_dtype(cfg.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.ema = None
        if cfg.ema_decay > 0:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=cfg.ema_decay, device=self.device)
        self.ckpt = CheckpointManager(self.out / "checkpoints", cfg.keep_checkpoints, enabled=self.is_main)
        self.sampler = ResumableSampler(
            len(train_set), self.dist.rank, self.dist.world_size, shuffle=True, seed=cfg.seed, drop_last=cfg.drop_last
        )
        # worker seeds come from this generator (seeded per epoch/rank/start in _train_epoch), not from
        # the global RNG, so that a resumed run draws the same global random numbers as an uninterrupted one
        self._loader_gen = torch.Generator()
        # per-sample seeding of Python random / NumPy / torch: augmentations are reproducible and resumable
        self._seeded = SeededSamples(train_set, cfg.seed)
        self.loader = DataLoader(
            self._seeded,
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            generator=self._loader_gen,
            num_workers=fit_workers(cfg.num_workers),
            collate_fn=collate_fn,
            drop_last=cfg.drop_last,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        n_batches = (
            len(self.sampler) // cfg.batch_size if cfg.drop_last else math.ceil(len(self.sampler) / cfg.batch_size)
        )
        if n_batches == 0:
            raise ValueError(
                f"batch_size {cfg.batch_size} x {self.dist.world_size} process(es) is larger than the training set "
                f"({len(train_set)} samples) with drop_last; lower the batch size"
            )
        self.batches_per_epoch = n_batches
        self.updates_per_epoch = math.ceil(n_batches / cfg.accum_steps)
        self.total_steps = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * self.updates_per_epoch
        self.epoch = 0
        self.batch_in_epoch = 0
        self.step = 0
        self.history: list[dict[str, Any]] = []
        # training loss and lr every `log_interval` updates (at least ~50 points per run): curves.png's lines
        self.step_log: list[dict[str, float]] = []
        self.log_interval = min(max(cfg.log_every, 1), max(1, self.total_steps // 50))
        self._stop = False
        self._last_eval_step = -1
        self._last_ckpt_step = -1
        self._tb = None
        self._last_plot = -math.inf
        self.ddp_model: nn.Module = self.model
        if self.dist.distributed:
            for m in self.model.modules():  # parameters laid out like their gradients (see FocalModulation)
                if hasattr(m, "match_gradient_layout"):
                    m.match_gradient_layout()
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=cfg.find_unused_parameters,
            )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "rng": rng_state(),
            "history": json.loads(json.dumps(self.history, default=json_default)),
            "step_log": list(self.step_log),
            "world_size": self.dist.world_size,
            "run_id": self.cfg.run_id,
            **self.run_state,
        }
        if self.scheduler is not None and hasattr(self.scheduler, "state_dict"):
            state["scheduler"] = self.scheduler.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.module.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if self.scheduler is not None and "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and "ema" in state:
            self.ema.module.load_state_dict(state["ema"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.step = int(state["step"])
        self.history = list(state.get("history", []))
        self.step_log = [r for r in state.get("step_log", []) if r.get("step", 0) <= self.step]
        if "rng" in state:
            set_rng_state(state["rng"])
        if state.get("world_size", self.dist.world_size) != self.dist.world_size:
            log.warning(
                "resuming a %s-process run with %s processes: the data order changes",
                state.get("world_size"),
                self.dist.world_size,
            )

    def _resume(self) -> None:
        r = self.cfg.resume
        if not r:
            return
        if r == "auto":
            found = self.ckpt.latest(run_id=self.cfg.run_id or None)
            if found is None:
                log.info("no checkpoint in %s: starting from scratch", self.ckpt.directory)
                return
            path, state = found
        else:
            path, state = Path(r), CheckpointManager.load(r)
        self.load_state_dict(state)
        # the loaded checkpoint is at this step: a finished run resumed adds no second record or checkpoint
        self._last_ckpt_step = self.step
        if self.history and self.history[-1].get("step") == self.step:
            self._last_eval_step = self.step
        log.info(
            "resumed from %s (run %s) at epoch %d, batch %d, step %d%s",
            path,
            state.get("run_id") or "of no id",
            self.epoch + 1,
            self.batch_in_epoch,
            self.step,
            " (already finished)" if self.step >= self.total_steps else "",
        )

    def save_checkpoint(self) -> None:
        self._last_ckpt_step = self.step
        if self.is_main:
            path = self.ckpt.save(self.state_dict(), self.step)
            log.info("saved %s", path)

    # ------------------------------------------------------------------ logging
    def _tb_writer(self) -> Any:
        if self._tb is None and self.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out / "tensorboard"))
            except Exception as e:  # tensorboard missing
                log.warning("TensorBoard disabled: %s", e)
                self._tb = False
        return self._tb or None

    def log_scalars(self, prefix: str, values: dict[str, Any]) -> None:
        tb = self._tb_writer()
        if tb is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                tb.add_scalar(f"{prefix}/{k}", v, self.step)

    def _write_metrics(self, final: dict[str, Any] | None = None) -> None:
        if not self.is_main:
            return
        data: dict[str, Any] = {"history": self.history, "steps": self.step_log}
        if final is not None:
            data = {**final, "final": final, "history": self.history, "steps": self.step_log}
        write_json(self.out / "metrics.json", data)
        # plotting takes seconds: at most once a minute during the run, always at the end
        if final is not None or time.monotonic() - self._last_plot >= 60:
            self._plot_curves()
            self._last_plot = time.monotonic()

    def _plot_curves(self) -> None:
        plot_curves(self.history, self.out / "curves.png", steps=self.step_log)

    # ------------------------------------------------------------------ signals
    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

        def handler(signum: int, frame: Any) -> None:
            if self._stop:  # second signal: give up at once
                raise KeyboardInterrupt
            log.warning("received %s: saving a checkpoint at the next step, then stopping", signal.Signals(signum).name)
            self._stop = True

        for s in old:
            signal.signal(s, handler)

        def restore() -> None:
            for s, h in old.items():
                signal.signal(s, h)

        return restore

    def _stop_requested(self) -> bool:
        flag = torch.tensor([1.0 if self._stop else 0.0], device=self.device)
        all_reduce(flag, "max")
        return bool(flag.item() > 0)

    # ------------------------------------------------------------------ loop
    def _set_lr(self) -> None:
        if self.scheduler is None:
            return
        if hasattr(self.scheduler, "step_update"):
            self.scheduler.step_update(self.step)
        else:
            self.scheduler.step()

    def evaluate(self) -> dict[str, Any]:
        if self.eval_fn is None:
            return {}
        metrics = dict(self.eval_fn(self.model, self))
        if self.ema is not None:
            metrics.update(
                {f"ema_{k}": v for k, v in self.eval_fn(self.ema.module, self).items() if isinstance(v, (int, float))}
            )
        self.model.train()
        return metrics

    @property
    def epoch_number(self) -> int:
        """The epoch the last step belongs to, numbered from 1 (logs, progress bars and the history)."""
        return self.epoch + 1 if self.batch_in_epoch else max(self.epoch, 1)

    def _record(self, train_stats: dict[str, Any], do_eval: bool) -> dict[str, Any]:
        rec = {"epoch": self.epoch_number, "step": self.step, **train_stats}
        if do_eval:
            rec.update(self.evaluate())
            self._last_eval_step = self.step
        self.history.append(rec)
        self.log_scalars("eval" if do_eval else "train_epoch", rec)
        self._write_metrics()
        log.info(
            "epoch %d step %d: %s",
            self.epoch_number,
            self.step,
            ", ".join(f"{k}={v:.4g}" for k, v in rec.items() if isinstance(v, float)),
        )
        return rec

    def fit(self) -> dict[str, Any]:
        """Train to ``total_steps`` (or until a signal), evaluating and checkpointing on the way.

        Returns the final metrics (also written to ``metrics.json``); ``{"interrupted": True, ...}``
        if a signal stopped the run after saving a checkpoint.
        """
        with run_folder_lock(self.out, self.is_main):  # no-op where the task holds it already
            if not self.cfg.run_id:
                self.cfg.run_id = prepare_run_folder(
                    self.out, resume=self.cfg.resume, overwrite=self.cfg.overwrite, is_main=self.is_main
                )
            self._resume()
            restore = self._install_signals()
            hook = threading.excepthook
            threading.excepthook = self._quiet_when_folder_gone(hook)
            try:
                return self._fit()
            finally:
                restore()
                if self._tb:
                    with suppress(OSError):  # its folder may be gone (see _check_folder)
                        self._tb.close()
                threading.excepthook = hook

    def _quiet_when_folder_gone(self, hook: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """A ``threading.excepthook`` that stays silent about a background writer's (TensorBoard's) failure
        once the run folder is gone: the run stops with one line instead (:meth:`_check_folder`)."""

        def quiet(args: Any) -> Any:
            if isinstance(args.exc_value, OSError) and not self.out.is_dir():
                return None
            return hook(args)

        return quiet

    def _check_folder(self) -> None:
        """One line (and the run stops) when the run folder was deleted while the run used it."""
        if self.is_main and not self.out.is_dir():
            raise RunFolderError(
                f"--output {self.out} was deleted while the run was using it: the run stops (its checkpoints "
                "and outputs went with the folder)"
            )

    def _fit(self) -> dict[str, Any]:
        cfg = self.cfg
        model = self.ddp_model
        model.train()
        log.info(
            "training %d steps (%d per epoch, batch %d x %d processes x %d accumulation) on %s "
            "(%d compute threads, %d data loader workers per process)",
            self.total_steps,
            self.updates_per_epoch,
            cfg.batch_size,
            self.dist.world_size,
            cfg.accum_steps,
            self.device,
            torch.get_num_threads(),
            self.loader.num_workers,
        )
        self._set_lr()
        while self.step < self.total_steps:
            self.sampler.set_epoch(self.epoch, self.batch_in_epoch * cfg.batch_size)
            stats = self._train_epoch(model)
            if stats.get("interrupted"):
                self.save_checkpoint()
                log.warning("stopped at step %d; resume with --resume auto", self.step)
                return {"interrupted": True, "step": self.step, "epoch": self.epoch_number}
            epoch_done = self.batch_in_epoch >= self.batches_per_epoch
            if epoch_done:
                self.epoch += 1
                self.batch_in_epoch = 0
                epoch_based = cfg.max_steps <= 0
                every = cfg.eval_every_epochs  # 0: at the end only
                do_eval = epoch_based and ((every > 0 and self.epoch % every == 0) or self.step >= self.total_steps)
                if epoch_based:
                    self._record(stats, do_eval)
                    self.save_checkpoint()
        final = self.history[-1] if self.history else {}
        if self.eval_fn is not None and self._last_eval_step != self.step:
            final = self._record({}, True)
        if self._last_ckpt_step != self.step:
            self.save_checkpoint()
        self._write_metrics(final)
        return final

    def _train_epoch(self, model: nn.Module) -> dict[str, Any]:
        cfg = self.cfg
        t0 = time.perf_counter()
        seen = 0
        loss_sum = torch.zeros((), device=self.device)
        n_loss = 0
        start_batch = self.batch_in_epoch
        remaining = min(self.batches_per_epoch - start_batch, (self.total_steps - self.step) * cfg.accum_steps)
        bar = None
        if self.is_main and cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=remaining, desc=f"epoch {self.epoch + 1}", unit="batch", dynamic_ncols=True, leave=False)
        micro = 0
        self._loader_gen.manual_seed(hash((cfg.seed, self.epoch, self.dist.rank, start_batch)) % 2**63)
        self._seeded.epoch = self.epoch
        it = iter(self.loader)
        self.optimizer.zero_grad(set_to_none=True)
        for _ in range(remaining):
            try:
                batch = next(it)
            except StopIteration:
                break
            micro += 1
            self.batch_in_epoch += 1
            last_micro = micro % cfg.accum_steps == 0 or self.batch_in_epoch >= self.batches_per_epoch
            if batch is None:  # every sample of the batch was unreadable
                continue
            sync = last_micro or not self.dist.distributed
            ctx = nullcontext() if sync else model.no_sync()
            with ctx:
                with torch.autocast(
                    self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
                ):
                    loss, logs, n = self.step_fn(model, batch, self.device)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"loss is {loss.item()} at step {self.step} (epoch {self.epoch + 1}); "
                        "lower the learning rate or enable gradient clipping"
                    )
                self.scaler.scale(loss / cfg.accum_steps).backward()
            loss_sum += loss.detach()
            n_loss += 1
            seen += n
            if not last_micro:
                continue
            if cfg.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self._check_folder()
            self._set_lr()
            if self.ema is not None:
                self.ema.update(self.model, step=self.step)
            lr = self.optimizer.param_groups[0]["lr"]
            if bar is not None:
                bar.update(micro if micro < cfg.accum_steps else cfg.accum_steps)
                elapsed = time.perf_counter() - t0
                bar.set_postfix(
                    loss=f"{loss.item():.4f}",
                    lr=f"{lr:.2e}",
                    img_s=f"{seen * self.dist.world_size / max(elapsed, 1e-9):.1f}",
                )
            if self.step % self.log_interval == 0:
                self.step_log.append({"step": self.step, "loss": float(loss.item()), "lr": lr})
                self.log_scalars("train", {"loss": float(loss.item()), "lr": lr, **logs})
            micro = 0
            if cfg.max_steps > 0:
                if cfg.eval_every_steps and self.step % cfg.eval_every_steps == 0 and self.step < self.total_steps:
                    self._record(self._epoch_stats(loss_sum, n_loss, seen, t0), True)
                    model.train()
            # every N updates in both modes (epoch-based runs also save at each epoch's end)
            if cfg.ckpt_every_steps and self.step % cfg.ckpt_every_steps == 0 and self.step < self.total_steps:
                if self.batch_in_epoch < self.batches_per_epoch or cfg.max_steps > 0:
                    self.save_checkpoint()
            if self._stop_requested():
                if bar is not None:
                    bar.close()
                return {"interrupted": True}
            if self.step >= self.total_steps:
                break
        if bar is not None:
            bar.close()
        return self._epoch_stats(loss_sum, n_loss, seen, t0)

    def _epoch_stats(self, loss_sum: torch.Tensor, n_loss: int, seen: int, t0: float) -> dict[str, Any]:
        t = torch.tensor([loss_sum.item(), float(n_loss), float(seen)], device=self.device, dtype=torch.float64)
        all_reduce(t)
        elapsed = time.perf_counter() - t0
        return {
            "train_loss": t[0].item() / max(t[1].item(), 1),
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_second": t[2].item() / max(elapsed, 1e-9),
            "time": elapsed,
        }
