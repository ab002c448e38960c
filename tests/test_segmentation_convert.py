"""Original mmsegmentation UPerNet files: strict loading, the original's logits on seeded weights, the
round trip through ``focalnet segmentation convert``, parameter counts of the six zoo rows, our older
files, and predict / fine-tuning from an original file."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from focalnet.cli import main
from focalnet.segmentation import (
    ADE20K_CLASSES,
    convert_segmentor,
    focalnet_to_mmseg,
    load_segmentation_config,
    load_segmentor,
    mmseg_to_focalnet,
    save_segmentor,
    train,
    upernet,
    upernet_from_meta,
)
from focalnet.weights.infer import CheckpointMismatchError, check_state_dict
from test_segmentation import TINY, TINY_HEAD, make_folder_dataset

from conftest import REFERENCE, need, randomize_, seeded_state_dict

SEG = REFERENCE / "segmentation"
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def reference(name: str) -> dict:
    return json.loads(need(SEG / f"upernet_focalnet_{name}_160k_ade20k.json").read_text())


def original_upernet_keys(
    embed_dim: int, depths: tuple[int, ...], levels: int, window: int = 9, num_classes: int = 150
) -> list[tuple[str, list[int]]]:
    """Keys and shapes of the original UPerNet (mmseg EncoderDecoder + the FocalNet repo's backbone) in
    the order it builds them, for any widths/depths/levels. It reproduces both reference key lists
    exactly (test below), so S (96, 2-2-18-2) and B (128, 2-2-18-2) counts follow from the same rules."""
    keys: list[tuple[str, list[int]]] = []

    def add(prefix: str, **shapes: list[int]) -> None:
        keys.extend((f"{prefix}.{n}", s) for n, s in shapes.items())

    def conv_module(prefix: str, out_ch: int, in_ch: int, k: int) -> None:
        add(prefix, **{"conv.weight": [out_ch, in_ch, k, k]})
        add(prefix + ".bn", weight=[out_ch], bias=[out_ch], running_mean=[out_ch], running_var=[out_ch])
        add(prefix + ".bn", num_batches_tracked=[])

    dims = [embed_dim * 2**i for i in range(len(depths))]
    add("backbone.patch_embed.proj", weight=[embed_dim, 3, 4, 4], bias=[embed_dim])
    add("backbone.patch_embed.norm", weight=[embed_dim], bias=[embed_dim])
    for i, (d, depth) in enumerate(zip(dims, depths)):
        for j in range(depth):
            b = f"backbone.layers.{i}.blocks.{j}"
            add(f"{b}.norm1", weight=[d], bias=[d])
            add(f"{b}.modulation.f", weight=[2 * d + levels + 1, d], bias=[2 * d + levels + 1])
            add(f"{b}.modulation.h", weight=[d, d, 1, 1], bias=[d])
            add(f"{b}.modulation.proj", weight=[d, d], bias=[d])
            for lv in range(levels):
                add(f"{b}.modulation.focal_layers.{lv}.0", weight=[d, 1, window + 2 * lv, window + 2 * lv])
            add(f"{b}.norm2", weight=[d], bias=[d])
            add(f"{b}.mlp.fc1", weight=[4 * d, d], bias=[4 * d])
            add(f"{b}.mlp.fc2", weight=[d, 4 * d], bias=[d])
        if i < len(dims) - 1:
            add(f"backbone.layers.{i}.downsample.proj", weight=[2 * d, d, 2, 2], bias=[2 * d])
            add(f"backbone.layers.{i}.downsample.norm", weight=[2 * d], bias=[2 * d])
    for i, d in enumerate(dims):
        add(f"backbone.norm{i}", weight=[d], bias=[d])
    add("decode_head.conv_seg", weight=[num_classes, 512, 1, 1], bias=[num_classes])
    for s in range(4):
        conv_module(f"decode_head.psp_modules.{s}.1", 512, dims[-1], 1)
    conv_module("decode_head.bottleneck", 512, dims[-1] + 4 * 512, 3)
    for i in range(len(dims) - 1):
        conv_module(f"decode_head.lateral_convs.{i}", 512, dims[i], 1)
    for i in range(len(dims) - 1):
        conv_module(f"decode_head.fpn_convs.{i}", 512, 512, 3)
    conv_module("decode_head.fpn_bottleneck", 512, len(dims) * 512, 3)
    add("auxiliary_head.conv_seg", weight=[num_classes, 256, 1, 1], bias=[num_classes])
    conv_module("auxiliary_head.convs.0", 256, dims[2], 3)
    return keys


ZOO = {  # variant: (embed_dim, depths, levels)
    "focalnet_tiny_srf": (96, (2, 2, 6, 2), 2),
    "focalnet_tiny_lrf": (96, (2, 2, 6, 2), 3),
    "focalnet_small_srf": (96, (2, 2, 18, 2), 2),
    "focalnet_small_lrf": (96, (2, 2, 18, 2), 3),
    "focalnet_base_srf": (128, (2, 2, 18, 2), 2),
    "focalnet_base_lrf": (128, (2, 2, 18, 2), 3),
}


def n_params(keys) -> int:
    return sum(math.prod(s) for k, s in keys if not k.endswith(BUFFERS))


def test_key_rules_reproduce_the_reference_lists():
    for name, (e, d, lv) in [("tiny_srf", ZOO["focalnet_tiny_srf"]), ("tiny_lrf", ZOO["focalnet_tiny_lrf"])]:
        ref = reference(name)
        assert [(k, list(s)) for k, s in ref["state_dict"]] == original_upernet_keys(e, d, lv)
        assert n_params(ref["state_dict"]) == ref["num_params"]


def test_six_zoo_rows_load_strictly_with_the_original_parameter_counts():
    """Each row's original keys (meta tensors: shapes only) are read into the right variant and head and
    fit our model strictly; parameter counts equal the original's (T: the reference's; S/B: the keys')."""
    refs = {"focalnet_tiny_srf": reference("tiny_srf"), "focalnet_tiny_lrf": reference("tiny_lrf")}
    counts = {}
    for variant, (e, d, lv) in ZOO.items():
        keys = original_upernet_keys(e, d, lv)
        if variant in refs:  # the reference key lists themselves
            keys = [(k, list(s)) for k, s in refs[variant]["state_dict"]]
        sd = {k: torch.empty(s, device="meta") for k, s in keys}
        meta, _, extra = mmseg_to_focalnet({"meta": {}, "state_dict": sd})
        assert meta["backbone"] == variant and meta["class_names"] == list(ADE20K_CLASSES)
        assert tuple(meta["backbone_config"]["focal_windows"]) == (9, 9, 9, 9)
        assert meta["head"]["aux_in_index"] == 2 and meta["head"]["pool_scales"] == [1, 2, 3, 6]
        with torch.device("meta"):
            model = upernet_from_meta(meta)
        check_state_dict(model.state_dict(), sd)  # raises naming any missing/unexpected/mis-shaped key
        assert [k for k, _ in keys] == list(focalnet_to_mmseg(meta, model.state_dict())["state_dict"])
        ours = sum(p.numel() for p in model.parameters())
        counts[variant] = ours
        assert ours == n_params(keys)
        if variant in refs:
            assert abs(ours - refs[variant]["num_params"]) <= 1e-3 * refs[variant]["num_params"]
    # T 60.823 / 61.573 (the reference's), S 83.061 / 84.595, B 123.681 / 125.726 million parameters;
    # the model zoo's table gives 61 / 61, 83 / 84, 124 / 126 (rounded or truncated: 61.573 -> 61, 84.595 -> 84)
    assert round(counts["focalnet_tiny_srf"] / 1e6, 3) == 60.823
    assert round(counts["focalnet_tiny_lrf"] / 1e6, 3) == 61.573
    sizes = {"T": "tiny", "S": "small", "B": "base"}
    for row in json.loads(need(REFERENCE / "model-zoo.json").read_text())["ade20k_upernet_512x512_160k"]:
        variant = f"focalnet_{sizes[row['backbone']]}_{'srf' if len(row['kernels']) == 2 else 'lrf'}"
        assert abs(counts[variant] / 1e6 - row["params_m"]) < 0.6, variant


@pytest.fixture(scope="module")
def original_file(tmp_path_factory):
    keys = [(k, list(s)) for k, s in reference("tiny_srf")["state_dict"]]
    path = tmp_path_factory.mktemp("mmseg") / "upernet_focalnet_tiny_srf.pth"
    meta = {"mmseg_version": "0.20.2", "CLASSES": ADE20K_CLASSES, "config": "model = dict(pool_scales=(1, 2, 3, 6))"}
    torch.save({"meta": meta, "state_dict": seeded_state_dict(keys)}, path)
    return path


def test_seeded_original_file_gives_the_original_logits(original_file):
    ref = np.load(need(SEG / "upernet_tiny_srf_seeded.npz"))
    model, extra = load_segmentor(original_file)
    assert not model.training and model.meta["backbone"] == "focalnet_tiny_srf"
    assert model.class_names == list(ADE20K_CLASSES) and extra["data"]["reduce_zero_label"]
    x = torch.from_numpy(ref["input"])
    with torch.no_grad():
        feats = model.backbone(x)
        dec, aux, full = model.decode_head(feats), model.auxiliary_head(feats[2]), model(x)
    want = torch.from_numpy(ref["decode_logits"])
    want_full = F.interpolate(want, size=x.shape[-2:], mode="bilinear", align_corners=False)
    errs = [(dec - want).abs().max(), (aux - torch.from_numpy(ref["aux_logits"])).abs().max()]
    errs.append((full - want_full).abs().max())
    print("max abs diff decode / aux / full resolution:", [f"{float(e):.2e}" for e in errs])  # ~1e-5
    assert dec.shape == (1, 150, 40, 56) and aux.shape == (1, 150, 10, 14) and full.shape == (1, 150, 160, 224)
    assert max(errs) < 1e-3


def test_convert_and_back_is_bit_exact(original_file, tmp_path, capsys):
    ours, back = tmp_path / "ours.pt", tmp_path / "back.pth"
    assert main(["segmentation", "convert", str(original_file), str(ours)]) == 0
    assert "focalnet_tiny_srf, 150 classes, 60.823M parameters" in capsys.readouterr().out
    assert main(["segmentation", "convert", str(ours), str(back), "--to", "original"]) == 0
    a = torch.load(original_file, weights_only=True)
    b = torch.load(back, weights_only=True)
    assert a["meta"] == b["meta"] and list(a["state_dict"]) == list(b["state_dict"])
    for k, v in a["state_dict"].items():
        assert v.dtype == b["state_dict"][k].dtype and torch.equal(v, b["state_dict"][k]), k
    stored = torch.load(ours, weights_only=True)
    assert stored["format"] == "focalnet-segmentation" and stored["extra"]["source"] == "mmsegmentation"


def _tiny_model(num_classes: int = 5) -> torch.nn.Module:
    model = randomize_(upernet("focalnet_tiny_srf", num_classes, head=TINY_HEAD, **TINY), seed=1, scale=0.2)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if k.endswith("running_var"):
                v.abs_().add_(0.5)
    return model.eval()


MMSEG_CONFIG_TEXT = """norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    decode_head=dict(
        type='UPerHead',
        in_channels=[16, 32, 64, 128],
        pool_scales=(1, 2, 3, 6),
        channels=16,
        dropout_ratio=0.2,
        num_classes=5,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        align_corners=True),
    test_cfg=dict(mode='whole'))
img_norm_cfg = dict(
    mean=[120.0, 110.0, 100.0], std=[50.0, 51.0, 52.0], to_rgb=True)
test_pipeline = [dict(type='MultiScaleFlipAug', img_scale=(1024, 256), flip=False)]
"""


def test_settings_the_weights_cannot_show_come_from_the_stored_config():
    model = _tiny_model()
    sd = focalnet_to_mmseg(model.meta, model.state_dict())["state_dict"]
    meta, _, extra = mmseg_to_focalnet({"meta": {"config": MMSEG_CONFIG_TEXT}, "state_dict": sd})
    assert meta["head"]["align_corners"] is True and meta["head"]["dropout"] == 0.2
    assert meta["head"]["channels"] == 16 and meta["head"]["aux_channels"] == 8 and meta["num_classes"] == 5
    assert extra["mean"] == [120.0, 110.0, 100.0] and extra["std"] == [50.0, 51.0, 52.0]
    assert extra["test"] == {"mode": "whole", "scale": [1024, 256]} and "data" not in extra  # not ADE20K
    assert meta["class_names"] is None  # no CLASSES, not 150 classes: numbered
    text = MMSEG_CONFIG_TEXT.replace("pool_scales=(1, 2, 3, 6)", "pool_scales=(1, 2, 3)")
    with pytest.raises(ValueError, match="4 pyramid-pooling branches"):
        mmseg_to_focalnet({"meta": {"config": text}, "state_dict": sd})


def test_misfitting_original_file_names_the_keys(tmp_path):
    model = _tiny_model()
    original = focalnet_to_mmseg(model.meta, model.state_dict())
    sd = original["state_dict"]
    del sd["decode_head.fpn_convs.1.bn.running_var"]
    sd["decode_head.conv_extra.weight"] = torch.zeros(3)
    sd["decode_head.lateral_convs.0.conv.weight"] = torch.zeros(16, 15, 1, 1)
    torch.save(original, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError) as e:
        load_segmentor(tmp_path / "bad.pth")
    msg = str(e.value)
    assert "bad.pth" in msg and "missing keys (1): decode_head.fpn_convs.1.bn.running_var" in msg
    assert "unexpected keys (1): decode_head.conv_extra.weight" in msg
    assert "decode_head.lateral_convs.0.conv.weight: checkpoint (16, 15, 1, 1) vs model (16, 16, 1, 1)" in msg
    with pytest.raises(CheckpointMismatchError, match="missing keys"):
        convert_segmentor(tmp_path / "bad.pth", tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_our_older_files_with_numbered_conv_modules_still_load(tmp_path):
    """Before the head took mmcv's names its ConvModules were numbered (``.0.weight``, ``.1.running_var``):
    files and training checkpoints of that layout load into today's model."""
    model = _tiny_model()
    legacy = {
        k.replace(".conv.", ".0.").replace(".bn.", ".1."): v
        for k, v in model.state_dict().items()
        if k.startswith(("decode_head.", "auxiliary_head."))
    }
    assert "decode_head.psp_modules.0.1.0.weight" in legacy and "auxiliary_head.convs.0.1.running_var" in legacy
    legacy.update({k: v for k, v in model.state_dict().items() if k.startswith("backbone.")})
    save_segmentor(model, tmp_path / "model.pt")
    obj = torch.load(tmp_path / "model.pt", weights_only=True)
    obj["state_dict"] = legacy
    torch.save(obj, tmp_path / "old.pt")
    loaded, _ = load_segmentor(tmp_path / "old.pt")
    fresh = upernet("focalnet_tiny_srf", 5, head=TINY_HEAD, **TINY)
    fresh.load_state_dict(legacy)  # what resuming an old training checkpoint does
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
        torch.testing.assert_close(fresh.eval()(x), model(x))


def test_predict_from_an_original_file(tmp_path):
    model = _tiny_model(num_classes=5)
    original = focalnet_to_mmseg(model.meta, model.state_dict())
    original["meta"] = {"CLASSES": ("a", "b", "c", "d", "e")}  # as mmseg writes it
    torch.save(original, tmp_path / "orig.pth")
    img = (np.random.default_rng(0).random((37, 51, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "photo.png")
    out = tmp_path / "preds"
    args = ["segmentation", "predict", str(tmp_path / "photo.png"), "--checkpoint", str(tmp_path / "orig.pth")]
    assert main([*args, "--out", str(out), "--no-resize"]) == 0
    label = np.array(Image.open(out / "photo_label.png"))
    x = (torch.from_numpy(img).permute(2, 0, 1).float() - torch.tensor([123.675, 116.28, 103.53])[:, None, None]) / (
        torch.tensor([58.395, 57.12, 57.375])[:, None, None]
    )
    with torch.no_grad():
        want = model(x[None]).argmax(1)[0].numpy()
    assert label.shape == (37, 51) and (label == want).mean() > 0.99
    preds = json.loads((out / "predictions.json").read_text())["predictions"][0]
    assert set(preds["class_percent"]) <= {"a", "b", "c", "d", "e"}


def test_finetune_from_an_original_file(tmp_path):
    """train --checkpoint: 3 classes in the data -> new classifiers, everything else from the file."""
    model = _tiny_model(num_classes=5)
    torch.save(focalnet_to_mmseg(model.meta, model.state_dict()), tmp_path / "orig.pth")
    root = make_folder_dataset(tmp_path / "data", n_train=2, n_val=0, size=(32, 32), num_classes=3)
    cfg = load_segmentation_config(
        None,
        [
            f"model.checkpoint={tmp_path / 'orig.pth'}",
            f"data.root={root}",
            "data.layout=folder",
            "data.num_workers=0",
            "aug.scale=[32, 32]",
            "aug.crop_size=[32, 32]",
            "optim.lr=1e-9",
            "train.iters=1",
            "train.batch_size=2",
            "train.progress=false",
            "eval.enabled=false",
        ],
    )
    train(cfg, tmp_path / "run")
    tuned, _ = load_segmentor(tmp_path / "run" / "model.pt")
    assert tuned.num_classes == 3 and tuned.class_names == ["c0", "c1", "c2"]
    assert tuned.meta["backbone_config"]["embed_dim"] == 16
    a, b = tuned.state_dict(), model.state_dict()
    torch.testing.assert_close(
        a["backbone.layers.2.blocks.0.mlp.fc1.weight"], b["backbone.layers.2.blocks.0.mlp.fc1.weight"]
    )
    torch.testing.assert_close(a["decode_head.fpn_convs.0.conv.weight"], b["decode_head.fpn_convs.0.conv.weight"])
    assert a["decode_head.conv_seg.weight"].shape[0] == 3
