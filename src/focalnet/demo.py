"""``focalnet demo``: train a small FocalNet on handwritten digits and show what it learned, offline.

The data are scikit-learn's 1,797 handwritten digits (``sklearn.datasets.load_digits``, 8x8 pixels,
shipped with scikit-learn: no download), bilinearly upsampled to 32x32, split once into a fixed
train/test split (75/25, stratified, ``random_state=0``). The model is a reduced FocalNet,
:data:`DEMO_CONFIG`: the hierarchical architecture of the paper (4 stages, 2 focal levels, kernels 3
and 5) at ``embed_dim=32``, ``depths=(1, 1, 2, 1)``, one input channel, and a 2x2 patch embedding so
that the 32x32 input gives 16x16, 8x8, 4x4 and 2x2 feature maps.

Everything goes into one folder: ``model.safetensors`` (:func:`focalnet.save_model`), ``metrics.json``
(``test_accuracy`` in percent, timings, settings), the figures, ``maps.npz`` and ``index.html``.
With ``--pretrained`` it also classifies scikit-image's sample photos with the released ImageNet
FocalNet-T (SRF) and shows their maps, when the weights are cached or the hub is reachable.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .engine.runs import LOCK_FILE, RUN_FILE
from .engine.schedule import Warmup, fit_warmup
from .factory import create_model, save_model
from .models.focalnet import FocalNet, FocalNetConfig
from .weights.hub import PretrainedUnavailableError

__all__ = [
    "DEMO_CONFIG",
    "DIGITS_MEAN",
    "DIGITS_STD",
    "load_digits_tensors",
    "build_demo_model",
    "demo_warmup",
    "train_classifier",
    "evaluate",
    "run_demo",
]

#: The demo's reduced FocalNet (1.45 M parameters, 18 M multiply-adds per 32x32 digit).
DEMO_CONFIG = FocalNetConfig(
    embed_dim=32,
    depths=(1, 1, 2, 1),
    focal_levels=(2, 2, 2, 2),
    focal_windows=(3, 3, 3, 3),
    patch_size=2,
    in_chans=1,
    num_classes=10,
    drop_path_rate=0.0,
)
DEFAULT_EPOCHS = 12
IMAGE_SIZE = 32
#: normalisation of the digits once scaled to [0, 1] (their pixel mean and standard deviation)
DIGITS_MEAN = 0.305
DIGITS_STD = 0.377
SKIMAGE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def load_digits_tensors(
    image_size: int = IMAGE_SIZE, test_size: float = 0.25, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as ``(x_train, y_train, x_test, y_test)``: images ``(N, 1, S, S)`` in
    ``[0, 1]`` (bilinear upsampling of the 8x8 originals), labels ``int64``; fixed stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False).clamp_(0, 1)
    y = torch.from_numpy(d.target.astype(np.int64))
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=test_size, random_state=seed, stratify=d.target)
    tr, te = torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(te))
    return x[tr], y[tr], x[te], y[te]


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - DIGITS_MEAN) / DIGITS_STD


def build_demo_model(image_size: int = IMAGE_SIZE, **overrides: Any) -> FocalNet:
    """A fresh :data:`DEMO_CONFIG` FocalNet (``overrides`` change any config field), with its
    preprocessing recorded in ``pretrained_cfg`` (so ``focalnet visualize --checkpoint`` can use it)."""
    model = FocalNet(DEMO_CONFIG.replace(**overrides) if overrides else DEMO_CONFIG)
    pc = model.pretrained_cfg
    pc.input_size = (model.cfg.in_chans, image_size, image_size)
    pc.crop_pct = 1.0
    pc.interpolation = "bilinear"
    pc.mean = (DIGITS_MEAN,) * model.cfg.in_chans
    pc.std = (DIGITS_STD,) * model.cfg.in_chans
    model.class_names = [str(i) for i in range(model.cfg.num_classes)]
    return model


def _shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Random translation of each image by up to ``max_shift`` pixels (zero fill)."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p))
    dy = torch.randint(0, 2 * p + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None].expand(n, x.shape[1], h, w + 2 * p)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :].expand(n, x.shape[1], h, w)
    return out.gather(3, cols)


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent of ``model`` on un-normalised images ``x`` (``[0, 1]``)."""
    was = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(_normalize(x[i : i + batch_size])).argmax(-1) == y[i : i + batch_size]).sum())
    model.train(was)
    return 100.0 * correct / max(len(x), 1)


