"""Evaluation: top-1/top-5, loss, per-class accuracy and confusion matrix of a checkpoint or released model.

Folders are matched to model outputs by name: through the class names stored with a trained model, or,
for ImageNet models without stored names, through the ImageNet wnids of the folders (imagenette's
folders map to outputs 0, 217, 482, ... of a 1,000-way head). ``head_subset="in1k"`` scores a 22K model
on ImageNet-1K classes through its first 1,000 outputs, which are in ImageNet-1K order; output 850 was
never trained (the class is missing from the 22K label map), so it is excluded from the predictions.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..engine import all_reduce, fit_workers, gather_names, init_distributed, setup_logging, write_json
from .data import ImageFolder, imagenet_indices, resolve_split

__all__ = [
    "IN22K_UNUSED_INDEX",
    "LoadedClassifier",
    "load_classifier",
    "target_indices",
    "head_logits",
    "evaluate_model",
    "evaluate",
]

log = logging.getLogger("focalnet")

IN22K_UNUSED_INDEX = 850  # slot of the 22K head that the 22K label map lacks (ImageNet-1K "teddy bear")


def image_mode(model: nn.Module) -> str:
    """``"L"`` for a FocalNet with 1 input channel, else ``"RGB"``."""
    cfg = getattr(model, "cfg", None)
    return "L" if getattr(cfg, "in_chans", 3) == 1 else "RGB"


def fit_channels(values: tuple[float, ...] | list[float], model: nn.Module) -> tuple[float, ...]:
    """Normalisation ``mean``/``std`` with one value per input channel of ``model``."""
    n = 1 if image_mode(model) == "L" else 3
    values = tuple(values)
    return values[:n] if len(values) >= n else (values[0],) * n


@dataclass
class LoadedClassifier:
    """A classifier ready for inference with its class names and preprocessing."""

    model: nn.Module
    class_names: list[str] | None
    img_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_outputs(self) -> int:
        return int(getattr(self.model, "num_classes", 0))

    @property
    def image_mode(self) -> str:
        """The PIL mode the model takes: ``"L"`` for a 1-channel model (e.g. the demo's), else ``"RGB"``."""
        return image_mode(self.model)

    def transform(self, img_size: int | None = None) -> Any:
        """The evaluation transform (short side to size / crop_pct, centre crop, normalise)."""
        from timm.data import create_transform

        return create_transform(
            input_size=img_size or self.img_size,
            is_training=False,
            interpolation=self.interpolation,
            crop_pct=self.crop_pct,
            mean=fit_channels(self.mean, self.model),
            std=fit_channels(self.std, self.model),
        )


def _is_training_checkpoint(path: Path) -> bool:
    return path.is_file() and path.suffix in (".pt", ".pth") and path.name.startswith("checkpoint-")


def _preprocessing(state: dict[str, Any], source: str) -> tuple[int, float, str, tuple[float, ...], tuple[float, ...]]:
    """(image size, crop pct, interpolation, mean, std) of a training checkpoint's data config."""
    from ..weights.checks import MalformedCheckpointError, expect_mapping

    config = expect_mapping(state, "config", source) if state.get("config") is not None else {}
    data = expect_mapping(config, "data", source) if config.get("data") is not None else {}
    try:
        size, crop = int(data.get("img_size", 224)), float(data.get("crop_pct", 0.875))
        interp = str(data.get("interpolation", "bicubic"))
        mean = tuple(float(v) for v in data.get("mean", (0.485, 0.456, 0.406)))
        std = tuple(float(v) for v in data.get("std", (0.229, 0.224, 0.225)))
    except (TypeError, ValueError):
        raise MalformedCheckpointError(
            f"{source}: the stored data settings (img_size, mean, ...) are malformed"
        ) from None
    return size, crop, "bicubic" if interp == "random" else interp, mean, std


def load_classifier(
    checkpoint: str | os.PathLike | None = None,
    *,
    model_name: str | None = None,
    pretrained: bool | str | None = None,
    use_ema: bool = False,
) -> LoadedClassifier:
    """Load a classifier from a training checkpoint (``checkpoint-*.pt``: its ``model`` or, with
    ``use_ema``, ``ema`` weights, with the run's class names and preprocessing), from any file that
    :func:`focalnet.model_from_checkpoint` reads (e.g. a run's ``model.safetensors``), or the released
    weights of ``model_name`` (``pretrained``: True or a tag). Every file takes the one checked road of
    :mod:`focalnet.factory` (tensors, stored settings and class names checked before the model is built)."""
    from ..factory import create_model, model_from_checkpoint
    from ..models.focalnet import FocalNet

    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        if _is_training_checkpoint(path):
            from ..engine import CheckpointManager
            from ..weights.io import checkpoint_from_object

            state = CheckpointManager.load(path)
            if "focalnet_config" not in state or "model" not in state:
                raise ValueError(f"{path} is not a classification training checkpoint (no focalnet_config/model)")
            key = "ema" if use_ema else "model"
            if key not in state:
                raise ValueError(f"{path} has no EMA weights (the run had train.ema_decay=0)")
            ckpt = checkpoint_from_object(state, str(path), weights_key=key, allow_nonfinite=True)
            model = model_from_checkpoint(ckpt)
            names = getattr(model, "class_names", None)
            return LoadedClassifier(
                model,
                list(names) if names else None,
                *_preprocessing(state, str(path)),
                f"{path} ({key} weights, step {state.get('step')})",
            )
        if use_ema:
            raise ValueError("--ema applies to training checkpoints (checkpoint-*.pt) only")
        model = model_from_checkpoint(path)
        source = str(path)
    else:
        if model_name is None:
            raise ValueError("give a checkpoint, or a model name with pretrained weights")
        model = create_model(model_name, pretrained=pretrained if pretrained is not None else False)
        source = f"{model_name} ({'released weights ' + str(pretrained) if pretrained else 'RANDOM INIT'})"
    if not isinstance(model, FocalNet):
        from ..weights.kind import wrong_kind

        other = wrong_kind(source, "classification") if checkpoint is not None else None
        raise ValueError(other or f"{source} holds a detection/segmentation backbone, not an image classifier")
    pc = model.pretrained_cfg
    names = getattr(model, "class_names", None)
    return LoadedClassifier(
        model,
        list(names) if names else None,
        int(pc.input_size[-1]),
        float(pc.crop_pct),
        pc.interpolation,
        tuple(pc.mean),
        tuple(pc.std),
        source,
    )


def target_indices(folder_names: Sequence[str], class_names: Sequence[str] | None, num_outputs: int) -> list[int]:
    """The model output index of each dataset folder.

    By the model's stored class names when it has them; else by ImageNet wnid for 1,000/21,842-way
    heads; else folder ``i`` -> output ``i`` when the counts agree. Anything else is an error.
    """
    if class_names:
        lookup = {n: i for i, n in enumerate(class_names)}
        missing = [f for f in folder_names if f not in lookup]
        if missing:
            raise ValueError(
                f"dataset classes {missing[:10]} are not among the model's {len(class_names)} classes "
                f"({list(class_names)[:10]}...)"
            )
        return [lookup[f] for f in folder_names]
    idx = imagenet_indices(folder_names, num_outputs)
    if idx is not None:
        return idx
    if len(folder_names) == num_outputs:
        log.warning("the model stores no class names: folder i is taken as output i (sorted folder names)")
        return list(range(num_outputs))
    raise ValueError(
        f"cannot match the {len(folder_names)} dataset folders to the model's {num_outputs} outputs: the model has "
        "no class names and the folders are not ImageNet wnids"
    )


def head_logits(logits: torch.Tensor, head_subset: str = "none") -> torch.Tensor:
    """Restrict 22K logits to ImageNet-1K (``"in1k"``: the first 1,000 outputs, unused slot 850 at -inf)."""
    if head_subset == "none":
        return logits
    if head_subset != "in1k":
        raise ValueError(f"head_subset must be 'none' or 'in1k', got {head_subset!r}")
    if logits.shape[-1] != 21842:
        raise ValueError(f"head_subset 'in1k' needs a 21,842-way ImageNet-22K head, the model has {logits.shape[-1]}")
    out = logits[..., :1000].clone()
    out[..., IN22K_UNUSED_INDEX] = float("-inf")
    return out


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    dataset: ImageFolder | Dataset,
    targets: Sequence[int],
    *,
    batch_size: int = 64,
    num_workers: int = 2,
    device: torch.device | str = "cpu",
    head_subset: str = "none",
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
    desc: str = "eval",
) -> dict[str, Any]:
    """Top-1/top-5 (percent), mean cross-entropy, per-class accuracy and confusion matrix of ``model``.

    ``targets[k]`` is the output index of dataset class ``k``. Under DDP each rank scores every
    ``world_size``-th image and the sums are reduced, so all ranks return the same metrics.
    Unreadable images are skipped and listed under ``skipped_files``.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    names: list[str] = list(getattr(dataset, "class_names", [str(i) for i in range(len(targets))]))
    k = len(names)
    tmap = torch.as_tensor(list(targets), dtype=torch.long, device=device)
    shard = Subset(dataset, list(range(rank, len(dataset), world_size))) if world_size > 1 else dataset
    loader = DataLoader(
        shard,
        batch_size=batch_size,
        shuffle=False,
        num_workers=fit_workers(num_workers),
        pin_memory=device.type == "cuda",
    )
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # n, correct1, correct5, loss
    confusion = torch.zeros(k, k + 1, dtype=torch.long, device=device)  # last column: outside the dataset classes
    skipped: list[str] = []
    inv = None
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(shard), desc=desc, unit="img", dynamic_ncols=True, leave=False)
    t0 = time.perf_counter()
    for x, y, idx, ok in loader:
        if bar is not None:
            bar.update(len(y))
        if not bool(ok.all()):
            samples = getattr(dataset, "samples", None)
            skipped += [samples[int(i)][0] if samples else str(int(i)) for i in idx[~ok]]
            if not bool(ok.any()):
                continue
            x, y = x[ok], y[ok]
        x = x.to(device, non_blocking=True)
        y = y.to(device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            raw = model(x)
        raw = raw.float()
        if head_subset == "in1k":
            loss_logits = raw[:, :1000]
            logits = head_logits(raw, "in1k")
        else:
            loss_logits = logits = raw
        t = tmap[y]
        sums[3] += F.cross_entropy(loss_logits, t, reduction="sum")
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        sums[0] += len(t)
        sums[1] += (top[:, 0] == t).sum()
        sums[2] += (top == t[:, None]).any(-1).sum()
        if inv is None:
            inv = torch.full((logits.shape[-1],), k, dtype=torch.long, device=device)
            inv[tmap] = torch.arange(k, device=device)
        pred = inv[top[:, 0]]
        confusion.index_put_((y, pred), torch.ones_like(y), accumulate=True)
        if bar is not None:
            bar.set_postfix(top1=f"{100 * sums[1].item() / max(sums[0].item(), 1):.2f}")
    elapsed = torch.tensor([time.perf_counter() - t0], dtype=torch.float64, device=device)
    if bar is not None:
        bar.close()
    all_reduce(sums)
    all_reduce(confusion)
    all_reduce(elapsed, "max")
    skipped = gather_names(skipped)
    if was_training:
        model.train()
    n = max(sums[0].item(), 1.0)
    per_total = confusion.sum(1)
    per_class = {
        names[i]: (100.0 * confusion[i, i].item() / per_total[i].item()) if per_total[i] > 0 else None for i in range(k)
    }
    return {
        "top1": 100.0 * sums[1].item() / n,
        "top5": 100.0 * sums[2].item() / n,
        "loss": sums[3].item() / n,
        "num_images": int(sums[0].item()),
        "images_per_second": sums[0].item() / max(elapsed.item(), 1e-9),
        "per_class_accuracy": per_class,
        "confusion_matrix": confusion.tolist(),
        "confusion_labels": names + ["(other)"],
        "skipped_images": len(skipped),
        "skipped_files": skipped,
    }


def evaluate(
    checkpoint: str | os.PathLike | None = None,
    *,
    data: str | os.PathLike,
    model_name: str | None = None,
    pretrained: bool | str | None = None,
    split: str = "val",
    img_size: int | None = None,
    batch_size: int = 64,
    num_workers: int = 4,
    head_subset: str = "none",
    use_ema: bool = False,
    max_per_class: int = 0,
    output_dir: str | os.PathLike | None = None,
    device: str = "auto",
    amp: str = "none",
    progress: bool = True,
    max_images: int = 0,
) -> dict[str, Any]:
    """Evaluate a checkpoint (or released weights) on the ImageFolder split ``data/split``.

    Writes ``metrics.json`` (``top1``/``top5`` in percent, ``loss``, per-class accuracy, skipped files)
    and ``confusion_matrix.json`` to ``output_dir`` when given; returns the metrics. Runs under
    torchrun too (each process scores a shard; rank 0 writes). ``max_images`` > 0 scores that many
    images spread evenly over the (class-sorted) split, so every class keeps its share.
    """
    from ..engine.trainer import amp_dtype

    dist_info = init_distributed(device)
    setup_logging(None, dist_info.is_main)  # console only: an evaluation folder gets no train.log
    loaded = load_classifier(checkpoint, model_name=model_name, pretrained=pretrained, use_ema=use_ema)
    root = resolve_split(data, split)
    size = img_size or loaded.img_size
    folders = ImageFolder(root, max_per_class=max_per_class).class_names
    num_outputs = 1000 if head_subset == "in1k" else loaded.num_outputs
    if head_subset == "in1k" and loaded.num_outputs != 21842:
        raise ValueError(f"--head-subset in1k needs a 21,842-way ImageNet-22K head; the model has {loaded.num_outputs}")
    names = loaded.class_names if head_subset == "none" else None
    targets = target_indices(folders, names, num_outputs)
    ds = ImageFolder(root, loaded.transform(size), class_names=folders, max_per_class=max_per_class, img_size=size)
    ds.keep_spread(max_images)
    log.info("evaluating %s on %s (%d images, %d classes) at %d px", loaded.source, root, len(ds), len(folders), size)
    model = loaded.model.to(dist_info.device)
    metrics = evaluate_model(
        model,
        ds,
        targets,
        batch_size=batch_size,
        num_workers=num_workers,
        device=dist_info.device,
        head_subset=head_subset,
        amp_dtype=amp_dtype(amp, dist_info.device),
        progress=progress,
        rank=dist_info.rank,
        world_size=dist_info.world_size,
    )
    if metrics["skipped_images"]:
        log.warning(
            "skipped %d unreadable image(s): %s", metrics["skipped_images"], ", ".join(metrics["skipped_files"])
        )
    confusion = {"labels": metrics.pop("confusion_labels"), "matrix": metrics.pop("confusion_matrix")}
    result = {
        "top1": metrics.pop("top1"),
        "top5": metrics.pop("top5"),
        **metrics,
        "checkpoint": loaded.source,
        "data": str(root),
        "img_size": size,
        "head_subset": head_subset,
        "output_indices": dict(zip(folders, targets)),
    }
    log.info(
        "top1 %.2f%%  top5 %.2f%%  loss %.4f  (%d images, %.1f img/s)",
        result["top1"],
        result["top5"],
        result["loss"],
        result["num_images"],
        result["images_per_second"],
    )
    if output_dir is not None and dist_info.is_main:
        write_json(Path(output_dir) / "metrics.json", result)
        write_json(Path(output_dir) / "confusion_matrix.json", confusion)
    result["confusion_matrix"] = confusion
    return result
