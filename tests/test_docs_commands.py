"""Every ``focalnet`` command of README.md and docs/*.md runs (issue 26).

The commands are read from the fenced shell blocks (``bash``/``shell``/``console``/no language; continuation
lines joined, comments and ``$`` prompts stripped; ``torchrun ... -m focalnet`` and ``python -m focalnet``
included) and looked up in :data:`COMMANDS`: each is exercised, in-process, against tiny stand-ins for the
docs' placeholder paths (:data:`PLACES`, files made by the package itself: tiny classifiers, detectors and
segmentors, their original-layout conversions, the small data of ``../shared/data``), or skipped with its
reason. ``train`` commands run with ``--dry-run`` (their output folder must stay absent); ``torchrun`` lines
run as one process; everything else runs for real. A documented command missing from the table fails
:func:`test_every_documented_command_is_in_the_table`, so a new doc example cannot go untested. The README's
Python blocks run too (its ``>>>`` block is a doctest: ``--doctest-glob=README.md``).
"""

from __future__ import annotations

import glob
import json
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import DATA, REPO, need, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELLS = {"", "bash", "sh", "shell", "console"}
COCO = DATA / "coco-tiny"
TINY_BACKBONE = "{embed_dim: 16, depths: [1, 1, 1, 1]}"


@dataclass(frozen=True)
class Run:
    """Exercised: as written (``instead``: the runnable form of a synopsis line); ``slow``: in ``-m slow``."""

    slow: bool = False
    instead: str | None = None


@dataclass(frozen=True)
class Skip:
    """Not run, for ``reason`` (GPU, network, hours of training, a server that runs until stopped)."""

    reason: str


NETWORK = Skip("network: downloads the released weights (tests/test_weights.py mocks the hub)")
SERVER = Skip("serves until stopped: tests/test_app.py starts the app and drives every tab")