def demo_warmup(steps_per_epoch: int, total: int, epochs: int) -> Warmup:
    """The demo's warm-up: one epoch of the :data:`DEFAULT_EPOCHS` recipe, fitted to a run of ``epochs``
    (:func:`focalnet.engine.schedule.fit_warmup`)."""
    return fit_warmup(steps_per_epoch, total, epochs / DEFAULT_EPOCHS, proportional=True)


def train_classifier(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 0.05,
    max_shift: int = 2,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, float]]:
    """AdamW with a linear warm-up (:func:`demo_warmup`) then cosine decay, label smoothing 0.1, random shifts.
    Returns one ``{"epoch", "loss", "train_accuracy"}`` record per epoch."""
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    steps_per_epoch = math.ceil(len(x) / batch_size)
    total = max(epochs * steps_per_epoch, 1)
    # the recipe's one epoch of DEFAULT_EPOCHS; another length: its share, at most 10 % (engine.schedule)
    warmup = demo_warmup(steps_per_epoch, total, epochs).steps

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    history = []
    model.train()
    bar = tqdm(total=total, desc="training", unit="step", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        loss_sum, correct = 0.0, 0
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            xb, yb = _normalize(_shift(x[idx], max_shift, g)), y[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(-1) == yb).sum())
            bar.update(1)
            bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{float(loss.detach()):.3f}")
        history.append({"epoch": epoch + 1, "loss": loss_sum / len(x), "train_accuracy": 100.0 * correct / len(x)})
    bar.close()
    model.eval()
    return history


def _default_out() -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path("runs") / f"demo-{stamp}"
    n = 1
    while out.exists():
        n += 1
        out = Path("runs") / f"demo-{stamp}-{n}"
    return out


@contextlib.contextmanager
def _no_empty_folder(out: Path) -> Iterator[None]:
    """Create ``out`` (and its missing parents); remove those still empty when the block fails or is
    interrupted."""
    created = [d for d in (out, *out.parents) if not d.exists()]
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for d in created:  # deepest first
            if d.is_dir() and not [f for f in d.iterdir() if f.name not in (LOCK_FILE, RUN_FILE)]:
                shutil.rmtree(d, ignore_errors=True)  # nothing but the run's lock and record
        raise


def _plot_training(history: list[dict[str, float]], confusion: np.ndarray, test_acc: float, path: Path) -> None:
    from .visualize import new_figure, save_figure

    fig = new_figure(9.0, 3.4)
    a1, a2 = fig.subplots(1, 2)
    ep = [h["epoch"] for h in history]
    a1.plot(ep, [h["loss"] for h in history], "o-", color="C0", label="train loss")
    a1.set_xlabel("epoch")
    a1.set_ylabel("loss", color="C0")
    a1b = a1.twinx()
    a1b.plot(ep, [h["train_accuracy"] for h in history], "s-", color="C1", label="train accuracy")
    a1b.set_ylabel("train accuracy (%)", color="C1")
    a1.set_title(f"Training (held-out accuracy {test_acc:.1f}%)", fontsize=10)
    im = a2.imshow(confusion, cmap="Blues")
    a2.set_xticks(range(10))
    a2.set_yticks(range(10))
    a2.set_xlabel("predicted digit")
    a2.set_ylabel("true digit")
    a2.set_title("Confusion matrix (held-out set)", fontsize=10)
    for i in range(confusion.shape[0]):
        for j in range(confusion.shape[1]):
            if confusion[i, j]:
                color = "white" if confusion[i, j] > confusion.max() / 2 else "black"
                a2.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(im, ax=a2, shrink=0.8)
    save_figure(fig, path)


