"""What each tab of ``focalnet app`` computes, as plain functions of models and images (no Gradio).

Every result comes from the package's own code: :mod:`focalnet.visualize` for the maps and figures,
:func:`focalnet.visualize_cli.prepare_images` for the classifier's input (as ``focalnet visualize``),
:mod:`focalnet.detection.predict` for detections and their drawing, and
:mod:`focalnet.segmentation.predict` for label maps and overlays. So a tab shows what the matching
command writes for the same image.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

__all__ = [
    "KINDS",
    "LoadedModel",
    "AppModels",
    "load_checkpoint",
    "load_released",
    "load_models",
    "find_demo_checkpoint",
    "demo_checkpoint",
    "block_choices",
    "parse_block",
    "default_block",
    "read_upload",
    "classify_image",
    "detect_image",
    "segment_image",
    "write_examples",
]

#: the model kinds, one per tab
KINDS = ("classifier", "detector", "segmentor")
_TAB = {"classifier": "Classification", "detector": "Detection", "segmentor": "Segmentation"}


@dataclass
class LoadedModel:
    """A model ready for one tab: ``kind`` (one of :data:`KINDS`), the module in eval mode, where it came
    from, its class names and what its loader returned besides (detector ``meta``, segmentor ``extra``)."""

    kind: str
    model: nn.Module
    source: str
    class_names: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    untrained: bool = False
    cache: OrderedDict = field(default_factory=OrderedDict, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def knows(self, shown: int = 10) -> str:
        """What the model can answer, for the line next to its result (a digits model given a photo still
        names a digit): ``"knows 10 classes: 0, 1, ..., 9; anything else comes out as one of them"``."""
        names = [str(n) for n in self.class_names]
        listed = ", ".join(names if len(names) <= shown else [*names[: shown - 1], "...", names[-1]])
        return f"knows {len(names)} classes: {listed}; anything else comes out as one of them"


@dataclass
class AppModels:
    """The models the app serves (``None`` where a tab has none yet) and notes for the page."""

    classifier: LoadedModel | None = None
    detector: LoadedModel | None = None
    segmentor: LoadedModel | None = None
    notes: list[str] = field(default_factory=list)

    def get(self, kind: str) -> LoadedModel | None:
        return getattr(self, kind)

    def put(self, loaded: LoadedModel) -> None:
        setattr(self, loaded.kind, loaded)


# ------------------------------------------------------------------------------------------- loading


def _classifier(loaded_clf: Any, untrained: bool = False) -> LoadedModel:
    """A :class:`LoadedModel` from :func:`focalnet.classification.load_classifier`'s result; the
    model's ``pretrained_cfg`` gets the loader's preprocessing (a training checkpoint keeps it in its run
    config), so that the maps use the input the classifier was evaluated on."""
    from ..classification.predict import class_labels

    model = loaded_clf.model.eval()
    pc = model.pretrained_cfg
    pc.input_size = (model.cfg.in_chans, loaded_clf.img_size, loaded_clf.img_size)
    pc.crop_pct, pc.interpolation = loaded_clf.crop_pct, loaded_clf.interpolation
    pc.mean, pc.std = tuple(loaded_clf.mean), tuple(loaded_clf.std)
    names = class_labels(loaded_clf.class_names, loaded_clf.num_outputs)
    return LoadedModel("classifier", model, loaded_clf.source, names, untrained=untrained)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Load any checkpoint the package reads and tell its kind: a segmentation model
    (:func:`focalnet.segmentation.load_segmentor`), a detector (:func:`focalnet.detection.load_detector`)
    or an image classifier (:func:`focalnet.classification.load_classifier`). Raises ``ValueError`` (one
    line) for a file that is none of them, ``FileNotFoundError`` for a missing one."""
    from ..classification import load_classifier
    from ..detection import load_detector
    from ..models.inference import inference_path
    from ..segmentation import load_segmentor

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")

    def segmentor() -> LoadedModel:
        model, extra = load_segmentor(p, device)
        inference_path(model)  # the inference path `segmentation predict` takes
        names = list(getattr(model, "class_names", None) or [str(i) for i in range(model.num_classes)])
        return LoadedModel("segmentor", model, f"segmentation model {p}", names, dict(extra))

    def detector() -> LoadedModel:
        model, meta = load_detector(p, device)
        inference_path(model)  # the inference path `detection predict` takes
        return LoadedModel("detector", model, f"detector {p}", list(meta["class_names"]), dict(meta))

    def classifier() -> LoadedModel:
        return _classifier(load_classifier(p))

    from ..weights.kind import file_kind

    found = file_kind(p)  # keys and metadata only: the loader of the file's own task answers for it
    if not found.checkpoint:
        raise ValueError(f"{p} is not a readable checkpoint: it is {found.what}")
    loaders = {"segmentation": segmentor, "detection": detector, "classification": classifier}
    if found.task in loaders:
        try:
            return loaders[found.task]()
        except Exception as e:  # noqa: BLE001 - its own loader's one line says what is wrong with it
            raise ValueError(f"{p} is {found.what} that cannot be loaded: {one_line(e)}") from e
    problems = []
    for kind, load in (("segmentation model", segmentor), ("detector", detector), ("classifier", classifier)):
        try:
            return load()
        except Exception as e:  # each loader refuses the other kinds; all three refusals are reported
            problems.append(f"as a {kind}: {one_line(e)}")
    if all("not a readable" in q for q in problems):  # not a checkpoint at all: one reason is enough
        raise ValueError(problems[-1].split(": ", 1)[1])
    raise ValueError(f"{p} is not a model the app can load ({'; '.join(problems)})")