# every documented command (whitespace collapsed) -> its outcome
COMMANDS: dict[str, Run | Skip] = {
    # README.md
    "focalnet demo": Run(slow=True),
    "focalnet models": Run(),
    "focalnet info CHECKPOINT": Run(instead="focalnet info focalnet_tiny_srf.pth"),
    "focalnet convert IN OUT --to timm": Run(instead="focalnet convert released_size/focalnet_tiny_srf.pth timm_model --to timm"),
    "focalnet classify [IMAGE...] [--pretrained | --checkpoint C]": Run(
        instead="focalnet classify cat.jpg --checkpoint runs/imagenette/model.safetensors"
    ),
    "focalnet visualize cat.jpg --model focalnet_tiny_srf --pretrained --output runs/maps/": NETWORK,
    "focalnet visualize digit.png --checkpoint runs/demo-*/model.safetensors --output runs/maps/ --stage 0 --block -1": Run(),
    "focalnet app": SERVER,
    "focalnet app --checkpoint runs/det-tiny/model.pt runs/camvid/model.pt --port 7861": SERVER,
    "focalnet app --checkpoint runs/camvid/model.pt --allow-load runs/ --max-upload-mb 20": SERVER,
    "focalnet classification train --config imagenette_cpu --data ../shared/data/imagenette --output runs/imagenette": Run(),
    "torchrun --nproc_per_node 2 -m focalnet classification train --config imagenette_cpu --data ../shared/data/imagenette --output runs/imagenette-ddp --epochs 1 --set data.num_workers=0 data.max_per_class=32": Run(),
    "focalnet classification train --output runs/imagenette --resume auto": Run(),
    "focalnet classification evaluate --checkpoint runs/imagenette/model.safetensors --data ../shared/data/imagenette --output runs/imagenette/eval": Run(slow=True),
    "focalnet classification evaluate --model focalnet_tiny_srf --pretrained --data ../shared/data/imagenette": NETWORK,
    "focalnet classification predict --checkpoint runs/imagenette/model.safetensors photo.jpg --topk 3 --output runs/cls-preds": Run(),
    "focalnet classification throughput --model focalnet_tiny_srf --batch-size 16": Run(slow=True),
    "focalnet detection train --config mask_rcnn_focalnet_cpu_tiny --data ../shared/data/coco-tiny --output runs/det-tiny --epochs 2": Run(),
    "focalnet detection train --backbone focalnet_tiny_lrf --config mask_rcnn_focalnet_tiny_lrf_1x --backbone-checkpoint focalnet_tiny_lrf.pth --data /path/to/coco --output runs/mrcnn_t_lrf_1x": Run(),
    "focalnet detection evaluate --checkpoint runs/det-tiny/model.pt --data ../shared/data/coco-tiny --output runs/det-tiny/eval": Run(slow=True),
    "focalnet detection predict photo.jpg --checkpoint runs/det-tiny/model.pt --output runs/det-preds --score-thr 0.5": Run(),
    "focalnet detection convert mask_rcnn_focalnet_tiny_lrf_3x.pth focalnet_tiny_lrf_mask_rcnn_3x.pt": Run(),
    "focalnet detection train --config cascade_mask_rcnn_focalnet_cpu_tiny --data ../shared/data/coco-tiny --output runs/casc-tiny --epochs 1": Run(),
    "focalnet segmentation train --config upernet_focalnet_tiny_srf_camvid_cpu --backbone focalnet_tiny_srf --data ../shared/data/camvid --layout folder --ignore-index 11 --output runs/camvid --iters 2000 --batch-size 4": Run(),
    "focalnet segmentation evaluate --checkpoint runs/camvid/model.pt --data ../shared/data/camvid --mode slide": Run(slow=True),
    "focalnet segmentation evaluate --checkpoint runs/camvid/model.pt --data ../shared/data/camvid --multi-scale --flip": Run(slow=True),
    "focalnet segmentation predict ../shared/data/camvid/val/0016E5_07959.png --checkpoint runs/camvid/model.pt --output runs/seg-preds/": Run(),
    "focalnet segmentation predict photo.jpg --checkpoint upernet_focalnet_tiny_srf_160k_ade20k.pth --output runs/seg-preds": Run(),
    "focalnet segmentation convert upernet_focalnet_tiny_srf_160k_ade20k.pth upernet_t_srf.pt": Run(),
    "focalnet segmentation configs": Run(),
    "focalnet benchmark --threads 2 --batch-sizes 1,32 --train-batch 16 --reps 5 --warmup 2 --min-time 2 --output runs/benchmark": Skip(
        "the README's 2-core benchmark: ~15 minutes of FocalNet-T at 224 (tests/test_figures.py checks its figures)"
    ),
    # docs/classification.md
    "focalnet classification train --model focalnet_tiny_srf --data /path/to/imagenet --output runs/tiny_srf": Run(),
    "torchrun --nproc_per_node 8 -m focalnet classification train --model focalnet_tiny_srf --data /path/to/imagenet --output runs/tiny_srf": Run(),
    "focalnet classification train --config imagenette_cpu --data ../shared/data/imagenette --output runs/imagenette --epochs 2 --batch-size 16 --img-size 96 --set aug.mixup=0.8 aug.cutmix=1.0 train.ema_decay=0.999": Run(),
    "focalnet classification train --model focalnet_large_fl3 --data /path/to/imagenet --output runs/l_ft": Run(),
    "focalnet classification train --config imagenette_cpu --checkpoint runs/imagenette/model.safetensors --data my_dataset --output runs/ft --epochs 10 --set train.layer_decay=0.9 train.base_lr=5e-4": Run(),
    'focalnet classification evaluate --checkpoint "$(ls runs/imagenette/checkpoints/checkpoint-*.pt | tail -1)" --data ../shared/data/imagenette': Run(slow=True),
    "focalnet classification evaluate --model focalnet_large_fl3 --pretrained --head-subset in1k --data /path/to/imagenet": NETWORK,
    "focalnet classification predict --checkpoint runs/imagenette/model.safetensors ../shared/data/imagenette/val/n01440764 --topk 3 --output runs/cls-preds": Run(slow=True),
    "focalnet classification throughput --model focalnet_tiny_srf --batch-size 128": Run(slow=True),
    "focalnet classification throughput --model focalnet_tiny_srf --batch-size 16 --device cpu --output runs/tp": Run(slow=True),
    # docs/detection.md
    "torchrun --nproc_per_node 8 -m focalnet detection train --config mask_rcnn_focalnet_tiny_lrf_1x --data /data/coco --output runs/mask_rcnn_t_lrf_1x --backbone-checkpoint focalnet_tiny_lrf.pth": Run(),
    "focalnet detection train --config mask_rcnn_focalnet_cpu_tiny --data ../shared/data/coco-tiny --output runs/det-tiny --epochs 40 --dry-run": Run(),
    "focalnet detection train --backbone focalnet_small_srf --detector faster_rcnn --train-ann my/train.json --train-images my/images --val-ann my/val.json --val-images my/images --output runs/mine --epochs 24 --batch-size 4 --min-size 512 --max-size 853 --set optim.lr=2e-4 model.frozen_stages=1 model.grad_checkpointing=true": Run(),
    "focalnet detection predict photo1.jpg photo2.jpg --checkpoint runs/det-tiny/model.pt --out preds --score-thr 0.5": Run(),
    "torchrun --nproc_per_node 8 -m focalnet detection train --config cascade_mask_rcnn_focalnet_tiny_lrf_3x --data /data/coco --output runs/cascade_t_lrf_3x --backbone-checkpoint focalnet_tiny_lrf.pth": Run(),
    "focalnet detection train --detector cascade_mask_rcnn --config mask_rcnn_focalnet_cpu_tiny ...": Run(
        instead="focalnet detection train --detector cascade_mask_rcnn --config mask_rcnn_focalnet_cpu_tiny "
        "--data /data/coco --output runs/casc"
    ),
    "focalnet detection convert cascade_mask_rcnn_focalnet_tiny_lrf_3x.pth focalnet_tiny_lrf_cascade_3x.pt": Run(),
    "focalnet detection train --detector sparse_rcnn --config sparse_rcnn_focalnet_cpu_tiny --data ../shared/data/coco-tiny --output runs/sparse-tiny --epochs 1": Run(),
    "torchrun --nproc_per_node 8 -m focalnet detection train --config sparse_rcnn_focalnet_tiny_lrf_3x --data /data/coco --output runs/sparse_rcnn_t_lrf_3x --backbone-checkpoint focalnet_tiny_lrf.pth": Run(),
    "focalnet detection convert sparse_rcnn_focalnet_tiny_lrf_3x.pth focalnet_tiny_lrf_sparse_rcnn_3x.pt": Run(),
    "focalnet detection train --config atss_focalnet_cpu_tiny --data ../shared/data/coco-tiny --output runs/atss-tiny --epochs 1": Run(),
    "torchrun --nproc_per_node 8 -m focalnet detection train --config atss_focalnet_tiny_lrf_3x --data /data/coco --output runs/atss_t_lrf_3x --backbone-checkpoint focalnet_tiny_lrf.pth": Run(),
    "focalnet detection convert atss_focalnet_tiny_lrf_3x.pth focalnet_tiny_lrf_atss_3x.pt": Run(),
    "focalnet detection convert focalnet_large_fl4_o365_finetuned_on_coco.pth dino_l.pt": Run(),
    "focalnet detection convert dino_l.pt back.pth --to original": Run(),
    "focalnet detection predict photo.jpg --checkpoint focalnet_large_fl4_o365_finetuned_on_coco.pth": Run(slow=True),
    "focalnet detection train --detector dino --config dino_focalnet_cpu_tiny --data ../shared/data/coco-tiny --output runs/dino-tiny --epochs 1": Run(),
    "torchrun --nproc_per_node 8 -m focalnet detection train --config dino_focalnet_large_fl4_5scale --data /data/coco --output runs/dino_l_fl4_5scale --backbone-checkpoint focalnet_large_lrf_384_fl4.pth": Run(),
    "focalnet detection train --detector dino --config dino_focalnet_large_fl3_4scale --backbone focalnet_tiny_lrf --data /data/coco --output runs/dino_t --min-size 512 --max-size 853 --set model.drop_path_rate=0.1 model.dino.num_queries=300 model.dino.num_select=100": Run(),
    # docs/segmentation.md
    "focalnet segmentation train --config upernet_focalnet_tiny_srf_camvid_cpu --backbone focalnet_tiny_srf --data ../shared/data/camvid --layout folder --ignore-index 11 --class-names Sky,Building,Pole,Road,Pavement,Tree,SignSymbol,Fence,Car,Pedestrian,Bicyclist --backbone-checkpoint focalnet_tiny_srf.pth --output runs/camvid --iters 2000 --batch-size 4": Run(),
    "focalnet segmentation evaluate --checkpoint runs/camvid/model.pt --data ../shared/data/camvid": Run(slow=True),
    "focalnet segmentation predict ../shared/data/camvid/val/0016E5_07959.png --checkpoint runs/camvid/model.pt --out preds/": Run(),
    "focalnet segmentation evaluate --checkpoint runs/ade/model.pt --data ../shared/data/ade20k-sample --layout ade20k": Run(),
    "torchrun --nproc_per_node 8 -m focalnet segmentation train --config upernet_focalnet_tiny_srf_ade20k_160k --data /data/ADEChallengeData2016 --backbone-checkpoint focalnet_tiny_srf.pth --output runs/ade_t_srf": Run(),
    "focalnet segmentation evaluate --checkpoint runs/ade_t_srf/model.pt --data /data/ADEChallengeData2016": Run(slow=True),
    "torchrun --nproc_per_node 8 -m focalnet segmentation evaluate --checkpoint runs/ade_t_srf/model.pt --data /data/ADEChallengeData2016 --multi-scale --flip": Run(slow=True),
    "focalnet segmentation evaluate --checkpoint runs/ade_t_srf/model.pt --data /data/ADEChallengeData2016 --mode slide": Run(slow=True),
    "focalnet segmentation predict photo.jpg --checkpoint upernet_focalnet_tiny_srf_160k_ade20k.pth --out preds/": Run(),
    "focalnet segmentation evaluate --checkpoint upernet_focalnet_tiny_srf_160k_ade20k.pth --data /data/ADEChallengeData2016": Run(slow=True),
    "focalnet segmentation train --checkpoint upernet_focalnet_tiny_srf_160k_ade20k.pth --data ../shared/data/camvid --layout folder --ignore-index 11 --output runs/camvid-ft --iters 2000 --batch-size 4": Run(),
    "focalnet segmentation convert upernet_t_srf.pt upernet_t_srf_original.pth --to original": Run(),
    "focalnet segmentation pq --gt-json /data/coco/annotations/panoptic_val2017.json --gt-folder /data/coco/annotations/panoptic_val2017 --pred-json preds/panoptic.json --pred-folder preds/panoptic --output preds": Skip(
        "needs COCO panoptic annotations, which ../shared/data lacks (tests/test_pq.py runs it on generated panoptic files)"
    ),
    "focalnet segmentation evaluate --checkpoint runs/m2f-cpu/model.pt --data /data/coco_panoptic": Run(),
    "focalnet segmentation pq --gt-json /data/coco_panoptic/annotations/panoptic_val2017.json --pred-json runs/m2f-preds/panoptic.json --pred-folder runs/m2f-preds/panoptic": Run(),
    "focalnet segmentation predict /data/coco_panoptic/val2017/*.jpg --checkpoint runs/m2f-cpu/model.pt --output runs/m2f-preds": Run(),
    "focalnet segmentation train --segmentor mask2former --task instance --config mask2former_focalnet_cpu_tiny --data ../shared/data/coco-tiny --output runs/m2f-instances --iters 20": Run(),
    "focalnet segmentation train --segmentor mask2former --task panoptic --config mask2former_focalnet_cpu_tiny --data /data/coco_panoptic --output runs/m2f-cpu": Run(),
    "focalnet segmentation train --segmentor mask2former --task semantic --config mask2former_focalnet_cpu_tiny --data ../shared/data/camvid --layout folder --ignore-index 11 --output runs/m2f-camvid --iters 20": Run(),
    "focalnet segmentation convert model_final.pkl m2f.pt": Run(),
    "focalnet segmentation convert m2f.pt m2f_official.pth --to original": Run(),
    # docs/deploy.md
    "focalnet export runs/det-tiny/model.pt --output runs/det-tiny.onnx": Run(slow=True),  # ~40-60 s: 3 checked sizes
    "focalnet export runs/camvid/model.pt --output runs/camvid.onnx": Run(),
    "focalnet export runs/imagenette/model.safetensors --output runs/imagenette.onnx": Run(),
    "focalnet detection predict photo.jpg --checkpoint runs/det-tiny.onnx --output runs/preds-onnx": Run(slow=True),
    "focalnet segmentation predict photo.jpg --checkpoint runs/camvid.onnx --out runs/seg-onnx": Run(),
    "focalnet benchmark --kinds classification,segmentation,detection --tiny --threads 2 --reps 3 --min-time 0.5": Run(slow=True),
    "focalnet benchmark --kinds classification,segmentation,detection --threads 2 --reps 3": Skip(
        "about 25 minutes on 2 CPU cores (three real-size models exported, checked and timed)"
    ),
    # docs/visualize.md
    "focalnet demo --epochs 3": Run(slow=True),
    "focalnet demo --out my_run --stage 0 --block 0": Run(slow=True),
    "focalnet demo --pretrained": NETWORK,
    "focalnet visualize cat.jpg dog.jpg --model focalnet_tiny_srf --pretrained --out maps/": NETWORK,
    "focalnet visualize digit.png --checkpoint runs/demo-*/model.safetensors --out maps/ --stage 0": Run(slow=True),
    "focalnet visualize street.jpg --checkpoint focalnet_tiny_lrf.pth --out maps/ --stage 2 --block -1 --size 384": Run(slow=True),
}  # fmt: skip