def _photos_section(out: Path, stage: int, block: int, progress: bool) -> tuple[list, list, list[str]]:
    """Classify scikit-image's photos with the released FocalNet-T; figures, predictions and notes."""
    from PIL import Image
    from skimage import data as skdata

    from . import visualize as viz
    from .models import imagenet_class_names

    try:
        model = create_model("focalnet_tiny_srf", pretrained=True).eval()
    except PretrainedUnavailableError as e:
        msg = f"ImageNet part skipped: the released focalnet_tiny_srf weights are unavailable offline ({e})"
        print(f"note: {msg}", file=sys.stderr)
        return [], [], [msg]
    pc = model.pretrained_cfg
    size = pc.input_size[-1]
    names = imagenet_class_names(model.num_classes) or [str(i) for i in range(model.num_classes)]
    crops, labels = [], []
    for name in SKIMAGE_PHOTOS:
        img = Image.fromarray(getattr(skdata, name)()).convert("RGB")
        crops.append(viz.center_crop(img, size, pc.crop_pct))
        labels.append(f"skimage.data.{name}")
    x = torch.stack([viz.image_to_tensor(c, pc.mean, pc.std) for c in crops])
    maps, logits = viz.modulation_maps(model, x, stage, block)
    probs = logits.softmax(-1)
    preds, figs = [], []
    for i, label in enumerate(labels):
        top = probs[i].topk(5)
        preds.append(
            {"image": label, "top": [{"class": names[j], "prob": float(p)} for p, j in zip(top.values, top.indices)]}
        )
        if progress:
            print(f"{label}: {names[int(top.indices[0])]} ({float(top.values[0]):.1%})")
    viz.plot_grid(
        [np.asarray(c) for c in crops],
        maps,
        labels,
        out / "imagenet_grid.png",
        title=f"focalnet_tiny_srf (ImageNet) - {viz.maps_location(maps)}",
    )
    viz.plot_kernels(model, path=out / "imagenet_kernels.png", title="focalnet_tiny_srf: focal kernels (channel mean)")
    figs += [
        ("imagenet_grid.png", "Released FocalNet-T (SRF) on scikit-image photos: modulator norm and gates."),
        ("imagenet_kernels.png", "Released FocalNet-T (SRF): channel-mean focal kernels, stages x levels."),
    ]
    return figs, preds, []


# every file the demo writes into its folder (a folder holding one of them, not written by an earlier demo,
# is refused without --overwrite; see focalnet.engine.prepare_run_folder)
DEMO_FILES = (
    "model.safetensors",
    "metrics.json",
    "index.html",
    "maps.npz",
    "digits_grid.png",
    "digits_gates.png",
    "digits_modulator.png",
    "digits_stages.png",
    "kernels.png",
    "training.png",
    "imagenet_grid.png",
    "imagenet_kernels.png",
)


def run_demo(
    out: str | Path | None = None, epochs: int = DEFAULT_EPOCHS, *, overwrite: bool = False, **options: Any
) -> dict[str, Any]:
    """Train :data:`DEMO_CONFIG` on the digits, evaluate on the held-out split, visualise the modulation
    of held-out samples, and write everything to ``out`` (default ``runs/demo-<timestamp>``); ``options``:
    ``batch_size``, ``lr``, ``seed``, ``image_size``, ``stage``, ``block`` (0-based), ``num_samples``,
    ``max_train`` (only the first training samples, for quick checks), ``pretrained`` (adds the ImageNet
    photos section when the released weights can be had), ``progress``. Returns the metrics plus ``out``
    and the written ``files``.

    The demo is a run like every ``train`` command: it holds ``out``'s run lock for its whole life (a
    folder another run is using is refused) and refuses a folder holding another task's run or files it
    would replace (:data:`DEMO_FILES`) that an earlier demo did not write, unless ``overwrite``.
    """
    from .engine.runs import prepare_run_folder, run_folder_lock

    out = Path(out) if out is not None else _default_out()
    with _no_empty_folder(out), run_folder_lock(out):
        prepare_run_folder(out, resume=None, overwrite=overwrite, task="demo", outputs=DEMO_FILES)
        return _run_demo(out, epochs, **options)