def load_released(name: str, pretrained: bool | str | None) -> LoadedModel:
    """A registered classifier with its released weights (``pretrained``: True or a tag; raises
    :class:`~focalnet.weights.PretrainedUnavailableError` when they are neither cached nor downloadable),
    or randomly initialised when ``pretrained`` is falsy (the figures then say so)."""
    from ..classification import load_classifier

    return _classifier(load_classifier(model_name=name, pretrained=pretrained or False), untrained=not pretrained)


def find_demo_checkpoint(runs: str | os.PathLike = "runs") -> Path | None:
    """The newest ``model.safetensors`` that ``focalnet demo`` wrote under ``runs/demo-*/``, or None."""
    found = [p for p in Path(runs).glob("demo-*/model.safetensors") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def demo_checkpoint(
    runs: str | os.PathLike = "runs", *, train: bool = True, log: Callable[[str], None] = print
) -> Path | None:
    """The newest demo model in ``runs`` or, when there is none and ``train``, one trained now with
    :func:`focalnet.demo.run_demo` (about a minute on 2 CPU cores, progress shown)."""
    found = find_demo_checkpoint(runs)
    if found is not None or not train:
        return found
    from datetime import datetime

    from ..demo import run_demo

    out = Path(runs) / f"demo-{datetime.now():%Y%m%d-%H%M%S}"
    log(f"no model trained by `focalnet demo` in {runs}/: training the demo's model first ({out})")
    result = run_demo(out, progress=True)
    log(f"trained: held-out accuracy {result['test_accuracy']:.1f}%")
    return out / "model.safetensors"


def load_models(
    checkpoints: Sequence[str | os.PathLike] = (),
    *,
    model_name: str | None = None,
    pretrained: bool | str | None = None,
    runs: str | os.PathLike = "runs",
    train_demo: bool = True,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] = print,
) -> AppModels:
    """The app's models: each checkpoint goes to the tab of its kind (a later one of the same kind
    replaces an earlier one, with a note); ``model_name`` (with ``pretrained``) gives the classifier;
    with neither a classifier checkpoint nor a name, the newest demo model (trained first if needed)."""
    models = AppModels()
    for c in checkpoints:
        loaded = load_checkpoint(c, device)
        if models.get(loaded.kind) is not None:
            models.notes.append(f"{models.get(loaded.kind).source} replaced by {loaded.source}")
        models.put(loaded)
    if model_name is not None:
        models.put(load_released(model_name, pretrained))
    elif models.classifier is None:
        demo = demo_checkpoint(runs, train=train_demo, log=log)
        if demo is not None:
            models.put(load_checkpoint(demo))
            models.classifier.source = f"the newest `focalnet demo` model ({demo})"
    if models.classifier is not None:
        models.classifier.model.to(device)
    if models.classifier is not None and models.classifier.untrained:
        models.notes.append(f"{models.classifier.source}: the maps show an untrained network")
    return models