# the docs' placeholder paths -> the stand-ins (files the workspace makes; DATA folders)
PLACES: dict[str, str] = {
    "/data/ADEChallengeData2016": "ADEChallengeData2016",
    "/data/coco": str(COCO),
    "/data/coco_panoptic": "coco_panoptic",  # a generated COCO-panoptic folder (tests/panoptic_synth.py)
    "/path/to/coco": str(COCO),
    "/path/to/imagenet": str(DATA / "imagenette"),
    "my_dataset": str(DATA / "imagenette"),
}


def _joined(block: list[str]) -> list[str]:
    """The block's commands: continuation lines joined, ``$`` prompts and comments stripped."""
    out, cur = [], ""
    for line in block:
        line = line.rstrip()
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        out.append(cur + line)
        cur = ""
    commands = []
    for line in out:
        line = line.strip()
        if line.startswith("$ "):
            line = line[2:]
        if not line or line.startswith("#"):
            continue
        line = re.sub(r"\s+#.*$", "", line)
        for part in line.split("&&"):
            words = part.split()
            if words and (words[0] in ("focalnet", "torchrun") or words[:3] == ["python", "-m", "focalnet"]):
                commands.append(" ".join(words))
    return commands


def documented_commands() -> list[tuple[str, str]]:
    """``(file name, command)`` of every focalnet command in the docs' fenced shell blocks, in order."""
    found = []
    for doc in DOCS:
        lang, block = None, []
        for line in doc.read_text().splitlines():
            fence = re.match(r"^\s*```\s*(\w*)\s*$", line)
            if fence and lang is None:
                lang, block = fence.group(1), []
            elif line.strip().startswith("```") and lang is not None:
                if lang in SHELLS:
                    found += [(doc.name, c) for c in _joined(block)]
                lang = None
            elif lang is not None:
                block.append(line)
    return found