def _run_demo(
    out: Path,
    epochs: int = DEFAULT_EPOCHS,
    *,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    image_size: int = IMAGE_SIZE,
    stage: int = 1,
    block: int = -1,
    num_samples: int = 10,
    max_train: int | None = None,
    pretrained: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    from . import visualize as viz
    from . import visualize_page as page
    from .engine import write_json

    t_start = time.perf_counter()
    torch.manual_seed(seed)
    xtr, ytr, xte, yte = load_digits_tensors(image_size, seed=0)
    if max_train is not None:
        xtr, ytr = xtr[:max_train], ytr[:max_train]
    model = build_demo_model(image_size)
    if progress:
        print(
            f"digits: {len(xtr)} train / {len(xte)} test images at {image_size}x{image_size}; "
            f"FocalNet {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters; {epochs} epochs"
        )
    t0 = time.perf_counter()
    history = train_classifier(
        model, xtr, ytr, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, progress=progress
    )
    train_time = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(_normalize(xte[i : i + 256])) for i in range(0, len(xte), 256)])
    pred = logits.argmax(-1)
    test_acc = 100.0 * float((pred == yte).float().mean())
    confusion = np.zeros((10, 10), dtype=np.int64)
    np.add.at(confusion, (yte.numpy(), pred.numpy()), 1)
    if progress:
        print(
            f"held-out accuracy: {test_acc:.2f}% ({int((pred == yte).sum())}/{len(yte)}), trained in {train_time:.1f} s"
        )

    ckpt = out / "model.safetensors"
    save_model(model, ckpt, class_names=model.class_names, extra={"demo": "sklearn digits"})

    # held-out samples to visualise: the first of each digit class, then the rest
    firsts = [int((yte == c).nonzero()[0]) for c in range(10) if (yte == c).any()]
    order = firsts + [i for i in range(len(yte)) if i not in set(firsts)]
    sel = torch.tensor(order[: max(num_samples, 1)])
    s_idx, b_idx = viz.resolve_block(model, stage, block)
    with (
        viz.capture_modulation(model, [(s, -1) for s in range(model.cfg.num_stages)] + [(s_idx, b_idx)]) as cap,
        torch.no_grad(),
    ):
        probs = model(_normalize(xte[sel])).softmax(-1)
    maps = cap[s_idx, b_idx]
    images = [xte[i, 0].numpy() for i in sel.tolist()]
    labels = [f"true {int(yte[i])}, pred {int(probs[k].argmax())}" for k, i in enumerate(sel.tolist())]
    where = viz.maps_location(maps)
    viz.plot_grid(images, maps, labels, out / "digits_grid.png", title=f"Held-out digits - {where}")
    viz.plot_gates(
        images[0], maps, 0, out / "digits_gates.png", title=f"Gating maps of a held-out '{int(yte[sel[0]])}' - {where}"
    )
    viz.plot_modulator(
        images[0],
        maps,
        0,
        out / "digits_modulator.png",
        title=f"Modulator of a held-out '{int(yte[sel[0]])}' - {where}",
    )
    last = cap[model.cfg.num_stages - 1, len(model.layers[-1].blocks) - 1]
    stage_maps = [cap[s, len(model.layers[s].blocks) - 1] for s in range(model.cfg.num_stages)]
    _plot_stages(images[:4], stage_maps, out / "digits_stages.png")
    viz.plot_kernels(
        model, path=out / "kernels.png", title="Learned focal kernels (mean over channels), stages x levels"
    )
    _plot_training(history, confusion, test_acc, out / "training.png")
    page.save_maps(
        out / "maps.npz",
        list({id(m): m for m in [*stage_maps, maps, last]}.values()),
        extra={"images": xte[sel, 0].numpy(), "labels": yte[sel].numpy(), "probs": probs.numpy()},
    )

    figures = [
        (
            "digits_grid.png",
            "Held-out digits: modulator norm (upsampled, min-max per image) and the raw gate "
            "of each focal level and of the global level.",
        ),
        ("digits_stages.png", "Modulator norm of the last block of every stage (coarser and more global with depth)."),
        ("digits_gates.png", "Raw gating maps of one held-out digit (red positive, blue negative)."),
        ("digits_modulator.png", "Modulator norm of one held-out digit, overlaid at full resolution."),
        ("kernels.png", "Learned depth-wise focal kernels, channel mean, stages x levels."),
        ("training.png", "Training loss/accuracy per epoch and the held-out confusion matrix."),
    ]
    predictions = [
        {
            "image": f"test sample {i}",
            "true": str(int(yte[i])),
            "top": [{"class": str(int(j)), "prob": float(p)} for p, j in zip(*probs[k].topk(3))],
        }
        for k, i in enumerate(sel.tolist())
    ]
    notes: list[str] = []
    if pretrained:
        figs, preds, notes = _photos_section(out, -1, -1, progress)
        figures += figs
        predictions += preds

    total_time = time.perf_counter() - t_start
    metrics: dict[str, Any] = {
        "test_accuracy": round(test_acc, 3),
        "test_correct": int((pred == yte).sum()),
        "test_samples": len(yte),
        "train_samples": len(xtr),
        "epochs": epochs,
        "train_time_s": round(train_time, 2),
        "total_time_s": round(total_time, 2),
        "final_train_loss": round(history[-1]["loss"], 4) if history else None,
        "final_train_accuracy": round(history[-1]["train_accuracy"], 3) if history else None,
        "history": history,
        "config": model.cfg.to_dict(),
        "image_size": image_size,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "visualized_block": maps.name,
        "torch_threads": torch.get_num_threads(),
        "pretrained_section": bool(pretrained and not notes),
    }
    write_json(out / "metrics.json", metrics)
    page.write_index(
        out,
        "FocalNet demo: handwritten digits",
        figures,
        predictions=predictions,
        info={
            "held-out accuracy": f"{test_acc:.2f}% ({metrics['test_correct']}/{len(yte)})",
            "training": f"{epochs} epoch{'s' if epochs != 1 else ''} on {len(xtr)} images, {train_time:.1f} s",
            "model": f"FocalNet embed_dim={model.cfg.embed_dim}, depths={model.cfg.depths}, "
            f"patch {model.cfg.patch_size}, {image_size}x{image_size} grey input",
            "checkpoint": ckpt.name,
        },
        notes=notes,
    )
    metrics["out"] = str(out)
    metrics["files"] = sorted(p.name for p in out.iterdir())
    return metrics


def _plot_stages(images: list[np.ndarray], stage_maps: list, path: Path) -> None:
    from . import visualize as viz

    rows, cols = len(images), len(stage_maps) + 1
    fig = viz.new_figure(1.9 * cols + 0.8, 1.9 * rows + 0.6)
    axes = np.array(fig.subplots(rows, cols, squeeze=False))
    im = None
    for r, img in enumerate(images):
        disp = viz.to_display(img)
        viz.show_image(axes[r, 0], disp, "input" if r == 0 else None)
        for c, m in enumerate(stage_maps):
            im = viz.draw_modulator(fig, axes[r, c + 1], disp, m, r, colorbar=False)
            if r == 0:
                h, w = m.gates.shape[-2:]
                axes[r, c + 1].set_title(f"stage {m.stage} ({h}x{w})", fontsize=9)
    if im is not None:
        fig.colorbar(viz.heat_scale(), ax=list(axes[:, -1]), shrink=0.6, label="|modulator| (min-max)")
    fig.suptitle("Modulator norm of the last block of each stage", fontsize=10)
    viz.save_figure(fig, path)