# ------------------------------------------------------------------------------------------- inputs


def read_upload(path: str | os.PathLike | None, mode: str = "RGB") -> Image.Image:
    """An uploaded file as an 8-bit PIL image in ``mode``; ``ValueError`` naming the file otherwise."""
    from ..engine.images import open_image

    if path is None:
        raise ValueError("no image: upload one or pick an example")
    try:
        return open_image(path, mode)
    except (OSError, ValueError) as e:
        msg = str(e).replace(str(path), Path(path).name)
        raise ValueError(f"cannot read the uploaded file {Path(path).name} as an image ({msg})") from None


def block_choices(model: nn.Module) -> list[str]:
    """Every focal modulation of ``model`` as ``"stage S, block B"`` (0-based)."""
    from ..visualize import find_stages

    return [f"stage {s}, block {b}" for s, stage in enumerate(find_stages(model)) for b in range(len(stage.blocks))]


def parse_block(choice: str) -> tuple[int, int]:
    """``"stage 2, block 5"`` -> ``(2, 5)``."""
    m = re.fullmatch(r"\s*stage\s+(-?\d+)\s*,\s*block\s+(-?\d+)\s*", str(choice))
    if not m:
        raise ValueError(f"block {choice!r}: expected 'stage S, block B'")
    return int(m.group(1)), int(m.group(2))