def test_every_documented_command_is_in_the_table():
    documented = {c for _, c in documented_commands()}
    missing = sorted(documented - set(COMMANDS))
    assert not missing, "documented commands neither exercised nor skipped in COMMANDS:\n" + "\n".join(missing)
    assert len(documented) > 60 and "focalnet models" in documented
    unused = sorted(set(COMMANDS) - documented)
    assert not unused, "COMMANDS lists commands the docs no longer have:\n" + "\n".join(unused)


# ------------------------------------------------------------------------------------------- the stand-ins
class Workspace:
    """A folder holding the docs' relative paths, made on demand by the package itself (tiny models)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: set[str] = set()

    def __call__(self, name: str) -> None:
        """Make ``name`` (a placeholder of the docs) if a maker knows it and it is absent."""
        maker = MAKERS.get(name)
        if maker is not None and name not in self.made:
            self.made.add(name)
            maker(self)

    # ----- makers
    def image(self, name: str, source: Path | None = None) -> None:
        src = source or next(iter(sorted((COCO / "val2017").iterdir())))
        shutil.copy(src, self.root / name)

    def classifier(self, name: str) -> None:
        import torch

        from focalnet import create_model

        model = create_model("focalnet_tiny_srf", embed_dim=16, depths=(1, 1, 1, 1), num_classes=10)
        torch.save({"model": model.state_dict()}, self.root / name)  # the original layout

    def cli(self, *argv: str) -> None:
        rc, out, err = run_cli(*argv)
        assert rc == 0, (argv, err[-2000:])

    def detector(self, config: str, out: str) -> None:
        from focalnet.detection.config import load_detection_config
        from focalnet.detection.load import save_detector
        from focalnet.detection.registry import build_from_config

        cats = json.loads((COCO / "annotations" / "instances_val2017.json").read_text())["categories"]
        cats = sorted(cats, key=lambda c: c["id"])
        cfg = load_detection_config(config)
        model = build_from_config(cfg.model, len(cats) + 1)  # as training on coco-tiny builds it
        (self.root / out).parent.mkdir(parents=True, exist_ok=True)
        save_detector(self.root / out, model, cfg, [c["name"] for c in cats], [c["id"] for c in cats])

    def original_detector(self, config: str, name: str) -> None:
        self.detector(config, f"tiny/{name}.pt")
        self.cli("detection", "convert", f"tiny/{name}.pt", name, "--to", "original")

    def segmentor(self, out: str, data: str, *layout: str) -> None:
        self.cli(
            "segmentation", "train", "--data", data, *layout, "--output", f"tiny/{out}", "--iters", "1",
            "--batch-size", "2", "--no-eval", "--no-progress", "--set", "aug.crop_size=[64, 64]",
            f"model.backbone_overrides={TINY_BACKBONE}", "model.head.channels=16", "model.head.aux_channels=16",
        )  # fmt: skip
        (self.root / out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.root / "tiny" / out / "model.pt", self.root / out)

    def copy(self, src: str, out: str) -> None:
        self(src)
        (self.root / out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.root / src, self.root / out)


def _imagenette_run(ws: Workspace) -> None:
    """runs/imagenette as the imagenette_cpu recipe leaves it (its model; one update on 20 images)."""
    from focalnet.classification import load_classification_config, train

    sets = ["data.max_per_class=2", "data.img_size=32", "train.max_steps=1", "train.batch_size=4", "eval.enabled=false"]
    cfg = load_classification_config("imagenette_cpu", [f"data.path={DATA / 'imagenette'}", *sets])
    cfg.output_dir, cfg.train.progress = str(ws.root / "runs" / "imagenette"), False
    train(cfg)


def _released_size(ws: Workspace) -> None:
    """An ImageNet FocalNet-T (SRF) of the released size in the original layout (random weights: timm knows
    the released sizes only)."""
    import torch

    from focalnet import create_model

    (ws.root / "released_size").mkdir()
    torch.save(
        {"model": create_model("focalnet_tiny_srf").state_dict()}, ws.root / "released_size" / "focalnet_tiny_srf.pth"
    )


def _ade(ws: Workspace) -> None:
    """/data/ADEChallengeData2016: the ADE20K layout (images/ and annotations/ of training and validation,
    objectInfo150.csv) holding the 3 images of ade20k-sample under 16 names each (the recipe's batch is 16)."""
    src = DATA / "ade20k-sample"
    root = ws.root / "ADEChallengeData2016"
    shutil.copy(src / "objectInfo150.csv", root.mkdir(parents=True) or root / "objectInfo150.csv")
    for split in ("training", "validation"):
        for kind in ("images", "annotations"):
            (root / kind / split).mkdir(parents=True)
        for i in range(16):
            for img in sorted((src / "sampleData" / "images").glob("*.jpg")):
                name = f"{img.stem}_{i:02d}"
                (root / "images" / split / f"{name}.jpg").symlink_to(img)
                (root / "annotations" / split / f"{name}.png").symlink_to(
                    src / "sampleData" / "annotations" / f"{img.stem}.png"
                )


def _demo_model(ws: Workspace) -> None:
    from focalnet import save_model
    from focalnet.demo import build_demo_model

    (ws.root / "runs" / "demo-docs").mkdir(parents=True)
    save_model(build_demo_model(), ws.root / "runs" / "demo-docs" / "model.safetensors", class_names=list("0123456789"))


def _digit(ws: Workspace) -> None:
    from PIL import Image

    Image.new("L", (32, 32), 0).save(ws.root / "digit.png")


def _own_coco(ws: Workspace) -> None:
    """docs/detection.md's own data: my/train.json, my/val.json and one image folder for both."""
    (ws.root / "my" / "images").mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copy(COCO / "annotations" / f"instances_{split}2017.json", ws.root / "my" / f"{split}.json")
        for f in (COCO / f"{split}2017").iterdir():
            (ws.root / "my" / "images" / f.name).symlink_to(f)


def _ade_segmentor(ws: Workspace) -> None:
    ws.segmentor("runs/ade/model.pt", str(DATA / "ade20k-sample"), "--layout", "ade20k")


def _coco_panoptic(ws: Workspace) -> None:
    from panoptic_synth import write_synthetic_panoptic

    write_synthetic_panoptic(ws.root / "coco_panoptic", n_train=4, n_val=2, size=64, seed=0)


def _m2f_run(ws: Workspace) -> None:
    """runs/m2f-cpu/model.pt: the CPU recipe trained one update on the generated panoptic folder."""
    ws("coco_panoptic")
    ws.cli(
        "segmentation", "train", "--segmentor", "mask2former", "--task", "panoptic",
        "--config", "mask2former_focalnet_cpu_tiny", "--data", "coco_panoptic", "--output", "tiny/m2f-cpu",
        "--iters", "1", "--no-eval", "--no-progress",
    )  # fmt: skip
    ws.copy("tiny/m2f-cpu/model.pt", "runs/m2f-cpu/model.pt")


def _m2f_preds(ws: Workspace) -> None:
    ws("runs/m2f-cpu/model.pt")
    images = sorted(str(p.relative_to(ws.root)) for p in (ws.root / "coco_panoptic" / "val2017").glob("*.jpg"))
    ws.cli("segmentation", "predict", *images, "--checkpoint", "runs/m2f-cpu/model.pt", "--output", "runs/m2f-preds")


def _model_zoo_pkl(ws: Workspace) -> None:
    """model_final.pkl: the tiny Mask2Former in the official layout, pickled as detectron2's model zoo does."""
    import pickle

    import torch

    ws("runs/m2f-cpu/model.pt")
    ws.cli("segmentation", "convert", "runs/m2f-cpu/model.pt", "tiny/m2f_official.pth", "--to", "original")
    obj = torch.load(ws.root / "tiny" / "m2f_official.pth", weights_only=True)
    arrays = {k: v.numpy() for k, v in obj["model"].items()}
    with open(ws.root / "model_final.pkl", "wb") as f:
        pickle.dump({"model": arrays, "__author__": "docs test", "matching_heuristics": True}, f)


MAKERS = {
    "coco_panoptic": _coco_panoptic,
    "runs/m2f-cpu/model.pt": _m2f_run,
    "runs/m2f-preds/panoptic.json": _m2f_preds,
    "model_final.pkl": _model_zoo_pkl,
    "ADEChallengeData2016": _ade,
    "released_size/focalnet_tiny_srf.pth": _released_size,
    "cat.jpg": lambda ws: ws.image("cat.jpg"),
    "dog.jpg": lambda ws: ws.image("dog.jpg"),
    "photo.jpg": lambda ws: ws.image("photo.jpg"),
    "photo1.jpg": lambda ws: ws.image("photo1.jpg"),
    "photo2.jpg": lambda ws: ws.image("photo2.jpg"),
    "street.jpg": lambda ws: ws.image("street.jpg"),
    "digit.png": _digit,
    "focalnet_tiny_srf.pth": lambda ws: ws.classifier("focalnet_tiny_srf.pth"),
    "focalnet_tiny_lrf.pth": lambda ws: ws.classifier("focalnet_tiny_lrf.pth"),
    "focalnet_large_lrf_384_fl4.pth": lambda ws: ws.classifier("focalnet_large_lrf_384_fl4.pth"),
    "runs/imagenette/model.safetensors": _imagenette_run,
    "runs/imagenette/checkpoints/checkpoint-*.pt": lambda ws: ws("runs/imagenette/model.safetensors"),
    "runs/imagenette": lambda ws: ws("runs/imagenette/model.safetensors"),
    "runs/demo-*/model.safetensors": _demo_model,
    "my/train.json": _own_coco,
    "runs/det-tiny/model.pt": lambda ws: ws.detector("mask_rcnn_focalnet_cpu_tiny", "runs/det-tiny/model.pt"),
    "mask_rcnn_focalnet_tiny_lrf_3x.pth": lambda ws: ws.original_detector(
        "mask_rcnn_focalnet_cpu_tiny", "mask_rcnn_focalnet_tiny_lrf_3x.pth"
    ),
    "cascade_mask_rcnn_focalnet_tiny_lrf_3x.pth": lambda ws: ws.original_detector(
        "cascade_mask_rcnn_focalnet_cpu_tiny", "cascade_mask_rcnn_focalnet_tiny_lrf_3x.pth"
    ),
    "sparse_rcnn_focalnet_tiny_lrf_3x.pth": lambda ws: ws.original_detector(
        "sparse_rcnn_focalnet_cpu_tiny", "sparse_rcnn_focalnet_tiny_lrf_3x.pth"
    ),
    "atss_focalnet_tiny_lrf_3x.pth": lambda ws: ws.original_detector(
        "atss_focalnet_cpu_tiny", "atss_focalnet_tiny_lrf_3x.pth"
    ),
    "focalnet_large_fl4_o365_finetuned_on_coco.pth": lambda ws: ws.original_detector(
        "dino_focalnet_cpu_tiny", "focalnet_large_fl4_o365_finetuned_on_coco.pth"
    ),
    "dino_l.pt": lambda ws: (
        ws("focalnet_large_fl4_o365_finetuned_on_coco.pth"),
        ws.cli("detection", "convert", "focalnet_large_fl4_o365_finetuned_on_coco.pth", "dino_l.pt"),
    ),
    "runs/camvid/model.pt": lambda ws: ws.segmentor(
        "runs/camvid/model.pt", str(DATA / "camvid"), "--layout", "folder", "--ignore-index", "11"
    ),
    "runs/ade/model.pt": _ade_segmentor,
    "runs/det-tiny.onnx": lambda ws: (
        ws("runs/det-tiny/model.pt"),
        ws.cli("export", "runs/det-tiny/model.pt", "--output", "runs/det-tiny.onnx"),
    ),
    "runs/camvid.onnx": lambda ws: (
        ws("runs/camvid/model.pt"),
        ws.cli("export", "runs/camvid/model.pt", "--output", "runs/camvid.onnx"),
    ),
    "runs/ade_t_srf/model.pt": lambda ws: ws.copy("runs/ade/model.pt", "runs/ade_t_srf/model.pt"),
    "upernet_focalnet_tiny_srf_160k_ade20k.pth": lambda ws: (
        ws("runs/ade/model.pt"),
        ws.cli(
            "segmentation",
            "convert",
            "runs/ade/model.pt",
            "upernet_focalnet_tiny_srf_160k_ade20k.pth",
            "--to",
            "original",
        ),
    ),  # fmt: skip
    "upernet_t_srf.pt": lambda ws: (
        ws("upernet_focalnet_tiny_srf_160k_ade20k.pth"),
        ws.cli("segmentation", "convert", "upernet_focalnet_tiny_srf_160k_ade20k.pth", "upernet_t_srf.pt"),
    ),
}


def runnable(command: str, ws: Workspace) -> tuple[list[str], bool]:
    """The command as ``focalnet`` arguments with the stand-ins in place (``--dry-run`` added to ``train``),
    and whether it is a training command; the inputs it names are made first."""
    outcome = COMMANDS[command]
    text = outcome.instead if isinstance(outcome, Run) and outcome.instead else command
    text = re.sub(r'"\$\(ls ([^ |]+) \| tail -1\)"', lambda m: _newest(ws, m.group(1)), text)
    words = shlex.split(text)
    if words[0] == "torchrun":  # one process: the command after ``-m focalnet``
        words = words[words.index("-m") + 2 :]
    elif words[:3] == ["python", "-m", "focalnet"]:
        words = words[3:]
    else:
        words = words[1:]
    argv = []
    for w in words:
        w = w.replace("../shared/data/", str(DATA) + "/")
        w = PLACES.get(w, w)
        head = next((p for p in PLACES if w.startswith(p + "/")), None)
        if head is not None:  # a path inside a placeholder folder
            ws(PLACES[head])
            w = PLACES[head] + w[len(head) :]
        ws(w)
        if "*" in w:
            matches = sorted(glob.glob(w, root_dir=ws.root))
            assert matches, f"{w}: no file made for this pattern"
            w = matches[-1]
        argv.append(w)
    is_train = argv[0] in ("classification", "detection", "segmentation") and argv[1] == "train"
    return (argv + ["--dry-run"] if is_train and "--dry-run" not in argv else argv), is_train


def _newest(ws: Workspace, pattern: str) -> str:
    ws(pattern)
    matches = sorted(glob.glob(pattern, root_dir=ws.root))
    assert matches, pattern
    return matches[-1]


def _cases() -> list:
    cases = []
    for command, outcome in COMMANDS.items():
        marks = [pytest.mark.slow] if isinstance(outcome, Run) and outcome.slow else []
        if isinstance(outcome, Skip):
            marks = [pytest.mark.skip(reason=outcome.reason)]
        cases.append(pytest.param(command, marks=marks, id=command))
    return cases


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    for name in ("imagenette", "coco-tiny", "camvid", "ade20k-sample"):
        need(DATA / name)
    return Workspace(tmp_path_factory.mktemp("docs"))


@pytest.mark.parametrize("command", _cases())
def test_documented_command_runs(command, workspace, monkeypatch):
    monkeypatch.chdir(workspace.root)
    argv, is_train = runnable(command, workspace)
    outputs = [argv[i + 1] for i, w in enumerate(argv[:-1]) if w in ("--output", "--out") and is_train]
    before = {o: (workspace.root / o).exists() for o in outputs}
    rc, stdout, stderr = run_cli(*argv)
    assert rc == 0, f"{' '.join(argv)}\n{stderr[-3000:]}"
    if "--dry-run" in argv:
        assert stdout.rstrip().splitlines()[-1].startswith("dry run: ")
        for o in outputs:  # a dry run writes nothing: a new run's folder stays absent
            assert (workspace.root / o).exists() == before[o], o


@pytest.mark.slow
def test_the_readme_python_blocks_run(tmp_path, monkeypatch):
    """The README's Python blocks other than its doctest (``>>>``), with the stand-ins of their paths."""
    import torch

    from focalnet import create_model

    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    plain = [b for b in blocks if not b.lstrip().startswith(">>>")]
    assert plain
    monkeypatch.chdir(tmp_path)
    # the README's backbone file: an ImageNet FocalNet-T (LRF) in the original layout (random weights)
    torch.save({"model": create_model("focalnet_tiny_lrf").state_dict()}, tmp_path / "focalnet_tiny_lrf.pth")
    for block in plain:
        scope: dict = {}
        exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - the project's own documentation
        assert any(isinstance(v, torch.nn.Module) for v in scope.values())