def default_block(model: nn.Module) -> str:
    """The last block of the deepest stage whose feature map is still at least 7 tokens across at the
    model's input size (the last stage of an ImageNet model at 224; stage 1 of the demo's digits)."""
    from ..visualize import find_stages

    stages = find_stages(model)
    size = model.pretrained_cfg.input_size[-1] // model.cfg.patch_size
    s = 0
    for i in range(len(stages)):
        if size >= 7:
            s = i
        size = -(-size // 2) if getattr(stages[i], "downsample", None) is not None else size
    return f"stage {s}, block {len(stages[s].blocks) - 1}"


# ------------------------------------------------------------------------------------------- tabs


def _png_array(plot: Callable[..., Any], *args: Any, untrained: bool = False, **kwargs: Any) -> np.ndarray:
    """A :mod:`focalnet.visualize` figure as an RGB array (drawn into memory, no file)."""
    from ..drawing import watermark

    buf = io.BytesIO()
    plot(*args, path=buf, **kwargs)
    buf.seek(0)
    img = np.asarray(Image.open(buf).convert("RGB"))
    return watermark(img, above=True) if untrained else img


def _remember(cache: OrderedDict, key: Any, make: Callable[[], Any], size: int = 8) -> Any:
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    cache[key] = value = make()
    while len(cache) > size:
        cache.popitem(last=False)
    return value


@torch.no_grad()
def classify_image(
    loaded: LoadedModel,
    image: Image.Image,
    block: str | tuple[int, int] | None = None,
    *,
    label: str = "image",
    topk: int = 5,
    npz_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Top-``topk`` classes and the modulation of one block (``"stage S, block B"``; default
    :func:`default_block`) on ``image``, preprocessed as ``focalnet visualize`` does.

    Returns ``{"top": [{"class", "index", "prob"}], "maps": ModulationMaps, "crop", "where", "gates",
    "modulator", "kernels"}``: the figures are RGB arrays of :func:`focalnet.visualize.plot_gates`,
    ``plot_modulator`` and ``plot_kernels``. ``npz_path``: also write the raw arrays there, as
    ``focalnet visualize``'s ``maps.npz`` (``stage{S}_block{B}_gates``, ..., ``image0``, ``probs``)."""
    from .. import visualize as viz
    from .. import visualize_page as page
    from ..visualize_cli import prepare_images, top_classes

    model = loaded.model
    if not isinstance(block, tuple):
        block = parse_block(block or default_block(model))
    s, b = viz.resolve_block(model, *block)
    x, crops = prepare_images(model, [image])
    maps, logits = viz.modulation_maps(model, x.to(loaded.device), s, b)
    top = top_classes(model, logits.float().cpu(), topk)[0]
    where = viz.maps_location(maps)
    head = f"{label} -> {top[0]['class']} ({100 * top[0]['prob']:.1f}%)" if top else label
    mark = loaded.untrained
    result = {
        "top": top,
        "maps": maps,
        "crop": crops[0],
        "where": where,
        "gates": _png_array(viz.plot_gates, crops[0], maps, 0, title=f"{head}\nGating maps - {where}", untrained=mark),
        "modulator": _png_array(
            viz.plot_modulator, crops[0], maps, 0, title=f"{head}\nModulator - {where}", untrained=mark
        ),
        "kernels": _remember(loaded.cache, ("kernels",), lambda: _png_array(viz.plot_kernels, model, untrained=mark)),
    }
    if npz_path is not None:
        extra = {"image0": crops[0]}
        if top:
            extra["probs"] = logits.float().cpu().softmax(-1).numpy()
        page.save_maps(npz_path, [maps], extra=extra)
    return result


def detect_image(loaded: LoadedModel, image: Image.Image, score_thr: float = 0.5) -> dict[str, Any]:
    """Detections scoring at least ``score_thr`` on ``image`` (RGB), as ``focalnet detection predict``:
    ``{"image": the drawing (boxes, masks, "name score" labels, or "no detections above the score
    threshold" on a banner), "detections": its JSON records}``. The detector runs once per image; other
    thresholds reuse its output."""
    from ..detection.predict import detect, detection_records, draw_detections, no_detections_note, working_side
    from ..drawing import fit_to_side

    w, h = image.size  # larger images are detected and drawn at the detector's working size (as the CLI)
    small, _ = fit_to_side(image, working_side(loaded.model, h, w))
    img = torch.from_numpy(small.copy()).permute(2, 0, 1)
    key = ("detect", hashlib.sha1(img.numpy().tobytes()).hexdigest(), tuple(img.shape))
    det_all = _remember(loaded.cache, key, lambda: detect(loaded.model, img, 0.0, loaded.device))
    keep = det_all["scores"] >= score_thr
    det = {k: v[keep] for k, v in det_all.items()}
    names = loaded.class_names
    drawn = draw_detections(img, det, names, empty_note=no_detections_note(score_thr))
    return {
        "image": drawn.permute(1, 2, 0).numpy(),
        "detections": detection_records(det, names, loaded.meta.get("category_ids"), with_masks=False),
    }


def segment_image(loaded: LoadedModel, image: Image.Image) -> dict[str, Any]:
    """The label map of ``image`` (RGB) with the model's stored test settings, as ``focalnet segmentation
    predict``: ``{"image": the overlay with its legend, "shares": {class: percent of the pixels},
    "label": class ids (H, W)}``."""
    from ..drawing import fit_to_side
    from ..segmentation.evaluate import TestConfig
    from ..segmentation.predict import overlay_with_legend, predict_image, working_side

    extra = loaded.meta
    test = TestConfig.from_stored(extra.get("test"))
    img, _ = fit_to_side(image, working_side(test, image.size[1], image.size[0]))  # as the CLI: bounded sizes
    if (getattr(loaded.model, "meta", None) or {}).get("segmentor", "upernet") != "upernet":
        return _segment_panoptic(loaded, img, test)
    label = predict_image(
        loaded.model,
        img,
        test,
        loaded.device,
        extra.get("mean", (123.675, 116.28, 103.53)),
        extra.get("std", (58.395, 57.12, 57.375)),
    )
    drawn, shares = overlay_with_legend(img, label, loaded.class_names)
    return {"image": drawn, "shares": shares, "label": label}


def _segment_panoptic(loaded: LoadedModel, img: np.ndarray, test: Any) -> dict[str, Any]:
    """A universal segmentor's (Mask2Former's) panoptic result, as ``focalnet segmentation predict`` draws
    it: classes coloured, every segment outlined, a legend naming things and stuff; ``"segments"`` lists
    them (class, thing or stuff, score)."""
    from ..segmentation.universal_eval import infer_logits, panoptic_of, panoptic_overlay

    extra = loaded.meta
    mean, std = extra.get("mean", (123.675, 116.28, 103.53)), extra.get("std", (58.395, 57.12, 57.375))
    cls, masks = infer_logits(loaded.model, img, test, loaded.device, mean, std)
    seg, info = panoptic_of(loaded.model, cls, masks)
    label = np.full(seg.shape, 255, dtype=np.int64)
    for s in info:
        label[seg == s["id"]] = s["category_id"]
    drawn, shares = panoptic_overlay(img, seg, info, loaded.class_names)
    segments = [
        {"class": loaded.class_names[s["category_id"]], "isthing": s["isthing"], "score": s["score"]} for s in info
    ]
    return {"image": drawn, "shares": shares, "label": label, "segments": segments}


# ------------------------------------------------------------------------------------------- examples

_PHOTOS = {"chelsea": "a cat", "coffee": "a cup of coffee", "astronaut": "an astronaut", "rocket": "a rocket"}


def write_examples(folder: str | os.PathLike, digits: Sequence[int] = (0, 3, 7)) -> dict[str, list[Path]]:
    """PNG examples from installed packages, written into ``folder``: scikit-image's photos
    (``"photos"``) and scikit-learn's handwritten digits upsampled to 128x128 (``"digits"``, the demo
    model's kind of input)."""
    import torch.nn.functional as F
    from skimage import data as skdata
    from sklearn.datasets import load_digits

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    photos = []
    for name in _PHOTOS:
        p = out / f"{name}.png"
        if not p.exists():
            Image.fromarray(getattr(skdata, name)()).convert("RGB").save(p)
        photos.append(p)
    d = load_digits()
    nums = []
    for digit in digits:
        p = out / f"digit_{digit}.png"
        if not p.exists():
            i = int(np.flatnonzero(d.target == digit)[0])
            x = torch.from_numpy(d.images[i].astype(np.float32) / 16.0)[None, None]
            up = F.interpolate(x, size=(128, 128), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)
            Image.fromarray((up.numpy() * 255).round().astype(np.uint8)).save(p)
        nums.append(p)
    return {"photos": photos, "digits": nums}


def score_threshold(value: Any) -> float:
    """The detection tab's score threshold from a client: a number in [0, 1], else one line."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"the score threshold must be a number from 0 to 1, got {str(value)[:40]!r}")
    return float(value)


def tab_name(kind: str) -> str:
    """The tab that shows models of ``kind``."""
    return _TAB[kind]


def one_line(e: BaseException) -> str:
    """An exception as one line for the page and the terminal (no traceback)."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def log_problem(where: str, e: BaseException) -> None:
    """Say a handled problem on the terminal in one line."""
    print(f"focalnet app: {where}: {one_line(e)}", file=sys.stderr, flush=True)
